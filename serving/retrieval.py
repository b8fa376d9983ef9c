"""The ``retrieve`` signature: text → top-K image ids, reranked by the cross-encoder (issue 13).

A version exported with retrieval assets (``uniter export --index``, :mod:`uniter_tf.retrieval.serving_assets`)
gets, at load, one more signature named ``retrieve`` that TF Serving's protocol reaches like any other (a
Predict request on signature ``retrieve``, gRPC or REST ``:predict``):

* inputs: ``text`` (string scalar), ``k`` (int32 scalar, 1 ≤ k ≤ gallery), ``rerank`` (int32 scalar: 0 for the
  first stage alone, else k ≤ rerank ≤ gallery candidates rescored by the cross-encoder);
* outputs: ``image_ids [k]`` (strings, best first), ``scores [k]`` (the cross-encoder's rank logit of a
  reranked answer, the first stage's cosine otherwise), ``first_stage_scores [k]``.

It runs, on the version's own pieces only: the version's ``embed_text`` signature, a search of the version's
index, and the version's ``score_positions`` signature on the candidates' stored regions, ordered as
:func:`uniter_tf.retrieval.rerank.rerank_order` (ties keep the first-stage order), as the in-process
:func:`uniter_tf.retrieval.rerank.retrieve`. Model and index are read from one version directory and held by
one :class:`~serving.model_manager.ServableVersion`, so the manager's atomic table swap swaps them together:
a request sees the model and the index of the same version. A version whose index was built by another first
stage fails to load (:class:`~uniter_tf.retrieval.index.IndexVersionError`), and the manager keeps serving
the version it had.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from typing import Dict, Mapping

import numpy as np

from serving.errors import invalid_argument
from serving.model_manager import InputSpec, ServableVersion, Signature, _spec_from_tensor_spec

_LOG = logging.getLogger(__name__)

RETRIEVE = "retrieve"
#: The signatures of the version the ``retrieve`` signature runs.
EMBED_TEXT = "embed_text"
SCORE_SIGNATURE = "score_positions"
OUTPUT_NAMES = ("first_stage_scores", "image_ids", "scores")
#: Candidates scored per call of the scoring signature.
RERANK_BATCH = 64


def _scalar_spec(name: str, dtype) -> InputSpec:
    import tensorflow as tf

    return _spec_from_tensor_spec(name, tf.TensorSpec([], dtype))


def _signature_def(inputs: Mapping[str, InputSpec]):
    """The ``SignatureDef`` GetModelMetadata reports for ``retrieve`` (the outputs are ``[k]`` vectors)."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    signature_def = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for name, spec in inputs.items():
        signature_def.inputs[name].name = f"retrieve_{name}:0"
        signature_def.inputs[name].dtype = spec.tf_dtype_enum
        signature_def.inputs[name].tensor_shape.SetInParent()  # a scalar: known rank 0
    for name in OUTPUT_NAMES:
        signature_def.outputs[name].name = f"retrieve_{name}:0"
        signature_def.outputs[name].dtype = types_pb2.DT_STRING if name == "image_ids" else types_pb2.DT_FLOAT
        signature_def.outputs[name].tensor_shape.dim.add(size=-1)
    return signature_def


def _cross_encoder_output(metadata: dict):
    """``(output name, column)`` the rerank sorts by: the retrieval rank logit, else the ITM match logit (as
    :meth:`uniter_tf.retrieval.rerank.CrossEncoder.from_run`)."""
    task = metadata.get("task") or {}
    if task.get("name") == "retrieval":
        return (task.get("outputs") or {}).get("logits") or "task_logits", 0
    return "itm_logits", 1


