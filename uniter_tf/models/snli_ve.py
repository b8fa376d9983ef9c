"""SNLI-VE: visual entailment as the official ``UniterForVisualEntailment`` (spec §5.2, §7.15).

A hypothesis and an image: does the image entail the hypothesis, contradict it, or leave it open? The
official model is the VQA model with 3 answers, so the head is :class:`uniter_tf.models.vqa.VqaHead` with
``num_answers=3`` and its official keys stay ``vqa_output.*``. Labels (``utils/misc.py``): contradiction 0,
entailment 1, neutral 2, stored in the canonical record's ``label`` feature (``uniter ingest --format
snli_ve``). The loss is **not** softmax cross-entropy: it is the VQA loss, binary cross-entropy with logits
against the one-hot target, mean over the 3 entries × 3 (``train_ve.py:141``). No head learning-rate
multiplier (one parameter group schedule). Metric: accuracy (the argmax/one-hot product of the official
validation). The export serves the sigmoid of each class under its label name, as trained.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import keras
import numpy as np
import tensorflow as tf

from uniter_tf.data import schema
from uniter_tf.models.task import DownstreamTask, ExportOutputs, register_task
from uniter_tf.models.vqa import VqaHead, vqa_bce_loss

#: Label names, index = class (official ``utils/misc.py``; the same order as the SNLI-VE reader).
VE_LABELS = ("contradiction", "entailment", "neutral")
NUM_VE_LABELS = len(VE_LABELS)
VE_TARGET_KEY = "ve_target"
#: The task's registry / CLI name (``uniter finetune --task ve``).
VE_TASK_NAME = "ve"


def ve_one_hot_target(labels: tf.Tensor) -> tf.Tensor:
    """The dense ``[B, 3]`` target of the official txt_db (one label with score 1 per hypothesis).

    Args:
        labels: ``[B]`` (or ``[B, 1]``) integer labels in ``{0, 1, 2}``.

    Returns:
        float32 ``[B, 3]`` one-hot rows.

    Raises:
        tf.errors.InvalidArgumentError: a label outside ``[0, 3)`` (e.g. a record without a label, -1).
    """
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    checks = [
            tf.debugging.assert_non_negative(labels, message="label: a VE record has no label (or a negative one)"),
            tf.debugging.assert_less(labels, tf.constant(NUM_VE_LABELS, tf.int32),
                                     message=f"label: a VE label is >= {NUM_VE_LABELS} (labels are {VE_LABELS})"),
    ]
    with tf.control_dependencies(checks):
        return tf.one_hot(labels, NUM_VE_LABELS, dtype=tf.float32)


def ve_accuracy(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-hypothesis accuracy: the target value of the argmax class (official score product).

    Args:
        targets: ``[B, 3]`` one-hot targets.
        logits: ``[B, 3]`` logits.

    Returns:
        ``[B]`` float32, 1.0 where the argmax class is the label.
    """
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.gather(tf.cast(targets, tf.float32), predicted, axis=1, batch_dims=1)


@register_task("ve")  # a literal: tests read the registered names from the source
class SnliVeTask(DownstreamTask):
    """Visual entailment on SNLI-VE (spec §5.2).

    Args:
        head_learning_rate_multiplier: the head's LR multiplier; the official VE training has none (1.0).
    """

    name = VE_TASK_NAME
    label_keys = (schema.LABEL,)
    primary_metric = "accuracy"

    def __init__(self, head_learning_rate_multiplier: float = 1.0):
        if head_learning_rate_multiplier <= 0:
            raise ValueError(f"head_learning_rate_multiplier must be > 0, got {head_learning_rate_multiplier}")
        self.head_learning_rate_multiplier = float(head_learning_rate_multiplier)

    def build_head(self, hidden_size: int) -> keras.layers.Layer:
        # The official model subclasses the VQA model: same layers, same `vqa_output` name (spec §7.15).
        return VqaHead(hidden_size=hidden_size, num_answers=NUM_VE_LABELS, name="vqa_output")

    def keep_record(self, parsed: Mapping[str, tf.Tensor]) -> tf.Tensor:
        # Records without a label (schema.NO_LABEL) are captions or questions of other tasks.
        label = tf.reshape(tf.cast(parsed[schema.LABEL], tf.int32), [])
        return tf.logical_and(label >= 0, label < NUM_VE_LABELS)

    def targets_from_features(self, features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        if schema.LABEL not in features:
            raise KeyError(f"SNLI-VE needs the record feature {schema.LABEL!r}; the batch has {sorted(features)}")
        return {VE_TARGET_KEY: ve_one_hot_target(features[schema.LABEL])}

    def compute_loss(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> tf.Tensor:
        # train_ve.py:141: BCE-with-logits (reduction none) .mean() * 3, exactly VQA's reduction.
        return vqa_bce_loss(targets[VE_TARGET_KEY], logits)

    def compute_metrics(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> Dict[str, tf.Tensor]:
        return {"accuracy": ve_accuracy(targets[VE_TARGET_KEY], logits)}

    def answer_strings(self, logits) -> list:
        """The predicted label name of every hypothesis (the run's ``results_{step}.json`` values)."""
        return [VE_LABELS[int(index)] for index in np.argmax(np.asarray(logits), axis=-1)]

    def export_outputs(self) -> ExportOutputs:
        # Trained with per-class BCE: each class's probability is its sigmoid (they need not sum to 1).
        return ExportOutputs(name=self.name, activation="sigmoid", labels=list(VE_LABELS),
                             labels_output="labels", scores_output="label_scores")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SnliVeTask":
        """Constructs the task from :meth:`get_config`'s dict.

        Raises:
            ValueError: an unknown argument (named).
        """
        arguments = dict(config)
        unknown = sorted(set(arguments) - {"head_learning_rate_multiplier"})
        if unknown:
            raise ValueError(f"task 've' has no argument(s) {unknown}; it takes head_learning_rate_multiplier")
        return cls(**arguments)

    def get_config(self) -> Dict[str, object]:
        return {"head_learning_rate_multiplier": self.head_learning_rate_multiplier}
