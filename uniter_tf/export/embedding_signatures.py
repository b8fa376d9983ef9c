"""The first stage's signatures of retrieve-then-rerank: ``embed_text`` and ``embed_image`` (issue 13).

When the exported run has a trained first stage (``RUN/first_stage``, :mod:`uniter_tf.retrieval.first_stage`),
the export adds, beside the scoring signatures:

* ``embed_text``: ``text [B]`` raw strings, tokenised in-graph exactly as the scoring signatures do (same
  vocabulary, same text limit) → ``embeddings [B, D]``, L2-normalised; an empty text (no WordPiece) fails an
  in-graph check naming ``text``;
* ``embed_image``: ``region_features [B, N, F]``, ``region_positions [B, N, 7]`` and ``num_regions [B]`` →
  ``embeddings [B, D]``, L2-normalised; regions beyond the first stage's ``max_regions`` are cut, as
  :meth:`FirstStage.embed_images` cuts them.

Both equal :meth:`FirstStage.embed_texts` / :meth:`FirstStage.embed_images` in process (the first stage's own
graph code runs inside the signatures), so an index built by ``uniter index`` is searchable with the served
``embed_text``. The first stage's backbone is a second set of weights beside the cross-encoder's.
"""

from __future__ import annotations

from typing import Dict, Sequence

import tensorflow as tf

EMBED_TEXT = "embed_text"
EMBED_IMAGE = "embed_image"
EMBEDDING_OUTPUT = "embeddings"


class EmbeddingSignatures:
    """The two embedding signatures over a :class:`~uniter_tf.retrieval.first_stage.FirstStage`.

    Args:
        stage: the loaded first stage.
        graph: the export's :class:`~uniter_tf.export.signatures.ServingGraph` (its in-graph tokeniser and
            region-count checks are reused, so raw text means the same to every signature).

    Raises:
        ValueError: the first stage's region feature size is not the cross-encoder's.
    """

    def __init__(self, stage, graph):
        if int(stage.model_config.region_feature_dim) != graph.feature_dim:
            raise ValueError(f"the first stage takes {stage.model_config.region_feature_dim}-d region features, the "
                             f"exported model {graph.feature_dim}-d: they must embed the same gallery")
        self.stage = stage
        self.graph = graph

    def resources(self) -> list:
        """The Keras objects whose weights the signatures use (for ``ExportArchive.track``)."""
        return [self.stage.backbone, self.stage.text_projection, self.stage.image_projection]

    def embed_text(self, text):
        """Raw strings → unit text embeddings."""
        token_ids, text_mask = self.graph.text_to_ids(text)
        # [CLS] and [SEP] only: the text had no WordPiece (FirstStage.embed_texts refuses it too).
        check = tf.debugging.assert_greater_equal(
                tf.reduce_min(tf.concat([tf.reduce_sum(text_mask, axis=1), [3]], axis=0)), 3,
                message="text: a text is empty (no WordPiece)")
        with tf.control_dependencies([check]):
            token_ids = tf.identity(token_ids)
        return {EMBEDDING_OUTPUT: self.stage._text_embeddings(token_ids, text_mask)}  # pylint: disable=protected-access

    def embed_image(self, region_features, region_positions, num_regions):
        """Regions with their 7-d positions → unit image embeddings."""
        region_mask = self.graph._check_region_inputs(region_features, num_regions)  # pylint: disable=protected-access
        width = tf.minimum(tf.shape(region_features)[1], self.stage.max_regions)
        return {EMBEDDING_OUTPUT: self.stage._image_embeddings(  # pylint: disable=protected-access
                region_features[:, :width], region_positions[:, :width], region_mask[:, :width])}

    def input_signatures(self) -> Dict[str, Sequence[tf.TensorSpec]]:
        """The ``tf.TensorSpec`` list of each signature, in argument order."""
        return {
                EMBED_TEXT: [tf.TensorSpec([None], tf.string, name="text")],
                EMBED_IMAGE: [tf.TensorSpec([None, None, self.graph.feature_dim], tf.float32, name="region_features"),
                              tf.TensorSpec([None, None, 7], tf.float32, name="region_positions"),
                              tf.TensorSpec([None], tf.int32, name="num_regions")],
        }

    def functions(self):
        """Signature name → the function implementing it."""
        return {EMBED_TEXT: self.embed_text, EMBED_IMAGE: self.embed_image}

    def metadata(self) -> dict:
        """What ``uniter_export.json`` records of the first stage (``model_version`` is what an index must match)."""
        return {"model_version": self.stage.model_version(), "embedding_dim": self.stage.embedding_dim,
                "max_text_length": self.stage.max_text_length, "max_regions": self.stage.max_regions,
                "pooling": self.stage.pooling, "signatures": [EMBED_TEXT, EMBED_IMAGE]}


__all__ = ["EmbeddingSignatures", "EMBED_TEXT", "EMBED_IMAGE", "EMBEDDING_OUTPUT"]
