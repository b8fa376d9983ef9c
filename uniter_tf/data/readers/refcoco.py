"""RefCOCO / RefCOCO+ / RefCOCOg referring expressions.

The public release ships the refs as a Python pickle (``refs(unc).p``, ``refs(umd).p``, ...). Unpickling
runs arbitrary code, so this reader never does it: convert the file once, on a machine you trust, with

    python -c "import pickle,json,sys; json.dump(pickle.load(open(sys.argv[1],'rb'),encoding='latin1'),open(sys.argv[2],'w'))" 'refs(unc).p' refs_unc.json

and pass the JSON plus the dataset's ``instances.json`` (for the boxes and image sizes).
"""

from __future__ import annotations

import os
from typing import Iterator

from uniter_tf.data import dead_letter
from uniter_tf.data.readers import _io
from uniter_tf.data.readers.text_item import TextItem


def read_refcoco(refs_path: str, instances_path: str) -> Iterator:
    """Streams the sentences of RefCOCO-style refs with their target boxes.

    ``example_id`` = ``ref_{sent_id}``; image id = the COCO file stem from ``instances.json``; ``text`` =
    the sentence's ``sent``; ``target_box`` = the referred annotation's bbox as pixel ``x1, y1, x2, y2``;
    split = the ref's split (``train``, ``val``, ``testA``, ``testB``, ``test``).

    Yields:
        :class:`TextItem`; :class:`DeadLetter` for refs whose annotation is missing or lack fields.
    """
    if refs_path.endswith(".p") or refs_path.endswith(".pkl"):
        yield dead_letter.DeadLetter(refs_path, dead_letter.UNREADABLE_INPUT,
                                     "refs pickles are not read (untrusted code); convert them to JSON first, "
                                     "see uniter_tf/data/readers/refcoco.py", refs_path, kind="input")
        return
    try:
        refs = _io.load_json(refs_path)
        instances = _io.load_json(instances_path)
        if not isinstance(refs, list):
            raise _io.UnreadableFileError(f"{refs_path!r} must hold a JSON list of refs")
        if not isinstance(instances, dict) or not isinstance(instances.get("annotations"), list):
            raise _io.UnreadableFileError(f"{instances_path!r} has no 'annotations' list")
    except _io.UnreadableFileError as error:
        yield dead_letter.DeadLetter(refs_path, dead_letter.UNREADABLE_INPUT, str(error), refs_path, kind="input")
        return
    images = {}
    for image in instances.get("images", []) or []:
        if isinstance(image, dict) and "id" in image:
            name = os.path.splitext(str(image.get("file_name", image["id"])))[0]
            size = (int(image["height"]), int(image["width"])) if image.get("height") and image.get("width") else None
            images[image["id"]] = (name, size)
    boxes = {annotation["id"]: annotation.get("bbox") for annotation in instances["annotations"]
             if isinstance(annotation, dict) and "id" in annotation}
    for ref_index, ref in enumerate(refs):
        ref_source = f"{refs_path}#[{ref_index}]"
        if not isinstance(ref, dict) or any(key not in ref for key in ("ann_id", "image_id", "sentences")):
            yield dead_letter.DeadLetter(ref_source, dead_letter.MISSING_FIELD,
                                         "ref needs ann_id, image_id and sentences", ref_source)
            continue
        bbox = boxes.get(ref["ann_id"])
        name, size = images.get(ref["image_id"], (str(ref["image_id"]), None))
        for sentence_index, sentence in enumerate(ref["sentences"] or []):
            source = f"{ref_source}.sentences[{sentence_index}]"
            sent_id = sentence.get("sent_id") if isinstance(sentence, dict) else None
            record_id = f"ref_{sent_id}" if sent_id is not None else source
            if sent_id is None or "sent" not in sentence:
                yield dead_letter.DeadLetter(record_id, dead_letter.MISSING_FIELD, "sentence needs sent_id and sent",
                                             source)
                continue
            if not bbox or len(bbox) != 4:
                yield dead_letter.DeadLetter(record_id, dead_letter.MISSING_FIELD,
                                             f"annotation {ref['ann_id']} has no bbox in {instances_path}", source)
                continue
            x, y, width, height = (float(value) for value in bbox)
            yield TextItem(example_id=record_id, image_ids=(name,), text=str(sentence["sent"]),
                           split=ref.get("split"), target_box=(x, y, x + width, y + height), image_size=size,
                           source=source)
