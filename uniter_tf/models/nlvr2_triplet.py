"""NLVR2 "triplet" head of the official ``UniterForNlvr2Triplet`` (spec §2.4, §5.3).

One example is one row: ``[CLS] sentence [SEP]`` + the left image's regions (type 1) + the right
image's regions (type 2). The pooled output goes through ``Linear(H, 2)``; class 1 = "True". Loss:
:func:`uniter_tf.models.nlvr2_paired.nlvr2_loss`.
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import keras
import tensorflow as tf

from uniter_tf.layers.initializers import normal_initializer
from uniter_tf.models.head_weights import OfficialHead, linear_entries


@keras.saving.register_keras_serializable(package="uniter_tf")
class Nlvr2TripletHead(OfficialHead):
    """``Linear(H, 2)`` on the pooled output of the one sequence holding both images.

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
            self.classifier.build((None, self.hidden_size))
        self.built = True

    def parameter_table(self):
        return linear_entries("nlvr2_output", "classifier")

    def call(self, encoder_outputs: Union[Mapping[str, tf.Tensor], tf.Tensor],
             training: Optional[bool] = None) -> tf.Tensor:
        """Maps the backbone outputs (or ``pooled_output``) to ``[B, 2]`` logits."""
        pooled = (encoder_outputs["pooled_output"] if isinstance(encoder_outputs, Mapping) else encoder_outputs)
        return self.classifier(pooled)
