"""SNLI-VE jsonl (``snli_ve_train.jsonl``, ``snli_ve_dev.jsonl``, ``snli_ve_test.jsonl``)."""

from __future__ import annotations

import os
from typing import Iterator, Optional

from uniter_tf.data import dead_letter
from uniter_tf.data.readers import _io
from uniter_tf.data.readers.text_item import TextItem

#: UNITER's label order (``utils/misc.py``, spec §5.2).
SNLI_VE_LABELS = {"contradiction": 0, "entailment": 1, "neutral": 2}


def _split_from_name(path: str) -> Optional[str]:
    name = os.path.basename(path).lower()
    for key, split in (("train", "train"), ("dev", "val"), ("val", "val"), ("test", "test")):
        if key in name:
            return split
    return None


def read_snli_ve(path: str) -> Iterator:
    """Streams SNLI-VE hypotheses: ``Flikr30kID`` (sic), ``sentence2``, ``gold_label``, ``pairID``.

    ``example_id`` = ``snli_ve_{pairID}``; image id = the Flickr30k file stem; ``label`` = contradiction 0 /
    entailment 1 / neutral 2; split from the file name.

    Yields:
        :class:`TextItem`; :class:`DeadLetter` for undecodable lines, missing fields, other labels.
    """
    split = _split_from_name(path)
    for entry in _io.iter_json_lines(path):
        if isinstance(entry, dead_letter.DeadLetter):
            yield entry
            continue
        line_number, source, record = entry
        image = record.get("Flikr30kID", record.get("Flickr30kID")) if isinstance(record, dict) else None
        if image is None or "sentence2" not in record or "gold_label" not in record:
            yield dead_letter.DeadLetter(source, dead_letter.MISSING_FIELD,
                                         "SNLI-VE record needs Flikr30kID, sentence2 and gold_label", source)
            continue
        example_id = f"snli_ve_{record.get('pairID', line_number)}"
        label = SNLI_VE_LABELS.get(str(record["gold_label"]).strip().lower())
        if label is None:
            yield dead_letter.DeadLetter(example_id, dead_letter.BAD_LABEL,
                                         f"gold_label must be one of {sorted(SNLI_VE_LABELS)}, "
                                         f"got {record['gold_label']!r}", source)
            continue
        yield TextItem(example_id=example_id, image_ids=(os.path.splitext(str(image))[0],),
                       text=str(record["sentence2"]), split=split, label=label, source=source)
