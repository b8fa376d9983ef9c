"""The canonical ``tf.train.Example`` record of uniter-tf (docs/architecture.md, docs/data.md).

One record per text item (caption, question, hypothesis, referring expression, NLVR2 statement) with its
image's region features repeated in it; region-feature extraction writes the same record without the text
fields (one per image). A two-image item (NLVR2: one statement about a left and a right image) is one
record too: the left image in the one-image fields, the right image in the ``*_2`` fields
(:data:`SECOND_IMAGE_FEATURE_KEYS`). This module owns the feature names, the builder (:func:`make_example`), the parse spec
(:func:`feature_spec`) and the ``tf.data`` decoder (:func:`parse_and_decode`).

Storage choices (measured in docs/data.md): region features and soft labels are float16 little-endian
bytes (``[n, D]`` / ``[n, C]`` row-major), positions and boxes are float lists.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from uniter_tf.data import boxes as boxes_lib

# Feature names (the contract of docs/architecture.md).
EXAMPLE_ID = "example_id"
IMAGE_ID = "image_id"
TEXT = "text"
TOKEN_IDS = "token_ids"
NUM_REGIONS = "num_regions"
FEATURE_DIM = "feature_dim"
REGION_FEATURES = "region_features"
REGION_POSITIONS = "region_positions"
REGION_BOXES = "region_boxes"
IMAGE_HEIGHT = "image_height"
IMAGE_WIDTH = "image_width"
NUM_SOFT_LABELS = "num_soft_labels"
SOFT_LABELS = "soft_labels"
ANSWERS = "answers"
ANSWER_LABELS = "answer_labels"
ANSWER_SCORES = "answer_scores"
LABEL = "label"
TARGET_BOX = "target_box"
TASK = "task"
# The second image of a two-image record (NLVR2: the right image, ``{pair}-img1``). The first image stays in
# the one-image fields above, so one-image consumers read a pair record's left image unchanged; the second
# image shares ``feature_dim`` and has no soft labels (no fine-tuning task reads them).
IMAGE_ID_2 = "image_id_2"
IMAGE_HEIGHT_2 = "image_height_2"
IMAGE_WIDTH_2 = "image_width_2"
NUM_REGIONS_2 = "num_regions_2"
REGION_FEATURES_2 = "region_features_2"
REGION_POSITIONS_2 = "region_positions_2"
REGION_BOXES_2 = "region_boxes_2"

#: The values of ``task``: which task family a text record belongs to. Every reader and writer of text
#: records sets it, so consumers (the evaluator, the fine-tuning inputs) read what a record is for
#: instead of guessing from which optional fields happen to be present. ``caption`` covers every
#: image-text pair used as a caption (COCO, Flickr30k, CC, SBU and the Visual Genome region phrases, as
#: in the official pretraining).
TASK_CAPTION = "caption"
TASK_VQA = "vqa"
TASK_SNLI_VE = "snli_ve"
TASK_NLVR2 = "nlvr2"
TASK_REFCOCO = "refcoco"
TASK_VCR = "vcr"
TASKS = (TASK_CAPTION, TASK_VQA, TASK_SNLI_VE, TASK_NLVR2, TASK_REFCOCO, TASK_VCR)

#: The per-image fields (what region-feature extraction writes; repeated in every text record).
IMAGE_FEATURE_KEYS = (
        IMAGE_ID, IMAGE_HEIGHT, IMAGE_WIDTH, NUM_REGIONS, FEATURE_DIM, REGION_FEATURES, REGION_POSITIONS,
        REGION_BOXES, NUM_SOFT_LABELS, SOFT_LABELS,
)
#: The per-text-item fields.
TEXT_FEATURE_KEYS = (
        EXAMPLE_ID, TEXT, TOKEN_IDS, ANSWERS, ANSWER_LABELS, ANSWER_SCORES, LABEL, TARGET_BOX, TASK,
)
#: The second image's fields of a two-image record, and the one-image field each one mirrors.
SECOND_IMAGE_FEATURE_KEYS = {
        IMAGE_ID_2: IMAGE_ID, IMAGE_HEIGHT_2: IMAGE_HEIGHT, IMAGE_WIDTH_2: IMAGE_WIDTH, NUM_REGIONS_2: NUM_REGIONS,
        REGION_FEATURES_2: REGION_FEATURES, REGION_POSITIONS_2: REGION_POSITIONS, REGION_BOXES_2: REGION_BOXES,
}
ALL_FEATURE_KEYS = IMAGE_FEATURE_KEYS + TEXT_FEATURE_KEYS + tuple(SECOND_IMAGE_FEATURE_KEYS)
#: Fields every record must carry.
_REQUIRED_KEYS = (IMAGE_ID, IMAGE_HEIGHT, IMAGE_WIDTH, NUM_REGIONS, FEATURE_DIM, REGION_FEATURES)

#: ``label`` when a record has none (NLVR2 / SNLI-VE / ITM labels are >= 0).
NO_LABEL = -1
#: Largest finite float16; region features beyond it cannot be stored.
FLOAT16_MAX = float(np.finfo(np.float16).max)
FLOAT16_BYTES = 2

StrOrBytes = Union[str, bytes]


def _to_bytes(value: StrOrBytes, field: str, record: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_):
        return bytes(value)
    raise TypeError(f"{field} of record {record!r} must be str or bytes, got {type(value).__name__}")


def _task_bytes(task: StrOrBytes, record: str) -> bytes:
    value = _to_bytes(task, TASK, record)
    if value.decode("utf-8", "replace") not in TASKS:
        raise ValueError(f"{TASK} of record {record!r} must be one of {TASKS}, got {value!r}")
    return value


def _float16_bytes(array: np.ndarray, field: str, record: str) -> bytes:
    if array.size and not np.all(np.isfinite(array)):
        raise ValueError(f"{field} of record {record!r} contains NaN or inf")
    if array.size and float(np.max(np.abs(array))) > FLOAT16_MAX:
        raise ValueError(
                f"{field} of record {record!r} has values beyond the float16 range (|x| > {FLOAT16_MAX:g})")
    return np.ascontiguousarray(array, dtype="<f2").tobytes()


def _matrix(values, columns: Optional[int], field: str, record: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 2 or (columns is not None and array.shape[1] != columns):
        expected = f"[n, {columns}]" if columns is not None else "[n, D]"
        raise ValueError(f"{field} of record {record!r} must have shape {expected}, got {list(array.shape)}")
    return array


def make_example(
        *,
        image_id: StrOrBytes,
        region_features,
        region_boxes,
        image_height: int,
        image_width: int,
        region_positions=None,
        soft_labels=None,
        example_id: Optional[StrOrBytes] = None,
        text: Optional[StrOrBytes] = None,
        token_ids: Optional[Sequence[int]] = None,
        answers: Optional[Sequence[StrOrBytes]] = None,
        answer_labels: Optional[Sequence[int]] = None,
        answer_scores: Optional[Sequence[float]] = None,
        label: Optional[int] = None,
        target_box: Optional[Sequence[float]] = None,
        task: Optional[str] = None,
        second_image: Optional[Mapping[str, Any]] = None,
):
    """Builds a canonical ``tf.train.Example`` from numpy arrays.

    Leave the text arguments out to build a per-image record (what extraction writes).

    Args:
        image_id: the image id (the join key).
        region_features: ``[n, D]`` region features; stored as float16 little-endian bytes.
        region_boxes: ``[n, 4]`` pixel ``x1, y1, x2, y2``.
        image_height: image height in pixels.
        image_width: image width in pixels.
        region_positions: ``[n, 7]`` position features; computed from ``region_boxes`` when omitted.
        soft_labels: ``[n, C]`` per-region class distributions (float16 bytes); ``C = 0`` when omitted.
        example_id: unique id of the text item.
        text: raw text (UTF-8).
        token_ids: WordPiece ids without ``[CLS]``/``[SEP]``.
        answers: VQA answer strings.
        answer_labels: VQA answer-vocabulary indices, parallel to ``answer_scores``.
        answer_scores: VQA soft scores.
        label: NLVR2 / SNLI-VE / ITM class (>= 0).
        target_box: RefCOCO target ``[x1, y1, x2, y2]`` in pixels.
        task: the record's task family, one of :data:`TASKS`; every text record should carry it (records
            written before the field existed have none, see
            :func:`uniter_tf.evaluation.records.record_task`).
        second_image: the second image of a two-image record (NLVR2's right image): a mapping with
            ``image_id``, ``region_features`` (same ``D``), ``region_boxes``, ``image_height``,
            ``image_width`` and optionally ``region_positions`` (as :func:`image_fields` gives); stored in
            the ``*_2`` fields (:data:`SECOND_IMAGE_FEATURE_KEYS`).

    Returns:
        The ``tf.train.Example``.

    Raises:
        ValueError: a field has the wrong shape, non-finite values or inconsistent sizes; the message
            names the field and the record.
    """
    import tensorflow as tf

    record = example_id if example_id is not None else image_id
    record = record.decode("utf-8", "replace") if isinstance(record, bytes) else str(record)
    image_height, image_width = int(image_height), int(image_width)
    if image_height <= 0 or image_width <= 0:
        raise ValueError(
                f"image size of record {record!r} must be positive, got {image_height}x{image_width}")

    features_array = _matrix(region_features, None, REGION_FEATURES, record)
    num_regions, feature_dim = features_array.shape
    if feature_dim < 1:
        raise ValueError(f"{REGION_FEATURES} of record {record!r} has feature dim 0")
    boxes_array = _matrix(region_boxes, 4, REGION_BOXES, record) if num_regions else np.zeros((0, 4), np.float32)
    if boxes_array.shape[0] != num_regions:
        raise ValueError(f"{REGION_BOXES} of record {record!r} has {boxes_array.shape[0]} rows, "
                         f"{REGION_FEATURES} has {num_regions}")
    if not np.all(np.isfinite(boxes_array)):
        raise ValueError(f"{REGION_BOXES} of record {record!r} contains NaN or inf")
    if region_positions is None:
        positions_array = boxes_lib.position_features(boxes_array, image_height, image_width)
    else:
        positions_array = (_matrix(region_positions, boxes_lib.POSITION_DIM, REGION_POSITIONS, record)
                           if num_regions else np.zeros((0, boxes_lib.POSITION_DIM), np.float32))
        if positions_array.shape[0] != num_regions:
            raise ValueError(f"{REGION_POSITIONS} of record {record!r} has {positions_array.shape[0]} rows, "
                             f"{REGION_FEATURES} has {num_regions}")
        if not np.all(np.isfinite(positions_array)):
            raise ValueError(f"{REGION_POSITIONS} of record {record!r} contains NaN or inf")
    if soft_labels is None:
        soft_array = np.zeros((num_regions, 0), np.float32)
    else:
        soft_array = _matrix(soft_labels, None, SOFT_LABELS, record)
        if soft_array.shape[0] != num_regions:
            raise ValueError(f"{SOFT_LABELS} of record {record!r} has {soft_array.shape[0]} rows, "
                             f"{REGION_FEATURES} has {num_regions}")

    def int64_feature(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    def float_feature(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values, np.float32).reshape(-1)))

    def bytes_feature(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

    feature = {
            IMAGE_ID: bytes_feature([_to_bytes(image_id, IMAGE_ID, record)]),
            IMAGE_HEIGHT: int64_feature([image_height]),
            IMAGE_WIDTH: int64_feature([image_width]),
            NUM_REGIONS: int64_feature([num_regions]),
            FEATURE_DIM: int64_feature([feature_dim]),
            REGION_FEATURES: bytes_feature([_float16_bytes(features_array, REGION_FEATURES, record)]),
            REGION_POSITIONS: float_feature(positions_array),
            REGION_BOXES: float_feature(boxes_array),
            NUM_SOFT_LABELS: int64_feature([soft_array.shape[1]]),
            SOFT_LABELS: bytes_feature([_float16_bytes(soft_array, SOFT_LABELS, record)]),
    }
    if example_id is not None:
        feature[EXAMPLE_ID] = bytes_feature([_to_bytes(example_id, EXAMPLE_ID, record)])
    if text is not None:
        feature[TEXT] = bytes_feature([_to_bytes(text, TEXT, record)])
    if token_ids is not None:
        ids = np.asarray(token_ids).reshape(-1)
        if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0):
            raise ValueError(f"{TOKEN_IDS} of record {record!r} must be non-negative integers")
        feature[TOKEN_IDS] = int64_feature(ids)
    if answers is not None:
        feature[ANSWERS] = bytes_feature([_to_bytes(answer, ANSWERS, record) for answer in answers])
    if (answer_labels is None) != (answer_scores is None):
        raise ValueError(f"record {record!r}: {ANSWER_LABELS} and {ANSWER_SCORES} must be given together")
    if answer_labels is not None:
        labels = np.asarray(answer_labels).reshape(-1)
        scores = np.asarray(answer_scores, dtype=np.float32).reshape(-1)
        if labels.shape != scores.shape:
            raise ValueError(f"record {record!r}: {len(labels)} {ANSWER_LABELS} but {len(scores)} {ANSWER_SCORES}")
        if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
            raise ValueError(f"{ANSWER_LABELS} of record {record!r} must be non-negative integers")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"{ANSWER_SCORES} of record {record!r} contains NaN or inf")
        feature[ANSWER_LABELS] = int64_feature(labels)
        feature[ANSWER_SCORES] = float_feature(scores)
    if label is not None:
        if int(label) < 0:
            raise ValueError(f"{LABEL} of record {record!r} must be >= 0, got {label}")
        feature[LABEL] = int64_feature([label])
    if target_box is not None:
        box = np.asarray(target_box, dtype=np.float32).reshape(-1)
        if box.shape != (4,) or not np.all(np.isfinite(box)):
            raise ValueError(f"{TARGET_BOX} of record {record!r} must be 4 finite numbers, got {box.tolist()}")
        feature[TARGET_BOX] = float_feature(box)
    if task is not None:
        feature[TASK] = bytes_feature([_task_bytes(task, record)])
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    if second_image is not None:
        unknown = sorted(set(second_image) - {"image_id", "region_features", "region_boxes", "region_positions",
                                              "image_height", "image_width", "soft_labels"})
        if unknown:
            raise ValueError(f"second_image of record {record!r} has unknown fields {unknown}")
        # Built (and so checked) as a one-image record, then stored under the second image's names.
        image_example = make_example(**{key: value for key, value in second_image.items() if key != "soft_labels"},
                                     example_id=f"{record} (second image)")
        example = merge_second_image_features(example, image_example)
    return example


def merge_image_features(text_example, image_example):
    """Returns a copy of ``text_example`` with the image fields of ``image_example`` (the denormalising join).

    Args:
        text_example: a ``tf.train.Example`` (or its serialized bytes) with the text fields.
        image_example: a per-image ``tf.train.Example`` (or its serialized bytes), e.g. from extraction.

    Returns:
        A new ``tf.train.Example``.

    Raises:
        ValueError: ``image_example`` lacks a required image field, or both records name different images.
    """
    import tensorflow as tf

    def as_example(value):
        if isinstance(value, (bytes, bytearray)):
            return tf.train.Example.FromString(bytes(value))
        return value

    text_example, image_example = as_example(text_example), as_example(image_example)
    image_map = image_example.features.feature
    for key in _REQUIRED_KEYS:
        if key not in image_map:
            raise ValueError(f"image record is missing the required field {key!r}")
    merged = tf.train.Example()
    merged.CopyFrom(text_example)
    merged_map = merged.features.feature
    if IMAGE_ID in merged_map and merged_map[IMAGE_ID].bytes_list.value != image_map[IMAGE_ID].bytes_list.value:
        raise ValueError(f"text record names image {merged_map[IMAGE_ID].bytes_list.value[:1]!r}, "
                         f"the image record is {image_map[IMAGE_ID].bytes_list.value[:1]!r}")
    for key in IMAGE_FEATURE_KEYS:
        if key in image_map:
            merged_map[key].CopyFrom(image_map[key])
    return merged

def merge_second_image_features(pair_example, image_example):
    """Returns a copy of ``pair_example`` with ``image_example``'s image stored as its second image.

    Args:
        pair_example: a ``tf.train.Example`` (or bytes) holding the text and the first image.
        image_example: a one-image ``tf.train.Example`` (or bytes), e.g. the right image of an NLVR2 pair.

    Returns:
        A new ``tf.train.Example`` with the ``*_2`` fields (:data:`SECOND_IMAGE_FEATURE_KEYS`).

    Raises:
        ValueError: ``image_example`` lacks a required image field, or its ``feature_dim`` differs from the
            first image's (both images go through one region embedding).
    """
    import tensorflow as tf

    def as_example(value):
        if isinstance(value, (bytes, bytearray)):
            return tf.train.Example.FromString(bytes(value))
        return value

    pair_example, image_example = as_example(pair_example), as_example(image_example)
    image_map = image_example.features.feature
    for key in _REQUIRED_KEYS:
        if key not in image_map:
            raise ValueError(f"second image record is missing the required field {key!r}")
    merged = tf.train.Example()
    merged.CopyFrom(pair_example)
    merged_map = merged.features.feature
    if FEATURE_DIM in merged_map and (merged_map[FEATURE_DIM].int64_list.value
                                      != image_map[FEATURE_DIM].int64_list.value):
        record = merged_map[EXAMPLE_ID].bytes_list.value[:1] if EXAMPLE_ID in merged_map else "?"
        raise ValueError(f"record {record!r}: the second image has feature_dim "
                         f"{list(image_map[FEATURE_DIM].int64_list.value)}, the first "
                         f"{list(merged_map[FEATURE_DIM].int64_list.value)}")
    for second_key, key in SECOND_IMAGE_FEATURE_KEYS.items():
        merged_map[second_key].CopyFrom(image_map[key])
    return merged


def feature_spec() -> Dict[str, Any]:
    """The parse spec for ``tf.io.parse_single_example`` / ``tf.io.parse_example``.

    The image fields in ``_REQUIRED_KEYS`` are required; every text field is optional (defaults: empty
    string, empty list, ``label = -1``), so per-image and per-text records share the spec. List fields are
    ``FixedLenSequenceFeature(allow_missing=True)``, which parse to dense tensors.
    """
    import tensorflow as tf

    def scalar(dtype, default=None):
        return tf.io.FixedLenFeature([], dtype, default_value=default)

    def sequence(dtype):
        return tf.io.FixedLenSequenceFeature([], dtype, allow_missing=True)

    return {
            EXAMPLE_ID: scalar(tf.string, b""),
            IMAGE_ID: scalar(tf.string),
            TEXT: scalar(tf.string, b""),
            TOKEN_IDS: sequence(tf.int64),
            NUM_REGIONS: scalar(tf.int64),
            FEATURE_DIM: scalar(tf.int64),
            REGION_FEATURES: scalar(tf.string),
            REGION_POSITIONS: sequence(tf.float32),
            REGION_BOXES: sequence(tf.float32),
            IMAGE_HEIGHT: scalar(tf.int64),
            IMAGE_WIDTH: scalar(tf.int64),
            NUM_SOFT_LABELS: scalar(tf.int64, 0),
            SOFT_LABELS: scalar(tf.string, b""),
            ANSWERS: sequence(tf.string),
            ANSWER_LABELS: sequence(tf.int64),
            ANSWER_SCORES: sequence(tf.float32),
            LABEL: scalar(tf.int64, NO_LABEL),
            TARGET_BOX: sequence(tf.float32),
            TASK: scalar(tf.string, b""),
            # The second image of a two-image record (absent from every one-image record).
            IMAGE_ID_2: scalar(tf.string, b""),
            IMAGE_HEIGHT_2: scalar(tf.int64, 0),
            IMAGE_WIDTH_2: scalar(tf.int64, 0),
            NUM_REGIONS_2: scalar(tf.int64, 0),
            REGION_FEATURES_2: scalar(tf.string, b""),
            REGION_POSITIONS_2: sequence(tf.float32),
            REGION_BOXES_2: sequence(tf.float32),
    }


def parse_and_decode(serialized, feature_dim: Optional[int] = None, num_soft_labels: Optional[int] = None,
                     second_image: bool = False):
    """Parses one serialized canonical record into dense tensors (use in ``tf.data.Dataset.map``).

    Args:
        serialized: scalar string tensor.
        feature_dim: if given, the expected ``D``; records with another ``feature_dim`` fail and the
            output gets the static shape ``[None, D]`` (Dense layers need it).
        num_soft_labels: if given, the expected ``C`` (same treatment).
        second_image: also decode the second image of a two-image record (NLVR2): ``image_id_2``,
            ``image_height_2``, ``image_width_2``, ``num_regions_2`` and ``region_features_2 [n2, D]``,
            ``region_positions_2 [n2, 7]``, ``region_boxes_2 [n2, 4]`` (``n2 = 0`` on a one-image record).

    Returns:
        A dict: ``example_id``, ``image_id``, ``text`` (string scalars); ``token_ids [T]`` int32;
        ``num_regions``, ``feature_dim``, ``num_soft_labels``, ``image_height``, ``image_width``, ``label``
        (int32 scalars); ``region_features [n, D]``, ``region_positions [n, 7]``, ``region_boxes [n, 4]``,
        ``soft_labels [n, C]`` (float32); ``answers [k]`` string, ``answer_labels [k]`` int32,
        ``answer_scores [k]`` float32; ``target_box`` float32 ``[4]`` (``[0]`` when absent); ``task``
        (string scalar, ``b""`` when the record has none).

    Raises:
        tf.errors.InvalidArgumentError at run time: a blob or list does not match ``num_regions``,
            ``feature_dim`` or ``num_soft_labels``; the message names the field and the record's ids.
    """
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, feature_spec())
    record_ids = [parsed[EXAMPLE_ID], parsed[IMAGE_ID]]
    num_regions = tf.cast(parsed[NUM_REGIONS], tf.int32)
    dim = tf.cast(parsed[FEATURE_DIM], tf.int32)
    num_classes = tf.cast(parsed[NUM_SOFT_LABELS], tf.int32)
    checks = [
            tf.debugging.Assert(num_regions >= 0, ["num_regions < 0 in record (example_id, image_id):"]
                                + record_ids),
    ]

    def check_size(values, expected, field, bytes_per_value=None):
        # A blob's size is its byte length over the bytes per value; a list's size is its length.
        if bytes_per_value is None:
            size, remainder = tf.size(values), 0
        else:
            byte_length = tf.strings.length(values)
            size, remainder = byte_length // bytes_per_value, byte_length % bytes_per_value
        checks.append(tf.debugging.Assert(
                tf.logical_and(tf.equal(size, expected), tf.equal(remainder, 0)),
                [f"{field} has", size, "values (+", remainder, "stray bytes), expected", expected,
                 "(from num_regions/feature_dim/num_soft_labels) in record (example_id, image_id):"] + record_ids,
                summarize=4))

    def check_expected(actual, expected, field):
        if expected is not None:
            checks.append(tf.debugging.Assert(
                    tf.equal(actual, expected),
                    [f"{field} is", actual, f"but {expected} was expected in record (example_id, image_id):"]
                    + record_ids))

    check_expected(dim, feature_dim, FEATURE_DIM)
    check_expected(num_classes, num_soft_labels, NUM_SOFT_LABELS)
    # Blob sizes are checked in bytes before decode_raw, which would fail on odd lengths without naming the record.
    check_size(parsed[REGION_FEATURES], num_regions * dim, REGION_FEATURES, FLOAT16_BYTES)
    check_size(parsed[REGION_POSITIONS], num_regions * boxes_lib.POSITION_DIM, REGION_POSITIONS)
    check_size(parsed[REGION_BOXES], num_regions * 4, REGION_BOXES)
    check_size(parsed[SOFT_LABELS], num_regions * num_classes, SOFT_LABELS, FLOAT16_BYTES)
    num_regions_2 = tf.cast(parsed[NUM_REGIONS_2], tf.int32)
    if second_image:
        checks.append(tf.debugging.Assert(num_regions_2 >= 0, [f"{NUM_REGIONS_2} < 0 in record (example_id, "
                                                               "image_id):"] + record_ids))
        check_size(parsed[REGION_FEATURES_2], num_regions_2 * dim, REGION_FEATURES_2, FLOAT16_BYTES)
        check_size(parsed[REGION_POSITIONS_2], num_regions_2 * boxes_lib.POSITION_DIM, REGION_POSITIONS_2)
        check_size(parsed[REGION_BOXES_2], num_regions_2 * 4, REGION_BOXES_2)
    checks.append(tf.debugging.Assert(
            tf.equal(tf.size(parsed[ANSWER_LABELS]), tf.size(parsed[ANSWER_SCORES])),
            ["answer_labels and answer_scores differ in length in record (example_id, image_id):"] + record_ids))
    target_size = tf.size(parsed[TARGET_BOX])
    checks.append(tf.debugging.Assert(
            tf.logical_or(tf.equal(target_size, 0), tf.equal(target_size, 4)),
            ["target_box must have 0 or 4 values in record (example_id, image_id):"] + record_ids))

    with tf.control_dependencies(checks):
        features_flat = tf.io.decode_raw(parsed[REGION_FEATURES], tf.float16, little_endian=True)
        soft_flat = tf.io.decode_raw(parsed[SOFT_LABELS], tf.float16, little_endian=True)
        region_features = tf.reshape(tf.cast(features_flat, tf.float32), tf.stack([num_regions, dim]))
        region_positions = tf.reshape(parsed[REGION_POSITIONS], [num_regions, boxes_lib.POSITION_DIM])
        region_boxes = tf.reshape(parsed[REGION_BOXES], [num_regions, 4])
        soft_labels = tf.reshape(tf.cast(soft_flat, tf.float32), tf.stack([num_regions, num_classes]))
        second = {}
        if second_image:
            features_flat_2 = tf.io.decode_raw(parsed[REGION_FEATURES_2], tf.float16, little_endian=True)
            second = {
                    IMAGE_ID_2: parsed[IMAGE_ID_2],
                    IMAGE_HEIGHT_2: tf.cast(parsed[IMAGE_HEIGHT_2], tf.int32),
                    IMAGE_WIDTH_2: tf.cast(parsed[IMAGE_WIDTH_2], tf.int32),
                    NUM_REGIONS_2: num_regions_2,
                    REGION_FEATURES_2: tf.reshape(tf.cast(features_flat_2, tf.float32), tf.stack([num_regions_2, dim])),
                    REGION_POSITIONS_2: tf.reshape(parsed[REGION_POSITIONS_2], [num_regions_2, boxes_lib.POSITION_DIM]),
                    REGION_BOXES_2: tf.reshape(parsed[REGION_BOXES_2], [num_regions_2, 4]),
            }
    if feature_dim is not None:
        region_features = tf.ensure_shape(region_features, [None, feature_dim])
    if num_soft_labels is not None:
        soft_labels = tf.ensure_shape(soft_labels, [None, num_soft_labels])
    if second and feature_dim is not None:
        second[REGION_FEATURES_2] = tf.ensure_shape(second[REGION_FEATURES_2], [None, feature_dim])
    return {
            **second,
            EXAMPLE_ID: parsed[EXAMPLE_ID],
            IMAGE_ID: parsed[IMAGE_ID],
            TEXT: parsed[TEXT],
            TOKEN_IDS: tf.cast(parsed[TOKEN_IDS], tf.int32),
            NUM_REGIONS: num_regions,
            FEATURE_DIM: dim,
            REGION_FEATURES: region_features,
            REGION_POSITIONS: region_positions,
            REGION_BOXES: region_boxes,
            IMAGE_HEIGHT: tf.cast(parsed[IMAGE_HEIGHT], tf.int32),
            IMAGE_WIDTH: tf.cast(parsed[IMAGE_WIDTH], tf.int32),
            NUM_SOFT_LABELS: num_classes,
            SOFT_LABELS: soft_labels,
            ANSWERS: parsed[ANSWERS],
            ANSWER_LABELS: tf.cast(parsed[ANSWER_LABELS], tf.int32),
            ANSWER_SCORES: parsed[ANSWER_SCORES],
            LABEL: tf.cast(parsed[LABEL], tf.int32),
            TARGET_BOX: parsed[TARGET_BOX],
            TASK: parsed[TASK],
    }


def decode_example(example) -> Dict[str, Any]:
    """Decodes one record to numpy in plain Python (for importers, tools and tests; no graph).

    Args:
        example: a ``tf.train.Example`` or its serialized bytes.

    Returns:
        The same keys and shapes as :func:`parse_and_decode`, as numpy arrays / Python values; text
        fields a record lacks are absent.

    Raises:
        ValueError: a required field is missing or a blob does not match its declared size; the message
            names the field and the record.
    """
    import tensorflow as tf

    if isinstance(example, (bytes, bytearray)):
        example = tf.train.Example.FromString(bytes(example))
    feature_map = example.features.feature

    def scalar_int(key, default=None):
        if key not in feature_map or not feature_map[key].int64_list.value:
            if default is None:
                raise ValueError(f"record {record!r} is missing the required field {key!r}")
            return default
        return int(feature_map[key].int64_list.value[0])

    def scalar_bytes(key, default=None):
        if key not in feature_map or not feature_map[key].bytes_list.value:
            if default is None:
                raise ValueError(f"record {record!r} is missing the required field {key!r}")
            return default
        return feature_map[key].bytes_list.value[0]

    record = "?"
    if EXAMPLE_ID in feature_map and feature_map[EXAMPLE_ID].bytes_list.value:
        record = feature_map[EXAMPLE_ID].bytes_list.value[0].decode("utf-8", "replace")
    elif IMAGE_ID in feature_map and feature_map[IMAGE_ID].bytes_list.value:
        record = feature_map[IMAGE_ID].bytes_list.value[0].decode("utf-8", "replace")

    num_regions = scalar_int(NUM_REGIONS)
    dim = scalar_int(FEATURE_DIM)
    num_classes = scalar_int(NUM_SOFT_LABELS, 0)

    def blob(key, columns, required):
        raw = scalar_bytes(key, None if required else b"")
        values = np.frombuffer(raw, dtype="<f2")
        if values.size != num_regions * columns:
            raise ValueError(f"{key} of record {record!r} has {values.size} values, expected "
                             f"{num_regions} x {columns}")
        return values.astype(np.float32).reshape(num_regions, columns)

    def float_matrix(key, columns):
        values = np.asarray(feature_map[key].float_list.value if key in feature_map else [], np.float32)
        if values.size != num_regions * columns:
            raise ValueError(f"{key} of record {record!r} has {values.size} values, expected "
                             f"{num_regions} x {columns}")
        return values.reshape(num_regions, columns)

    decoded = {
            IMAGE_ID: scalar_bytes(IMAGE_ID),
            IMAGE_HEIGHT: scalar_int(IMAGE_HEIGHT),
            IMAGE_WIDTH: scalar_int(IMAGE_WIDTH),
            NUM_REGIONS: num_regions,
            FEATURE_DIM: dim,
            NUM_SOFT_LABELS: num_classes,
            REGION_FEATURES: blob(REGION_FEATURES, dim, required=True),
            REGION_POSITIONS: float_matrix(REGION_POSITIONS, boxes_lib.POSITION_DIM),
            REGION_BOXES: float_matrix(REGION_BOXES, 4),
            SOFT_LABELS: blob(SOFT_LABELS, num_classes, required=False),
    }
    for key in (EXAMPLE_ID, TEXT):
        if key in feature_map:
            decoded[key] = scalar_bytes(key)
    if TASK in feature_map:
        task = scalar_bytes(TASK, b"")
        if task.decode("utf-8", "replace") not in TASKS:
            raise ValueError(f"{TASK} of record {record!r} must be one of {TASKS}, got {task!r}")
        decoded[TASK] = task
    if TOKEN_IDS in feature_map:
        decoded[TOKEN_IDS] = np.asarray(feature_map[TOKEN_IDS].int64_list.value, np.int64)
    if ANSWERS in feature_map:
        decoded[ANSWERS] = list(feature_map[ANSWERS].bytes_list.value)
    if ANSWER_LABELS in feature_map:
        decoded[ANSWER_LABELS] = np.asarray(feature_map[ANSWER_LABELS].int64_list.value, np.int64)
        decoded[ANSWER_SCORES] = np.asarray(
                feature_map[ANSWER_SCORES].float_list.value if ANSWER_SCORES in feature_map else [], np.float32)
    if LABEL in feature_map:
        decoded[LABEL] = scalar_int(LABEL)
    if TARGET_BOX in feature_map:
        decoded[TARGET_BOX] = np.asarray(feature_map[TARGET_BOX].float_list.value, np.float32)
    if IMAGE_ID_2 in feature_map:
        num_regions_2 = scalar_int(NUM_REGIONS_2)
        features_2 = np.frombuffer(scalar_bytes(REGION_FEATURES_2), dtype="<f2")
        if features_2.size != num_regions_2 * dim:
            raise ValueError(f"{REGION_FEATURES_2} of record {record!r} has {features_2.size} values, expected "
                             f"{num_regions_2} x {dim}")
        decoded.update({IMAGE_ID_2: scalar_bytes(IMAGE_ID_2), IMAGE_HEIGHT_2: scalar_int(IMAGE_HEIGHT_2),
                        IMAGE_WIDTH_2: scalar_int(IMAGE_WIDTH_2), NUM_REGIONS_2: num_regions_2,
                        REGION_FEATURES_2: features_2.astype(np.float32).reshape(num_regions_2, dim)})
        for key, columns in ((REGION_POSITIONS_2, boxes_lib.POSITION_DIM), (REGION_BOXES_2, 4)):
            values = np.asarray(feature_map[key].float_list.value if key in feature_map else [], np.float32)
            if values.size != num_regions_2 * columns:
                raise ValueError(f"{key} of record {record!r} has {values.size} values, expected "
                                 f"{num_regions_2} x {columns}")
            decoded[key] = values.reshape(num_regions_2, columns)
    return decoded


def image_fields(decoded: Mapping[str, Any]) -> Dict[str, Any]:
    """The :func:`make_example` keyword arguments for the image part of a :func:`decode_example` result."""
    return {
            "image_id": decoded[IMAGE_ID],
            "region_features": decoded[REGION_FEATURES],
            "region_boxes": decoded[REGION_BOXES],
            "region_positions": decoded[REGION_POSITIONS],
            "image_height": decoded[IMAGE_HEIGHT],
            "image_width": decoded[IMAGE_WIDTH],
            "soft_labels": decoded[SOFT_LABELS] if decoded[NUM_SOFT_LABELS] else None,
    }


__all__ = [
        "EXAMPLE_ID", "IMAGE_ID", "TEXT", "TOKEN_IDS", "NUM_REGIONS", "FEATURE_DIM", "REGION_FEATURES",
        "REGION_POSITIONS", "REGION_BOXES", "IMAGE_HEIGHT", "IMAGE_WIDTH", "NUM_SOFT_LABELS", "SOFT_LABELS",
        "ANSWERS", "ANSWER_LABELS", "ANSWER_SCORES", "LABEL", "TARGET_BOX", "TASK", "TASKS", "TASK_CAPTION",
        "TASK_VQA", "TASK_SNLI_VE", "TASK_NLVR2", "TASK_REFCOCO", "TASK_VCR", "IMAGE_FEATURE_KEYS",
        "TEXT_FEATURE_KEYS", "ALL_FEATURE_KEYS", "NO_LABEL", "FLOAT16_MAX", "make_example",
        "merge_image_features", "merge_second_image_features", "IMAGE_ID_2", "IMAGE_HEIGHT_2", "IMAGE_WIDTH_2",
        "NUM_REGIONS_2", "REGION_FEATURES_2", "REGION_POSITIONS_2", "REGION_BOXES_2", "SECOND_IMAGE_FEATURE_KEYS",
        "feature_spec", "parse_and_decode", "decode_example", "image_fields",
]
