"""COCO captions (``captions_train2014.json``, ``captions_val2014.json``)."""

from __future__ import annotations

from typing import Iterator

from uniter_tf.data import dead_letter
from uniter_tf.data.readers import _io
from uniter_tf.data.readers.text_item import TextItem


def coco_images(data) -> dict:
    """Maps a COCO ``images`` list to ``id -> (name, (height, width) or None)``; bad entries are left out.

    The name is the file name without extension (``COCO_train2014_000000000009``), or the numeric id
    when the entry has no ``file_name``. See :func:`uniter_tf.data.readers._io.image_table` for the checks.
    """
    table, _, _ = _io.image_table(data.get("images") if isinstance(data, dict) else None, "")
    return table


def read_coco_captions(path: str) -> Iterator:
    """Streams the captions of one COCO captions file.

    ``example_id`` = ``coco_`` + the caption's ``id``; the image id is the image's file name stem (the
    official img_db key is its lower-case form), or the numeric ``image_id`` if the file has no ``images``
    entry for it. Every field is type-checked: one bad record never costs its file.

    Yields:
        :class:`TextItem`; :class:`DeadLetter` for each bad ``images[]`` entry (kind ``input``), for
        captions with a missing (``missing_field``) or mistyped (``bad_type``) ``id``/``image_id``/``caption``,
        and for captions of a rejected ``images[]`` entry (``image_rejected``).
    """
    try:
        data = _io.load_json_with_list(path, "annotations", "a COCO captions file")
    except _io.UnreadableFileError as error:
        yield dead_letter.DeadLetter(path, dead_letter.UNREADABLE_INPUT, str(error), path, kind="input")
        return
    images, rejected, letters = _io.image_table(data.get("images"), path)
    yield from letters
    for index, annotation in enumerate(data["annotations"]):
        source = f"{path}#annotations[{index}]"
        if not isinstance(annotation, dict):
            yield _io.letter(source, (dead_letter.BAD_TYPE, "COCO caption must be an object, got "
                                                            f"{dead_letter.describe_value(annotation)}"), source)
            continue
        record_id = source
        if "id" in annotation:
            problem = _io.id_problem(annotation["id"], "id")
            if problem is not None:
                yield _io.letter(source, problem, source)
                continue
            record_id = str(annotation["id"])
        problem = (_io.id_problem(annotation.get("image_id"), "image_id")
                   or _io.text_problem(annotation.get("caption"), "caption"))
        if problem is not None:
            yield _io.letter(record_id, problem, source)
            continue
        image_id = annotation["image_id"]
        if image_id in rejected:
            yield dead_letter.DeadLetter(f"coco_{record_id}", dead_letter.IMAGE_REJECTED,
                                         f"its image entry was rejected: {rejected[image_id]}", source)
            continue
        name, size = images.get(image_id, (str(image_id), None))
        yield TextItem(example_id=f"coco_{record_id}", image_ids=(name,), text=annotation["caption"],
                       image_size=size, source=source)
