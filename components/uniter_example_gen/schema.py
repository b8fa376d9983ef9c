"""The data contract of UniterExampleGen's output as a TFMD ``Schema`` (for ImportSchemaGen / ExampleValidator).

:func:`build_schema` encodes what TFDV can check from statistics:

* ``num_regions`` in ``[min_regions, max_regions]`` (the box-selection range), ``feature_dim`` == D;
* ``region_positions`` and ``region_boxes`` non-negative, positions at most 1;
* ``text`` present in every record and ``token_ids`` with 1..``max_text_tokens`` values (non-empty text);
* ids, sizes and blobs present exactly once; ``label`` >= 0 where present; VQA scores in ``[0, 1]``;
* no NaN or infinity in any float list (``region_positions``, ``region_boxes``, ``target_box``, scores);
* ``task`` (the record's task name, one string) allowed where present;
* with ``kind="vqa"``: ``answers`` present in every record (a question without answers is a broken
  record; answers outside the vocabulary still leave ``answer_labels`` / ``answer_scores`` empty);
* with ``kind="ve"`` / ``"nlvr2"``: ``label`` in every record, within the task's classes; NLVR2 also the
  right image's fields (``*_2``) in every record, with the same bounds as the left image's;
* with ``kind="refcoco"``: ``target_box`` (4 pixel values) in every record;
* with ``num_soft_labels``: ``num_soft_labels`` == C.

Finiteness of the float16 ``region_features`` / ``soft_labels`` bytes is not visible to TFDV; the ingest
Beam code rejects NaN/inf (and values beyond float16) into dead letters before writing.
``schema.pbtxt`` next to this file is ``build_schema()`` with the UNITER defaults (D=2048, 10-100 regions,
60 tokens).
"""

from __future__ import annotations

import os
from typing import Optional

from tensorflow_metadata.proto.v0 import schema_pb2

from uniter_tf.data import schema as record_schema

#: The checked-in default schema.
DEFAULT_SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.pbtxt")
#: The record's task name (a string feature of the canonical records; declared optional here so records
#: written before it existed validate too).
TASK_FEATURE = getattr(record_schema, "TASK", "task")
#: Example sets with their own contract.
KINDS = ("captions", "vqa", "ve", "nlvr2", "refcoco")
#: Classes of the labelled tasks: ``label`` must lie in ``[0, n)`` (SNLI-VE contradiction / entailment /
#: neutral, NLVR2 False / True).
LABEL_CLASSES = {"ve": 3, "nlvr2": 2}


