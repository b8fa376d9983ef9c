"""The hook through which a fine-tuned task head joins the exported signatures."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

ACTIVATIONS = ("sigmoid", "softmax")


@dataclasses.dataclass
class TaskHeadExport:
    """A task head to add to every scoring signature.

    The head receives the backbone's output dict (as :class:`uniter_tf.models.task_model.TaskModel`
    calls it) and returns logits ``[B, C]``. The signatures then also answer ``task_logits [B, C]`` and,
    when ``labels`` are given, the ``top_k`` best labels as ``answers [B, k]`` (strings, read from an
    asset file in the SavedModel) with their probabilities ``answer_scores [B, k]``.

    Attributes:
        name: the task's name (kept in the export's metadata), e.g. ``"vqa"``.
        head: the built Keras layer.
        labels: the label strings, index = class (the VQA answer vocabulary), or ``None``.
        top_k: how many labels to return (at most C).
        activation: how logits become probabilities: ``"sigmoid"`` for heads trained with binary
            cross-entropy (VQA, SNLI-VE in UNITER), ``"softmax"`` for cross-entropy heads.
    """

    name: str
    head: object
    labels: Optional[Sequence[str]] = None
    top_k: int = 5
    activation: str = "sigmoid"

    def __post_init__(self):
        if not self.name:
            raise ValueError("TaskHeadExport.name must be non-empty")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"TaskHeadExport.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.top_k < 1:
            raise ValueError(f"TaskHeadExport.top_k must be >= 1, got {self.top_k}")
        if self.labels is not None:
            self.labels = [str(label) for label in self.labels]
            if not self.labels:
                raise ValueError("TaskHeadExport.labels is empty")
            bad = [index for index, label in enumerate(self.labels) if "\n" in label or "\r" in label]
            if bad:
                raise ValueError(f"TaskHeadExport.labels: label {bad[0]} contains a line break (labels are "
                                 f"stored one per line)")
            self.top_k = min(self.top_k, len(self.labels))


def vqa_task_head(task_model, task, top_k: int = 5) -> TaskHeadExport:
    """The hook for a fine-tuned VQA model.

    Args:
        task_model: the :class:`~uniter_tf.models.task_model.TaskModel` (its ``head`` is used).
        task: the :class:`~uniter_tf.models.vqa.VqaTask` (its ``answer_vocabulary`` names the answers).
        top_k: answers per question.
    """
    return TaskHeadExport(name=getattr(task, "name", "vqa"), head=task_model.head,
                          labels=getattr(task, "answer_vocabulary", None), top_k=top_k, activation="sigmoid")
