"""The evaluation split: caption records (ITM, retrieval) and VQA question records, split by task.

Every canonical record (:mod:`uniter_tf.data.schema`) is kept as two small serialized halves: its text
part (the text fields) and, once per image, the image part (the image fields). A record to score is the
concatenation ``text part + image part``: protobuf merges two serialized messages into one, so this is
exactly :func:`uniter_tf.data.schema.merge_image_features` without building message objects, and a
caption can be paired with any gallery image at the cost of one ``bytes`` concatenation. Region
features (the bulk of a record) are therefore held once per image, never once per text or per pair.

A record's task decides what it is evaluated for (:func:`record_task`: the record's ``task`` field),
never whether it happens to have in-vocabulary answer labels: a VQA question whose human answers are
all outside the answer vocabulary has an empty label list and still is a question (it scores 0, spec
§5.1), and a caption that carries a ``label`` is still a caption.
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Sequence, Tuple, Union

import numpy as np

from uniter_tf.data import schema

#: The tasks :func:`record_task` tells apart.
CAPTION = "caption"
VQA = "vqa"
#: Records of other tasks (NLVR2 / SNLI-VE labels, RefCOCO boxes): not evaluated here, only counted.
OTHER = "other"
#: A record's ``task`` field → what it is evaluated as (the tasks not listed are :data:`OTHER`).
_EVALUATED_TASKS = {schema.TASK_CAPTION.encode(): CAPTION, schema.TASK_VQA.encode(): VQA}

#: Fields only VQA question records carry; the VQA reader writes them for every annotated question,
#: with empty label / score lists when no human answer is in the vocabulary.
_VQA_FIELDS = (schema.ANSWERS, schema.ANSWER_LABELS, schema.ANSWER_SCORES)
#: The VQA reader's example-id prefix (``vqa_{question_id}``): marks unannotated (test-split) questions.
VQA_ID_PREFIX = b"vqa_"
_OTHER_TASK_FIELDS = (schema.LABEL, schema.TARGET_BOX)
_IMAGE_KEYS = frozenset(schema.IMAGE_FEATURE_KEYS)

FilePatterns = Union[str, Sequence[str]]


def record_task(example) -> str:
    """The task of a canonical record with text: :data:`VQA`, :data:`CAPTION` or :data:`OTHER`.

    A record with a ``task`` field (:data:`uniter_tf.data.schema.TASK`, written by every reader and
    record writer) is what that field says: ``caption`` → :data:`CAPTION`, ``vqa`` → :data:`VQA`, any
    other task → :data:`OTHER`, whatever optional fields it carries.

    Records written before the field existed have none; their task is inferred as before, from the
    fields only that task's reader writes: the VQA answer fields (present, possibly empty, in every
    annotated question) or the VQA reader's ``vqa_`` example id (unannotated questions); a class
    ``label`` or a ``target_box`` (NLVR2, SNLI-VE, RefCOCO; also Visual Genome region phrases, which
    old records cannot tell from RefCOCO); otherwise the record is a caption.

    Args:
        example: a ``tf.train.Example``.

    Raises:
        ValueError: the ``task`` field holds a value outside :data:`uniter_tf.data.schema.TASKS`.
    """
    feature_map = example.features.feature
    tasks = feature_map[schema.TASK].bytes_list.value if schema.TASK in feature_map else ()
    if tasks:
        task = tasks[0]
        if task.decode("utf-8", "replace") not in schema.TASKS:
            raise ValueError(f"record {_record_name(example)!r}: {schema.TASK} must be one of {schema.TASKS}, "
                             f"got {task!r}")
        return _EVALUATED_TASKS.get(task, OTHER)
    return _inferred_task(feature_map)


def _record_name(example) -> str:
    feature_map = example.features.feature
    for key in (schema.EXAMPLE_ID, schema.IMAGE_ID):
        values = feature_map[key].bytes_list.value if key in feature_map else ()
        if values:
            return values[0].decode("utf-8", "replace")
    return "?"


def _inferred_task(feature_map) -> str:
    """:func:`record_task` of a record without a ``task`` field (written before it existed)."""
    if any(key in feature_map for key in _VQA_FIELDS):
        return VQA
    ids = feature_map[schema.EXAMPLE_ID].bytes_list.value if schema.EXAMPLE_ID in feature_map else ()
    if ids and ids[0].startswith(VQA_ID_PREFIX):
        return VQA
    if any(key in feature_map for key in _OTHER_TASK_FIELDS):
        return OTHER
    return CAPTION


def has_text(example) -> bool:
    """Whether a record carries a text item (token ids or raw text); extraction's per-image records do not."""
    feature_map = example.features.feature
    return bool((schema.TOKEN_IDS in feature_map and feature_map[schema.TOKEN_IDS].int64_list.value)
                or (schema.TEXT in feature_map and feature_map[schema.TEXT].bytes_list.value))


