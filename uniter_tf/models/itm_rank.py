"""Image-text retrieval head of the official ``UniterForImageTextRetrieval`` (spec §2.4, §5.4).

``rank_output = Linear(H, 1)`` on the pooled output gives the retrieval score (raw logit; evaluation
and hard-negative mining rank logits). The head also keeps the pretrained ITM classifier
``itm_output = Linear(H, 2)``, unused by the forward, because the official ``init_output()`` starts
``rank_output`` from its "match" row (see :func:`uniter_tf.models.official_init.init_output`) and
fine-tuned checkpoints still carry it.

Loss (:func:`itm_rank_hinge_loss`): the batch holds groups of ``sample_size`` rows, the positive first;
``max(0, margin + σ(s_neg) − σ(s_pos))`` for every negative, mean over all terms.
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import keras
import tensorflow as tf

from uniter_tf.layers.initializers import normal_initializer
from uniter_tf.models.head_weights import OfficialHead, linear_entries

#: The official margin of the ranking hinge loss.
OFFICIAL_MARGIN = 0.2


def itm_rank_hinge_loss(rank_scores: tf.Tensor, sample_size: int, margin: float = OFFICIAL_MARGIN) -> tuple:
    """The official ranking loss on sigmoid scores.

    Args:
        rank_scores: ``[n * sample_size, 1]`` (or ``[n * sample_size]``) logits; row ``q * sample_size``
            is the positive of query q.
        sample_size: rows per query (1 positive + negatives).
        margin: the hinge margin (0.2).

    Returns:
        ``(terms [n, sample_size - 1], mean loss [])``.

    Raises:
        ValueError: if ``sample_size`` < 2.
    """
    if int(sample_size) < 2:
        raise ValueError(f"itm_rank_hinge_loss needs sample_size >= 2 (a positive and a negative), got {sample_size}")
    scores = tf.reshape(tf.sigmoid(tf.cast(rank_scores, tf.float32)), [-1, int(sample_size)])
    terms = tf.maximum(margin + scores[:, 1:] - scores[:, :1], 0.0)
    return terms, tf.reduce_mean(terms)


@keras.saving.register_keras_serializable(package="uniter_tf")
class ItmRankHead(OfficialHead):
    """``rank_output = Linear(H, 1)`` on the pooled output, next to the kept ``itm_output = Linear(H, 2)``.

    Args:
        hidden_size: H.
        initializer_range: standard deviation of the normal kernel initialiser (official 0.02).
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, initializer_range: float = 0.02, **kwargs):
        super().__init__(hidden_size, initializer_range, **kwargs)
        self.rank_output = keras.layers.Dense(1, kernel_initializer=normal_initializer(initializer_range),
                                              name="rank_output", dtype=self.dtype_policy)
        self.itm_output = keras.layers.Dense(2, kernel_initializer=normal_initializer(initializer_range),
                                             name="itm_output", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        for layer in (self.rank_output, self.itm_output):
            if not layer.built:
                layer.build((None, self.hidden_size))
        self.built = True

    def parameter_table(self):
        table = linear_entries("itm_output", "itm_output")
        table.update(linear_entries("rank_output", "rank_output"))
        return table

    def call(self, encoder_outputs: Union[Mapping[str, tf.Tensor], tf.Tensor],
             training: Optional[bool] = None) -> tf.Tensor:
        """Maps the backbone outputs (or ``pooled_output``) to ``[B, 1]`` retrieval logits."""
        pooled = (encoder_outputs["pooled_output"] if isinstance(encoder_outputs, Mapping) else encoder_outputs)
        return self.rank_output(pooled)
