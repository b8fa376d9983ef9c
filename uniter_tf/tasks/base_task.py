"""The Task interface (the shape of Model Garden's ``official/core/base_task.Task``) and its registry.

A :class:`Task` is *what* is learnt; :class:`uniter_tf.training.trainer.Trainer` is *how*. The Trainer
talks to a task only through this interface:

* ``build_model(model_config, dtype=)``: backbone + heads, built under the Trainer's strategy scope with
  the run's dtype policy passed as ``dtype=`` (the global Keras policy is never changed);
* ``stream_ratios()``: the input streams and their mix (pretraining: one stream per task or
  ``task/dataset``; a downstream task: one stream); one stream is drawn per optimizer update;
* ``build_inputs(stream, input_context, seed, training)``: the per-replica-batched ``tf.data.Dataset`` of a
  stream, a pure function of the seed (the Trainer resumes by replaying and skipping batches);
* ``compute_batch_loss(model, stream, batch, training)``: the scalar loss and the scalar metrics of one
  batch (named so because :class:`uniter_tf.models.task.DownstreamTask` keeps its historical
  ``compute_loss(targets, logits)``);
* ``learning_rate_multipliers(model)``: a multiplier per trainable variable (e.g. a head ×10);
* ``initialize(model, init, init_path, log)``: partial restore before step 0 (scratch / bert / official /
  pretrained);
* ``checkpoint_items(model)``: the ``tf.train.Checkpoint`` children of the model (the layout the exporter
  and a resume read);
* ``evaluate(model, files, max_batches)``: held-out metrics;
* ``write_run_files(output_dir, model_config, training_config)``: what a run directory needs besides
  checkpoints (the exporter's inputs);
* ``export_outputs()`` and ``from_config(dict)`` / ``get_config()``.

Tasks register by name (:func:`register_task`) and are built with :func:`get_task`.
"""

from __future__ import annotations

import abc
import importlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

# name → Task subclass; filled by the task modules at import time (see _TASK_MODULES).
TASK_REGISTRY: Dict[str, type] = {}

# Modules whose import registers tasks; imported by get_task so callers need one import only. A module
# that does not exist (yet) in this checkout is skipped.
_TASK_MODULES = ("uniter_tf.tasks.pretraining", "uniter_tf.models.vqa", "uniter_tf.models.snli_ve",
                 "uniter_tf.models.retrieval_task", "uniter_tf.models.refcoco_task", "uniter_tf.models.nlvr2_task",
                 "uniter_tf.models.vcr_task")

#: Keys every task accepts (the ``task`` section of an experiment config).
COMMON_PARAMS = ("model", "model_overrides", "train_files", "eval_files", "init", "init_path")
INIT_TYPES = ("scratch", "bert", "official", "pretrained")


def register_task(name: str):
    """Class decorator that makes a task available to :func:`get_task` under ``name``.

    Args:
        name: the task's registry / CLI name.

    Returns:
        The decorator.

    Raises:
        ValueError: another class is already registered under ``name``.
    """

    def decorator(task_class):
        if name in TASK_REGISTRY and TASK_REGISTRY[name] is not task_class:
            raise ValueError(f"task {name!r} is registered twice ({TASK_REGISTRY[name].__name__} and "
                             f"{task_class.__name__})")
        TASK_REGISTRY[name] = task_class
        return task_class

    return decorator


def _import_task_modules() -> None:
    for module in _TASK_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            # Only a missing task module itself is tolerated; a broken import inside it must surface.
            if error.name != module:
                raise


def get_task(name: str, **params) -> "Task":
    """Returns the task registered as ``name``, built with ``params`` (its :meth:`Task.from_config`).

    Args:
        name: a registered task name (``"pretraining"``, ``"vqa"``, ...).
        **params: the task's parameters (common keys :data:`COMMON_PARAMS` plus the task's own).

    Raises:
        ValueError: no task has that name, or a parameter is unknown / invalid (named in the message).
    """
    _import_task_modules()
    if name not in TASK_REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASK_REGISTRY)}")
    return TASK_REGISTRY[name].from_params(params)


def resolve_model_config(model: Any, overrides: Optional[Mapping[str, Any]] = None):
    """A :class:`~uniter_tf.config.UniterConfig` from a preset name, a JSON path or a dict, plus overrides."""
    from uniter_tf.config import UniterConfig  # pylint: disable=import-outside-toplevel

    if isinstance(model, UniterConfig):
        config = model
    elif isinstance(model, Mapping):
        config = UniterConfig.from_dict(dict(model))
    elif isinstance(model, str) and model:
        config = UniterConfig.resolve(model)
    else:
        raise ValueError(f"task.model must be a preset name, a JSON path or an object, got {model!r}")
    return config.replace(**dict(overrides)) if overrides else config


def check_common_params(params: Mapping[str, Any], task_name: str) -> Dict[str, Any]:
    """Validates and normalises the :data:`COMMON_PARAMS` of ``params`` (lists for file patterns).

    Raises:
        ValueError: naming the task and the field.
    """
    values = dict(params)
    for key in ("train_files", "eval_files"):
        files = values.get(key, [])
        if isinstance(files, str):
            files = [files] if files else []
        if not isinstance(files, (list, tuple)) or not all(isinstance(path, str) and path for path in files):
            raise ValueError(f"task {task_name!r}: {key} must be a list of file patterns, got {files!r}")
        values[key] = list(files)
    overrides = values.get("model_overrides", {}) or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"task {task_name!r}: model_overrides must be an object, got {overrides!r}")
    values["model_overrides"] = dict(overrides)
    init = values.get("init", "scratch")
    if init not in INIT_TYPES:
        raise ValueError(f"task {task_name!r}: init must be one of {INIT_TYPES}, got {init!r}")
    init_path = values.get("init_path", "") or ""
    if init != "scratch" and not init_path:
        raise ValueError(f"task {task_name!r}: init={init!r} needs init_path")
    values["init"], values["init_path"] = init, init_path
    return values


