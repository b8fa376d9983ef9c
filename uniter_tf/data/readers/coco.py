"""COCO captions (``captions_train2014.json``, ``captions_val2014.json``)."""

from __future__ import annotations

import os
from typing import Iterator

from uniter_tf.data import dead_letter
from uniter_tf.data.readers import _io
from uniter_tf.data.readers.text_item import TextItem


def coco_images(data) -> dict:
    """Maps a COCO ``images`` list to ``id -> (name, (height, width) or None)``.

    The name is the file name without extension (``COCO_train2014_000000000009``), or the numeric id
    when the entry has no ``file_name``.
    """
    images = {}
    for image in data.get("images", []) or []:
        if not isinstance(image, dict) or "id" not in image:
            continue
        file_name = image.get("file_name")
        name = os.path.splitext(os.path.basename(file_name))[0] if file_name else str(image["id"])
        size = None
        if image.get("height") and image.get("width"):
            size = (int(image["height"]), int(image["width"]))
        images[image["id"]] = (name, size)
    return images


def read_coco_captions(path: str) -> Iterator:
    """Streams the captions of one COCO captions file.

    ``example_id`` = the caption's ``id``; the image id is the image's file name stem (the official
    img_db key is its lower-case form), or the numeric ``image_id`` if the file has no ``images`` entry.

    Yields:
        :class:`TextItem`, or :class:`DeadLetter` for annotations without ``image_id``/``caption``.
    """
    try:
        data = _io.load_json_with_list(path, "annotations", "a COCO captions file")
    except _io.UnreadableFileError as error:
        yield dead_letter.DeadLetter(path, dead_letter.UNREADABLE_INPUT, str(error), path, kind="input")
        return
    images = coco_images(data)
    for index, annotation in enumerate(data["annotations"]):
        source = f"{path}#annotations[{index}]"
        record_id = str(annotation.get("id", source)) if isinstance(annotation, dict) else source
        if not isinstance(annotation, dict) or "image_id" not in annotation or "caption" not in annotation:
            yield dead_letter.DeadLetter(record_id, dead_letter.MISSING_FIELD,
                                         "COCO caption needs 'image_id' and 'caption'", source)
            continue
        name, size = images.get(annotation["image_id"], (str(annotation["image_id"]), None))
        yield TextItem(example_id=f"coco_{record_id}", image_ids=(name,), text=str(annotation["caption"]),
                       image_size=size, source=source)
