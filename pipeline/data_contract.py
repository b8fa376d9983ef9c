"""The Trainers' own check of the data contract: their records against the schema they are given.

The pipeline validates statistics of whole splits (ExampleValidator + ``DataGate``); a Trainer run on its
own (a rerun with other examples, a Trainer wired by hand) still gets ``fn_args.schema_path``. Before
training, :func:`check_records` reads the first records of the training files and checks each against that
schema: every feature the record carries is declared, with the declared type, every required feature is
present, and value counts are within the declared bounds. Domains (ranges, NaN) are left to the validator's
statistics.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Optional, Sequence

#: Records checked per Trainer run (the first ones of the split, across its files in name order).
DEFAULT_MAX_RECORDS = 64


class SchemaMismatchError(ValueError):
    """A record does not match the schema (the message names the record, the feature and the schema)."""


def _kind(feature) -> Optional[str]:
    kind = feature.WhichOneof("kind")
    return {"bytes_list": "BYTES", "int64_list": "INT", "float_list": "FLOAT"}.get(kind)


def _values(feature) -> Sequence:
    kind = feature.WhichOneof("kind")
    return getattr(feature, kind).value if kind else []


def check_example(example, schema, schema_path: str = "the schema") -> None:
    """Checks one ``tf.train.Example`` against a ``tensorflow_metadata`` ``Schema``.

    Raises:
        SchemaMismatchError: an undeclared feature, a wrong type, a missing required feature or a value count
            out of the declared bounds; the message names the record (``example_id``, else ``image_id``).
    """
    from tensorflow_metadata.proto.v0 import schema_pb2  # pylint: disable=import-outside-toplevel

    features = example.features.feature
    record = "?"
    for key in ("example_id", "image_id"):
        if key in features and features[key].bytes_list.value:
            record = features[key].bytes_list.value[0].decode("utf-8", "replace")
            break
    declared = {feature.name: feature for feature in schema.feature}
    for name in sorted(features):
        if name not in declared:
            raise SchemaMismatchError(f"record {record!r} carries feature {name!r}, which {schema_path} does not "
                                      f"declare")
        expected = schema_pb2.FeatureType.Name(declared[name].type)
        actual = _kind(features[name])
        if actual is not None and actual != expected:
            raise SchemaMismatchError(f"feature {name!r} of record {record!r} is {actual}, {schema_path} declares "
                                      f"{expected}")
    for name, feature in declared.items():
        required = feature.presence.min_fraction >= 1.0
        if name not in features:
            if required:
                raise SchemaMismatchError(f"record {record!r} lacks feature {name!r}, required by {schema_path}")
            continue
        count = len(_values(features[name]))
        if feature.HasField("value_count"):
            low, high = feature.value_count.min, feature.value_count.max
            if count < low or (high and count > high):
                bounds = f"{low}..{high}" if high else f">= {low}"
                raise SchemaMismatchError(f"feature {name!r} of record {record!r} has {count} values, {schema_path} "
                                          f"allows {bounds}")


def _files(patterns: Iterable[str]) -> List[str]:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    files: List[str] = []
    for pattern in patterns:
        if tf.io.gfile.isdir(pattern):
            pattern = os.path.join(pattern, "*")
        files.extend(sorted(tf.io.gfile.glob(pattern)))
    return files


def check_records(schema_path: str, file_patterns: Iterable[str], max_records: int = DEFAULT_MAX_RECORDS) -> int:
    """Checks the first ``max_records`` records of ``file_patterns`` against the schema at ``schema_path``.

    Args:
        schema_path: text-proto ``Schema`` (``fn_args.schema_path``).
        file_patterns: TFRecord files, globs or directories (``fn_args.train_files``); GZIP as the
            ExampleGen writes them, or uncompressed (by file name).
        max_records: how many records to check.

    Returns:
        The number of records checked.

    Raises:
        SchemaMismatchError: a record does not match, or the files hold no record.
        ValueError: the schema file is not a schema.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from components.uniter_example_gen import schema as schema_lib  # pylint: disable=import-outside-toplevel

    schema = schema_lib.read_schema(schema_path)
    files = _files(file_patterns)
    if not files:
        raise SchemaMismatchError(f"no training files match {list(file_patterns)}")
    checked = 0
    for path in files:
        compression = "GZIP" if path.endswith(".gz") else ""
        for serialized in tf.data.TFRecordDataset(path, compression_type=compression).take(max_records - checked):
            check_example(tf.train.Example.FromString(serialized.numpy()), schema, schema_path)
            checked += 1
        if checked >= max_records:
            break
    if not checked:
        raise SchemaMismatchError(f"the training files {files[:3]} hold no record")
    return checked
