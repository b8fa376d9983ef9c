"""VCR head of the official ``UniterForVisualCommonsenseReasoning`` (spec §2.4, §5.6).

Every (question, choice) row is scored on its own: pooled ``[CLS]`` → ``Linear(H, 2H)`` → **ReLU**
(the VQA head uses GELU) → ``LayerNorm(2H, 1e-12)`` → ``Linear(2H, 2)``. The choice score used for
ranking is the class-1 logit only (:func:`vcr_rank_scores`, the official ``compute_loss=False``
output); the loss is a 2-way softmax CE per row, mean over rows (:func:`vcr_loss`), not a softmax over
the choices.
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import keras
import tensorflow as tf

from uniter_tf.layers.initializers import normal_initializer
from uniter_tf.models.head_weights import OfficialHead, layer_norm_entries, linear_entries


def vcr_rank_scores(logits: tf.Tensor) -> tf.Tensor:
    """The per-choice score ``logits[:, 1:]`` ``[B, 1]`` that inference ranks (official forward)."""
    return logits[:, 1:]


def vcr_loss(logits: tf.Tensor, targets: tf.Tensor) -> tuple:
    """The official VCR loss.

    Args:
        logits: ``[B, 2]`` per-row logits.
        targets: ``[B]`` or ``[B, 1]`` int, 1 for the correct choice.

    Returns:
        ``(per-row CE [B], mean over rows [])``.
    """
    per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(tf.reshape(targets, [-1]), tf.int32),
                                                             logits=tf.cast(logits, tf.float32))
    return per_row, tf.reduce_mean(per_row)


@keras.saving.register_keras_serializable(package="uniter_tf")
class VcrHead(OfficialHead):
    """The 2-way per-choice classifier on the pooled output.

    Args:
        hidden_size: H.
        initializer_range: standard deviation of the normal kernel initialiser (official 0.02).
        layer_norm_epsilon: LayerNorm epsilon (official 1e-12).
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, initializer_range: float = 0.02, layer_norm_epsilon: float = 1e-12,
                 **kwargs):
        super().__init__(hidden_size, initializer_range, **kwargs)
        self.layer_norm_epsilon = layer_norm_epsilon
        normal = normal_initializer(initializer_range)
        self.dense_expand = keras.layers.Dense(2 * hidden_size, kernel_initializer=normal,
                                               name="dense_expand", dtype=self.dtype_policy)
        self.layer_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon,
                                                          name="layer_norm", dtype=self.dtype_policy)
        self.classifier = keras.layers.Dense(2, kernel_initializer=normal, name="classifier", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        if not self.dense_expand.built:
            self.dense_expand.build((None, self.hidden_size))
        if not self.layer_norm.built:
            self.layer_norm.build((None, 2 * self.hidden_size))
        if not self.classifier.built:
            self.classifier.build((None, 2 * self.hidden_size))
        self.built = True

    def parameter_table(self):
        table = linear_entries("vcr_output.0", "dense_expand")
        table.update(layer_norm_entries("vcr_output.2", "layer_norm"))
        table.update(linear_entries("vcr_output.3", "classifier"))
        return table

    def call(self, encoder_outputs: Union[Mapping[str, tf.Tensor], tf.Tensor],
             training: Optional[bool] = None) -> tf.Tensor:
        """Maps the backbone outputs (or ``pooled_output``) to ``[B, 2]`` logits."""
        pooled = (encoder_outputs["pooled_output"] if isinstance(encoder_outputs, Mapping) else encoder_outputs)
        return self.classifier(self.layer_norm(tf.nn.relu(self.dense_expand(pooled))))

    def get_config(self):
        config = super().get_config()
        config.update({
                "layer_norm_epsilon": self.layer_norm_epsilon,
        })
        return config
