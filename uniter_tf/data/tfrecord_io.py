"""Sharded GZIP TFRecord writing and the streaming ``tf.data`` reader of canonical records.

Shards are named ``{prefix}-{index:05d}-of-{count:05d}.tfrecord.gz`` (the naming Beam's
``WriteToTFRecord`` uses with ``shard_name_template='-SSSSS-of-NNNNN'``), so one glob reads the output
of both writers.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Optional, Sequence, Union

#: File suffix of GZIP-compressed TFRecord shards.
GZIP_SUFFIX = ".tfrecord.gz"

FilePatterns = Union[str, Sequence[str]]


def _compression_type(compression: Optional[str]) -> str:
    normalized = (compression or "").upper()
    if normalized not in ("", "GZIP", "ZLIB"):
        raise ValueError(f"compression must be 'GZIP', 'ZLIB' or None, got {compression!r}")
    return normalized


def shard_paths(output_prefix: str, num_shards: int, suffix: str = GZIP_SUFFIX) -> List[str]:
    """The shard file names for ``output_prefix`` (``prefix-00000-of-00004.tfrecord.gz``, ...)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    return [f"{output_prefix}-{index:05d}-of-{num_shards:05d}{suffix}" for index in range(num_shards)]


class ShardedTFRecordWriter:
    """Writes records round-robin over ``num_shards`` TFRecord files (a context manager).

    Round-robin keeps shards within one record of each other in size, so parallel readers finish together.

    Example::

        with ShardedTFRecordWriter("out/train", num_shards=4) as writer:
            for example in examples:
                writer.write(example)
        print(writer.paths, writer.num_written)

    Args:
        output_prefix: path prefix of the shards; its directory is created.
        num_shards: number of files.
        compression: ``"GZIP"`` (default), ``"ZLIB"`` or ``None``.
    """

    def __init__(self, output_prefix: str, num_shards: int = 1, compression: Optional[str] = "GZIP"):
        self.compression = _compression_type(compression)
        suffix = GZIP_SUFFIX if self.compression == "GZIP" else ".tfrecord"
        self.paths = shard_paths(output_prefix, num_shards, suffix)
        self.num_written = 0
        self._writers = []

    def __enter__(self) -> "ShardedTFRecordWriter":
        import tensorflow as tf

        directory = os.path.dirname(self.paths[0])
        if directory:
            tf.io.gfile.makedirs(directory)
        options = tf.io.TFRecordOptions(compression_type=self.compression)
        self._writers = [tf.io.TFRecordWriter(path, options) for path in self.paths]
        return self

    def write(self, record) -> None:
        """Writes one record: serialized bytes or a ``tf.train.Example``."""
        if not self._writers:
            raise RuntimeError("ShardedTFRecordWriter.write called outside its `with` block")
        if not isinstance(record, (bytes, bytearray)):
            record = record.SerializeToString()
        self._writers[self.num_written % len(self._writers)].write(bytes(record))
        self.num_written += 1

    def close(self) -> None:
        """Flushes and closes every shard."""
        for writer in self._writers:
            writer.close()
        self._writers = []

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close()


def write_sharded(records: Iterable, output_prefix: str, num_shards: int = 1,
                  compression: Optional[str] = "GZIP") -> List[str]:
    """Streams ``records`` (bytes or ``tf.train.Example``) into sharded TFRecords; returns the shard paths."""
    with ShardedTFRecordWriter(output_prefix, num_shards, compression) as writer:
        for record in records:
            writer.write(record)
    return writer.paths


def list_files(file_pattern: FilePatterns) -> List[str]:
    """Expands one glob or a list of globs (sorted, de-duplicated).

    Raises:
        FileNotFoundError: nothing matches.
    """
    import tensorflow as tf

    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted({path for pattern in patterns for path in tf.io.gfile.glob(pattern)})
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns}")
    return files


def read_examples(file_pattern: FilePatterns, compression: Optional[str] = "GZIP", shuffle_files: bool = False,
                  seed: Optional[int] = None, cycle_length: Optional[int] = None, deterministic: bool = True,
                  buffer_size: int = 1 << 20):
    """A ``tf.data.Dataset`` of serialized records from sharded TFRecords, read with parallel interleave.

    Streams: memory does not grow with the dataset size.

    Args:
        file_pattern: a glob or a list of globs.
        compression: ``"GZIP"`` (default), ``"ZLIB"`` or ``None``.
        shuffle_files: shuffle the shard order (each epoch; use with ``seed`` for repeatability).
        seed: seed of the shard shuffle.
        cycle_length: how many shards are read at once; default ``min(#shards, 8)``.
        deterministic: keep a reproducible record order (set False for a little more throughput).
        buffer_size: read buffer per shard in bytes.

    Returns:
        A dataset of scalar string tensors.

    Raises:
        FileNotFoundError: nothing matches ``file_pattern``.
    """
    import tensorflow as tf

    compression_type = _compression_type(compression)
    files = list_files(file_pattern)
    file_dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        file_dataset = file_dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return file_dataset.interleave(
            lambda path: tf.data.TFRecordDataset(path, compression_type=compression_type, buffer_size=buffer_size),
            cycle_length=cycle_length or min(len(files), 8),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic)


def read_decoded(file_pattern: FilePatterns, feature_dim: Optional[int] = None,
                 num_soft_labels: Optional[int] = None, **read_kwargs):
    """:func:`read_examples` mapped through :func:`uniter_tf.data.schema.parse_and_decode` (parallel map)."""
    import tensorflow as tf

    from uniter_tf.data import schema

    deterministic = read_kwargs.get("deterministic", True)
    return read_examples(file_pattern, **read_kwargs).map(
            lambda serialized: schema.parse_and_decode(serialized, feature_dim, num_soft_labels),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


__all__ = ["GZIP_SUFFIX", "shard_paths", "ShardedTFRecordWriter", "write_sharded", "list_files", "read_examples",
           "read_decoded"]
