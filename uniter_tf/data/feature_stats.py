"""Per-channel statistics of region features, for ``UniterConfig.region_feature_standardization``.

A detector's pooled feature maps (SSD-MobileNet-v2's ReLU6 maps here) are all non-negative and point in
much the same direction for every region, so a small model trained from scratch learns to read the
number and the boxes of the regions and ignores their content. Standardising each channel with the
training split's mean and standard deviation removes the shared offset. The statistics are computed once,
when a pretraining run starts from scratch (:func:`initialize_standardization`), and stored as
non-trainable weights of :class:`~uniter_tf.layers.region_embeddings.UniterRegionEmbeddings`, so
checkpoints, fine-tuning's partial restore and the exported SavedModel carry them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from uniter_tf.data import schema

#: Standard deviations below this floor are raised to it before inverting: a channel that is (almost)
#: constant on the training split would otherwise blow a rare non-zero value at serving up by 1/std. 1e-2
#: is 1/600 of ReLU6's range; constant channels still map to 0 ((f - mean) is 0).
DEFAULT_MIN_STD = 1e-2

FilePatterns = Union[str, Sequence[str]]


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
    """Per-channel statistics of region features over the distinct images of a split.

    Attributes:
        mean: ``[D]`` float64 mean of every channel over all regions.
        std: ``[D]`` float64 population standard deviation.
        num_regions: regions counted.
        num_images: distinct images counted (each image once, however many texts repeat it).
        num_records: records read.
    """

    mean: np.ndarray
    std: np.ndarray
    num_regions: int
    num_images: int
    num_records: int

    def scale(self, min_std: float = DEFAULT_MIN_STD) -> np.ndarray:
        """``1 / max(std, min_std)`` as float32 (see :data:`DEFAULT_MIN_STD`)."""
        return standardization_scale(self.std, min_std)


def standardization_scale(std, min_std: float = DEFAULT_MIN_STD) -> np.ndarray:
    """The multiplier of the standardisation, ``1 / max(std, min_std)``, as float32.

    Raises:
        ValueError: ``min_std`` is not positive.
    """
    if not min_std > 0:
        raise ValueError(f"min_std must be positive, got {min_std!r}")
    return (1.0 / np.maximum(np.asarray(std, np.float64), float(min_std))).astype(np.float32)


def _record_files(file_patterns: FilePatterns) -> List[str]:
    # The evaluation library's expansion (every pattern must match a file); imported here because
    # uniter_tf.evaluation imports this package.
    from uniter_tf.evaluation.records import list_record_files  # pylint: disable=import-outside-toplevel

    try:
        return list_record_files(file_patterns)
    except ValueError as error:
        raise ValueError(f"feature statistics: {error}") from None


def _is_gzip(path: str) -> bool:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    # By content, not name: TFX's ExampleGen writes GZIP shards whose names need not end in .gz.
    with tf.io.gfile.GFile(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def iter_records(file_patterns: FilePatterns) -> Iterator[Tuple[str, bytes]]:
    """``(file, serialized record)`` of TFRecord files (plain or GZIP, detected by content), in file order."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    for path in _record_files(file_patterns):
        compression = "GZIP" if _is_gzip(path) else ""
        for record in tf.data.TFRecordDataset(path, compression_type=compression):
            yield path, record.numpy()


def _image_features(feature_map, keys: Tuple[str, str, str], record: str, path: str,
                    feature_dim: Optional[int]) -> Optional[Tuple[bytes, np.ndarray]]:
    """``(image id, [n, D] float32)`` of one image part of a record, or None when the record has none."""
    image_key, regions_key, features_key = keys
    if image_key not in feature_map or not feature_map[image_key].bytes_list.value:
        return None
    image_id = feature_map[image_key].bytes_list.value[0]

    def field_error(message: str) -> ValueError:
        return ValueError(f"feature statistics: record {record!r} in {path}: {message}")

    regions = feature_map[regions_key].int64_list.value if regions_key in feature_map else []
    if not regions:
        raise field_error(f"missing the field {regions_key!r}")
    dims = feature_map[schema.FEATURE_DIM].int64_list.value if schema.FEATURE_DIM in feature_map else []
    if not dims:
        raise field_error(f"missing the field {schema.FEATURE_DIM!r}")
    num_regions, dim = int(regions[0]), int(dims[0])
    if feature_dim is not None and dim != feature_dim:
        raise field_error(f"{schema.FEATURE_DIM} is {dim}, expected {feature_dim} (the model's region_feature_dim)")
    blobs = feature_map[features_key].bytes_list.value if features_key in feature_map else []
    if not blobs:
        raise field_error(f"missing the field {features_key!r}")
    values = np.frombuffer(blobs[0], dtype="<f2")
    if values.size != num_regions * dim:
        raise field_error(f"{features_key} has {values.size} values, expected {num_regions} x {dim}")
    features = values.astype(np.float32).reshape(num_regions, dim)
    if not np.all(np.isfinite(features)):
        raise field_error(f"{features_key} has non-finite values")
    return image_id, features


