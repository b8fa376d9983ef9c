"""NLVR2 "paired-attn" head of the official ``UniterForNlvr2PairedAttn`` (spec §2.4, §5.3).

The variant of both released NLVR2 configs. Rows 2k (left image) and 2k+1 (right image) of the batch
hold the same sentence. Per example:

1. cross attention over the last-layer sequences, ``l2r = MHA1(q=left, k=v=right)`` and
   ``r2l = MHA2(q=right, k=v=left)``: the official copy of ``torch.nn.MultiheadAttention`` with packed
   ``in_proj`` ([Wq; Wk; Wv]), the query scaled by ``head_dim ** -0.5`` after its bias, padded keys
   masked with ``-inf`` (not −10000);
2. ``x = Dropout(ReLU(fc([attn_out ; self])))`` with one ``fc`` shared by both sides;
3. attention pooling (shared): ``softmax(ReLU(w·x + b) − 1e4·pad)`` over every non-padded text and
   region position (note the ReLU *before* the masked softmax), weighted sum;
4. ``Linear(2H, 2)([left_pool ; right_pool])``; class 1 = "True".

Loss: :func:`uniter_tf.models.nlvr2_paired.nlvr2_loss`.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import keras
import tensorflow as tf

from uniter_tf.layers.initializers import normal_initializer
from uniter_tf.models.head_weights import OfficialHead, linear_entries
from uniter_tf.models.nlvr2_paired import pair_rows


def _softmax_dtype(dtype: tf.DType) -> tf.DType:
    """Softmaxes run in float32 under mixed precision (float16 / bfloat16), else in the compute dtype."""
    return tf.float32 if tf.as_dtype(dtype) in (tf.float16, tf.bfloat16) else tf.as_dtype(dtype)


@keras.saving.register_keras_serializable(package="uniter_tf")
class Nlvr2PairedAttentionHead(OfficialHead):
    """Cross attention between the two images' sequences, attention pooling, ``Linear(2H, 2)``.

    Args:
        hidden_size: H.
        num_attention_heads: heads of the two cross-attention blocks (the backbone's, official).
        initializer_range: standard deviation of the normal initialiser of the ``nn.Linear`` weights.
        attention_dropout_rate: dropout on the cross-attention probabilities (official
            ``attention_probs_dropout_prob``).
        hidden_dropout_rate: dropout after ``fc`` and on the pooling weights (official
            ``hidden_dropout_prob``).
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, num_attention_heads: int, initializer_range: float = 0.02,
                 attention_dropout_rate: float = 0.1, hidden_dropout_rate: float = 0.1, **kwargs):
        super().__init__(hidden_size, initializer_range, **kwargs)
        if num_attention_heads <= 0 or hidden_size % num_attention_heads:
            raise ValueError(f"Nlvr2PairedAttentionHead needs num_attention_heads ({num_attention_heads}) to divide "
                             f"hidden_size ({hidden_size})")
        self.num_attention_heads = num_attention_heads
        self.attention_dropout_rate = attention_dropout_rate
        self.hidden_dropout_rate = hidden_dropout_rate
        normal = normal_initializer(initializer_range)
        # The packed in-projections keep torch's xavier_uniform init (the official init_weights skips
        # them, they are not nn.Linear); Keras' Glorot uniform on the [H, 3H] kernel is the same law.
        self.attn1_in_proj = keras.layers.Dense(3 * hidden_size, kernel_initializer="glorot_uniform",
                                                name="attn1_in_proj", dtype=self.dtype_policy)
        self.attn1_out_proj = keras.layers.Dense(hidden_size, kernel_initializer=normal,
                                                 name="attn1_out_proj", dtype=self.dtype_policy)
        self.attn2_in_proj = keras.layers.Dense(3 * hidden_size, kernel_initializer="glorot_uniform",
                                                name="attn2_in_proj", dtype=self.dtype_policy)
        self.attn2_out_proj = keras.layers.Dense(hidden_size, kernel_initializer=normal,
                                                 name="attn2_out_proj", dtype=self.dtype_policy)
        self.fc = keras.layers.Dense(hidden_size, kernel_initializer=normal, name="fc", dtype=self.dtype_policy)
        self.attn_pool_fc = keras.layers.Dense(1, kernel_initializer=normal,
                                               name="attn_pool_fc", dtype=self.dtype_policy)
        self.classifier = keras.layers.Dense(2, kernel_initializer=normal, name="classifier", dtype=self.dtype_policy)
        self.attention_dropout = keras.layers.Dropout(attention_dropout_rate, dtype=self.dtype_policy)
        self.fc_dropout = keras.layers.Dropout(hidden_dropout_rate, dtype=self.dtype_policy)
        self.pool_dropout = keras.layers.Dropout(hidden_dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        width = self.hidden_size
        for layer, input_width in ((self.attn1_in_proj, width), (self.attn1_out_proj, width),
                                   (self.attn2_in_proj, width), (self.attn2_out_proj, width),
                                   (self.fc, 2 * width), (self.attn_pool_fc, width), (self.classifier, 2 * width)):
            if not layer.built:
                layer.build((None, input_width))
        self.built = True

    def parameter_table(self):
        table = {}
        for index in (1, 2):
            table[f"attn{index}.in_proj_weight"] = (f"attn{index}_in_proj", "kernel", True)
            table[f"attn{index}.in_proj_bias"] = (f"attn{index}_in_proj", "bias", False)
            table.update(linear_entries(f"attn{index}.out_proj", f"attn{index}_out_proj"))
        table.update(linear_entries("fc.0", "fc"))
        table.update(linear_entries("attn_pool.fc.0", "attn_pool_fc"))
        table.update(linear_entries("nlvr2_output", "classifier"))
        return table

    def _cross_attention(self, in_proj: keras.layers.Dense, out_proj: keras.layers.Dense, query: tf.Tensor,
                         key_value: tf.Tensor, key_padding: tf.Tensor, training: Optional[bool]) -> tf.Tensor:
        width, heads = self.hidden_size, self.num_attention_heads
        head_size = width // heads
        kernel = tf.cast(in_proj.kernel, query.dtype)
        bias = tf.cast(in_proj.bias, query.dtype)
        projected_query = (tf.matmul(query, kernel[:, :width]) + bias[:width]) * (float(head_size) ** -0.5)
        projected_key = tf.matmul(key_value, kernel[:, width:2 * width]) + bias[width:2 * width]
        projected_value = tf.matmul(key_value, kernel[:, 2 * width:]) + bias[2 * width:]

        def split(values):
            shape = tf.shape(values)
            return tf.reshape(values, [shape[0], shape[1], heads, head_size])

        scores = tf.cast(tf.einsum("bqhd,bkhd->bhqk", split(projected_query), split(projected_key)),
                         _softmax_dtype(query.dtype))
        # -inf on padded keys, as the official masked_fill (each row has a [CLS], so no row is all -inf).
        scores = tf.where(key_padding[:, tf.newaxis, tf.newaxis, :], tf.constant(float("-inf"), scores.dtype), scores)
        probabilities = tf.cast(tf.nn.softmax(scores, axis=-1), query.dtype)
        probabilities = self.attention_dropout(probabilities, training=training)
        context = tf.einsum("bhqk,bkhd->bqhd", probabilities, split(projected_value))
        shape = tf.shape(query)
        return out_proj(tf.reshape(context, [shape[0], shape[1], width]))

    def _attention_pool(self, values: tf.Tensor, padding: tf.Tensor, training: Optional[bool]) -> tf.Tensor:
        scores = tf.nn.relu(self.attn_pool_fc(values))[..., 0]
        softmax_dtype = _softmax_dtype(values.dtype)
        scores = tf.cast(scores, softmax_dtype) + tf.cast(padding, softmax_dtype) * -1e4
        weights = self.pool_dropout(tf.cast(tf.nn.softmax(scores, axis=-1), values.dtype), training=training)
        return tf.einsum("bl,blh->bh", weights, values)

    def forward_with_intermediates(self, encoder_outputs: Mapping[str, tf.Tensor],
                                   training: Optional[bool] = None) -> Dict[str, tf.Tensor]:
        """Runs the head and returns every intermediate, under the official fixture's names.

        Args:
            encoder_outputs: the backbone outputs of ``2n`` rows (``sequence_output``, ``joint_mask``).
            training: enables dropout.

        Returns:
            ``pa_l2r_attn``, ``pa_r2l_attn``, ``pa_left_fc``, ``pa_right_fc`` ``[n, L, H]``,
            ``pa_left_pool``, ``pa_right_pool`` ``[n, H]`` and ``answer_scores`` ``[n, 2]``.
        """
        sequence = pair_rows(encoder_outputs["sequence_output"], "sequence_output")
        padding = tf.equal(tf.cast(encoder_outputs["joint_mask"], tf.int32), 0)
        left, right = sequence[0::2], sequence[1::2]
        left_padding, right_padding = padding[0::2], padding[1::2]
        left_to_right = self._cross_attention(self.attn1_in_proj, self.attn1_out_proj, left, right, right_padding,
                                              training)
        right_to_left = self._cross_attention(self.attn2_in_proj, self.attn2_out_proj, right, left, left_padding,
                                              training)
        left_fc = self.fc_dropout(tf.nn.relu(self.fc(tf.concat([left_to_right, left], axis=-1))), training=training)
        right_fc = self.fc_dropout(tf.nn.relu(self.fc(tf.concat([right_to_left, right], axis=-1))), training=training)
        left_pool = self._attention_pool(left_fc, left_padding, training)
        right_pool = self._attention_pool(right_fc, right_padding, training)
        return {
                "pa_l2r_attn": left_to_right,
                "pa_r2l_attn": right_to_left,
                "pa_left_fc": left_fc,
                "pa_right_fc": right_fc,
                "pa_left_pool": left_pool,
                "pa_right_pool": right_pool,
                "answer_scores": self.classifier(tf.concat([left_pool, right_pool], axis=-1)),
        }

    def call(self, encoder_outputs: Mapping[str, tf.Tensor], training: Optional[bool] = None) -> tf.Tensor:
        """Maps the backbone outputs of ``2n`` rows to ``[n, 2]`` logits."""
        return self.forward_with_intermediates(encoder_outputs, training=training)["answer_scores"]

    def get_config(self):
        config = super().get_config()
        config.update({
                "num_attention_heads": self.num_attention_heads,
                "attention_dropout_rate": self.attention_dropout_rate,
                "hidden_dropout_rate": self.hidden_dropout_rate,
        })
        return config
