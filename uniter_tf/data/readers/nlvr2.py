"""NLVR2 jsonl (``train.json``, ``dev.json``, ``test1.json``: one JSON object per line)."""

from __future__ import annotations

from typing import Iterator

from uniter_tf.data import dead_letter
from uniter_tf.data.readers import _io
from uniter_tf.data.readers.text_item import TextItem

_LABELS = {"true": 1, "false": 0}
_SPLITS = {"train": "train", "dev": "val", "test1": "test", "test2": "test"}


def nlvr2_image_ids(identifier: str):
    """The two image ids of a sentence: ``dev-850-0-0`` -> (``dev-850-0-img0``, ``dev-850-0-img1``).

    The official UNITER img_db names them ``nlvr2_dev-850-0-img0.npz``: join with ``strip_prefix="nlvr2_"``.
    """
    pair = identifier.rsplit("-", 1)[0]
    return (f"{pair}-img0", f"{pair}-img1")


def read_nlvr2(path: str) -> Iterator:
    """Streams NLVR2 sentences: ``identifier``, ``sentence``, ``label`` ("True"/"False").

    ``example_id`` = the identifier; ``image_ids`` = the left and right image; ``label`` = 1 for True,
    0 for False (as the official ``target``); split from the identifier prefix (train / val / test).

    Yields:
        :class:`TextItem`; :class:`DeadLetter` for undecodable lines, missing fields and other labels.
    """
    for entry in _io.iter_json_lines(path):
        if isinstance(entry, dead_letter.DeadLetter):
            yield entry
            continue
        _, source, record = entry
        if not isinstance(record, dict) or "identifier" not in record or "sentence" not in record:
            yield dead_letter.DeadLetter(source, dead_letter.MISSING_FIELD,
                                         "NLVR2 record needs identifier and sentence", source)
            continue
        identifier = str(record["identifier"])
        label = None
        if "label" in record:
            label = _LABELS.get(str(record["label"]).strip().lower())
            if label is None:
                yield dead_letter.DeadLetter(identifier, dead_letter.BAD_LABEL,
                                             f"label must be True or False, got {record['label']!r}", source)
                continue
        yield TextItem(example_id=identifier, image_ids=nlvr2_image_ids(identifier),
                       text=str(record["sentence"]), split=_SPLITS.get(identifier.split("-", 1)[0]),
                       label=label, source=source)
