"""Multi-head self-attention with the BERT additive key mask."""

from __future__ import annotations

from typing import Optional, Tuple

import keras
import tensorflow as tf

from uniter_tf.layers.initializers import normal_initializer
from uniter_tf.layers.rows import dense_rows

# The official additive mask value (not -inf): masked keys get exp(s - 10000) = 0 in fp32.
ATTENTION_MASK_VALUE = -10000.0


def additive_attention_bias(key_mask: tf.Tensor, dtype) -> tf.Tensor:
    """Turns a ``[B, L]`` 1/0 key mask into the ``[B, 1, 1, L]`` additive bias ``(1 - m) * -10000``.

    Args:
        key_mask: ``[B, L]`` mask, 1 on real positions.
        dtype: dtype of the attention scores.
    """
    key_mask = tf.cast(key_mask, dtype)
    return (1.0 - key_mask)[:, tf.newaxis, tf.newaxis, :] * tf.cast(ATTENTION_MASK_VALUE, dtype)


@keras.saving.register_keras_serializable(package="uniter_tf")
class UniterSelfAttention(keras.layers.Layer):
    """BERT self-attention (official ``BertSelfAttention``): ``softmax(QK^T/sqrt(d) + bias) V``.

    Only keys are masked; padded query rows are computed as in the official code. The softmax runs in
    float32 even under a mixed policy.

    Args:
        hidden_size: H.
        num_attention_heads: A; the head size is H / A.
        initializer_range: standard deviation of the normal initialiser.
        dropout_rate: dropout on the attention probabilities.
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, num_attention_heads: int, initializer_range: float = 0.02,
                 dropout_rate: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads "
                             f"{num_attention_heads}")
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.initializer_range = initializer_range
        self.dropout_rate = dropout_rate
        self.head_size = hidden_size // num_attention_heads
        initializer = normal_initializer(initializer_range)
        self.query = keras.layers.Dense(hidden_size, kernel_initializer=initializer,
                                        name="query", dtype=self.dtype_policy)
        self.key = keras.layers.Dense(hidden_size, kernel_initializer=initializer, name="key", dtype=self.dtype_policy)
        self.value = keras.layers.Dense(hidden_size, kernel_initializer=initializer,
                                        name="value", dtype=self.dtype_policy)
        self.dropout = keras.layers.Dropout(dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        for dense in (self.query, self.key, self.value):
            if not dense.built:
                dense.build((None, None, self.hidden_size))
        self.built = True

    def _split_heads(self, tensor: tf.Tensor) -> tf.Tensor:
        batch_size, length = tf.shape(tensor)[0], tf.shape(tensor)[1]
        tensor = tf.reshape(tensor, [batch_size, length, self.num_attention_heads, self.head_size])
        return tf.transpose(tensor, [0, 2, 1, 3])

    def call(self, hidden_states: tf.Tensor, attention_bias: tf.Tensor,
             training: Optional[bool] = None) -> Tuple[tf.Tensor, tf.Tensor]:
        """Attends.

        Args:
            hidden_states: ``[B, L, H]``.
            attention_bias: ``[B, 1, 1, L]`` additive bias from :func:`additive_attention_bias`.
            training: enables dropout.

        Returns:
            ``(context [B, L, H], probabilities [B, A, L, L])``.
        """
        query = self._split_heads(dense_rows(self.query, hidden_states))
        key = self._split_heads(dense_rows(self.key, hidden_states))
        value = self._split_heads(dense_rows(self.value, hidden_states))
        scores = tf.matmul(query, key, transpose_b=True)
        scores = tf.cast(scores, tf.float32) * (1.0 / float(self.head_size) ** 0.5)
        scores = scores + tf.cast(attention_bias, tf.float32)
        probabilities = tf.nn.softmax(scores, axis=-1)
        dropped = self.dropout(tf.cast(probabilities, value.dtype), training=training)
        context = tf.matmul(dropped, value)
        batch_size, length = tf.shape(hidden_states)[0], tf.shape(hidden_states)[1]
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [batch_size, length, self.hidden_size])
        return context, probabilities

    def get_config(self):
        config = super().get_config()
        config.update({
                "hidden_size": self.hidden_size,
                "num_attention_heads": self.num_attention_heads,
                "initializer_range": self.initializer_range,
                "dropout_rate": self.dropout_rate,
        })
        return config
