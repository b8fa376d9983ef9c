"""Pretraining losses and metrics with the official reductions (spec §3.2–3.7).

Predictions and targets use the fixed-shape "padded" layout of the pretraining model: ``[B, K, …]``
rows (the first K masked positions of each example) and a ``weights [B, K]`` tensor that is 1 on real
rows and 0 on padding rows. A weighted mean over rows is therefore the official mean over all masked
items of the batch. Every function casts to float32 first (mixed-precision safe).
"""

from __future__ import annotations

import tensorflow as tf


def _f32(value: tf.Tensor) -> tf.Tensor:
    return tf.cast(value, tf.float32)


def weighted_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """``sum(values * weights) / sum(weights)`` (0 when no weight), i.e. the mean over real rows."""
    weights = _f32(weights)
    return tf.math.divide_no_nan(tf.reduce_sum(_f32(values) * weights), tf.reduce_sum(weights))


# ---------------------------------------------------------------------------------------------- MLM
def mlm_token_losses(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Per-token cross-entropy (official ``F.cross_entropy(reduction='none')``).

    Args:
        logits: ``[..., V]``.
        labels: ``[...]`` target ids; negative ids (padding rows) give a loss of 0.

    Returns:
        ``[...]`` float32 losses.
    """
    labels = tf.cast(labels, tf.int32)
    valid = labels >= 0
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(valid, labels, 0), logits=_f32(logits))
    return tf.where(valid, losses, 0.0)


def mlm_accuracy(logits: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Fraction of masked tokens whose argmax equals the label."""
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(labels, tf.int32)),
                      tf.float32)
    return weighted_mean(correct, weights)


# --------------------------------------------------------------------------------------------- MRFR
def mrfr_elementwise_losses(predicted: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Squared error per feature dimension (official ``F.mse_loss(reduction='none')``)."""
    return tf.square(_f32(predicted) - _f32(targets))


# ---------------------------------------------------------------------------------------------- MRC
def mrc_kl_elementwise_losses(logits: tf.Tensor, soft_labels: tf.Tensor) -> tf.Tensor:
    """``t * (log t - log_softmax(logits))``, 0 where ``t = 0`` (official ``F.kl_div(reduction='none')``)."""
    soft_labels = _f32(soft_labels)
    log_probabilities = tf.nn.log_softmax(_f32(logits), axis=-1)
    positive = soft_labels > 0
    safe_targets = tf.where(positive, soft_labels, 1.0)
    return tf.where(positive, soft_labels * (tf.math.log(safe_targets) - log_probabilities), 0.0)


def mrc_hard_labels(soft_labels: tf.Tensor) -> tf.Tensor:
    """The official plain-MRC label: ``1 + argmax`` over classes 1.. (background excluded)."""
    return 1 + tf.argmax(soft_labels[..., 1:], axis=-1, output_type=tf.int32)


def mrc_loss(logits: tf.Tensor, soft_labels: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Plain MRC: cross-entropy against :func:`mrc_hard_labels`, mean over masked regions."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=mrc_hard_labels(soft_labels), logits=_f32(logits))
    return weighted_mean(losses, weights)


def mrc_accuracy(logits: tf.Tensor, soft_labels: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Official MRC(-kl) validation accuracy: ``argmax(prediction) == argmax(soft label)``."""
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1), tf.argmax(soft_labels, axis=-1)), tf.float32)
    return weighted_mean(correct, weights)


# ---------------------------------------------------------------------------------------------- ITM
def itm_example_losses(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Per-example 2-way cross-entropy; label 1 = matched."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=_f32(logits))


def itm_accuracy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Fraction of examples whose argmax equals the label."""
    return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32),
                                           tf.cast(labels, tf.int32)), tf.float32))


def ot_loss(distances: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Signed WRA loss ``(Σ d_pos − Σ d_neg) / (n_pos + n_neg)``: normalised by the whole batch."""
    distances = _f32(distances)
    signed = tf.where(tf.equal(tf.cast(labels, tf.int32), 1), distances, -distances)
    return tf.reduce_sum(signed) / tf.cast(tf.size(signed), tf.float32)