def build_schema(feature_dim: int = 2048, min_regions: int = 10, max_regions: int = 100,
                 max_text_tokens: int = 60, kind: str = "captions",
                 num_soft_labels: Optional[int] = None) -> schema_pb2.Schema:
    """The schema of the canonical text records written by the ingest.

    Args:
        feature_dim: the dataset's region feature width D.
        min_regions: fewest regions an image may have (the box-selection ``min_boxes``; 1 with fixed boxes
            below it).
        max_regions: most regions.
        max_text_tokens: the ingest's ``max_text_tokens``.
        kind: ``captions`` (image-text pairs), ``vqa`` (questions, which must carry ``answers``), ``ve``
            (hypotheses with a 3-class ``label``), ``nlvr2`` (pair records with a 2-class ``label``) or
            ``refcoco`` (expressions with a ``target_box``).
        num_soft_labels: the detector's classes C (``num_soft_labels`` must equal it); None: any.

    Raises:
        ValueError: inconsistent bounds or an unknown ``kind``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 1 <= min_regions <= max_regions:
        raise ValueError(f"need 1 <= min_regions <= max_regions, got {min_regions}, {max_regions}")
    if feature_dim < 1 or max_text_tokens < 1:
        raise ValueError("feature_dim and max_text_tokens must be >= 1")
    schema = schema_pb2.Schema()

    def add(name, feature_type, required=True, min_count=1, max_count=1):
        feature = schema.feature.add(name=name, type=feature_type)
        if required:
            feature.presence.min_fraction = 1.0
            feature.presence.min_count = 1
        if min_count is not None:
            feature.value_count.min = min_count
        if max_count is not None:
            feature.value_count.max = max_count
        return feature

    bytes_type, int_type, float_type = schema_pb2.BYTES, schema_pb2.INT, schema_pb2.FLOAT
    for name in (record_schema.EXAMPLE_ID, record_schema.IMAGE_ID, record_schema.TEXT,
                 record_schema.REGION_FEATURES, record_schema.SOFT_LABELS):
        add(name, bytes_type)
    add(record_schema.TOKEN_IDS, int_type, min_count=1, max_count=max_text_tokens).int_domain.min = 0
    regions = add(record_schema.NUM_REGIONS, int_type)
    regions.int_domain.min, regions.int_domain.max = min_regions, max_regions
    dim = add(record_schema.FEATURE_DIM, int_type)
    dim.int_domain.min, dim.int_domain.max = feature_dim, feature_dim
    for name in (record_schema.IMAGE_HEIGHT, record_schema.IMAGE_WIDTH):
        add(name, int_type).int_domain.min = 1
    soft_labels = add(record_schema.NUM_SOFT_LABELS, int_type)
    soft_labels.int_domain.min = 0 if num_soft_labels is None else num_soft_labels
    if num_soft_labels is not None:
        soft_labels.int_domain.max = num_soft_labels

    def finite(feature):
        # TFDV counts NaN / inf in its float statistics; a record carrying one is an anomaly.
        feature.float_domain.disallow_nan = True
        feature.float_domain.disallow_inf = True
        return feature

    def image_fields(suffix=""):
        positions = finite(add(record_schema.REGION_POSITIONS + suffix, float_type, min_count=7 * min_regions,
                               max_count=7 * max_regions))
        positions.float_domain.min, positions.float_domain.max = 0.0, 1.0
        finite(add(record_schema.REGION_BOXES + suffix, float_type, min_count=4 * min_regions,
                   max_count=4 * max_regions)).float_domain.min = 0.0

    image_fields()
    if kind == "nlvr2":
        # The right image of the pair (uniter_tf.data.schema.SECOND_IMAGE_FEATURE_KEYS), bounded as the left.
        for name in (record_schema.IMAGE_ID_2, record_schema.REGION_FEATURES_2):
            add(name, bytes_type)
        regions_2 = add(record_schema.NUM_REGIONS_2, int_type)
        regions_2.int_domain.min, regions_2.int_domain.max = min_regions, max_regions
        for name in (record_schema.IMAGE_HEIGHT_2, record_schema.IMAGE_WIDTH_2):
            add(name, int_type).int_domain.min = 1
        image_fields("_2")
    # Task fields: required by the task that owns them, optional elsewhere.
    label = add(record_schema.LABEL, int_type, required=kind in LABEL_CLASSES)
    label.int_domain.min = 0
    if kind in LABEL_CLASSES:
        label.int_domain.max = LABEL_CLASSES[kind] - 1
    finite(add(record_schema.TARGET_BOX, float_type, required=kind == "refcoco", min_count=4,
               max_count=4)).float_domain.min = 0.0
    if kind == "vqa":
        add(record_schema.ANSWERS, bytes_type, min_count=1, max_count=None)
    else:
        add(record_schema.ANSWERS, bytes_type, required=False, min_count=None, max_count=None)
    add(record_schema.ANSWER_LABELS, int_type, required=False, min_count=None, max_count=None).int_domain.min = 0
    scores = finite(add(record_schema.ANSWER_SCORES, float_type, required=False, min_count=None, max_count=None))
    scores.float_domain.min, scores.float_domain.max = 0.0, 1.0
    add(TASK_FEATURE, bytes_type, required=False)
    return schema


def schema_text(schema: schema_pb2.Schema) -> str:
    """The schema as text proto (what ``schema.pbtxt`` holds)."""
    from google.protobuf import text_format

    return text_format.MessageToString(schema)


def write_schema(path: str, **build_kwargs) -> str:
    """Writes :func:`build_schema` (``build_kwargs``) as text proto to ``path``; returns ``path``."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(schema_text(build_schema(**build_kwargs)))
    return path


def read_schema(path: str) -> schema_pb2.Schema:
    """The text-proto schema at ``path`` (local or a TF filesystem URL).

    Raises:
        ValueError: the file is not a text-proto ``Schema`` (the message names the file).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from google.protobuf import text_format

    with tf.io.gfile.GFile(path, "rb") as handle:
        raw = handle.read()
    try:
        return text_format.Parse(raw.decode("utf-8"), schema_pb2.Schema())
    except (UnicodeDecodeError, text_format.ParseError) as error:
        raise ValueError(f"{path} is not a text-proto tensorflow_metadata Schema: {error}") from None