class Task(abc.ABC):
    """Base class of everything the Trainer can train (see the module docstring for the contract).

    Subclasses set :attr:`name` and implement the abstract methods. ``params`` holds the task section of
    the run's configuration (at least :data:`COMMON_PARAMS`).
    """

    #: The registry name of the task.
    name: str = ""

    # ----------------------------------------------------------------------------------- params
    @property
    def params(self) -> Dict[str, Any]:
        """The task's parameters (common keys with their defaults if never configured)."""
        params = getattr(self, "_task_params", None)
        if params is None:
            params = check_common_params({}, self.name)
            self._task_params = params
        return params

    def model_config(self):
        """The run's :class:`~uniter_tf.config.UniterConfig` (``model`` + ``model_overrides``)."""
        return resolve_model_config(self.params.get("model", "tiny"), self.params.get("model_overrides"))

    @property
    def train_files(self) -> List[str]:
        """Training file patterns."""
        return list(self.params.get("train_files", []))

    @property
    def eval_files(self) -> List[str]:
        """Held-out file patterns (may be empty)."""
        return list(self.params.get("eval_files", []))

    # ---------------------------------------------------------------------------- the contract
    @abc.abstractmethod
    def build_model(self, model_config=None, *, dtype=None):
        """Builds backbone + heads (call under the strategy scope).

        Args:
            model_config: a :class:`~uniter_tf.config.UniterConfig` (default: :meth:`model_config`).
            dtype: a Keras dtype policy name (``"mixed_float16"``) given to the backbone and the heads.
        """

    @abc.abstractmethod
    def stream_ratios(self) -> Dict[str, float]:
        """Input stream name → mixing ratio (> 0); one stream is drawn per optimizer update."""

    def stream_loss_group(self, stream: str) -> str:
        """The name of the dynamic loss scale a stream uses under ``mixed_float16`` (default: the stream)."""
        return stream

    @abc.abstractmethod
    def build_inputs(self, stream: str, input_context=None, seed: int = 42, training: bool = True):
        """The per-replica-batched, endlessly repeating training dataset of ``stream``.

        Must be a pure function of ``seed`` (and of ``input_context``'s pipeline id), so a resumed run can
        replay it and skip the consumed batches.
        """

    def prepare_batch(self, stream: str, batch):
        """Turns a batch of :meth:`build_inputs` into what :meth:`compute_batch_loss` takes (default: as is).

        Runs in the replica step but outside XLA (``jit_compile``): the place for dynamic-shape work such
        as dense targets from ragged label lists.
        """
        del stream
        return batch

    @abc.abstractmethod
    def compute_batch_loss(self, model, stream: str, batch, training: bool) -> Tuple[Any, Dict[str, Any]]:
        """``(scalar loss, {name: scalar metric})`` of one per-replica batch of ``stream`` (after
        :meth:`prepare_batch`)."""

    def batch_size(self, batch) -> Any:
        """Examples in a per-replica batch (a scalar tensor); the default reads the first tensor."""
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        return tf.shape(tf.nest.flatten(batch)[0])[0]

    def learning_rate_multipliers(self, model) -> List[float]:
        """One learning-rate multiplier per ``model.trainable_variables`` entry (default: all 1)."""
        return [1.0] * len(model.trainable_variables)

    @abc.abstractmethod
    def initialize(self, model, init: Optional[str] = None, init_path: Optional[str] = None,
                   log: Callable[[str], None] = print) -> None:
        """Initialises a fresh model before step 0 (default: the task's ``init`` / ``init_path``)."""

    @abc.abstractmethod
    def checkpoint_items(self, model) -> Dict[str, Any]:
        """The ``tf.train.Checkpoint`` children that hold the model's weights."""

    @abc.abstractmethod
    def evaluate(self, model, files: Optional[List[str]] = None, max_batches: Optional[int] = None, *,
                 seed: int = 43, output_dir: Optional[str] = None, step: Optional[int] = None) -> Dict[str, float]:
        """Held-out metrics (no dropout) on ``files`` (default: the task's eval files)."""

    def write_run_files(self, output_dir: str, model_config, training_config: Mapping[str, Any]) -> None:
        """Writes what a run directory needs besides checkpoints (default: nothing)."""
        del output_dir, model_config, training_config

    def export_outputs(self):
        """The task's served outputs (:class:`uniter_tf.models.task.ExportOutputs`), or None."""
        return None

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Task":
        """Builds the task from its parameters.

        Raises:
            ValueError: an unknown key (named) or an invalid value.
        """

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "Task":
        """Builds the task from a ``task`` config section (what :func:`get_task` calls).

        The default is :meth:`from_config`; tasks whose stored config differs from their run parameters
        (downstream tasks) override it.
        """
        return cls.from_config(params)

    def get_config(self) -> Dict[str, Any]:
        """The task's own constructor arguments (stored next to checkpoints and exports)."""
        return {}


__all__ = ["Task", "TASK_REGISTRY", "register_task", "get_task", "COMMON_PARAMS", "INIT_TYPES",
           "check_common_params", "resolve_model_config"]
