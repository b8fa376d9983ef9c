"""Importers of region features people already have.

Every importer streams :class:`FeatureRecord` objects (one per image) and :class:`DeadLetter` objects for
input it cannot read, never loading a whole source into memory:

* ``img_db``: the official UNITER LMDB (:mod:`.img_db`);
* ``butd_tsv``: bottom-up-attention TSV files (:mod:`.butd_tsv`);
* ``npz``: folders of per-image ``.npz`` files (:mod:`.npz_dir`);
* ``canonical``: per-image canonical TFRecords written by ``uniter extract`` (:mod:`.canonical`).

:func:`list_shards` splits a source into independently readable pieces (files; one LMDB is one piece)
and :func:`iter_shard` reads one; the Beam ingest reads shards in parallel.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Iterator, List, Optional

from uniter_tf.data import boxes as boxes_lib
from uniter_tf.data.importers.feature_record import FeatureRecord, select_boxes

#: The feature formats :func:`list_shards` knows.
FEATURE_FORMATS = ("auto", "img_db", "butd_tsv", "lxmert_tsv", "npz", "canonical")


@dataclasses.dataclass(frozen=True)
class FeatureShard:
    """One independently readable piece of a feature source.

    Attributes:
        feature_format: one of :data:`FEATURE_FORMATS` except ``auto``; for ``npz`` a shard is a group of files.
        paths: the file(s) or the LMDB directory.
    """

    feature_format: str
    paths: tuple


def _detect_format(path: str) -> str:
    from uniter_tf.data.importers import img_db

    if os.path.isdir(path):
        if img_db.is_img_db(path):
            return "img_db"
        return "npz"
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(".tsv"):
        return "butd_tsv"
    if name.endswith(".npz"):
        return "npz"
    if ".tfrecord" in os.path.basename(path):
        return "canonical"
    raise ValueError(f"cannot tell the feature format of {path!r}; pass --feature-format")


def list_shards(features: str, feature_format: str = "auto", npz_files_per_shard: int = 256) -> List[FeatureShard]:
    """Expands a feature location (a directory, file or glob; comma-separated for several) into shards.

    Args:
        features: img_db directory, npz directory, TSV / TFRecord / npz file or glob.
        feature_format: one of :data:`FEATURE_FORMATS`.
        npz_files_per_shard: npz files read by one worker call.

    Raises:
        ValueError: unknown format. FileNotFoundError: nothing matches.
    """
    from uniter_tf.data.importers import npz_dir

    if feature_format not in FEATURE_FORMATS:
        raise ValueError(f"feature_format must be one of {FEATURE_FORMATS}, got {feature_format!r}")
    paths = []
    for pattern in [part for part in features.split(",") if part]:
        matches = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        paths += [path for path in matches if os.path.exists(path)]
    if not paths:
        raise FileNotFoundError(f"no feature files match {features!r}")
    shards = []
    npz_files = []
    for path in paths:
        path_format = _detect_format(path) if feature_format == "auto" else feature_format
        if path_format == "npz":
            npz_files += npz_dir.list_npz_dir(path) if os.path.isdir(path) else [path]
        else:
            shards.append(FeatureShard(path_format, (path,)))
    for start in range(0, len(npz_files), npz_files_per_shard):
        shards.append(FeatureShard("npz", tuple(npz_files[start:start + npz_files_per_shard])))
    if not shards:
        raise FileNotFoundError(f"no feature records found under {features!r}")
    return shards


def iter_shard(shard: FeatureShard, selection: Optional[boxes_lib.BoxSelection] = boxes_lib.BoxSelection()
               ) -> Iterator:
    """Streams the records (and dead letters) of one shard."""
    from uniter_tf.data.importers import butd_tsv, canonical, img_db, npz_dir

    if shard.feature_format == "img_db":
        return img_db.iter_img_db(shard.paths[0], selection)
    if shard.feature_format == "butd_tsv":
        return butd_tsv.iter_butd_tsv(shard.paths[0], butd_tsv.BUTD_FIELDS, selection)
    if shard.feature_format == "lxmert_tsv":
        return butd_tsv.iter_butd_tsv(shard.paths[0], butd_tsv.LXMERT_FIELDS, selection)
    if shard.feature_format == "npz":
        return npz_dir.iter_npz_files(shard.paths, selection)
    if shard.feature_format == "canonical":
        return canonical.iter_canonical_tfrecord(shard.paths[0])
    raise ValueError(f"unknown feature format {shard.feature_format!r}")


def iter_shard_image_ids(shard: FeatureShard, selection: Optional[boxes_lib.BoxSelection] = boxes_lib.BoxSelection()
                         ) -> Iterator[str]:
    """Streams the image id of every record of a shard without decoding features (the ingest's keys pass).

    Cheap where the format allows it: LMDB keys only (img_db), file names (npz), the first column of each
    line (TSV); canonical TFRecords are read and only the ``image_id`` field is looked at (``selection``
    picks the img_db's LMDB as :func:`iter_shard` does). Records whose id
    cannot be read are skipped (the full read dead-letters them); an unreadable file ends its ids early.
    """
    from uniter_tf.data.importers import butd_tsv, canonical, img_db, npz_dir

    if shard.feature_format == "img_db":
        return img_db.iter_img_db_image_ids(shard.paths[0], selection)
    if shard.feature_format in ("butd_tsv", "lxmert_tsv"):
        return butd_tsv.iter_butd_tsv_image_ids(shard.paths[0])
    if shard.feature_format == "npz":
        return iter(npz_dir.image_id_from_path(path) for path in shard.paths)
    if shard.feature_format == "canonical":
        return canonical.iter_canonical_image_ids(shard.paths[0])
    raise ValueError(f"unknown feature format {shard.feature_format!r}")


def iter_features(features: str, feature_format: str = "auto",
                  selection: Optional[boxes_lib.BoxSelection] = boxes_lib.BoxSelection()) -> Iterator:
    """Streams every record (and dead letter) of a feature location, shard after shard."""
    for shard in list_shards(features, feature_format):
        yield from iter_shard(shard, selection)


__all__ = ["FEATURE_FORMATS", "FeatureRecord", "FeatureShard", "select_boxes", "list_shards", "iter_shard",
           "iter_shard_image_ids", "iter_features"]
