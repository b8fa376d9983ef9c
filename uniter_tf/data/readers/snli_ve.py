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
        :class:`TextItem`; :class:`DeadLetter` for undecodable lines, missing (``missing_field``) or
        mistyped (``bad_type``: a non-string sentence2, a list id) fields, other labels (``bad_label``).
    """
    split = _split_from_name(path)
    for entry in _io.iter_json_lines(path):
        if isinstance(entry, dead_letter.DeadLetter):
            yield entry
            continue
        line_number, source, record = entry
        if not isinstance(record, dict):
            yield _io.letter(source, (dead_letter.BAD_TYPE, "SNLI-VE record must be an object, got "
                                                            f"{dead_letter.describe_value(record)}"), source)
            continue
        pair_id = record.get("pairID", line_number)
        problem = _io.id_problem(pair_id, "pairID")
        example_id = source if problem else f"snli_ve_{pair_id}"
        image = record.get("Flikr30kID", record.get("Flickr30kID"))
        problem = (problem or _io.id_problem(image, "Flikr30kID")
                   or _io.text_problem(record.get("sentence2"), "sentence2")
                   or (None if "gold_label" in record else (dead_letter.MISSING_FIELD, "'gold_label' is missing")))
        if problem is not None:
            yield _io.letter(example_id, problem, source)
            continue
        gold = record["gold_label"]
        label = SNLI_VE_LABELS.get(gold.strip().lower()) if isinstance(gold, str) else None
        if label is None:
            yield dead_letter.DeadLetter(example_id, dead_letter.BAD_LABEL,
                                         f"gold_label must be one of {sorted(SNLI_VE_LABELS)}, "
                                         f"got {dead_letter.describe_value(gold)}", source)
            continue
        yield TextItem(example_id=example_id, image_ids=(os.path.splitext(str(image))[0],),
                       text=record["sentence2"], split=split, label=label, source=source)
