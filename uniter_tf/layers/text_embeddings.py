"""Text embeddings: word + position + token type, then LayerNorm and dropout."""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from uniter_tf.layers.initializers import normal_initializer


@keras.saving.register_keras_serializable(package="uniter_tf")
class UniterTextEmbeddings(keras.layers.Layer):
    """``Dropout(LN(E_word[ids] + E_pos[arange(T)] + E_type[type_ids]))`` (official
    ``UniterTextEmbeddings``).

    The token-type table is also the source of the region type embedding (row 1), so the region
    embedding layer reads :attr:`token_type_embeddings` through :meth:`type_embedding`.

    Args:
        vocab_size: rows of the word table.
        hidden_size: H.
        max_position_embeddings: rows of the position table.
        type_vocab_size: rows of the token-type table.
        initializer_range: standard deviation of the normal initialiser.
        layer_norm_epsilon: LayerNorm epsilon.
        dropout_rate: dropout after the LayerNorm.
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, vocab_size: int, hidden_size: int, max_position_embeddings: int, type_vocab_size: int,
                 initializer_range: float = 0.02, layer_norm_epsilon: float = 1e-12, dropout_rate: float = 0.1,
                 **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout_rate = dropout_rate
        self.word_embeddings = keras.layers.Embedding(
                vocab_size, hidden_size, embeddings_initializer=normal_initializer(initializer_range),
                name="word_embeddings", dtype=self.dtype_policy)
        self.position_embeddings = keras.layers.Embedding(
                max_position_embeddings, hidden_size, embeddings_initializer=normal_initializer(initializer_range),
                name="position_embeddings", dtype=self.dtype_policy)
        self.token_type_embeddings = keras.layers.Embedding(
                type_vocab_size, hidden_size, embeddings_initializer=normal_initializer(initializer_range),
                name="token_type_embeddings", dtype=self.dtype_policy)
        self.layer_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon,
                                                          name="layer_norm", dtype=self.dtype_policy)
        self.dropout = keras.layers.Dropout(dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        for embedding in (self.word_embeddings, self.position_embeddings, self.token_type_embeddings):
            if not embedding.built:
                embedding.build((None, None))
        if not self.layer_norm.built:
            self.layer_norm.build((None, None, self.hidden_size))
        self.built = True

    def type_embedding(self, type_ids: tf.Tensor) -> tf.Tensor:
        """Looks up rows of the shared token-type table (used for regions with type 1)."""
        return self.token_type_embeddings(type_ids)

    def call(self, token_ids: tf.Tensor, token_type_ids: Optional[tf.Tensor] = None,
             training: Optional[bool] = None) -> tf.Tensor:
        """Embeds ``token_ids [B, T]`` (positions are ``arange(T)``, as every official collate).

        Args:
            token_ids: ``[B, T]`` int ids.
            token_type_ids: optional ``[B, T]`` segment ids (default 0).
            training: enables dropout.

        Returns:
            ``[B, T, H]`` embeddings in the layer's compute dtype.
        """
        text_length = tf.shape(token_ids)[1]
        position_ids = tf.range(text_length)[tf.newaxis, :]
        if token_type_ids is None:
            token_type_ids = tf.zeros_like(token_ids)
        embeddings = (self.word_embeddings(token_ids) + self.position_embeddings(position_ids)
                      + self.token_type_embeddings(token_type_ids))
        embeddings = self.layer_norm(embeddings)
        return self.dropout(embeddings, training=training)

    def get_config(self):
        config = super().get_config()
        config.update({
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "max_position_embeddings": self.max_position_embeddings,
                "type_vocab_size": self.type_vocab_size,
                "initializer_range": self.initializer_range,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "dropout_rate": self.dropout_rate,
        })
        return config
