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
        :class:`TextItem`; :class:`DeadLetter` for image entries without a string ``filename`` (kind
        ``input``; their sentences are not read) and sentences whose ``raw`` is missing or not a string.
    """
    try:
        data = _io.load_json_with_list(path, "images", "a Karpathy-split file")
    except _io.UnreadableFileError as error:
        yield dead_letter.DeadLetter(path, dead_letter.UNREADABLE_INPUT, str(error), path, kind="input")
        return
    dataset = data.get("dataset", "karpathy")
    dataset = dataset if isinstance(dataset, str) else "karpathy"
    for image_index, image in enumerate(data["images"]):
        image_source = f"{path}#images[{image_index}]"
        if not isinstance(image, dict):
            yield _io.letter(image_source, (dead_letter.BAD_TYPE, "Karpathy image entry must be an object, got "
                                                                  f"{dead_letter.describe_value(image)}"),
                             image_source, kind="input")
            continue
        split = image.get("split")
        problem = _io.text_problem(image.get("filename"), "filename") or (
                None if split is None else _io.text_problem(split, "split"))
        sentences = image.get("sentences") or []
        if problem is None and not isinstance(sentences, list):
            problem = (dead_letter.BAD_TYPE, f"'sentences' must be a list, got {dead_letter.describe_value(sentences)}")
        if problem is not None:
            yield _io.letter(image_source, problem, image_source, kind="input")
            continue
        image_id = os.path.splitext(os.path.basename(image["filename"]))[0]
        for sentence_index, sentence in enumerate(sentences):
            source = f"{image_source}.sentences[{sentence_index}]"
            sentence_id = f"{image_id}_{sentence_index}"
            if isinstance(sentence, dict) and sentence.get("sentid") is not None:
                sentence_id = sentence["sentid"]
            record_id = source
            if not isinstance(sentence, dict):
                problem = (dead_letter.BAD_TYPE, f"sentence must be an object, got {dead_letter.describe_value(sentence)}")
            else:
                problem = _io.id_problem(sentence_id, "sentid")
                if problem is None:
                    record_id = f"{dataset}_{sentence_id}"
                    problem = _io.text_problem(sentence.get("raw"), "raw")
            if problem is not None:
                yield _io.letter(record_id, problem, source)
                continue
            yield TextItem(example_id=record_id, image_ids=(image_id,), text=sentence["raw"], split=split,
                           source=source)