def is_annotated_question(example) -> bool:
    """Whether a question record carries its ground truth (the VQA answer fields, possibly empty)."""
    feature_map = example.features.feature
    return schema.ANSWERS in feature_map or schema.ANSWER_LABELS in feature_map


def split_parts(example):
    """``(text part, image part)`` of a record: two ``tf.train.Example`` with the text / image fields."""
    import tensorflow as tf

    text_part, image_part = tf.train.Example(), tf.train.Example()
    for key, feature in example.features.feature.items():
        target = image_part if key in _IMAGE_KEYS else text_part
        target.features.feature[key].CopyFrom(feature)
    return text_part, image_part


def image_id(example) -> bytes:
    """The image id of a canonical record (a ``tf.train.Example``)."""
    return example.features.feature[schema.IMAGE_ID].bytes_list.value[0]


def question_fields(example) -> Tuple[str, np.ndarray, np.ndarray]:
    """``(question text, answer labels, soft scores)`` of a question record (a ``tf.train.Example``)."""
    feature_map = example.features.feature
    text = feature_map[schema.TEXT].bytes_list.value[0].decode("utf-8") if schema.TEXT in feature_map else ""
    labels = np.asarray(feature_map[schema.ANSWER_LABELS].int64_list.value, np.int64)
    scores = np.asarray(feature_map[schema.ANSWER_SCORES].float_list.value, np.float32)
    return text, labels, scores


def soft_score(example, answer: int) -> float:
    """The VQA credit of answer label ``answer`` for a question record (its soft score, 0 if not a label)."""
    from uniter_tf.evaluation import metrics

    _, labels, scores = question_fields(example)
    return metrics.vqa_soft_score(labels, scores, answer)


def with_image(text_example, image_example):
    """The text of ``text_example`` on the image of ``image_example`` (the image id changes too)."""
    combined = type(text_example)()
    combined.CopyFrom(text_example)
    del combined.features.feature[schema.IMAGE_ID]
    return schema.merge_image_features(combined, image_example)


def list_record_files(file_patterns: FilePatterns) -> List[str]:
    """Expands glob patterns (local or any ``tf.io.gfile`` filesystem) into a sorted file list.

    Raises:
        ValueError: a pattern matches nothing.
    """
    import tensorflow as tf

    patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
    if not patterns:
        raise ValueError("no record files given")
    files = set()
    for pattern in patterns:
        matched = [path for path in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(path)]
        if not matched:
            raise ValueError(f"no record files match {pattern!r}")
        files.update(matched)
    return sorted(files)


def iter_serialized_records(file_patterns: FilePatterns) -> Iterator[bytes]:
    """Streams the serialized records of TFRecord files (GZIP when the name ends in ``.gz``), in file order."""
    import tensorflow as tf

    for path in list_record_files(file_patterns):
        compression = "GZIP" if path.endswith(".gz") else ""
        for record in tf.data.TFRecordDataset(path, compression_type=compression):
            yield record.numpy()


