"""RefCOCO / RefCOCO+ / RefCOCOg referring expressions.

The public release ships the refs as a Python pickle (``refs(unc).p``, ``refs(umd).p``, ...). A pickle
may run arbitrary code when loaded, because loading it may call any global it names (``os.system``,
``open``, ...). These files hold plain data only (lists, dicts, strings, numbers), so the reader loads
them with :class:`PlainDataUnpickler`, which allows **no globals at all** (Python docs, "Restricting
Globals"): a pickle that asks for any class or function is refused before anything it names is looked up,
let alone called, and becomes one ``unsafe_input`` dead letter for the file. The JSON form (e.g. converted
elsewhere) is read as well; either comes with the dataset's ``instances.json`` (boxes and image sizes).
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Iterator

from uniter_tf.data import dead_letter
from uniter_tf.data.readers import _io
from uniter_tf.data.readers.text_item import TextItem


#: File endings read as pickles.
PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global (a class or function): refused, nothing was called."""


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that resolves no global and no persistent id: only plain data can come out.

    Every opcode that needs a callable (``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``OBJ``, ``REDUCE`` on a
    looked-up callable, the ``EXT`` registry) gets it from :meth:`find_class`, which always refuses, so no
    code named by the file can run.
    """

    def find_class(self, module: str, name: str):
        raise UnsafePickleError(f"the pickle asks for the global {module}.{name}; only plain data (lists, dicts, "
                                f"strings, numbers) is accepted, so it was refused without loading or calling "
                                f"anything")

    def persistent_load(self, pid):
        raise UnsafePickleError("the pickle refers to a persistent object; only plain data is accepted")


def load_plain_pickle(path: str) -> Any:
    """Loads a pickle of plain data (the released ``refs(unc).p``) without allowing any global.

    Python 2 ``str`` objects are decoded as latin-1 (the release was pickled by Python 2).

    Raises:
        UnsafePickleError: the pickle asks for a global or a persistent object (nothing was executed).
        _io.UnreadableFileError: the file is missing, truncated or not a pickle.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise _io.UnreadableFileError(f"cannot read {path!r}: {error}") from None
    try:
        return PlainDataUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{path!r}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, RecursionError) as error:
        raise _io.UnreadableFileError(f"cannot read the pickle {path!r}: {type(error).__name__}: {error}") from None


#: Pixels a COCO box may stick out of its image (annotation round-off) before it counts as outside.
BOX_TOLERANCE = 1.0


def _box_outside_image(bbox, size, ann_id):
    """A ``box_outside_image`` problem for an empty ``[x, y, w, h]`` box or one that leaves its image."""
    x, y, width, height = (float(value) for value in bbox)
    if not (width > 0 and height > 0):
        return (dead_letter.BOX_OUTSIDE_IMAGE, f"annotation {ann_id} has an empty bbox {list(bbox)} (w, h <= 0)")
    if size is not None:
        image_height, image_width = size
        if (x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + width > image_width + BOX_TOLERANCE
                or y + height > image_height + BOX_TOLERANCE):
            return (dead_letter.BOX_OUTSIDE_IMAGE, f"annotation {ann_id} bbox {list(bbox)} (x, y, w, h) leaves its "
                                                   f"{image_width}x{image_height} image")
    return None


