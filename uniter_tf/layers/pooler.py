"""The BERT pooler: tanh(dense(sequence[:, 0]))."""

from __future__ import annotations

import keras
import tensorflow as tf

from uniter_tf.layers.initializers import normal_initializer


@keras.saving.register_keras_serializable(package="uniter_tf")
class UniterPooler(keras.layers.Layer):
    """``tanh(W h_0 + b)`` on the first position ([CLS], since text always comes first).

    Args:
        hidden_size: H.
        initializer_range: standard deviation of the normal initialiser.
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.initializer_range = initializer_range
        self.dense = keras.layers.Dense(hidden_size, activation="tanh",
                                        kernel_initializer=normal_initializer(initializer_range),
                                        name="dense", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        if not self.dense.built:
            self.dense.build((None, self.hidden_size))
        self.built = True

    def call(self, sequence_output: tf.Tensor) -> tf.Tensor:
        """Pools ``[B, L, H]`` into ``[B, H]``."""
        return self.dense(sequence_output[:, 0])

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_size": self.hidden_size, "initializer_range": self.initializer_range})
        return config
