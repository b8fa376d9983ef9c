"""A task model: an injected UNITER backbone followed by a task head (Model Garden style)."""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="uniter_tf")
class TaskModel(keras.Model):
    """Runs ``head(backbone(inputs))`` and returns the head's logits.

    The backbone is passed in (not built here) so that the same class serves every task and any
    encoder that follows the backbone contract of docs/architecture.md: it takes the input dict
    (``token_ids``, ``text_mask``, ``region_features``, ``region_positions``, ``region_mask``, …) and
    returns a dict with at least ``pooled_output [B, H]``. The head receives that whole dict plus the
    input ``region_mask``, so heads that need ``sequence_output`` (RefCOCO, NLVR2 attention) fit too.

    Args:
        backbone: the encoder (a Keras layer or model).
        head: the task head (a Keras layer taking the backbone's output dict).
        task_name: the registry name of the task, kept for exports and logs.
        **kwargs: passed to ``keras.Model``.
    """

    def __init__(self, backbone: keras.layers.Layer, head: keras.layers.Layer, task_name: str = "",
                 **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = head
        self.task_name = task_name

    def build(self, input_shape=None):
        # The backbone builds itself from its config; heads of official checkpoints build from theirs, so
        # a task model can be saved or loaded before its first call.
        if not self.head.built:
            self.head.build()
        self.built = True

    def call(self, inputs: Mapping[str, tf.Tensor], training: Optional[bool] = None) -> tf.Tensor:
        encoder_outputs: Dict[str, tf.Tensor] = dict(self.backbone(inputs, training=training))
        # Heads that read regions (RefCOCO) need the region slots' width and validity, which the
        # joint-layout outputs alone do not give.
        if inputs.get("region_mask") is not None and "region_mask" not in encoder_outputs:
            encoder_outputs["region_mask"] = inputs["region_mask"]
        return self.head(encoder_outputs, training=training)

    def get_config(self):
        config = super().get_config()
        config.update({
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "head": keras.saving.serialize_keras_object(self.head),
                "task_name": self.task_name,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)
