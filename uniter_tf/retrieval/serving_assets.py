"""The retrieval assets of an exported version: the image index and the gallery's regions, served together.

A SavedModel version that answers retrieval requests (``serving/retrieval.py``) carries, beside its
``embed_text`` / ``embed_image`` / scoring signatures, everything a text → image query needs, under
``VERSION/assets.extra/retrieval/``:

* ``index/``: the image :class:`~uniter_tf.retrieval.index.EmbeddingIndex` (its ``save`` layout), built by
  the **same** first stage as the version's embedding signatures (same ``model_version``);
* ``gallery/``: the indexed images' regions for the cross-encoder rerank, in the index's row order so a
  candidate row of a search is its gallery row (no scan, no id lookup): ``gallery.json`` (format, ids,
  feature size), ``region_features.npy`` ``[total_regions, D]`` float32, ``region_positions.npy``
  ``[total_regions, 7]`` float32 and ``offsets.npy`` ``[n + 1]`` int64 (image ``i`` owns rows
  ``offsets[i]:offsets[i + 1]``). Every array is read with ``allow_pickle=False`` (memory-mapped on the
  local disk), so nothing in a version directory is ever unpickled.

The model and its index thus travel and are swapped as one directory: a server that loads a version loads
its index with it, and a version whose index is of another first stage is refused at load.

Write the assets **before** the version is published (into the export's staging directory, as
``uniter export --index`` does), or at least before a server polls the version: a server that loaded a
version without them does not reload it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import posixpath
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from uniter_tf.retrieval.index import EmbeddingIndex, read_format_json

#: Where the assets live inside a SavedModel version directory.
RETRIEVAL_ASSETS_SUBDIR = posixpath.join("assets.extra", "retrieval")
INDEX_SUBDIR = "index"
GALLERY_SUBDIR = "gallery"
GALLERY_FORMAT = "uniter-retrieval-gallery/1"
GALLERY_FILE = "gallery.json"
FEATURES_FILE = "region_features.npy"
POSITIONS_FILE = "region_positions.npy"
OFFSETS_FILE = "offsets.npy"


@dataclasses.dataclass
class RegionGallery:
    """The regions of every indexed image, concatenated (row ``i`` = the index's row ``i``).

    Attributes:
        ids: image ids, in the index's row order.
        offsets: ``[n + 1]`` int64; image ``i`` owns rows ``offsets[i]:offsets[i + 1]``.
        region_features: ``[total_regions, D]`` float32.
        region_positions: ``[total_regions, 7]`` float32.
    """

    ids: List[str]
    offsets: np.ndarray
    region_features: np.ndarray
    region_positions: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def feature_dim(self) -> int:
        return int(self.region_features.shape[1])

    def regions(self, row: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(features [n_i, D], positions [n_i, 7])`` of the image at gallery row ``row``."""
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return self.region_features[start:end], self.region_positions[start:end]

    def region_counts(self) -> np.ndarray:
        """``[n]`` regions per image."""
        return np.diff(self.offsets)


@dataclasses.dataclass
class RetrievalAssets:
    """What :func:`read_retrieval_assets` returns: the index and its gallery (same ids, same order)."""

    index: EmbeddingIndex
    gallery: RegionGallery


def retrieval_assets_dir(version_dir: str) -> str:
    """``VERSION/assets.extra/retrieval``."""
    return posixpath.join(version_dir, RETRIEVAL_ASSETS_SUBDIR)


def has_retrieval_assets(version_dir: str) -> bool:
    """Whether a version directory carries retrieval assets (its index description exists)."""
    import tensorflow as tf

    from uniter_tf.retrieval.index import INDEX_FILE

    return tf.io.gfile.exists(posixpath.join(retrieval_assets_dir(version_dir), INDEX_SUBDIR, INDEX_FILE))


def exported_first_stage_version(version_dir: str) -> Optional[str]:
    """The ``model_version`` of the first stage a version's ``embed_text`` / ``embed_image`` signatures hold,
    from its ``uniter_export.json``; ``None`` when the export has no first stage (or no metadata file)."""
    import tensorflow as tf

    from uniter_tf.export.exporter import EXPORT_METADATA_FILE

    path = posixpath.join(version_dir, "assets.extra", EXPORT_METADATA_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        metadata = json.loads(handle.read())
    return (metadata.get("first_stage") or {}).get("model_version")


def _save_npy(path: str, array: np.ndarray) -> None:
    import tensorflow as tf

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(buffer.getvalue())


def _load_npy(path: str) -> np.ndarray:
    import tensorflow as tf

    try:
        if "://" not in path or path.startswith("file://"):
            return np.load(path.replace("file://", "", 1), mmap_mode="r", allow_pickle=False)
        with tf.io.gfile.GFile(path, "rb") as handle:
            return np.load(io.BytesIO(handle.read()), allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path} is not a numeric .npy array: {error}") from error


def write_retrieval_assets(version_dir: str, index_dir: str, feature_files: Optional[Sequence[str]] = None, *,
                           expected_model_version: Optional[str] = None) -> Dict[str, object]:
    """Copies an image index and the regions of its images into ``VERSION/assets.extra/retrieval/``.

    Args:
        version_dir: the SavedModel version directory (or the export's staging directory before it is
            moved into place); any ``tf.io.gfile`` path.
        index_dir: an image index written by ``uniter index`` (:meth:`EmbeddingIndex.save`).
        feature_files: TFRecord patterns holding the indexed images' regions (per-image region records or
            caption records); default the files the index records it was built from (``metadata.features``).
        expected_model_version: the first stage the index must come from; default the one recorded in the
            version's ``uniter_export.json`` (``first_stage.model_version``), which must then exist.

    Returns:
        ``{"path", "images", "regions", "model_version"}``.

    Raises:
        ValueError: the version has no first stage to check against, the index is not an image index, no
            feature files are known, or an indexed image has no regions in them (named).
        IndexVersionError: the index was built by another first stage than the version's.
        FileExistsError: the version already carries retrieval assets.
    """
    import tensorflow as tf

    from uniter_tf.retrieval.first_stage import read_gallery

    if expected_model_version is None:
        expected_model_version = exported_first_stage_version(version_dir)
        if expected_model_version is None:
            raise ValueError(f"{version_dir} holds no first stage (its uniter_export.json has no 'first_stage'): "
                             "export a run that has RUN/first_stage, so that embed_text matches the index")
    index = EmbeddingIndex.load(index_dir, expected_model_version=expected_model_version)
    if index.kind != "image":
        raise ValueError(f"index {index_dir} holds {index.kind} embeddings; text → image retrieval needs an image "
                         "index")
    if feature_files is None:
        feature_files = index.metadata.get("features")
        if not feature_files:
            raise ValueError(f"index {index_dir} records no feature files; pass the gallery's feature_files")
    if isinstance(feature_files, str):
        feature_files = [feature_files]
    target = retrieval_assets_dir(version_dir)
    if tf.io.gfile.exists(target):
        raise FileExistsError(f"{target} exists: the version already carries retrieval assets")
    source = read_gallery(list(feature_files), feature_dim=None, require_captions=False)
    row_of = {image_id: row for row, image_id in enumerate(source.image_ids)}
    missing = [image_id for image_id in index.ids if image_id not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} indexed image(s) have no regions in {list(feature_files)}, e.g. "
                         f"{missing[:5]}")
    dims = {source.region_features[row_of[image_id]].shape[1] for image_id in index.ids}
    if len(dims) != 1:
        raise ValueError(f"the gallery's images have different region feature sizes {sorted(dims)}")
    features = [source.region_features[row_of[image_id]] for image_id in index.ids]
    positions = [source.region_positions[row_of[image_id]] for image_id in index.ids]
    offsets = np.concatenate([[0], np.cumsum([len(rows) for rows in features])]).astype(np.int64)

    # The index goes in first; the gallery's description last (a reader needs both, and both are checked).
    index.save(posixpath.join(target, INDEX_SUBDIR))
    gallery_dir = posixpath.join(target, GALLERY_SUBDIR)
    tf.io.gfile.makedirs(gallery_dir)
    _save_npy(posixpath.join(gallery_dir, FEATURES_FILE), np.concatenate(features).astype(np.float32))
    _save_npy(posixpath.join(gallery_dir, POSITIONS_FILE), np.concatenate(positions).astype(np.float32))
    _save_npy(posixpath.join(gallery_dir, OFFSETS_FILE), offsets)
    description = {"format": GALLERY_FORMAT, "size": len(index), "feature_dim": int(dims.pop()),
                   "regions": int(offsets[-1]), "ids": index.ids, "model_version": index.model_version}
    with tf.io.gfile.GFile(posixpath.join(gallery_dir, GALLERY_FILE), "w") as handle:
        handle.write(json.dumps(description))
    return {"path": target, "images": len(index), "regions": int(offsets[-1]), "model_version": index.model_version}


def read_retrieval_assets(version_dir: str, expected_model_version: Optional[str] = None) -> RetrievalAssets:
    """Reads what :func:`write_retrieval_assets` wrote.

    Args:
        version_dir: the SavedModel version directory.
        expected_model_version: the first stage the index must come from; default the version's own
            (``uniter_export.json``), which must exist.

    Raises:
        ValueError: no assets there, or their files disagree (named).
        IndexVersionError: the index is of another first stage than the version's.
    """
    import tensorflow as tf

    if expected_model_version is None:
        expected_model_version = exported_first_stage_version(version_dir)
        if expected_model_version is None:
            raise ValueError(f"{version_dir} carries retrieval assets but no first stage (uniter_export.json has "
                             "no 'first_stage'): its index cannot be checked")
    target = retrieval_assets_dir(version_dir)
    index = EmbeddingIndex.load(posixpath.join(target, INDEX_SUBDIR), expected_model_version=expected_model_version)
    gallery_dir = posixpath.join(target, GALLERY_SUBDIR)
    description_path = posixpath.join(gallery_dir, GALLERY_FILE)
    if not tf.io.gfile.exists(description_path):
        raise ValueError(f"{gallery_dir}: no gallery ({GALLERY_FILE} is missing)")
    description = read_format_json(description_path, GALLERY_FORMAT, "a retrieval gallery")
    if description.get("ids") != index.ids:
        raise ValueError(f"{description_path}: the gallery's ids are not the index's (same ids, same order)")
    features = _load_npy(posixpath.join(gallery_dir, FEATURES_FILE))
    positions = _load_npy(posixpath.join(gallery_dir, POSITIONS_FILE))
    offsets = _load_npy(posixpath.join(gallery_dir, OFFSETS_FILE))
    total = int(description.get("regions", -1))
    if offsets.dtype != np.int64 or offsets.shape != (len(index) + 1,) or offsets[0] != 0 or offsets[-1] != total \
            or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{gallery_dir}/{OFFSETS_FILE} is not [{len(index) + 1}] increasing int64 offsets from 0 "
                         f"to {total}")
    dim = description.get("feature_dim")
    if features.dtype != np.float32 or features.shape != (total, dim):
        raise ValueError(f"{gallery_dir}/{FEATURES_FILE} holds {features.dtype} {features.shape}, {GALLERY_FILE} "
                         f"announces float32 ({total}, {dim})")
    if positions.dtype != np.float32 or positions.shape != (total, 7):
        raise ValueError(f"{gallery_dir}/{POSITIONS_FILE} holds {positions.dtype} {positions.shape}, expected "
                         f"float32 ({total}, 7)")
    return RetrievalAssets(index, RegionGallery(list(index.ids), offsets, features, positions))


__all__ = ["RegionGallery", "RetrievalAssets", "write_retrieval_assets", "read_retrieval_assets",
           "has_retrieval_assets", "retrieval_assets_dir", "exported_first_stage_version",
           "RETRIEVAL_ASSETS_SUBDIR"]
