"""The first stage's embedding index: exact inner product over a float32 matrix (numpy).

Why exact numpy and not ScaNN / faiss (bench/retrieval_index_synthetic.py, docs/performance.md): one query
against 1,000,000 unit 256-d vectors takes ~40 ms on 2 cores (a 1 GB matrix-vector product +
``argpartition``), inside the 100 ms target, with recall 1 and no dependency; ``faiss.IndexFlatIP`` is not
faster (42 ms); ``faiss.IndexIVFFlat`` (1024 lists) answers in under 1 ms but adds an 18.8 MB wheel and a
k-means build, and pays off only past ~2.5 M vectors, where exact search leaves the target. ScaNN (``scann``,
whose wheels are built against one TensorFlow release each) was not installed nor measured: exact search
already meets the target, and a second TF-coupled binary would tie the TF upgrade to ScaNN's releases.

An index directory holds ``index.json`` (format, ``model_version`` of the first stage that made the
embeddings, kind ``image`` / ``text``, size, the source files and run), ``embeddings.npy`` (float32
``[n, d]``, read with ``allow_pickle=False``) and ``ids.json``. Loading with an ``expected_model_version``
that differs raises :class:`IndexVersionError`: embeddings of two first stages are not comparable.
"""

from __future__ import annotations

import io
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

FORMAT = "uniter-embedding-index/1"
INDEX_FILE = "index.json"
EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.json"
KINDS = ("image", "text")


class IndexVersionError(ValueError):
    """The index was built with another first-stage model version than the one asked for."""


