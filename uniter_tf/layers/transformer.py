"""The post-LN BERT transformer layer used by UNITER."""

from __future__ import annotations

from typing import Optional, Tuple

import keras
import tensorflow as tf

from uniter_tf.layers.attention import UniterSelfAttention
from uniter_tf.layers.initializers import normal_initializer
from uniter_tf.layers.rows import dense_rows


def exact_gelu(values: tf.Tensor) -> tf.Tensor:
    """``x * 0.5 * (1 + erf(x / sqrt(2)))``: the official (non-tanh) GELU."""
    return tf.nn.gelu(values, approximate=False)


@keras.saving.register_keras_serializable(package="uniter_tf")
class UniterTransformerLayer(keras.layers.Layer):
    """Official ``BertLayer``: ``x = LN(x + Wo Attn(x))``, then ``x = LN(x + W2 gelu(W1 x))``.

    Args:
        hidden_size: H.
        num_attention_heads: A.
        intermediate_size: I, the feed-forward width.
        initializer_range: standard deviation of the normal initialiser.
        layer_norm_epsilon: LayerNorm epsilon.
        hidden_dropout_rate: dropout on both residual branches.
        attention_dropout_rate: dropout on the attention probabilities.
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, num_attention_heads: int, intermediate_size: int,
                 initializer_range: float = 0.02, layer_norm_epsilon: float = 1e-12,
                 hidden_dropout_rate: float = 0.1, attention_dropout_rate: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon
        self.hidden_dropout_rate = hidden_dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        initializer = normal_initializer(initializer_range)
        self.attention = UniterSelfAttention(hidden_size, num_attention_heads, initializer_range,
                                             attention_dropout_rate, name="attention", dtype=self.dtype_policy)
        self.attention_output = keras.layers.Dense(hidden_size, kernel_initializer=initializer,
                                                   name="attention_output", dtype=self.dtype_policy)
        self.attention_dropout = keras.layers.Dropout(hidden_dropout_rate, dtype=self.dtype_policy)
        self.attention_layer_norm = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, name="attention_layer_norm", dtype=self.dtype_policy)
        self.intermediate = keras.layers.Dense(intermediate_size, kernel_initializer=initializer,
                                               name="intermediate", dtype=self.dtype_policy)
        self.output_dense = keras.layers.Dense(hidden_size, kernel_initializer=initializer,
                                               name="output_dense", dtype=self.dtype_policy)
        self.output_dropout = keras.layers.Dropout(hidden_dropout_rate, dtype=self.dtype_policy)
        self.output_layer_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon,
                                                                 name="output_layer_norm", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        hidden_shape = (None, None, self.hidden_size)
        if not self.attention.built:
            self.attention.build(hidden_shape)
        for layer, shape in ((self.attention_output, hidden_shape), (self.attention_layer_norm, hidden_shape),
                             (self.intermediate, hidden_shape),
                             (self.output_dense, (None, None, self.intermediate_size)),
                             (self.output_layer_norm, hidden_shape)):
            if not layer.built:
                layer.build(shape)
        self.built = True

    def call(self, hidden_states: tf.Tensor, attention_bias: tf.Tensor,
             training: Optional[bool] = None) -> Tuple[tf.Tensor, tf.Tensor]:
        """Runs the layer.

        Args:
            hidden_states: ``[B, L, H]``.
            attention_bias: ``[B, 1, 1, L]`` additive key bias.
            training: enables dropout.

        Returns:
            ``(output [B, L, H], attention probabilities [B, A, L, L])``.
        """
        context, probabilities = self.attention(hidden_states, attention_bias, training=training)
        attended = self.attention_dropout(dense_rows(self.attention_output, context), training=training)
        attended = self.attention_layer_norm(attended + hidden_states)
        intermediate = exact_gelu(dense_rows(self.intermediate, attended))
        output = self.output_dropout(dense_rows(self.output_dense, intermediate), training=training)
        output = self.output_layer_norm(output + attended)
        return output, probabilities

    def get_config(self):
        config = super().get_config()
        config.update({
                "hidden_size": self.hidden_size,
                "num_attention_heads": self.num_attention_heads,
                "intermediate_size": self.intermediate_size,
                "initializer_range": self.initializer_range,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "hidden_dropout_rate": self.hidden_dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
        })
        return config