class EvalRecords:
    """The eval split: caption and question text parts, and one image part per image.

    Args:
        serialized_records: the split's serialized canonical records (any iterable: it is read once).

    Attributes:
        captions: caption text parts (``tf.train.Example``; no image fields, so no region features), in
            input order.
        caption_image_ids: the image id of each caption.
        questions: annotated VQA question text parts (with empty label lists for out-of-vocabulary ones).
        question_image_ids: the image id of each question.
        num_unannotated_questions: VQA questions without answer fields (test splits): not scored.
        num_other_records: text records of tasks not evaluated here (NLVR2, SNLI-VE, RefCOCO).
        image_records: image id → the image part (``tf.train.Example``) of the first record of that image.

    Raises:
        ValueError: a record is malformed (named by its position and id) or the split has no text record.
    """

    def __init__(self, serialized_records: Iterable[bytes]):
        self.captions: List = []
        self.caption_image_ids: List[bytes] = []
        self.questions: List = []
        self.question_image_ids: List[bytes] = []
        self.num_unannotated_questions = 0
        self.num_other_records = 0
        self.image_records: Dict[bytes, object] = {}
        self._serialized_images: Dict[bytes, bytes] = {}
        for index, serialized in enumerate(serialized_records):
            self._add(index, serialized)
        if not self.captions and not self.questions:
            raise ValueError("the eval split holds no caption or question records")

    @classmethod
    def from_files(cls, file_patterns: FilePatterns) -> "EvalRecords":
        """Reads the records of TFRecord files one at a time (see :func:`iter_serialized_records`)."""
        return cls(iter_serialized_records(file_patterns))

    def _add(self, index: int, serialized: bytes) -> None:
        import tensorflow as tf

        try:
            example = tf.train.Example.FromString(serialized)
            schema.decode_example(example)  # validates every field; the error names the field
        except Exception as error:  # the decoder names the field; add the position in the split
            raise ValueError(f"eval record #{index} cannot be decoded: {error}") from error
        feature_map = example.features.feature
        if schema.IMAGE_ID not in feature_map:
            raise ValueError(f"eval record #{index} has no {schema.IMAGE_ID!r}")
        text_part, image_part = split_parts(example)
        key = image_id(example)
        if key not in self.image_records:
            self.image_records[key] = image_part
            self._serialized_images[key] = image_part.SerializeToString()
        if not has_text(example):
            return  # a per-image record (what extraction writes)
        task = record_task(example)
        if task == CAPTION:
            self.captions.append(text_part)
            self.caption_image_ids.append(key)
        elif task == VQA and is_annotated_question(example):
            self.questions.append(text_part)
            self.question_image_ids.append(key)
        elif task == VQA:
            self.num_unannotated_questions += 1
        else:
            self.num_other_records += 1

    def serialized_pair(self, text_part, target_image_id: bytes) -> bytes:
        """The serialized record of ``text_part`` on image ``target_image_id`` (see the module docstring)."""
        return text_part.SerializeToString() + self._serialized_images[target_image_id]

    def serialized_image(self, target_image_id: bytes) -> bytes:
        """The serialized image part of ``target_image_id``."""
        return self._serialized_images[target_image_id]


def read_questions(serialized_records: Iterable[bytes]) -> list:
    """The annotated VQA questions of a split (text parts), e.g. the training split for the baseline."""
    import tensorflow as tf

    questions = []
    for serialized in serialized_records:
        example = tf.train.Example.FromString(serialized)
        if has_text(example) and record_task(example) == VQA and is_annotated_question(example):
            questions.append(split_parts(example)[0])
    return questions


__all__ = ["CAPTION", "VQA", "OTHER", "EvalRecords", "record_task", "has_text", "is_annotated_question",
           "split_parts", "image_id", "question_fields", "soft_score", "with_image", "list_record_files",
           "iter_serialized_records", "read_questions", "VQA_ID_PREFIX"]
