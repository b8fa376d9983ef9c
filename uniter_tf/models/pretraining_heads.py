"""UNITER pretraining heads: MLM, MRFR, MRC / MRC-kl and ITM.

The MLM decoder and the MRFR output projection are tied to backbone weights (the word table and the
``img_linear`` kernel). The heads do not own those variables: the caller passes them to ``call``, so
each tied variable exists (and is saved) once, inside the backbone.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from uniter_tf.layers.initializers import normal_initializer
from uniter_tf.layers.rows import dense_rows
from uniter_tf.layers.transformer import exact_gelu


class _TransformHead(keras.layers.Layer):
    """Shared ``dense(H→H) → gelu → LayerNorm`` prediction transform (``BertPredictionHeadTransform``)."""

    def __init__(self, hidden_size: int, initializer_range: float = 0.02, layer_norm_epsilon: float = 1e-12,
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon
        self.transform_dense = keras.layers.Dense(hidden_size, kernel_initializer=normal_initializer(initializer_range),
                                                  name="transform_dense", dtype=self.dtype_policy)
        self.transform_layer_norm = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon, name="transform_layer_norm", dtype=self.dtype_policy)

    def _build_transform(self):
        if not self.transform_dense.built:
            self.transform_dense.build((None, self.hidden_size))
        if not self.transform_layer_norm.built:
            self.transform_layer_norm.build((None, self.hidden_size))

    def transform(self, hidden: tf.Tensor) -> tf.Tensor:
        """Applies dense → exact GELU → LayerNorm."""
        return self.transform_layer_norm(exact_gelu(dense_rows(self.transform_dense, hidden)))

    def get_config(self):
        config = super().get_config()
        config.update({
                "hidden_size": self.hidden_size,
                "initializer_range": self.initializer_range,
                "layer_norm_epsilon": self.layer_norm_epsilon,
        })
        return config


@keras.saving.register_keras_serializable(package="uniter_tf")
class MlmHead(_TransformHead):
    """Masked language modelling head: transform, then ``@ word_table^T + bias`` (tied decoder).

    Args:
        hidden_size: H.
        vocab_size: V, the size of the output bias.
        initializer_range: standard deviation of the normal initialiser.
        layer_norm_epsilon: LayerNorm epsilon.
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, vocab_size: int, initializer_range: float = 0.02,
                 layer_norm_epsilon: float = 1e-12, **kwargs):
        super().__init__(hidden_size, initializer_range, layer_norm_epsilon, **kwargs)
        self.vocab_size = vocab_size

    def build(self, input_shape=None):
        self._build_transform()
        self.output_bias = self.add_weight(name="output_bias", shape=(self.vocab_size,), initializer="zeros")
        self.built = True

    def call(self, hidden: tf.Tensor, word_embedding_matrix: tf.Tensor) -> tf.Tensor:
        """Scores ``hidden [..., H]`` against the vocabulary.

        Args:
            hidden: hidden states of the masked positions.
            word_embedding_matrix: the backbone's ``[V, H]`` word table.

        Returns:
            ``[..., V]`` logits.
        """
        transformed = self.transform(hidden)
        decoder = tf.cast(word_embedding_matrix, transformed.dtype)
        logits = tf.matmul(tf.reshape(transformed, [-1, self.hidden_size]), decoder, transpose_b=True)
        logits = tf.reshape(logits, tf.concat([tf.shape(transformed)[:-1], [self.vocab_size]], axis=0))
        return logits + tf.cast(self.output_bias, logits.dtype)

    def get_config(self):
        config = super().get_config()
        config["vocab_size"] = self.vocab_size
        return config


@keras.saving.register_keras_serializable(package="uniter_tf")
class MrfrHead(_TransformHead):
    """Masked region feature regression head: transform, then ``@ img_linear_kernel^T + bias``.

    Args:
        hidden_size: H.
        region_feature_dim: D, the size of the output bias.
        initializer_range: standard deviation of the normal initialiser.
        layer_norm_epsilon: LayerNorm epsilon.
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, region_feature_dim: int, initializer_range: float = 0.02,
                 layer_norm_epsilon: float = 1e-12, **kwargs):
        super().__init__(hidden_size, initializer_range, layer_norm_epsilon, **kwargs)
        self.region_feature_dim = region_feature_dim

    def build(self, input_shape=None):
        self._build_transform()
        self.output_bias = self.add_weight(name="output_bias", shape=(self.region_feature_dim,),
                                           initializer="zeros")
        self.built = True

    def call(self, hidden: tf.Tensor, region_projection_kernel: tf.Tensor) -> tf.Tensor:
        """Predicts region features.

        Args:
            hidden: ``[..., H]`` hidden states of the masked regions.
            region_projection_kernel: the backbone's ``[D, H]`` ``img_linear`` kernel.

        Returns:
            ``[..., D]`` predicted features.
        """
        transformed = self.transform(hidden)
        projection = tf.cast(region_projection_kernel, transformed.dtype)
        predicted = tf.matmul(tf.reshape(transformed, [-1, self.hidden_size]), projection, transpose_b=True)
        predicted = tf.reshape(predicted, tf.concat([tf.shape(transformed)[:-1], [self.region_feature_dim]], axis=0))
        return predicted + tf.cast(self.output_bias, predicted.dtype)

    def get_config(self):
        config = super().get_config()
        config["region_feature_dim"] = self.region_feature_dim
        return config


@keras.saving.register_keras_serializable(package="uniter_tf")
class MrcHead(_TransformHead):
    """Masked region classification head: transform → dense(C) (official ``RegionClassification``).

    Args:
        hidden_size: H.
        num_soft_labels: C.
        initializer_range: standard deviation of the normal initialiser.
        layer_norm_epsilon: LayerNorm epsilon.
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, num_soft_labels: int, initializer_range: float = 0.02,
                 layer_norm_epsilon: float = 1e-12, **kwargs):
        super().__init__(hidden_size, initializer_range, layer_norm_epsilon, **kwargs)
        self.num_soft_labels = num_soft_labels
        self.classifier = keras.layers.Dense(num_soft_labels, kernel_initializer=normal_initializer(initializer_range),
                                             name="classifier", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self._build_transform()
        if not self.classifier.built:
            self.classifier.build((None, self.hidden_size))
        self.built = True

    def call(self, hidden: tf.Tensor) -> tf.Tensor:
        """Returns ``[..., C]`` raw logits."""
        return dense_rows(self.classifier, self.transform(hidden))

    def get_config(self):
        config = super().get_config()
        config["num_soft_labels"] = self.num_soft_labels
        return config


@keras.saving.register_keras_serializable(package="uniter_tf")
class ItmHead(keras.layers.Layer):
    """Image-text matching head: ``dense(2)`` on the pooled output; class 1 = match.

    Args:
        hidden_size: H.
        initializer_range: standard deviation of the normal initialiser.
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.initializer_range = initializer_range
        self.classifier = keras.layers.Dense(2, kernel_initializer=normal_initializer(initializer_range),
                                             name="classifier", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        if not self.classifier.built:
            self.classifier.build((None, self.hidden_size))
        self.built = True

    def call(self, pooled_output: tf.Tensor) -> tf.Tensor:
        """Returns ``[B, 2]`` logits."""
        return self.classifier(pooled_output)

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_size": self.hidden_size, "initializer_range": self.initializer_range})
        return config
