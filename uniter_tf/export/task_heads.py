"""The hook through which a fine-tuned task head joins the exported signatures."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:  # the models package (Keras) is only needed once a hook is built
    from uniter_tf.models.task import ExportOutputs

#: Outputs every scoring signature already has (and ``serve_examples``' pass-through id): a task's own
#: output names must differ from them.
RESERVED_OUTPUTS = ("itm_score", "itm_logits", "pooled_output", "example_id")


@dataclasses.dataclass
class TaskHeadExport:
    """A task head to add to every scoring signature.

    The head receives the backbone's output dict (as :class:`uniter_tf.models.task_model.TaskModel`
    calls it) and returns logits ``[B, C]``. The signatures then also answer ``outputs.logits_output
    [B, C]`` and, when the declaration has labels, the ``top_k`` best labels as ``outputs.labels_output
    [B, k]`` (strings, read from an asset file in the SavedModel) with their probabilities
    ``outputs.scores_output [B, k]``. Build it from the task's own declaration with :meth:`from_task`;
    nothing here knows a task by name.

    Attributes:
        outputs: the task's :class:`~uniter_tf.models.task.ExportOutputs` (name, activation, label
            vocabulary and output names); held as declared, never copied field by field.
        head: the built Keras layer.
        top_k: how many labels to return (at most the number of labels).
        labels: the declaration's labels as a list of strings, or ``None`` (derived, not an argument).
    """

    outputs: "ExportOutputs"
    head: object
    top_k: int = 5
    labels: Optional[List[str]] = dataclasses.field(init=False, default=None)

    def __post_init__(self):
        from uniter_tf.models.task import ExportOutputs

        if not isinstance(self.outputs, ExportOutputs):
            raise TypeError(f"TaskHeadExport.outputs must be an ExportOutputs, got {type(self.outputs).__name__}")
        if self.top_k < 1:
            raise ValueError(f"TaskHeadExport of task {self.name!r}: top_k must be >= 1, got {self.top_k}")
        names = (self.outputs.logits_output, self.outputs.labels_output, self.outputs.scores_output)
        clashes = sorted(set(RESERVED_OUTPUTS).intersection(names))
        if clashes:
            raise ValueError(f"TaskHeadExport of task {self.name!r}: output names {names} must not be "
                             f"{sorted(RESERVED_OUTPUTS)} (clash: {clashes})")
        if self.outputs.labels is not None:
            labels = [str(label) for label in self.outputs.labels]
            if not labels:
                raise ValueError(f"TaskHeadExport of task {self.name!r}: the label list is empty")
            bad = [index for index, label in enumerate(labels) if "\n" in label or "\r" in label]
            if bad:
                raise ValueError(f"TaskHeadExport of task {self.name!r}: label {bad[0]} contains a line break "
                                 f"(labels are stored one per line)")
            self.labels = labels
            self.top_k = min(self.top_k, len(labels))

    @property
    def name(self) -> str:
        """The task's name (kept in the export's metadata), e.g. ``"vqa"``."""
        return self.outputs.name

    @classmethod
    def from_task(cls, task, head, top_k: int = 5) -> "TaskHeadExport":
        """The hook of a task: its ``export_outputs()`` declaration with its built head.

        Args:
            task: a task (anything with ``export_outputs()`` returning a
                :class:`~uniter_tf.models.task.ExportOutputs`).
            head: the task's built head (weights restored).
            top_k: labels per example.
        """
        return cls(outputs=task.export_outputs(), head=head, top_k=top_k)
