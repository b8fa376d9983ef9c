"""VCR annotations (``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` of the released ``vcr1annots``).

Each line is one question over one movie still::

    {"annot_id": "val-0", "img_fn": "lsmdc_x/clip@1.jpg", "metadata_fn": "lsmdc_x/clip@1.json",
     "objects": ["person", "person", "car"],
     "question": ["What", "is", [0], "doing", "?"],
     "answer_choices": [[...], [...], [...], [...]], "answer_label": 1,
     "rationale_choices": [[...], [...], [...], [...]], "rationale_label": 2, ...}

Texts are token lists mixing words and **object references**: a list of detection indices (``[0]``,
``[1, 3]``) into ``objects`` and into the ``boxes`` of the image's metadata file (``{"boxes": [[x1, y1, x2,
y2, score], ...], "width": W, "height": H, ...}``). The official txt_db stores references as 81 extra word
ids whose mapping is not in the official code; the mapping here (:func:`render_tokens`) writes every
referenced index ``i`` as the word ``[i]``, followed by its class name (``objects[i]``) unless
``with_class_names=False``; several indices are joined with ``,`` / ``and`` (``[1, 3]`` →
``"[1] person and [3] person"``). :func:`uniter_tf.tokenization.tokenize_with_references` then turns
``[i]`` into the one word id ``28996 + i`` (``i < 81``) and the class name into its WordPieces. Regions
(spec §5.6): the metadata's ground-truth boxes come first in the region list, in ``objects`` order, so
index ``i`` is region ``i``; detected boxes, when there are any, follow them.

Bad input is set aside with its reason: undecodable lines (``unreadable_input``), missing or null fields
(``missing_field``), mistyped ones (``bad_type``: not four choices, a non-list text, a non-integer index),
labels outside ``0..3`` (``bad_label``), a missing image or metadata file (``unknown_image``), and
references to an index the question's ``objects`` or its metadata boxes do not have, or beyond the 81
reference ids (``bad_reference``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from uniter_tf.data import dead_letter
from uniter_tf.data.readers import _io

NUM_CHOICES = 4
#: Object-reference word ids of the official VCR vocabulary (``NUM_SPECIAL_TOKENS``, spec §4.5).
NUM_REFERENCE_IDS = 81
#: ``answer_label`` / ``rationale_label`` of a test question (the labels are withheld).
NO_LABEL = -1


@dataclasses.dataclass(frozen=True)
class VcrItem:
    """One VCR question with its choices, rendered as strings, and its image's ground-truth boxes.

    Attributes:
        example_id: ``annot_id`` (``"val-12"``; the leaderboard sorts by the integer after the dash).
        image_file: ``img_fn`` relative to the images directory.
        question: the rendered question.
        answers: the 4 rendered answers.
        rationales: the 4 rendered rationales.
        answer_label: index of the right answer, :data:`NO_LABEL` on test.
        rationale_label: index of the right rationale, :data:`NO_LABEL` on test.
        objects: the class name of each ground-truth box.
        gt_boxes: ``[len(objects), 4]`` float32 pixel ``x1, y1, x2, y2`` (region ``i`` = object ``i``).
        image_height: pixels.
        image_width: pixels.
        split: ``train`` / ``val`` / ``test`` (from the file name).
        source: ``path:line``.
    """

    example_id: str
    image_file: str
    question: str
    answers: Tuple[str, ...]
    rationales: Tuple[str, ...]
    answer_label: int
    rationale_label: int
    objects: Tuple[str, ...]
    gt_boxes: np.ndarray
    image_height: int
    image_width: int
    split: Optional[str] = None
    source: str = ""


class _BadItem(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _split_from_name(path: str) -> Optional[str]:
    name = os.path.basename(path).lower()
    for key in ("train", "val", "test"):
        if key in name:
            return key
    return None


def render_tokens(tokens: Sequence, objects: Sequence[str], with_class_names: bool = True, field: str = "text",
                  num_regions: Optional[int] = None) -> str:
    """A VCR token list as a string with ``[i]`` references (see the module docstring).

    Args:
        tokens: words (strings) and reference lists (lists of ints).
        objects: the question's class names; a reference must be a valid index of it.
        with_class_names: follow each ``[i]`` with ``objects[i]``.
        field: the field's name, for errors.
        num_regions: if given, references must also be below it (the ground-truth boxes).

    Raises:
        _BadItem: a token of another type (``bad_type``) or an index out of range (``bad_reference``).
    """
    if not isinstance(tokens, list) or not tokens:
        raise _BadItem(dead_letter.BAD_TYPE if tokens else dead_letter.MISSING_FIELD,
                       f"{field!r} must be a non-empty token list, got {dead_letter.describe_value(tokens)}")
    limit = min(len(objects), NUM_REFERENCE_IDS, num_regions if num_regions is not None else len(objects))
    words: List[str] = []
    for token in tokens:
        if isinstance(token, str):
            words.append(token)
            continue
        if not isinstance(token, list) or not token or not all(
                isinstance(index, int) and not isinstance(index, bool) for index in token):
            raise _BadItem(dead_letter.BAD_TYPE, f"{field!r}: token {dead_letter.describe_value(token)} is neither a "
                                                 "word nor a non-empty list of object indices")
        bad = [index for index in token if not 0 <= index < limit]
        if bad:
            raise _BadItem(dead_letter.BAD_REFERENCE,
                           f"{field!r} refers to object(s) {bad}; the question has {len(objects)} objects, "
                           f"{num_regions} ground-truth boxes, and VCR {NUM_REFERENCE_IDS} reference ids")
        named = [f"[{index}] {objects[index]}" if with_class_names else f"[{index}]" for index in token]
        words.append(named[0] if len(named) == 1 else " , ".join(named[:-1]) + " and " + named[-1])
    return " ".join(words)


def _label(record: dict, field: str, split: Optional[str]) -> int:
    value = record.get(field)
    if value is None:
        if split == "test":
            return NO_LABEL
        raise _BadItem(dead_letter.MISSING_FIELD, f"{field!r} is missing or null")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < NUM_CHOICES:
        raise _BadItem(dead_letter.BAD_LABEL, f"{field!r} must be 0..{NUM_CHOICES - 1}, "
                                              f"got {dead_letter.describe_value(value)}")
    return value


def _metadata(path: str) -> Tuple[np.ndarray, int, int]:
    if not os.path.isfile(path):
        raise _BadItem(dead_letter.UNKNOWN_IMAGE, f"metadata file {path!r} does not exist")
    try:
        with open(path, "rb") as handle:
            metadata = json.loads(_io.decode_text(handle.read()))
    except ValueError as error:
        raise _BadItem(dead_letter.UNREADABLE_INPUT, f"metadata file {path!r} is not JSON: {error}") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("boxes"), list):
        raise _BadItem(dead_letter.MISSING_FIELD, f"metadata file {path!r} has no 'boxes' list")
    try:
        boxes = np.asarray([box[:4] for box in metadata["boxes"]], np.float32).reshape(-1, 4)
        height, width = int(metadata["height"]), int(metadata["width"])
    except (TypeError, ValueError, KeyError, IndexError) as error:
        raise _BadItem(dead_letter.BAD_TYPE, f"metadata file {path!r}: boxes must be [x1, y1, x2, y2(, score)] "
                                             f"and height/width integers ({error})") from None
    if not np.all(np.isfinite(boxes)) or height <= 0 or width <= 0:
        raise _BadItem(dead_letter.BAD_TYPE, f"metadata file {path!r}: non-finite boxes or a non-positive size")
    return boxes, height, width


def _item(record, split: Optional[str], source: str, images_dir: str, with_class_names: bool) -> VcrItem:
    if not isinstance(record, dict):
        raise _BadItem(dead_letter.BAD_TYPE,
                       f"a VCR record must be an object, got {dead_letter.describe_value(record)}")
    for field in ("question", "answer_choices", "rationale_choices", "objects", "img_fn", "metadata_fn"):
        if record.get(field) is None:
            raise _BadItem(dead_letter.MISSING_FIELD, f"{field!r} is missing or null")
    for field in ("img_fn", "metadata_fn"):
        problem = _io.text_problem(record[field], field)
        if problem:
            raise _BadItem(*problem)
    objects = record["objects"]
    if not isinstance(objects, list) or not all(isinstance(name, str) for name in objects):
        raise _BadItem(dead_letter.BAD_TYPE, f"'objects' must be a list of class names, got "
                                             f"{dead_letter.describe_value(objects)}")
    for field in ("answer_choices", "rationale_choices"):
        if not isinstance(record[field], list) or len(record[field]) != NUM_CHOICES:
            raise _BadItem(dead_letter.BAD_TYPE, f"{field!r} must be a list of {NUM_CHOICES} token lists, got "
                                                 f"{dead_letter.describe_value(record[field])}")
    answer_label = _label(record, "answer_label", split)
    rationale_label = _label(record, "rationale_label", split)
    image_path = os.path.join(images_dir, record["img_fn"])
    if not os.path.isfile(image_path):
        raise _BadItem(dead_letter.UNKNOWN_IMAGE, f"image {image_path!r} does not exist")
    boxes, height, width = _metadata(os.path.join(images_dir, record["metadata_fn"]))
    if len(boxes) < len(objects):
        raise _BadItem(dead_letter.BAD_REFERENCE, f"'objects' names {len(objects)} objects but the metadata has "
                                                  f"{len(boxes)} boxes")

    def render(tokens, field):
        return render_tokens(tokens, objects, with_class_names, field, num_regions=len(boxes))

    return VcrItem(
            example_id=str(record.get("annot_id", source)), image_file=record["img_fn"],
            question=render(record["question"], "question"),
            answers=tuple(render(tokens, f"answer_choices[{index}]")
                          for index, tokens in enumerate(record["answer_choices"])),
            rationales=tuple(render(tokens, f"rationale_choices[{index}]")
                             for index, tokens in enumerate(record["rationale_choices"])),
            answer_label=answer_label, rationale_label=rationale_label, objects=tuple(objects),
            gt_boxes=boxes[:len(objects)], image_height=height, image_width=width, split=split, source=source)


def read_vcr(path: str, images_dir: str, *, with_class_names: bool = True
             ) -> Iterator[Union[VcrItem, dead_letter.DeadLetter]]:
    """Streams the questions of a VCR ``*.jsonl`` file.

    Args:
        path: the annotation file (``train.jsonl``, ``val.jsonl``, ``test.jsonl``; split from the name).
        images_dir: the directory ``img_fn`` and ``metadata_fn`` are relative to (``vcr1images``).
        with_class_names: write each reference's class name after it (see the module docstring).

    Yields:
        :class:`VcrItem` per good question, :class:`~uniter_tf.data.dead_letter.DeadLetter` per bad line
        (good + bad = lines read).
    """
    split = _split_from_name(path)
    for entry in _io.iter_json_lines(path):
        if isinstance(entry, dead_letter.DeadLetter):
            yield entry
            continue
        _, source, record = entry
        record_id = str(record.get("annot_id", source)) if isinstance(record, dict) else source
        try:
            yield _item(record, split, source, images_dir, with_class_names)
        except _BadItem as bad:
            yield dead_letter.DeadLetter(record_id, bad.reason, bad.detail, source)


def annot_sort_key(annot_id: str) -> Tuple[int, str]:
    """The leaderboard order of ``inf_vcr.py``: the integer after the dash of ``annot_id`` (``test-12`` → 12)."""
    tail = str(annot_id).rsplit("-", 1)[-1]
    return (int(tail), str(annot_id)) if tail.isdigit() else (1 << 62, str(annot_id))


__all__ = ["VcrItem", "read_vcr", "render_tokens", "annot_sort_key", "NUM_CHOICES", "NUM_REFERENCE_IDS", "NO_LABEL"]
