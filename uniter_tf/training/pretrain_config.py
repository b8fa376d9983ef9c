"""The pretraining run configuration: a JSON file plus ``--set key=value`` overrides.

The file is one JSON object with the fields of :class:`PretrainConfig`; keys starting with ``_`` (such as
``_command`` and ``_expect``, the command that runs the config and the result to expect) are comments.
``inputs`` holds the :class:`~uniter_tf.data.pretraining_inputs.PretrainingInputConfig` fields and
``model_overrides`` any :class:`~uniter_tf.config.UniterConfig` field. Overrides use dotted keys for nested
objects (``--set inputs.batch_size=16``) and JSON values (``--set task_ratios='{"mlm": 1}'``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from uniter_tf.data.pretraining_inputs import PretrainingInputConfig, TASKS
from uniter_tf.tasks.base_task import INIT_TYPES
from uniter_tf.tasks.pretraining import DEFAULT_TASK_RATIOS, OWN_PARAMS, PretrainingTask, mix_ratios, mix_task
from uniter_tf.training.experiment import parse_value
from uniter_tf.training.trainer_config import PRECISIONS, RuntimeConfig, TrainerConfig

#: PretrainConfig fields of the task section (the others are TrainerConfig / RuntimeConfig fields).
TASK_FIELDS = ("model", "model_overrides", "train_files", "eval_files", "init", "init_path") + OWN_PARAMS


@dataclasses.dataclass
class _PretrainTaskFields:
    """The task-section fields of :class:`PretrainConfig` (:class:`PretrainingTask`'s parameters)."""

    model: str = "tiny"
    model_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    train_files: List[str] = dataclasses.field(default_factory=list)
    train_datasets: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    eval_files: List[str] = dataclasses.field(default_factory=list)
    inputs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    task_ratios: Dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_TASK_RATIOS))
    init: str = "scratch"
    init_path: str = ""
    max_masked_tokens: Optional[int] = None
    max_masked_regions: Optional[int] = None