class Retriever:
    """The ``retrieve`` signature's function over one version's signatures and retrieval assets.

    Args:
        servable: the loaded version (its ``embed_text`` and ``score_positions`` signatures are used).
        assets: its :class:`~uniter_tf.retrieval.serving_assets.RetrievalAssets`.
        metadata: its ``uniter_export.json``.
    """

    def __init__(self, servable: ServableVersion, assets, metadata: dict):
        self.embed_text = servable.signature(EMBED_TEXT)
        self.score = servable.signature(SCORE_SIGNATURE)
        self.index = assets.index
        self.gallery = assets.gallery
        # The IVF search may widen nprobe for one call (EmbeddingIndex.search): concurrent requests take turns.
        # The exact search only reads the embeddings and runs unlocked.
        self._search_lock = threading.Lock() if self.index.backend == "ivf" else contextlib.nullcontext()
        self.output_key, self.column = _cross_encoder_output(metadata)
        self.max_regions = int(metadata.get("max_regions") or 0)
        counts = self.gallery.region_counts()
        if self.max_regions and counts.size and counts.max() > self.max_regions:
            raise ValueError(f"a gallery image has {int(counts.max())} regions, the exported model takes at most "
                             f"{self.max_regions}")

    def _check(self, text, k, rerank):
        from uniter_tf.retrieval.index import check_k

        if not text.strip():
            raise invalid_argument(f"signature '{RETRIEVE}': input 'text' is empty")
        try:
            k = check_k(int(k), len(self.index), "input 'k'")
            if rerank:  # 0: the first stage alone
                rerank = check_k(int(rerank), len(self.index), "input 'rerank'")
        except ValueError as error:
            raise invalid_argument(f"signature '{RETRIEVE}': {error}") from None
        if rerank and rerank < k:
            raise invalid_argument(f"signature '{RETRIEVE}': input 'rerank' ({rerank}) must be at least 'k' ({k}): "
                                   f"the answers come from the reranked candidates")
        return k, rerank

    def _cross_scores(self, text: bytes, rows: np.ndarray) -> np.ndarray:
        from serving.predictor import run_signature
        from uniter_tf.retrieval.first_stage import pack_images

        scores = []
        for start in range(0, len(rows), RERANK_BATCH):
            chunk = rows[start:start + RERANK_BATCH]
            regions = [self.gallery.regions(int(row)) for row in chunk]
            features, positions, mask = pack_images([pair[0] for pair in regions], [pair[1] for pair in regions],
                                                    max(1, max(len(pair[0]) for pair in regions)))
            outputs = run_signature(self.score, {
                    "text": np.asarray([text] * len(chunk), dtype=object), "region_features": features,
                    "region_positions": positions, "num_regions": mask.sum(axis=1).astype(np.int32)})
            scores.append(np.asarray(outputs[self.output_key]).reshape(len(chunk), -1)[:, self.column])
        return np.concatenate(scores)

    def __call__(self, text, k, rerank) -> Dict[str, object]:
        """Answers one request (``text``, ``k``, ``rerank``: scalar tensors, as :func:`run_signature` passes)."""
        import tensorflow as tf

        from serving.predictor import run_signature
        from uniter_tf.retrieval.rerank import rerank_order

        raw = text.numpy()
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_argument(f"signature '{RETRIEVE}': input 'text' is not UTF-8") from None
        k, rerank = self._check(decoded, k.numpy(), rerank.numpy())
        query = run_signature(self.embed_text, {"text": np.asarray([raw], dtype=object)})["embeddings"]
        with self._search_lock:
            first_scores, rows = self.index.search(query, max(k, rerank))
        first_scores, rows = first_scores[0], rows[0]
        if rerank:
            cross = self._cross_scores(raw, rows)
            order = rerank_order(cross)[:k]
            scores = cross[order]
        else:
            order = np.arange(k)
            scores = first_scores[:k]
        return {"image_ids": tf.constant([self.index.ids[row] for row in rows[order]], tf.string),
                "scores": tf.constant(np.asarray(scores, np.float32)),
                "first_stage_scores": tf.constant(np.asarray(first_scores[order], np.float32))}


def check_retrieval_assets(path: str) -> None:
    """Refuses a version directory whose index is not of its first stage, from the two JSON files alone.

    Run before the SavedModel is loaded, so a mismatched version costs no model load; :func:`attach_retrieval`
    checks again with the full assets.

    Raises:
        IndexVersionError: the index's ``model_version`` is not the export's first stage's.
        ValueError: the version carries an index but records no first stage.
    """
    from uniter_tf.retrieval.index import IndexVersionError, read_index_description
    from uniter_tf.retrieval.serving_assets import (INDEX_SUBDIR, exported_first_stage_version, has_retrieval_assets,
                                                    retrieval_assets_dir)

    if not has_retrieval_assets(path):
        return
    expected = exported_first_stage_version(path)
    if expected is None:
        raise ValueError(f"{path} carries a retrieval index but its uniter_export.json records no first stage")
    found = read_index_description(os.path.join(retrieval_assets_dir(path), INDEX_SUBDIR))["model_version"]
    if found != expected:
        raise IndexVersionError(f"the retrieval index in {path} was built with first-stage model version {found}, "
                                f"the version's embed_text is first-stage model version {expected}")


def attach_retrieval(servable: ServableVersion) -> bool:
    """Adds the ``retrieve`` signature to a freshly loaded version that carries retrieval assets.

    Returns:
        Whether the version has retrieval assets (and now a ``retrieve`` signature).

    Raises:
        IndexVersionError: its index was built by another first stage than its ``embed_text``'s (the load
            fails; the manager keeps the versions it serves).
        ValueError: the assets are unreadable, or the version lacks ``embed_text`` / ``score_positions``.
    """
    from uniter_tf.retrieval.serving_assets import has_retrieval_assets, read_retrieval_assets

    if not has_retrieval_assets(servable.path):
        return False
    missing = [name for name in (EMBED_TEXT, SCORE_SIGNATURE) if name not in servable.signatures]
    if missing:
        raise ValueError(f"version {servable.version} at {servable.path} carries retrieval assets but no "
                         f"{missing} signature(s)")
    with open(os.path.join(servable.path, "assets.extra", "uniter_export.json")) as handle:
        metadata = json.load(handle)
    assets = read_retrieval_assets(servable.path)  # checks the index against the version's first stage
    retriever = Retriever(servable, assets, metadata)
    inputs = {"text": _scalar_spec("text", "string"), "k": _scalar_spec("k", "int32"),
              "rerank": _scalar_spec("rerank", "int32")}
    servable.signatures[RETRIEVE] = Signature(name=RETRIEVE, function=retriever, inputs=inputs,
                                              output_names=OUTPUT_NAMES)
    servable.signature_def_map[RETRIEVE] = _signature_def(inputs)
    _LOG.info("Version %d of %s answers %r over %d images (first stage %s)", servable.version, servable.model_name,
              RETRIEVE, len(assets.index), assets.index.model_version)
    return True


__all__ = ["RETRIEVE", "Retriever", "attach_retrieval", "check_retrieval_assets"]
