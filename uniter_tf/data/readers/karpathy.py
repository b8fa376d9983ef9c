"""Karpathy-split JSON (``dataset_flickr30k.json``, ``dataset_coco.json``)."""

from __future__ import annotations

import os
from typing import Iterator

from uniter_tf.data import dead_letter
from uniter_tf.data.readers import _io
from uniter_tf.data.readers.text_item import TextItem


def read_karpathy(path: str) -> Iterator:
    """Streams the sentences of a Karpathy-split file: ``images[].sentences[].raw`` with ``images[].split``.

    ``example_id`` = ``{dataset}_{sentid}``; image id = ``filename`` without extension; split = the
    image's split (``train``, ``val``, ``test``, ``restval``).

    Yields:
        :class:`TextItem`, or :class:`DeadLetter` for entries missing ``filename``/``raw``.
    """
    try:
        data = _io.load_json_with_list(path, "images", "a Karpathy-split file")
    except _io.UnreadableFileError as error:
        yield dead_letter.DeadLetter(path, dead_letter.UNREADABLE_INPUT, str(error), path, kind="input")
        return
    dataset = str(data.get("dataset", "karpathy"))
    for image_index, image in enumerate(data["images"]):
        image_source = f"{path}#images[{image_index}]"
        if not isinstance(image, dict) or "filename" not in image:
            yield dead_letter.DeadLetter(image_source, dead_letter.MISSING_FIELD,
                                         "Karpathy image entry needs 'filename'", image_source)
            continue
        image_id = os.path.splitext(os.path.basename(str(image["filename"])))[0]
        for sentence_index, sentence in enumerate(image.get("sentences", []) or []):
            source = f"{image_source}.sentences[{sentence_index}]"
            sentence_id = sentence.get("sentid", f"{image_id}_{sentence_index}") if isinstance(sentence, dict) \
                else f"{image_id}_{sentence_index}"
            record_id = f"{dataset}_{sentence_id}"
            if not isinstance(sentence, dict) or "raw" not in sentence:
                yield dead_letter.DeadLetter(record_id, dead_letter.MISSING_FIELD, "sentence needs 'raw'", source)
                continue
            yield TextItem(example_id=record_id, image_ids=(image_id,), text=str(sentence["raw"]),
                           split=image.get("split"), source=source)