@dataclasses.dataclass
class PretrainConfig(TrainerConfig, RuntimeConfig, _PretrainTaskFields):
    """Everything a pretraining run needs, flat: the ``pretraining`` task's parameters beside the fields of
    :class:`TrainerConfig` and :class:`RuntimeConfig` (inherited, with their defaults and checks; only
    ``output_dir`` defaults to ``runs/pretrain`` here). The flat format of ``uniter pretrain --config``; an
    experiment config (:mod:`uniter_tf.training.experiment`) holds the same fields in sections.

    Task fields (see :class:`~uniter_tf.tasks.pretraining.PretrainingTask`):
        model: a ``UniterConfig`` preset name or JSON path (``uniter-base``, ``tiny``, ...).
        model_overrides: ``UniterConfig`` fields to change (e.g. dropout).
        train_files: glob(s) of canonical GZIP TFRecord shards (one dataset; tasks mixed by ``task_ratios``).
        train_datasets: instead of ``train_files``, the official per-dataset mix (spec §3.9): a list of
            ``{"name": ..., "files": [...], "task_ratios": {...}}``; one (task, dataset) pair is drawn per
            update with probability proportional to its ratio. ``task_ratios`` is then unused.
        eval_files: held-out shards evaluated at the end (and every ``eval_every`` steps); may be empty.
        inputs: input-pipeline options (:class:`PretrainingInputConfig` fields).
        task_ratios: task → mix ratio; one task is drawn per optimizer update, ``P ∝ ratio``.
        init: ``scratch``, ``bert``, ``official`` or ``pretrained``; init_path: its file or directory.
        max_masked_tokens / max_masked_regions: static K of masked tokens / regions per example (XLA).

    Trainer and runtime fields: those of :class:`TrainerConfig` (``num_train_steps``, ``learning_rate``,
    ``precision``, ``eval_batches``, ...) and :class:`RuntimeConfig` (``output_dir``, ``strategy``, ...).
    """

    output_dir: str = "runs/pretrain"

    def __post_init__(self):
        if isinstance(self.train_files, str):
            self.train_files = [self.train_files]
        if isinstance(self.eval_files, str):
            self.eval_files = [self.eval_files] if self.eval_files else []
        TrainerConfig.__post_init__(self)
        RuntimeConfig.__post_init__(self)
        # The task's own checks (ratios, datasets, init, inputs), so a typo fails before any TensorFlow work.
        task = PretrainingTask.from_config(self.task_params())
        self.train_datasets = [dict(entry) for entry in task.train_datasets]

    def input_config(self) -> PretrainingInputConfig:
        """The input-pipeline options as a :class:`PretrainingInputConfig`."""
        return PretrainingInputConfig.from_dict(self.inputs)

    def active_tasks(self) -> List[str]:
        """Tasks with a positive ratio (in any dataset), in a fixed order."""
        return sorted({mix_task(key) for key in self.mix_ratios()}, key=TASKS.index)

    def mix_ratios(self) -> Dict[str, float]:
        """The mixing ratio of every input stream: ``task`` keys for ``train_files``, ``task/dataset`` keys
        for ``train_datasets`` (see :func:`mix_task`)."""
        return mix_ratios(self.task_ratios, self.train_datasets)

    def files_for(self, mix_key: str) -> List[str]:
        """The training files of the stream ``mix_key`` (a key of :meth:`mix_ratios`)."""
        if "/" not in mix_key:
            return list(self.train_files)
        name = mix_key.split("/", 1)[1]
        for entry in self.train_datasets:
            if entry["name"] == name:
                return list(entry["files"])
        raise KeyError(f"no training dataset named {name!r}")

    def to_dict(self) -> Dict[str, Any]:
        """The config as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def task_params(self) -> Dict[str, Any]:
        """The parameters of the run's :class:`~uniter_tf.tasks.pretraining.PretrainingTask`."""
        return {name: getattr(self, name) for name in TASK_FIELDS}

    def trainer_config(self) -> TrainerConfig:
        """The run's :class:`TrainerConfig` (its inherited fields)."""
        return TrainerConfig(**{field.name: getattr(self, field.name) for field in dataclasses.fields(TrainerConfig)})

    def runtime_config(self) -> RuntimeConfig:
        """The run's :class:`RuntimeConfig` (its inherited fields)."""
        return RuntimeConfig(**{field.name: getattr(self, field.name) for field in dataclasses.fields(RuntimeConfig)})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PretrainConfig":
        """Builds a config; ``_``-prefixed keys are comments, unknown keys raise ``ValueError``."""
        values = {key: value for key, value in values.items() if not key.startswith("_")}
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown pretraining config keys: {unknown}")
        return cls(**values)


def apply_overrides(values: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Applies ``key=value`` overrides (dotted keys for nested objects; values parsed as JSON).

    Raises:
        ValueError: an override without ``=``.
    """
    values = json.loads(json.dumps(values))
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"--set expects key=value, got {override!r}")
        key, text = override.split("=", 1)
        target = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {key}: {part!r} is not an object")
        target[parts[-1]] = parse_value(text)
    return values


def load_config(path: Optional[Union[str, os.PathLike]] = None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Reads a JSON config file (optional) and applies ``overrides``.

    Paths in ``train_files`` / ``eval_files`` / ``init_path`` / ``output_dir`` stay as written (relative
    to the working directory, as the configs' ``_command`` lines assume).
    """
    values: Dict[str, Any] = {}
    if path:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        with tf.io.gfile.GFile(os.fspath(path), "r") as handle:
            values = json.loads(handle.read())
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a pretraining config must be a JSON object")
    return PretrainConfig.from_dict(apply_overrides(values, overrides))


__all__ = ["PretrainConfig", "DEFAULT_TASK_RATIOS", "mix_task", "PRECISIONS", "INIT_TYPES", "apply_overrides", "load_config"]
