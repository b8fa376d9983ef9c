"""The first stage's embedding index: exact inner product (numpy), or faiss's inverted file past 200k vectors.

Why these two (bench/retrieval_index_synthetic.py, docs/performance.md; 1,000,000 clustered unit 256-d
vectors, 2 cores): exact numpy search (a 1 GB matrix-vector product + ``argpartition``) took 39 ms a query
on a quiet machine but 116-226 ms under the shared machine's usual load; ``faiss.IndexFlatIP`` is no faster
(42 ms); ``faiss.IndexIVFFlat`` (1024 lists, ``nprobe`` 8-16) answered in 0.4-0.7 ms with recall@10 1.0
against exact, built in 5.6 s. faiss-cpu 1.15.1 (an 18.8 MB wheel needing only numpy >= 1.25 and packaging,
both pinned already) is therefore pinned; galleries below :data:`IVF_THRESHOLD` stay exact (no approximation
where it buys nothing). ScaNN (``scann``, whose wheels are built against one TensorFlow release each) was not
installed nor measured: faiss meets the target without tying TF upgrades to ScaNN's releases.

Backends (``backend``): ``exact`` (numpy) and ``ivf`` (``faiss.IndexIVFFlat``, inner product, ``nlist``
lists, ``nprobe`` probed); ``auto`` (the default) is exact below :data:`IVF_THRESHOLD` vectors, where it stays
under ~10 ms a query even on a loaded machine, and ``ivf`` from there on: on the shared 2-core machine under
load (load average ~8) exact search over 1M vectors measured 116-226 ms a query, the IVF well under 1 ms.
The IVF's trained centroids are stored as a numpy array (``ivf_centroids.npy``) and the inverted lists are
rebuilt from the embeddings at load (one ``add``, ~2 s for 1M vectors): no faiss binary file is ever read,
so a tampered index file cannot reach faiss's deserialiser.

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
BACKENDS = ("auto", "exact", "ivf")
CENTROIDS_FILE = "ivf_centroids.npy"
#: ``auto`` uses the IVF from this many vectors on.
IVF_THRESHOLD = 200_000
DEFAULT_NPROBE = 16


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
                 metadata: Optional[dict] = None, backend: str = "auto", nlist: Optional[int] = None,
                 nprobe: int = DEFAULT_NPROBE, centroids: Optional[np.ndarray] = None):
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
        if backend not in BACKENDS:
            raise ValueError(f"index backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            backend = "ivf" if len(self.ids) >= IVF_THRESHOLD else "exact"
        self.backend = backend
        self.nprobe = int(nprobe)
        self._ivf = None
        self.centroids = None
        if backend == "ivf":
            self._build_ivf(nlist, centroids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def _build_ivf(self, nlist: Optional[int], centroids: Optional[np.ndarray]) -> None:
        try:
            import faiss  # pylint: disable=import-outside-toplevel
        except ImportError as error:  # pinned in requirements.lock; a partial install lacks it
            raise ValueError("the ivf index backend needs the faiss-cpu package (pinned in requirements.lock)") from error
        count, dim = self.embeddings.shape
        if centroids is None:
            # sqrt(n) lists up to 1024 (measured on 1M vectors: 0.4-0.7 ms a query, recall@10 1.0 at nprobe
            # 8-16), k-means on 64 vectors per list (65,536 for 1024 lists: a 5.6 s build; 4 sqrt(n) lists on
            # 256 per list took minutes on 2 cores).
            nlist = int(nlist or max(1, min(1024, count // 39, int(np.sqrt(count)))))
            quantizer = faiss.IndexFlatIP(dim)
            ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(0).choice(count, min(count, 64 * nlist), replace=False)
            ivf.train(self.embeddings[np.sort(sample)])
            centroids = quantizer.reconstruct_n(0, nlist)
        centroids = np.ascontiguousarray(centroids, np.float32)
        if centroids.ndim != 2 or centroids.shape[1] != dim or centroids.shape[0] < 1:
            raise ValueError(f"IVF centroids of shape {centroids.shape} do not fit {dim}-d embeddings")
        quantizer = faiss.IndexFlatIP(dim)
        quantizer.add(centroids)  # a filled quantizer makes the IVF "trained" without k-means
        ivf = faiss.IndexIVFFlat(quantizer, dim, centroids.shape[0], faiss.METRIC_INNER_PRODUCT)
        ivf.add(self.embeddings)
        ivf.nprobe = min(self.nprobe, centroids.shape[0])
        self._quantizer, self._ivf, self.centroids = quantizer, ivf, centroids

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
        if self._ivf is not None:
            scores, rows = self._ivf.search(np.ascontiguousarray(queries), k)
            # Fewer than k vectors in the probed lists: faiss pads with row -1; probe every list then.
            if np.any(rows < 0):
                self._ivf.nprobe = self.centroids.shape[0]
                scores, rows = self._ivf.search(np.ascontiguousarray(queries), k)
                self._ivf.nprobe = min(self.nprobe, self.centroids.shape[0])
            return scores.astype(np.float32), rows.astype(np.int64)
        # [n, d] @ [d, q]: one pass over the matrix (2x faster than queries @ embeddings.T, measured on 1M x 256).
        scores = (self.embeddings @ queries.T).T
        if k < len(self):
            # The k largest without negating (a copy of the scores): the last k of an ascending partition.
            part = np.argpartition(scores, len(self) - k, axis=1)[:, len(self) - k:]
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
                       "size": len(self), "dim": self.dim, "metadata": self.metadata, "backend": self.backend,
                       "nprobe": self.nprobe}
        if self.centroids is not None:
            buffer = io.BytesIO()
            np.save(buffer, self.centroids, allow_pickle=False)
            with tf.io.gfile.GFile(os.path.join(directory, CENTROIDS_FILE), "wb") as handle:
                handle.write(buffer.getvalue())
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
        backend = description.get("backend", "exact")
        centroids = None
        if backend == "ivf":
            with tf.io.gfile.GFile(os.path.join(directory, CENTROIDS_FILE), "rb") as handle:
                try:
                    centroids = np.load(io.BytesIO(handle.read()), allow_pickle=False)
                except ValueError as error:
                    raise ValueError(f"{directory}/{CENTROIDS_FILE} is not a numeric .npy array: {error}") from error
        return cls(ids, embeddings, description["model_version"], description["kind"],
                   description.get("metadata") or {}, backend=backend,
                   nprobe=int(description.get("nprobe", DEFAULT_NPROBE)), centroids=centroids)



def read_format_json(path: str, expected_format: str, what: str) -> Dict:
    """A JSON description file whose ``format`` key must be ``expected_format`` (index, gallery, first stage).

    Args:
        path: the file (local or a ``tf.io.gfile`` URL); the caller has checked that it exists, so its own
            message can say how to make one.
        expected_format: the required value of the ``format`` key.
        what: the kind of description, for the error (e.g. ``"an embedding index"``).

    Raises:
        ValueError: the file is not JSON, not an object, or of another format (the path is named).
    """
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as handle:
        try:
            description = json.loads(handle.read())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON: {error}") from error
    if not isinstance(description, dict) or description.get("format") != expected_format:
        raise ValueError(f"{path} is not {what} of format {expected_format!r}")
    return description

def read_index_description(directory: str) -> Dict:
    """``index.json`` of an index directory.

    Raises:
        ValueError: no index there, or not one of this format.
    """
    import tensorflow as tf

    path = os.path.join(directory, INDEX_FILE)
    if not tf.io.gfile.exists(path):
        raise ValueError(f"--index {directory}: no index there ({INDEX_FILE} is missing)")
    description = read_format_json(path, FORMAT, "an embedding index")
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


def build_image_index(stage_dir: str, features: Sequence[str], *, run: Optional[str] = None, backend: str = "auto",
                      nprobe: int = DEFAULT_NPROBE, batch_size: int = 128) -> EmbeddingIndex:
    """Embeds every image of ``features`` with a saved first stage, in this process, and returns their index.

    What ``uniter index`` runs without ``--beam``, and the pipeline's retrieval Trainer for its eval gallery.

    Args:
        stage_dir: a first-stage directory (or a run holding ``first_stage/``).
        features: TFRecord patterns holding the images (region records or caption records; each image once).
        run: the cross-encoder's run, recorded in the index's metadata.
        backend, nprobe: see :class:`EmbeddingIndex`.
        batch_size: images per embedding call.

    Raises:
        ValueError: no first stage there, or unreadable records.
    """
    return _build_index(stage_dir, features, "image", run=run, backend=backend, nprobe=nprobe, batch_size=batch_size)


def build_caption_index(stage_dir: str, features: Sequence[str], *, run: Optional[str] = None, backend: str = "auto",
                        nprobe: int = DEFAULT_NPROBE, batch_size: int = 128) -> EmbeddingIndex:
    """Embeds every caption of ``features`` with a saved first stage and returns their index (kind ``text``).

    What ``uniter index --kind text`` runs: the index of image → caption retrieval; its ids are the caption
    records' ``example_id`` and its metadata names the records, where ``uniter retrieve --image-id`` reads the
    captions' texts back.

    Args:
        stage_dir: a first-stage directory (or a run holding ``first_stage/``).
        features: TFRecord patterns of caption records.
        run, backend, nprobe, batch_size: as :func:`build_image_index` (batch_size: captions per call).

    Raises:
        ValueError: no first stage there, unreadable records, no caption record, or a repeated caption id.
    """
    return _build_index(stage_dir, features, "text", run=run, backend=backend, nprobe=nprobe, batch_size=batch_size)


def _build_index(stage_dir: str, features: Sequence[str], kind: str, *, run: Optional[str], backend: str,
                 nprobe: int, batch_size: int) -> EmbeddingIndex:
    from uniter_tf.retrieval import first_stage as first_stage_lib

    stage_dir = first_stage_lib.first_stage_dir(stage_dir)
    stage = first_stage_lib.load_first_stage(stage_dir)
    gallery = first_stage_lib.read_gallery(features, feature_dim=stage.model_config.region_feature_dim,
                                           require_captions=kind == "text")
    if kind == "text":
        ids, embeddings = gallery.text_ids, stage.embed_word_ids(gallery.word_ids, batch_size=batch_size)
    else:
        ids = gallery.image_ids
        embeddings = stage.embed_images(gallery.region_features, gallery.region_positions, batch_size=batch_size)
    return EmbeddingIndex(ids, embeddings, stage.model_version(), kind, image_index_metadata(run, stage_dir, features),
                          backend=backend, nprobe=nprobe)


def image_index_metadata(run: Optional[str], stage_dir: str, features: Sequence[str]) -> dict:
    """Where an index (of images, or of captions) came from: absolute local paths, remote ones (``gs://``) as given."""
    def absolute(path):
        return path if path is None or "://" in path else os.path.abspath(path)

    patterns = [features] if isinstance(features, str) else list(features)
    return {"run": absolute(run), "first_stage": absolute(stage_dir), "features": [absolute(p) for p in patterns]}


__all__ = ["EmbeddingIndex", "IndexVersionError", "read_index_description", "check_k", "build_image_index",
           "build_caption_index", "image_index_metadata", "FORMAT", "KINDS", "BACKENDS", "IVF_THRESHOLD"]
