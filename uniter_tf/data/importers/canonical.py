"""Importer for per-image canonical records (what ``uniter extract`` writes: sharded GZIP TFRecords)."""

from __future__ import annotations

from typing import Iterator, Optional, Union

import numpy as np

from uniter_tf.data import dead_letter
from uniter_tf.data.importers import feature_record

ImportResult = Union[feature_record.FeatureRecord, dead_letter.DeadLetter]


def iter_canonical_tfrecord(path: str, compression: Optional[str] = None) -> Iterator[ImportResult]:
    """Streams per-image canonical records from one TFRecord file.

    Args:
        path: a TFRecord file (GZIP when the name ends in ``.gz``, unless ``compression`` says otherwise).
        compression: ``"GZIP"``, ``""`` or None (guess from the name).

    Yields:
        :class:`FeatureRecord` per record (no box selection: extraction already applied it);
        :class:`DeadLetter` for records that do not decode, and for a truncated or corrupt file.
    """
    import tensorflow as tf

    from uniter_tf.data import schema

    if compression is None:
        compression = "GZIP" if path.endswith(".gz") else ""
    index = 0
    try:
        for serialized in tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator():
            index += 1
            source = f"{path}#{index}"
            try:
                decoded = schema.decode_example(serialized)
            except Exception as error:  # a protobuf or field error concerns this record only
                yield dead_letter.DeadLetter(source, dead_letter.UNREADABLE_INPUT,
                                             f"cannot decode canonical record: {dead_letter.safe_text(error)}",
                                             source, kind="image")
                continue
            num_classes = decoded[schema.NUM_SOFT_LABELS]
            yield feature_record.FeatureRecord(
                    image_id=decoded[schema.IMAGE_ID].decode("utf-8", errors="backslashreplace"),
                    features=decoded[schema.REGION_FEATURES].astype(np.float16),
                    positions=decoded[schema.REGION_POSITIONS], boxes=decoded[schema.REGION_BOXES],
                    image_height=decoded[schema.IMAGE_HEIGHT], image_width=decoded[schema.IMAGE_WIDTH],
                    soft_labels=decoded[schema.SOFT_LABELS] if num_classes else None, source=source)
    except tf.errors.OpError as error:
        yield dead_letter.DeadLetter(f"{path}#{index + 1}", dead_letter.UNREADABLE_INPUT,
                                     f"corrupt TFRecord file after {index} records: "
                                     f"{dead_letter.safe_text(error.message)}", path, kind="input")


def iter_canonical_image_ids(path: str, compression: Optional[str] = None) -> Iterator[str]:
    """The ``image_id`` of every record of one TFRecord file (undecodable records are skipped).

    A truncated or corrupt file ends the ids early; :func:`iter_canonical_tfrecord` reports it.
    """
    import tensorflow as tf

    from uniter_tf.data import schema

    if compression is None:
        compression = "GZIP" if path.endswith(".gz") else ""
    try:
        for serialized in tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator():
            try:
                values = tf.train.Example.FromString(serialized).features.feature[schema.IMAGE_ID].bytes_list.value
            except Exception:  # pylint: disable=broad-except  (a bad record has no usable id)
                continue
            if len(values) == 1:
                yield values[0].decode("utf-8", errors="backslashreplace")
    except tf.errors.OpError:
        return
