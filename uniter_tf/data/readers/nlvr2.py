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
        :class:`TextItem`; :class:`DeadLetter` for undecodable lines, missing (``missing_field``) or
        non-string (``bad_type``) identifier / sentence, and other labels (``bad_label``).
    """
    for entry in _io.iter_json_lines(path):
        if isinstance(entry, dead_letter.DeadLetter):
            yield entry
            continue
        _, source, record = entry
        if not isinstance(record, dict):
            yield _io.letter(source, (dead_letter.BAD_TYPE, "NLVR2 record must be an object, got "
                                                            f"{dead_letter.describe_value(record)}"), source)
            continue
        problem = _io.text_problem(record.get("identifier"), "identifier")
        identifier = source if problem else record["identifier"]
        problem = problem or _io.text_problem(record.get("sentence"), "sentence")
        if problem is not None:
            yield _io.letter(identifier, problem, source)
            continue
        label = None
        if "label" in record:
            label = _LABELS.get(str(record["label"]).strip().lower()) if isinstance(record["label"], (str, bool)) \
                else None
            if label is None:
                yield dead_letter.DeadLetter(identifier, dead_letter.BAD_LABEL,
                                             f"label must be True or False, got "
                                             f"{dead_letter.describe_value(record['label'])}", source)
                continue
        yield TextItem(example_id=identifier, image_ids=nlvr2_image_ids(identifier),
                       text=record["sentence"], split=_SPLITS.get(identifier.split("-", 1)[0]),
                       label=label, source=source)