class EmbeddingIndex:
    """Unit embeddings with ids; exact maximum-inner-product search.

    Args:
        ids: one id per row (image ids for an image index, caption ids for a text index).
        embeddings: ``[n, d]`` float (stored float32).
        model_version: the first stage's ``model_version``.
        kind: ``image`` or ``text``.
        metadata: JSON-serialisable extras (source run, feature files).

    Raises:
        ValueError: shapes disagree, ids repeat, an embedding is not finite, or kind is unknown.
    """

    def __init__(self, ids: Sequence[str], embeddings: np.ndarray, model_version: str, kind: str = "image",
                 metadata: Optional[dict] = None):
        embeddings = np.ascontiguousarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(ids):
            raise ValueError(f"embeddings {embeddings.shape} do not match {len(ids)} ids")
        if len(set(ids)) != len(ids):
            raise ValueError("index ids must be unique")
        if not np.all(np.isfinite(embeddings)):
            raise ValueError("an embedding holds a NaN or an infinity")
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
        if not isinstance(model_version, str) or not model_version:
            raise ValueError("an index needs the model_version of the first stage that made it")
        self.ids: List[str] = [str(value) for value in ids]
        self.embeddings = embeddings
        self.model_version = model_version
        self.kind = kind
        self.metadata = dict(metadata or {})

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows of highest inner product with each query, best first.

        Args:
            queries: ``[d]`` or ``[q, d]``.
            k: 1 ≤ k ≤ len(index).

        Returns:
            ``(scores [q, k] float32, rows [q, k] int64)``; ties are broken by the lower row.

        Raises:
            ValueError: k out of range or a query of the wrong size.
        """
        queries = np.asarray(queries, np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries of shape {queries.shape} do not match the index's dimension {self.dim}")
        check_k(k, len(self), "k")
        scores = queries @ self.embeddings.T  # [q, n]: the one pass over the matrix
        if k < len(self):
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(len(self)), scores.shape)
        part_scores = np.take_along_axis(scores, part, axis=1)
        # lexsort: primary -score, secondary row (deterministic ties)
        order = np.stack([np.lexsort((row_part, -row_scores)) for row_part, row_scores in zip(part, part_scores)])
        rows = np.take_along_axis(part, order, axis=1).astype(np.int64)
        return np.take_along_axis(part_scores, order, axis=1), rows

    # ---------------------------------------------------------------------------------- files
    def save(self, directory: str) -> None:
        """Writes the index directory (any ``tf.io.gfile`` path)."""
        import tensorflow as tf

        tf.io.gfile.makedirs(directory)
        buffer = io.BytesIO()
        np.save(buffer, self.embeddings, allow_pickle=False)
        with tf.io.gfile.GFile(os.path.join(directory, EMBEDDINGS_FILE), "wb") as handle:
            handle.write(buffer.getvalue())
        with tf.io.gfile.GFile(os.path.join(directory, IDS_FILE), "w") as handle:
            handle.write(json.dumps(self.ids))
        description = {"format": FORMAT, "model_version": self.model_version, "kind": self.kind,
                       "size": len(self), "dim": self.dim, "metadata": self.metadata}
        # Written last: a directory without index.json is an unfinished index.
        with tf.io.gfile.GFile(os.path.join(directory, INDEX_FILE), "w") as handle:
            handle.write(json.dumps(description, indent=1, sort_keys=True))

    @classmethod
    def load(cls, directory: str, expected_model_version: Optional[str] = None) -> "EmbeddingIndex":
        """Reads an index directory.

        Args:
            directory: what :meth:`save` wrote.
            expected_model_version: if given, the index must have been built by that first stage.

        Raises:
            ValueError: no index there, or its files disagree (named).
            IndexVersionError: the index's ``model_version`` is not ``expected_model_version``.
        """
        description = read_index_description(directory)
        if expected_model_version is not None and description["model_version"] != expected_model_version:
            raise IndexVersionError(
                    f"index {directory} was built with first-stage model version {description['model_version']}, "
                    f"the model in use is version {expected_model_version}: rebuild it with `uniter index`")
        import tensorflow as tf

        with tf.io.gfile.GFile(os.path.join(directory, EMBEDDINGS_FILE), "rb") as handle:
            try:
                embeddings = np.load(io.BytesIO(handle.read()), allow_pickle=False)
            except ValueError as error:
                raise ValueError(f"{directory}/{EMBEDDINGS_FILE} is not a numeric .npy array: {error}") from error
        with tf.io.gfile.GFile(os.path.join(directory, IDS_FILE)) as handle:
            ids = json.loads(handle.read())
        if not isinstance(ids, list) or len(ids) != description.get("size"):
            raise ValueError(f"{directory}/{IDS_FILE} does not hold the {description.get('size')} ids that "
                             f"{INDEX_FILE} announces")
        if embeddings.dtype != np.float32 or embeddings.shape != (len(ids), description.get("dim")):
            raise ValueError(f"{directory}/{EMBEDDINGS_FILE} holds {embeddings.dtype} {embeddings.shape}, "
                             f"{INDEX_FILE} announces float32 ({len(ids)}, {description.get('dim')})")
        return cls(ids, embeddings, description["model_version"], description["kind"],
                   description.get("metadata") or {})


def read_index_description(directory: str) -> Dict:
    """``index.json`` of an index directory.

    Raises:
        ValueError: no index there, or not one of this format.
    """
    import tensorflow as tf

    path = os.path.join(directory, INDEX_FILE)
    if not tf.io.gfile.exists(path):
        raise ValueError(f"--index {directory}: no index there ({INDEX_FILE} is missing)")
    with tf.io.gfile.GFile(path) as handle:
        try:
            description = json.loads(handle.read())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON: {error}") from error
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise ValueError(f"{path} is not an embedding index of format {FORMAT!r}")
    for key in ("model_version", "kind", "size", "dim"):
        if key not in description:
            raise ValueError(f"{path} lacks {key!r}")
    return description


def check_k(k, gallery_size: int, name: str = "k") -> int:
    """``k`` as an int in ``[1, gallery_size]``.

    Raises:
        ValueError: not an integer, ≤ 0, or larger than the gallery (named ``name``).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {k!r}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    if k > gallery_size:
        raise ValueError(f"{name}={k} is larger than the gallery ({gallery_size} entries)")
    return int(k)


__all__ = ["EmbeddingIndex", "IndexVersionError", "read_index_description", "check_k", "FORMAT", "KINDS"]
