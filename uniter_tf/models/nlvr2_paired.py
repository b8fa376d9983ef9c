"""NLVR2 "paired" head of the official ``UniterForNlvr2Paired`` (spec §2.4, §5.3).

One example is two rows of the batch, ``[CLS] sentence [SEP] + left image`` at row 2k and the same
sentence with the right image at row 2k+1 (region type ids 1 and 2). The two pooled outputs are
concatenated (left first, the official ``view(n, 2H)``) and classified by ``Linear(2H, 2)``; class 1 =
"True". Loss: softmax cross-entropy, mean over examples (:func:`nlvr2_loss`).
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import keras
import tensorflow as tf

from uniter_tf.layers.initializers import normal_initializer
from uniter_tf.models.head_weights import OfficialHead, linear_entries


def nlvr2_loss(logits: tf.Tensor, targets: tf.Tensor) -> tuple:
    """The official NLVR2 loss (every variant): per-example softmax CE and its mean.

    Args:
        logits: ``[n, 2]`` answer logits.
        targets: ``[n]`` int labels (1 = True).

    Returns:
        ``(per-example losses [n], mean loss [])``.
    """
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(tf.reshape(targets, [-1]), tf.int32),
                                                                 logits=tf.cast(logits, tf.float32))
    return per_example, tf.reduce_mean(per_example)


def pair_rows(values: tf.Tensor, name: str) -> tf.Tensor:
    """Checks that the batch holds whole pairs and returns ``values`` unchanged.

    Raises:
        tf.errors.InvalidArgumentError: naming ``name`` when the batch size is odd.
    """
    batch_size = tf.shape(values)[0]
    check = tf.debugging.assert_equal(batch_size % 2, 0, message=f"NLVR2 paired input {name!r} needs an even number "
                                      "of rows (row 2k = left image, row 2k+1 = right image)")
    with tf.control_dependencies([check]):
        return tf.identity(values)


@keras.saving.register_keras_serializable(package="uniter_tf")
class Nlvr2PairedHead(OfficialHead):
    """``Linear(2H, 2)`` on the concatenated pooled outputs of the two rows of each example.

    Args:
        hidden_size: H.
        initializer_range: standard deviation of the normal kernel initialiser (official 0.02).
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, initializer_range: float = 0.02, **kwargs):
        super().__init__(hidden_size, initializer_range, **kwargs)
        self.classifier = keras.layers.Dense(2, kernel_initializer=normal_initializer(initializer_range),
                                             name="classifier", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        if not self.classifier.built:
            self.classifier.build((None, 2 * self.hidden_size))
        self.built = True

    def parameter_table(self):
        return linear_entries("nlvr2_output", "classifier")

    def call(self, encoder_outputs: Union[Mapping[str, tf.Tensor], tf.Tensor],
             training: Optional[bool] = None) -> tf.Tensor:
        """Maps the backbone outputs of ``2n`` rows (or their ``pooled_output``) to ``[n, 2]`` logits."""
        pooled = (encoder_outputs["pooled_output"] if isinstance(encoder_outputs, Mapping) else encoder_outputs)
        pooled = pair_rows(pooled, "pooled_output")
        return self.classifier(tf.reshape(pooled, [-1, 2 * self.hidden_size]))
