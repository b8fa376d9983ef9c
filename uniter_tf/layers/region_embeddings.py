"""Region embeddings: projected features and boxes, plus the shared type embedding."""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from uniter_tf.layers.initializers import normal_initializer
from uniter_tf.layers.rows import dense_rows


@keras.saving.register_keras_serializable(package="uniter_tf")
class UniterRegionEmbeddings(keras.layers.Layer):
    """``Dropout(LN(LN_img(W_img f + b) + LN_pos(W_pos p + b) + type))`` (official
    ``UniterImageEmbeddings``).

    For masked region modelling, ``f`` is the region feature with masked rows replaced by the learned
    ``mask_embedding[1]``. The official code zeroes masked rows in the collate function and then adds
    ``mask_embedding[masks]`` with row 0 forced to zero; this layer zeroes the masked rows itself
    (idempotent when the data already did) and ignores row 0, which gives the same result while
    keeping the ``[2, D]`` table of the official checkpoints.

    With ``feature_standardization`` the layer first maps every feature channel to
    ``(f - feature_mean) * feature_scale`` with two non-trainable ``[D]`` weights (training-split statistics,
    :mod:`uniter_tf.data.feature_stats`). Detector features such as SSD-MobileNet-v2's pooled ReLU6 maps are
    all non-negative and share most of their direction (mean cosine 0.66 between regions of the demo's
    images), so without it a small model reads the number and boxes of the regions, not their content.
    Keeping the statistics as weights puts them into every checkpoint, the partial restore of fine-tuning
    and the exported SavedModel: serving applies exactly what training saw, with no side file. Masked rows
    are replaced after the standardisation, so ``mask_embedding[1]`` lives in the standardised space. Off
    (the default), the layer has no such weights and is the official layer, weight for weight.

    Args:
        region_feature_dim: D.
        hidden_size: H.
        region_position_dim: width of the box feature (7).
        initializer_range: standard deviation of the normal initialiser.
        layer_norm_epsilon: epsilon of the three LayerNorms.
        dropout_rate: dropout after the last LayerNorm.
        feature_standardization: add the ``feature_mean`` / ``feature_scale`` weights (identity until
            :meth:`set_feature_statistics`) and standardise the features with them.
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, region_feature_dim: int, hidden_size: int, region_position_dim: int = 7,
                 initializer_range: float = 0.02, layer_norm_epsilon: float = 1e-12, dropout_rate: float = 0.1,
                 feature_standardization: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.region_feature_dim = region_feature_dim
        self.hidden_size = hidden_size
        self.region_position_dim = region_position_dim
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout_rate = dropout_rate
        self.feature_standardization = bool(feature_standardization)
        self.feature_mean = None
        self.feature_scale = None
        initializer = normal_initializer(initializer_range)
        self.img_linear = keras.layers.Dense(hidden_size, kernel_initializer=initializer,
                                             name="img_linear", dtype=self.dtype_policy)
        self.img_layer_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon,
                                                              name="img_layer_norm", dtype=self.dtype_policy)
        self.pos_linear = keras.layers.Dense(hidden_size, kernel_initializer=initializer,
                                             name="pos_linear", dtype=self.dtype_policy)
        self.pos_layer_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon,
                                                              name="pos_layer_norm", dtype=self.dtype_policy)
        self.mask_embedding = keras.layers.Embedding(2, region_feature_dim, embeddings_initializer=initializer,
                                                     name="mask_embedding", dtype=self.dtype_policy)
        self.layer_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon,
                                                          name="layer_norm", dtype=self.dtype_policy)
        self.dropout = keras.layers.Dropout(dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        hidden_shape = (None, None, self.hidden_size)
        if not self.img_linear.built:
            self.img_linear.build((None, None, self.region_feature_dim))
        if not self.pos_linear.built:
            self.pos_linear.build((None, None, self.region_position_dim))
        if not self.mask_embedding.built:
            self.mask_embedding.build((None, None))
        for layer_norm in (self.img_layer_norm, self.pos_layer_norm, self.layer_norm):
            if not layer_norm.built:
                layer_norm.build(hidden_shape)
        if self.feature_standardization and self.feature_mean is None:
            # float32 whatever the compute dtype: the statistics of float16 features need its range.
            self.feature_mean = self.add_weight(name="feature_mean", shape=(self.region_feature_dim,),
                                                initializer="zeros", trainable=False, dtype="float32")
            self.feature_scale = self.add_weight(name="feature_scale", shape=(self.region_feature_dim,),
                                                 initializer="ones", trainable=False, dtype="float32")
        self.built = True

    def set_feature_statistics(self, mean, scale) -> None:
        """Sets the standardisation: features become ``(f - mean) * scale``.

        Args:
            mean: ``[D]`` per-channel training mean.
            scale: ``[D]`` per-channel multiplier (1 / standard deviation;
                :func:`uniter_tf.data.feature_stats.standardization_scale`).

        Raises:
            ValueError: the layer was built without ``feature_standardization``, or a shape is not ``[D]``,
                or a value is not finite.
        """
        if not self.feature_standardization:
            raise ValueError("set_feature_statistics: this region embedding layer was built without "
                             "feature_standardization (UniterConfig.region_feature_standardization)")
        if not self.built:
            self.build()
        for name, values in (("mean", mean), ("scale", scale)):
            array = np.asarray(values, np.float32)
            if array.shape != (self.region_feature_dim,):
                raise ValueError(f"set_feature_statistics: {name} has shape {array.shape}, expected "
                                 f"({self.region_feature_dim},)")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"set_feature_statistics: {name} has non-finite values")
        self.feature_mean.assign(np.asarray(mean, np.float32))
        self.feature_scale.assign(np.asarray(scale, np.float32))

    def standardize(self, region_features: tf.Tensor) -> tf.Tensor:
        """``(f - feature_mean) * feature_scale`` in float32, or ``f`` as float32 without standardisation.

        What ``img_linear`` sees; also the space of the MRFR targets (the MRFR head projects back through
        ``img_linear``'s kernel, so its predictions live there).
        """
        features = tf.cast(region_features, tf.float32)
        if not self.feature_standardization:
            return features
        return (features - tf.convert_to_tensor(self.feature_mean)) * tf.convert_to_tensor(self.feature_scale)

    def call(self, region_features: tf.Tensor, region_positions: tf.Tensor, type_embeddings: tf.Tensor,
             masked_regions: Optional[tf.Tensor] = None, training: Optional[bool] = None) -> tf.Tensor:
        """Embeds regions.

        Args:
            region_features: ``[B, N, D]`` features.
            region_positions: ``[B, N, 7]`` boxes.
            type_embeddings: ``[B, N, H]`` or broadcastable (row 1 of the text token-type table).
            masked_regions: optional ``[B, N]`` bool; masked rows become ``mask_embedding[1]``.
            training: enables dropout.

        Returns:
            ``[B, N, H]`` embeddings.
        """
        features = tf.cast(self.standardize(region_features), self.compute_dtype)
        if masked_regions is not None:
            masked = tf.cast(masked_regions, tf.bool)[:, :, tf.newaxis]
            mask_vector = tf.cast(self.mask_embedding.embeddings[1], self.compute_dtype)
            features = tf.where(masked, mask_vector[tf.newaxis, tf.newaxis, :], features)
        visual = self.img_layer_norm(dense_rows(self.img_linear, features))
        spatial = self.pos_layer_norm(dense_rows(self.pos_linear, tf.cast(region_positions, self.compute_dtype)))
        embeddings = self.layer_norm(visual + spatial + tf.cast(type_embeddings, visual.dtype))
        return self.dropout(embeddings, training=training)

    def get_config(self):
        config = super().get_config()
        config.update({
                "region_feature_dim": self.region_feature_dim,
                "hidden_size": self.hidden_size,
                "region_position_dim": self.region_position_dim,
                "initializer_range": self.initializer_range,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout_rate": self.dropout_rate,
                "feature_standardization": self.feature_standardization,
        })
        return config
