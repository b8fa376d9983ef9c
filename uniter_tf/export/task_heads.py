"""The hook through which a fine-tuned task head joins the exported signatures."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

ACTIVATIONS = ("sigmoid", "softmax")


@dataclasses.dataclass
class TaskHeadExport:
    """A task head to add to every scoring signature.

    The head receives the backbone's output dict (as :class:`uniter_tf.models.task_model.TaskModel`
    calls it) and returns logits ``[B, C]``. The signatures then also answer ``logits_output [B, C]``
    and, when ``labels`` are given, the ``top_k`` best labels as ``labels_output [B, k]`` (strings, read
    from an asset file in the SavedModel) with their probabilities ``scores_output [B, k]``. Build it from
    the task's own declaration with :meth:`from_task`; nothing here knows a task by name.

    Attributes:
        name: the task's name (kept in the export's metadata), e.g. ``"vqa"``.
        head: the built Keras layer.
        labels: the label strings, index = class (the VQA answer vocabulary), or ``None``.
        top_k: how many labels to return (at most C).
        activation: how logits become probabilities: ``"sigmoid"`` for heads trained with binary
            cross-entropy, ``"softmax"`` for cross-entropy heads.
        logits_output: output name of the logits.
        labels_output: output name of the top labels.
        scores_output: output name of their scores.
    """

    name: str
    head: object
    labels: Optional[Sequence[str]] = None
    top_k: int = 5
    activation: str = "sigmoid"
    logits_output: str = "task_logits"
    labels_output: str = "answers"
    scores_output: str = "answer_scores"

    def __post_init__(self):
        if not self.name:
            raise ValueError("TaskHeadExport.name must be non-empty")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"TaskHeadExport.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.top_k < 1:
            raise ValueError(f"TaskHeadExport.top_k must be >= 1, got {self.top_k}")
        reserved = {"itm_score", "itm_logits", "pooled_output", "example_id"}
        names = (self.logits_output, self.labels_output, self.scores_output)
        clashes = sorted(reserved.intersection(names))
        if clashes or len(set(names)) != 3:
            raise ValueError(f"TaskHeadExport of task {self.name!r}: output names {names} must be distinct and not "
                             f"{sorted(reserved)}")
        if self.labels is not None:
            self.labels = [str(label) for label in self.labels]
            if not self.labels:
                raise ValueError("TaskHeadExport.labels is empty")
            bad = [index for index, label in enumerate(self.labels) if "\n" in label or "\r" in label]
            if bad:
                raise ValueError(f"TaskHeadExport.labels: label {bad[0]} contains a line break (labels are "
                                 f"stored one per line)")
            self.top_k = min(self.top_k, len(self.labels))

    @classmethod
    def from_task(cls, task, head, top_k: int = 5) -> "TaskHeadExport":
        """The hook of a task: its ``export_outputs()`` declaration with its built head.

        Args:
            task: a :class:`~uniter_tf.models.task.DownstreamTask` (anything with ``export_outputs()``
                returning a :class:`~uniter_tf.models.task.ExportOutputs`).
            head: the task's built head (weights restored).
            top_k: labels per example.
        """
        outputs = task.export_outputs()
        return cls(name=outputs.name, head=head, labels=outputs.labels, top_k=top_k, activation=outputs.activation,
                   logits_output=outputs.logits_output, labels_output=outputs.labels_output,
                   scores_output=outputs.scores_output)
