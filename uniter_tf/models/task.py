"""The downstream-task interface: what a task adds on top of the UNITER backbone.

A task (VQA, SNLI-VE, NLVR2, ITM retrieval, RefCOCO, VCR) is described by one :class:`DownstreamTask`
subclass. It owns everything that differs between tasks:

* the head (``build_head``), applied to the backbone's outputs by :class:`TaskModel`;
* the targets it reads from a parsed canonical record (``label_keys`` / ``targets_from_features``);
* the loss (``compute_loss``) and per-example metrics (``compute_metrics``);
* the head's learning-rate multiplier (``head_learning_rate_multiplier``), e.g. 10 for VQA;
* its export outputs (:meth:`DownstreamTask.export_outputs`): the served output names, the label
  vocabulary and how logits become scores (sigmoid or softmax);
* how it is rebuilt from its stored arguments (:meth:`DownstreamTask.from_config`).

The fine-tuning loop (:mod:`uniter_tf.training.finetune`), the ``uniter finetune`` command, the TFX
``run_fn``, the exporter and the evaluator only talk to this interface, so a new task is one file that
subclasses it and one line in :data:`TASK_REGISTRY`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import keras
import tensorflow as tf

# name → zero-argument-or-kwargs factory; filled by the task modules at import time.
TASK_REGISTRY: Dict[str, Callable[..., "DownstreamTask"]] = {}


def register_task(name: str):
    """Class decorator that makes a task available to :func:`get_task` under ``name``.

    Args:
        name: the task's CLI name (``uniter finetune --task NAME``).

    Returns:
        The decorator.
    """

    def decorator(task_class):
        if name in TASK_REGISTRY and TASK_REGISTRY[name] is not task_class:
            raise ValueError(f"task {name!r} is registered twice")
        TASK_REGISTRY[name] = task_class
        return task_class

    return decorator


def get_task(name: str, **task_kwargs) -> "DownstreamTask":
    """Returns the task registered as ``name``, constructed with ``task_kwargs``.

    Args:
        name: a registered task name, e.g. ``"vqa"``.
        **task_kwargs: constructor arguments of that task (e.g. ``num_answers``).

    Raises:
        ValueError: if no task has that name.
    """
    # Importing the task modules registers them; kept here so callers need one import only.
    from uniter_tf.models import vqa  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    from uniter_tf.models import snli_ve  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel

    if name not in TASK_REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASK_REGISTRY)}")
    return TASK_REGISTRY[name].from_config(task_kwargs)


#: How served logits become scores.
EXPORT_ACTIVATIONS = ("sigmoid", "softmax")


@dataclasses.dataclass(frozen=True)
class ExportOutputs:
    """What a task adds to every scoring signature of an export (docs/serving.md).

    The exporter reads this and nothing else about the task, so it never names one.

    Attributes:
        name: the task's name, recorded in the export's metadata.
        activation: how logits become label scores: ``"sigmoid"`` for heads trained with binary
            cross-entropy per class (VQA, SNLI-VE in UNITER), ``"softmax"`` for cross-entropy heads.
        labels: the label strings, index = class (e.g. the VQA answers), or None (then only the logits
            are served).
        logits_output: the output name of the head's logits ``[B, C]``.
        labels_output: the output name of the ``top_k`` best labels ``[B, k]`` (with ``labels``).
        scores_output: the output name of their scores ``[B, k]`` (with ``labels``).
    """

    name: str
    activation: str = "softmax"
    labels: Optional[Sequence[str]] = None
    logits_output: str = "task_logits"
    labels_output: str = "answers"
    scores_output: str = "answer_scores"

    def __post_init__(self):
        if not self.name:
            raise ValueError("ExportOutputs.name must be non-empty")
        if self.activation not in EXPORT_ACTIVATIONS:
            raise ValueError(f"ExportOutputs.activation of task {self.name!r} must be one of {EXPORT_ACTIVATIONS}, "
                             f"got {self.activation!r}")
        names = (self.logits_output, self.labels_output, self.scores_output)
        if len(set(names)) != 3 or not all(names):
            raise ValueError(f"ExportOutputs of task {self.name!r}: the output names must be distinct and "
                             f"non-empty, got {names}")


class DownstreamTask(abc.ABC):
    """Base class of a downstream task: head, targets, loss and metrics.

    Subclasses set the class attributes and implement the abstract methods. Targets and predictions
    are dicts of tensors whose first dimension is the batch.
    """

    #: The CLI / registry name of the task.
    name: str = ""
    #: Canonical-record features (``uniter_tf.data.schema`` names) the targets are built from.
    label_keys: Tuple[str, ...] = ()
    #: Learning rate of the head's variables = base rate × this (the official ``lr_mul``).
    head_learning_rate_multiplier: float = 1.0
    #: The metric the evaluator and the fine-tuning loop report as the task's headline number.
    primary_metric: str = ""

    @abc.abstractmethod
    def build_head(self, hidden_size: int) -> keras.layers.Layer:
        """Builds the task head, a Keras layer mapping the backbone's output dict to logits.

        Args:
            hidden_size: H, the backbone's hidden size.
        """

    @abc.abstractmethod
    def targets_from_features(self, features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Turns a batch of parsed canonical-record features into dense targets.

        Args:
            features: the parsed batch (dense or ragged tensors keyed by schema names).

        Returns:
            A dict of dense target tensors with leading batch dimension.
        """

    @abc.abstractmethod
    def compute_loss(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> tf.Tensor:
        """The scalar training loss of a batch, reduced as the official code reduces it."""

    @abc.abstractmethod
    def compute_metrics(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Per-example metric values ``{name: [B] float32}``; their mean over a split is the metric."""

    def keep_record(self, parsed: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Whether a parsed canonical record carries this task's labels (a scalar bool tensor).

        The default keeps every record; tasks override it (VQA keeps records with answers).
        """
        del parsed
        return tf.constant(True)

    def build_model(self, backbone: keras.layers.Layer, hidden_size: int) -> "keras.Model":
        """Builds the task model: the given (usually pretrained) backbone with this task's head.

        Args:
            backbone: a UNITER backbone (takes the input dict of docs/architecture.md, returns a dict
                with ``pooled_output``).
            hidden_size: H.

        Returns:
            A :class:`uniter_tf.models.task_model.TaskModel`.
        """
        from uniter_tf.models.task_model import TaskModel  # pylint: disable=import-outside-toplevel

        return TaskModel(backbone=backbone, head=self.build_head(hidden_size), task_name=self.name,
                         name=f"uniter_{self.name}")

    def export_outputs(self) -> ExportOutputs:
        """The task's served outputs; by default its logits under softmax, without labels.

        Tasks with a label vocabulary or a sigmoid head override this.
        """
        return ExportOutputs(name=self.name)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "DownstreamTask":
        """Constructs the task from :meth:`get_config`'s dict (or a config file's ``task_config``)."""
        return cls(**dict(config))

    def get_config(self) -> Dict[str, object]:
        """Constructor arguments of the task (stored next to checkpoints and exports)."""
        return {}