def read_refcoco(refs_path: str, instances_path: str) -> Iterator:
    """Streams the sentences of RefCOCO-style refs with their target boxes.

    ``example_id`` = ``ref_{sent_id}``; image id = the COCO file stem from ``instances.json``; ``text`` =
    the sentence's ``sent``; ``target_box`` = the referred annotation's bbox as pixel ``x1, y1, x2, y2``;
    split = the ref's split (``train``, ``val``, ``testA``, ``testB``, ``test``).

    Yields:
        :class:`TextItem`; :class:`DeadLetter` for refs whose annotation is missing, for missing
        (``missing_field``) or mistyped (``bad_type``) fields, for an empty box or one outside its image
        (``box_outside_image``, when ``images[]`` gives the size), and for bad ``images[]`` entries (kind
        ``input``).
    """
    try:
        if refs_path.lower().endswith(PICKLE_SUFFIXES):
            refs = load_plain_pickle(refs_path)
        else:
            refs = _io.load_json(refs_path)
        instances = _io.load_json(instances_path)
        if not isinstance(refs, list):
            raise _io.UnreadableFileError(f"{refs_path!r} must hold a list of refs")
        if not isinstance(instances, dict) or not isinstance(instances.get("annotations"), list):
            raise _io.UnreadableFileError(f"{instances_path!r} has no 'annotations' list")
    except UnsafePickleError as error:
        yield dead_letter.DeadLetter(refs_path, dead_letter.UNSAFE_INPUT, str(error), refs_path, kind="input")
        return
    except _io.UnreadableFileError as error:
        yield dead_letter.DeadLetter(refs_path, dead_letter.UNREADABLE_INPUT, str(error), refs_path, kind="input")
        return
    images, rejected, letters = _io.image_table(instances.get("images"), instances_path)
    yield from letters
    # Annotations with a list/object id or a malformed bbox cannot be referred to: their refs get a letter.
    boxes = {}
    for annotation in instances["annotations"]:
        if isinstance(annotation, dict) and _io.id_problem(annotation.get("id"), "id") is None:
            boxes[annotation["id"]] = annotation.get("bbox")
    for ref_index, ref in enumerate(refs):
        ref_source = f"{refs_path}#[{ref_index}]"
        if not isinstance(ref, dict):
            yield _io.letter(ref_source, (dead_letter.BAD_TYPE, f"ref must be an object, got "
                                                                f"{dead_letter.describe_value(ref)}"),
                             ref_source, kind="input")
            continue
        problem = (_io.id_problem(ref.get("ann_id"), "ann_id") or _io.id_problem(ref.get("image_id"), "image_id")
                   or (None if isinstance(ref.get("sentences"), list) else
                       (dead_letter.MISSING_FIELD if ref.get("sentences") is None else dead_letter.BAD_TYPE,
                        f"'sentences' must be a list, got {dead_letter.describe_value(ref.get('sentences'))}")))
        split = ref.get("split")
        problem = problem or (None if split is None else _io.text_problem(split, "split"))
        if problem is not None:
            yield _io.letter(ref_source, problem, ref_source, kind="input")
            continue
        bbox = boxes.get(ref["ann_id"])
        box_problem = None
        if not isinstance(bbox, list) or len(bbox) != 4:
            box_problem = (dead_letter.MISSING_FIELD, f"annotation {ref['ann_id']} has no bbox in {instances_path}")
        else:
            box_problem = next(filter(None, (_io.number_problem(value, "bbox[]") for value in bbox)), None)
        name, size = images.get(ref["image_id"], (str(ref["image_id"]), None))
        if box_problem is None:
            box_problem = _box_outside_image(bbox, size, ref["ann_id"])
        for sentence_index, sentence in enumerate(ref["sentences"]):
            source = f"{ref_source}.sentences[{sentence_index}]"
            sent_id = sentence.get("sent_id") if isinstance(sentence, dict) else None
            problem = _io.id_problem(sent_id, "sent_id")
            record_id = f"ref_{sent_id}" if problem is None else source
            if not isinstance(sentence, dict):
                problem = (dead_letter.BAD_TYPE, f"sentence must be an object, got {dead_letter.describe_value(sentence)}")
            problem = problem or _io.text_problem(sentence.get("sent"), "sent") or box_problem
            if problem is None and ref["image_id"] in rejected:
                problem = (dead_letter.IMAGE_REJECTED, f"its image entry was rejected: {rejected[ref['image_id']]}")
            if problem is not None:
                yield _io.letter(record_id, problem, source)
                continue
            x, y, width, height = (float(value) for value in bbox)
            yield TextItem(example_id=record_id, image_ids=(name,), text=sentence["sent"], split=split,
                           target_box=(x, y, x + width, y + height), image_size=size, source=source)
