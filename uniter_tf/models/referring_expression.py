"""Referring-expression head of the official ``UniterForReferringExpressionComprehension`` (spec §2.4,
§5.5): one score per region.

The regions' last-layer states are read at their compact positions ``tl_i + r`` (the official
``_get_image_hidden``), zero for padded region slots; ``re_output`` maps each to a score
(``mlp=1``: ``Linear(H, 1)``; ``mlp=2``: ``Linear(H, H) → GELU(erf) → LayerNorm(1e-12) → Linear(H, 1)``),
and padded slots are set to exactly −10000. Loss ``cls`` (:func:`referring_expression_loss`): softmax
cross-entropy over the region slots, **summed** over the batch as ``train_re.py`` does.

The head needs ``region_mask [B, N]`` beside the backbone outputs (``TaskModel`` passes it).
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import keras
import tensorflow as tf

from uniter_tf.layers.initializers import normal_initializer
from uniter_tf.layers.transformer import exact_gelu
from uniter_tf.models.head_weights import OfficialHead, layer_norm_entries, linear_entries

#: The score of a padded region slot (official ``masked_fill(obj_masks, -1e4)``).
PADDED_REGION_SCORE = -1e4


def referring_expression_loss(scores: tf.Tensor, targets: tf.Tensor) -> tuple:
    """The official ``cls`` loss.

    Args:
        scores: ``[B, N]`` region scores (padded slots at −10000).
        targets: ``[B]`` or ``[B, 1]`` index of the referred region.

    Returns:
        ``(per-example CE [B], sum over the batch [])``.
    """
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(tf.reshape(targets, [-1]), tf.int32),
                                                                 logits=tf.cast(scores, tf.float32))
    return per_example, tf.reduce_sum(per_example)


@keras.saving.register_keras_serializable(package="uniter_tf")
class ReferringExpressionHead(OfficialHead):
    """Scores every region of the compact joint sequence.

    Args:
        hidden_size: H.
        mlp: 1 (``Linear(H, 1)``, the refcoco / refcocog configs) or 2 (the refcoco+ config's MLP).
        initializer_range: standard deviation of the normal kernel initialiser (official 0.02).
        layer_norm_epsilon: epsilon of the ``mlp=2`` LayerNorm (official 1e-12).
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, mlp: int = 1, initializer_range: float = 0.02,
                 layer_norm_epsilon: float = 1e-12, **kwargs):
        super().__init__(hidden_size, initializer_range, **kwargs)
        if mlp not in (1, 2):
            raise ValueError(f"ReferringExpressionHead: mlp must be 1 or 2 (as the official code), got {mlp!r}")
        self.mlp = mlp
        self.layer_norm_epsilon = layer_norm_epsilon
        normal = normal_initializer(initializer_range)
        if mlp == 2:
            self.dense = keras.layers.Dense(hidden_size, kernel_initializer=normal,
                                            name="dense", dtype=self.dtype_policy)
            self.layer_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon,
                                                              name="layer_norm", dtype=self.dtype_policy)
        self.scorer = keras.layers.Dense(1, kernel_initializer=normal, name="scorer", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        if self.mlp == 2:
            if not self.dense.built:
                self.dense.build((None, self.hidden_size))
            if not self.layer_norm.built:
                self.layer_norm.build((None, self.hidden_size))
        if not self.scorer.built:
            self.scorer.build((None, self.hidden_size))
        self.built = True

    def parameter_table(self):
        if self.mlp == 1:
            return linear_entries("re_output", "scorer")
        table = linear_entries("re_output.0", "dense")
        table.update(layer_norm_entries("re_output.2", "layer_norm"))
        table.update(linear_entries("re_output.3", "scorer"))
        return table

    def forward_with_intermediates(self, encoder_outputs: Mapping[str, tf.Tensor],
                                   training: Optional[bool] = None) -> Dict[str, tf.Tensor]:
        """Returns ``img_hidden [B, N, H]``, ``raw_scores [B, N]`` and ``scores [B, N]`` (official names).

        Args:
            encoder_outputs: the backbone outputs plus ``region_mask [B, N]``.
            training: unused (the head has no dropout), kept for the Keras signature.

        Raises:
            KeyError: if ``region_mask`` is missing.
        """
        del training
        if encoder_outputs.get("region_mask") is None:
            raise KeyError("ReferringExpressionHead needs 'region_mask' beside the backbone outputs "
                           f"(received {sorted(encoder_outputs)})")
        sequence = encoder_outputs["sequence_output"]
        region_mask = tf.cast(encoder_outputs["region_mask"], tf.bool)
        num_slots = tf.shape(region_mask)[1]
        positions = (tf.cast(encoder_outputs["text_lengths"], tf.int32)[:, tf.newaxis]
                     + tf.range(num_slots, dtype=tf.int32)[tf.newaxis, :])
        # tl_i + r < T + N always, so the gather stays in range; padded slots are zeroed as official.
        region_hidden = tf.gather(sequence, positions, batch_dims=1)
        region_hidden = region_hidden * tf.cast(region_mask, region_hidden.dtype)[:, :, tf.newaxis]
        hidden = region_hidden
        if self.mlp == 2:
            hidden = self.layer_norm(exact_gelu(self.dense(hidden)))
        raw_scores = self.scorer(hidden)[..., 0]
        if raw_scores.dtype in (tf.float16, tf.bfloat16):
            # Scores (and the softmax over them) in float32 under mixed precision.
            raw_scores = tf.cast(raw_scores, tf.float32)
        scores = tf.where(region_mask, raw_scores, tf.constant(PADDED_REGION_SCORE, raw_scores.dtype))
        return {"img_hidden": region_hidden, "raw_scores": raw_scores, "scores": scores}

    def call(self, encoder_outputs: Mapping[str, tf.Tensor], training: Optional[bool] = None) -> tf.Tensor:
        """Maps the backbone outputs (plus ``region_mask``) to ``[B, N]`` region scores."""
        return self.forward_with_intermediates(encoder_outputs, training=training)["scores"]

    def get_config(self):
        config = super().get_config()
        config.update({
                "mlp": self.mlp,
                "layer_norm_epsilon": self.layer_norm_epsilon,
        })
        return config