def compute_feature_statistics(file_patterns: FilePatterns, feature_dim: Optional[int] = None,
                               max_images: Optional[int] = None) -> FeatureStatistics:
    """Streams canonical records and returns the per-channel mean and standard deviation of their regions.

    Each distinct image counts once (text records repeat their image's features), including the second
    image of two-image records (NLVR2). Memory is ``O(D)`` plus the set of image ids seen; sums are float64.

    Args:
        file_patterns: glob pattern(s) of canonical TFRecord files (plain or GZIP).
        feature_dim: the expected ``feature_dim`` (the model's ``region_feature_dim``); None: the first
            record's.
        max_images: stop after this many distinct images (None: all).

    Returns:
        The :class:`FeatureStatistics`.

    Raises:
        ValueError: no files match, no regions were found, or a record is malformed (the message names the
            record, its file and the field).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    image_parts = [(schema.IMAGE_ID, schema.NUM_REGIONS, schema.REGION_FEATURES)]
    second = {mirror: key for key, mirror in schema.SECOND_IMAGE_FEATURE_KEYS.items()}
    image_parts.append((second[schema.IMAGE_ID], second[schema.NUM_REGIONS], second[schema.REGION_FEATURES]))
    seen = set()
    total = total_squares = None
    num_regions = num_records = 0
    for path, serialized in iter_records(file_patterns):
        num_records += 1
        example = tf.train.Example.FromString(serialized)
        feature_map = example.features.feature
        record = "?"
        for key in (schema.EXAMPLE_ID, schema.IMAGE_ID):
            if key in feature_map and feature_map[key].bytes_list.value:
                record = feature_map[key].bytes_list.value[0].decode("utf-8", "replace")
                break
        for keys in image_parts:
            part = _image_features(feature_map, keys, record, path, feature_dim)
            if part is None or part[0] in seen:
                continue
            image_id, features = part
            seen.add(image_id)
            if total is None:
                feature_dim = features.shape[1]
                total = np.zeros(feature_dim, np.float64)
                total_squares = np.zeros(feature_dim, np.float64)
            total += features.sum(axis=0, dtype=np.float64)
            total_squares += np.square(features, dtype=np.float64).sum(axis=0)
            num_regions += features.shape[0]
        if max_images is not None and len(seen) >= max_images:
            break
    if not num_regions:
        raise ValueError(f"feature statistics: no regions in {num_records} records of {file_patterns!r}")
    mean = total / num_regions
    variance = np.maximum(total_squares / num_regions - np.square(mean), 0.0)
    return FeatureStatistics(mean=mean, std=np.sqrt(variance), num_regions=num_regions, num_images=len(seen),
                             num_records=num_records)


def initialize_standardization(backbone, file_patterns: FilePatterns, min_std: float = DEFAULT_MIN_STD,
                               log: Callable[[str], None] = print) -> Optional[FeatureStatistics]:
    """Sets a backbone's region-feature standardisation from the statistics of ``file_patterns``.

    Does nothing (returns None) when the backbone's config has ``region_feature_standardization`` off.

    Args:
        backbone: a :class:`~uniter_tf.models.backbone.UniterBackbone`.
        file_patterns: its training records.
        min_std: see :data:`DEFAULT_MIN_STD`.
        log: where to print a summary line.

    Returns:
        The statistics, or None.
    """
    if not backbone.config.region_feature_standardization:
        return None
    statistics = compute_feature_statistics(file_patterns, feature_dim=backbone.config.region_feature_dim)
    scale = statistics.scale(min_std)
    backbone.region_embeddings.set_feature_statistics(statistics.mean, scale)
    log(f"region feature standardisation: statistics of {statistics.num_regions} regions of "
        f"{statistics.num_images} images ({statistics.num_records} records); mean std "
        f"{float(statistics.std.mean()):.4f}, {int((statistics.std < min_std).sum())} of {scale.size} channels "
        f"below the floor {min_std}")
    return statistics


__all__ = ["DEFAULT_MIN_STD", "FeatureStatistics", "standardization_scale", "iter_records",
           "compute_feature_statistics", "initialize_standardization"]
