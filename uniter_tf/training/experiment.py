"""One experiment config for every task: a ``task``, a ``trainer`` and a ``runtime`` section in one JSON file.

The file (``configs/*.json``) is one JSON object::

    {
      "_command": "uniter train --config configs/finetune_vqa_tiny.json",
      "_expect": "what the run prints and how long it takes",
      "task": {"name": "vqa", "model": "tiny", "train_files": ["runs/synthetic_vqa/train-*.tfrecord.gz"],
               "answer_vocabulary_file": "runs/synthetic_vqa/ans2label.json"},
      "trainer": {"num_train_steps": 200, "warmup_steps": 20, "learning_rate": 5e-4},
      "runtime": {"output_dir": "runs/finetune_vqa_tiny"}
    }

* ``task``: ``name`` (a name of :func:`uniter_tf.tasks.get_task`: ``pretraining``, ``vqa``, ...) and the
  task's own parameters (``model``, ``train_files``, ``init``, ...), passed to ``get_task(name, **params)``.
* ``trainer``: the fields of :class:`uniter_tf.training.trainer_config.TrainerConfig` (optimizer, schedule,
  precision, accumulation, checkpoint / log / evaluation cadence, seed).
* ``runtime``: the fields of :class:`uniter_tf.training.trainer_config.RuntimeConfig` (``output_dir``,
  ``strategy``, ...).
* Top-level keys starting with ``_`` are documentation. The shipped configs start with ``_command`` (how
  to run them) and ``_expect`` (what to expect).

Overrides name a section: ``--set trainer.num_train_steps=100``, ``--set task.inputs.batch_size=16`` (a
nested object), ``--set runtime.output_dir=/tmp/run``; the value is parsed as JSON when it parses
(``100``, ``true``, ``["a*", "b*"]``, ``{"mlm": 1}``) and is a plain string otherwise. An unknown key (at
the top level or in a section) is an error naming the key and the file.

In code (the CLI, the TFX ``run_fn``, tests)::

    from uniter_tf.training.experiment import ExperimentConfig, run_experiment

    config = ExperimentConfig.from_file("configs/pretrain_local.json",
                                        ["trainer.num_train_steps=10", "runtime.output_dir=/tmp/run"])
    config = config.with_overrides({"task.train_files": ["/data/train-*.tfrecord.gz"]})  # values as is
    summary = run_experiment(config)  # writes /tmp/run/experiment.json, then trains (resumes if it can)

This module imports neither TensorFlow nor the tasks at import time: loading and checking a config is
fast, so that a typo fails before any TensorFlow work.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from uniter_tf.training.trainer_config import RuntimeConfig, TrainerConfig

#: The sections of an experiment config, in file order.
SECTIONS = ("task", "trainer", "runtime")
#: The resolved config of a run, written into its ``output_dir`` by :func:`run_experiment`.
EXPERIMENT_FILE_NAME = "experiment.json"
#: The documentation keys every shipped config starts with, in this order.
REQUIRED_NOTES = ("_command", "_expect")

_SECTION_CLASSES = {"trainer": TrainerConfig, "runtime": RuntimeConfig}


def is_experiment_dict(values: Any) -> bool:
    """Whether a parsed config file is in the experiment format (rather than a flat legacy format).

    The legacy formats are flat (``PretrainConfig`` / ``FinetuneConfig`` fields; the fine-tuning one has a
    string ``task``); an experiment has a ``trainer`` or ``runtime`` section or an object ``task``.
    """
    return isinstance(values, Mapping) and (
            "trainer" in values or "runtime" in values or isinstance(values.get("task"), Mapping))


def read_config_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Reads a JSON config file into a dict (local paths, or any ``tf.io.gfile`` URL such as ``gs://``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON, or not a JSON object (the message names the file).
    """
    path = os.fspath(path)
    if "://" in path:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(2, "No such file or directory", path)
        with tf.io.gfile.GFile(path, "r") as handle:
            text = handle.read()
    else:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config must be a JSON object, got {type(values).__name__}")
    return values


def parse_value(text: str) -> Any:
    """An override's value: JSON when it parses (``100``, ``true``, ``["a"]``), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string such as a path or a preset name


def apply_section_overrides(values: Mapping[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Applies ``section.key=value`` overrides to an experiment dict (a copy is returned).

    ``key`` may be dotted to reach into a nested object of the section (``task.inputs.batch_size=16``;
    missing objects on the way are created); the value is parsed by :func:`parse_value`.

    Raises:
        ValueError: an override without ``=``, without a section, with an unknown section, or one that
            reaches into a value that is not an object (the override is named).
    """
    values = json.loads(json.dumps(values))  # a deep copy, and a check that the dict is JSON
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"--set expects section.key=value, got {override!r}")
        key, text = override.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"--set {override}: the key must be section.key with section one of "
                             f"{list(SECTIONS)} (e.g. trainer.num_train_steps=100), got {key.strip()!r}")
        if parts[0] not in SECTIONS:
            raise ValueError(f"--set {override}: unknown section {parts[0]!r}; known: {list(SECTIONS)}")
        target = values
        for depth, part in enumerate(parts[:-1]):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {override}: {'.'.join(parts[:depth + 1])} is not an object "
                                 f"(it is {target!r})")
        target[parts[-1]] = parse_value(text)
    return values


def _overrides_from_mapping(changes: Mapping[str, Any]) -> List[str]:
    return [f"{key}={json.dumps(value)}" for key, value in changes.items()]


@dataclasses.dataclass
class ExperimentConfig:
    """A whole training run: what (``task``), how (``trainer``) and where (``runtime``).

    Build one with :meth:`from_file` (a JSON file plus ``--set`` overrides) or :meth:`from_dict`; both check
    every section at once (unknown keys and bad values name the key and the file). Then
    :meth:`build_task` / :meth:`build_trainer`, or :func:`run_experiment` for the whole run.

    Example::

        config = ExperimentConfig.from_file("configs/finetune_vqa_tiny.json", ["trainer.num_train_steps=4"])
        config.task["name"]             # "vqa"
        config.trainer.learning_rate    # 0.0005
        config.runtime.output_dir       # "runs/finetune_vqa_tiny"
        trainer = config.build_trainer()  # Trainer(get_task("vqa", ...), config.trainer, config.runtime)

    Attributes:
        task: the ``task`` section: ``name`` plus the task's parameters (``get_task(name, **params)``).
        trainer: the ``trainer`` section.
        runtime: the ``runtime`` section.
        notes: the documentation keys (``_command``, ``_expect``, ...), kept in :meth:`to_dict`.
        source: where the config came from (a file name, for messages).
    """

    task: Dict[str, Any]
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    notes: Dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "<config>"

    def __post_init__(self):
        if not isinstance(self.task, Mapping):
            raise ValueError(f"{self.source}: task: the task section must be an object with a 'name', got "
                             f"{self.task!r}")
        self.task = dict(self.task)
        name = self.task.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.source}: task: missing 'name' (the task to train, e.g. \"pretraining\" or "
                             f"\"vqa\"), got {name!r}")
        if isinstance(self.trainer, Mapping):
            self.trainer = _section(TrainerConfig, "trainer", self.trainer, self.source)
        if isinstance(self.runtime, Mapping):
            self.runtime = _section(RuntimeConfig, "runtime", self.runtime, self.source)

    @property
    def task_name(self) -> str:
        """The task's registered name (``task.name``)."""
        return self.task["name"]

    @property
    def task_params(self) -> Dict[str, Any]:
        """The task's parameters: the ``task`` section without ``name``."""
        return {key: value for key, value in self.task.items() if key != "name"}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], overrides: Sequence[str] = (), *,
                  source: str = "<config>") -> "ExperimentConfig":
        """Builds a config from a parsed experiment file, after ``section.key=value`` ``overrides``.

        Args:
            values: the JSON object (sections ``task``, ``trainer``, ``runtime``; ``_``-keys are notes).
            overrides: ``--set`` strings, applied in order.
            source: the file name used in error messages.

        Raises:
            ValueError: an unknown key or section, a missing ``task`` / ``task.name``, a bad value or a
                bad override; the message names the key and ``source``.
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"{source}: an experiment config must be a JSON object")
        if not is_experiment_dict(values):
            raise ValueError(f"{source}: not an experiment config (sections {list(SECTIONS)}); a flat "
                             "pretraining or fine-tuning config runs with `uniter pretrain` / `uniter finetune`")
        try:
            values = apply_section_overrides(values, overrides)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        notes = {key: value for key, value in values.items() if str(key).startswith("_")}
        unknown = sorted(key for key in values if not str(key).startswith("_") and key not in SECTIONS)
        if unknown:
            raise ValueError(f"{source}: unknown key {_names(unknown)} at the top level; known: {list(SECTIONS)} "
                             "(and '_'-prefixed notes)")
        if "task" not in values:
            raise ValueError(f"{source}: missing the 'task' section (an object with the task's 'name')")
        task = values["task"]
        if isinstance(task, Mapping):
            task = {key: value for key, value in task.items() if not str(key).startswith("_")}
        return cls(task=task, trainer=_section(TrainerConfig, "trainer", values.get("trainer", {}), source),
                   runtime=_section(RuntimeConfig, "runtime", values.get("runtime", {}), source), notes=notes,
                   source=source)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> "ExperimentConfig":
        """Reads an experiment file (local or ``tf.io.gfile`` path) and applies ``--set`` ``overrides``.

        Paths inside the config (``train_files``, ``init_path``, ``output_dir``, ...) stay as written:
        relative ones are relative to the working directory, as the configs' ``_command`` lines assume.

        Raises:
            FileNotFoundError: no such file.
            ValueError: see :meth:`from_dict` (the message names the file).
        """
        path = os.fspath(path)
        return cls.from_dict(read_config_file(path), overrides, source=path)

    def with_overrides(self, changes: Union[Mapping[str, Any], Sequence[str]]) -> "ExperimentConfig":
        """A copy with overrides applied and checked again.

        Args:
            changes: ``--set`` strings (``["trainer.seed=7"]``, values parsed as JSON) or a mapping of dotted
                keys to values taken as they are (``{"runtime.output_dir": path, "task.train_files": [...]}``).
        """
        overrides = _overrides_from_mapping(changes) if isinstance(changes, Mapping) else list(changes)
        return ExperimentConfig.from_dict(self.to_dict(), overrides, source=self.source)

    def to_dict(self) -> Dict[str, Any]:
        """The config as a JSON-serialisable dict in file order: notes, ``task``, ``trainer``, ``runtime``.

        Every trainer and runtime field is written (defaults resolved), so the dict reproduces the run.
        """
        values: Dict[str, Any] = copy.deepcopy(self.notes)
        values["task"] = copy.deepcopy(self.task)
        values["trainer"] = self.trainer.to_dict()
        values["runtime"] = self.runtime.to_dict()
        return values

    def to_pretrain_config(self):
        """The same run as a flat :class:`~uniter_tf.training.pretrain_config.PretrainConfig` (the
        ``Pretrainer``'s format): the task parameters, trainer and runtime fields side by side.

        Raises:
            ValueError: the task is not ``pretraining``, or a key the flat format does not know.
        """
        from uniter_tf.training.pretrain_config import PretrainConfig  # pylint: disable=import-outside-toplevel

        if self.task_name != "pretraining":
            raise ValueError(f"{self.source}: task.name is {self.task_name!r}; only a pretraining experiment has "
                             "a flat PretrainConfig")
        try:
            return PretrainConfig.from_dict({**self.task_params, **self.trainer.to_dict(), **self.runtime.to_dict()})
        except ValueError as error:
            raise ValueError(f"{self.source}: {error}") from None

    def to_finetune_config(self):
        """The same run as a flat :class:`~uniter_tf.training.finetune.FinetuneConfig` (``FinetuneRun``'s
        format): the common task keys and the trainer / runtime fields under their flat names, the task's
        own keys (``answer_vocabulary_file``, ...) in ``task_config``.

        Raises:
            ValueError: a pretraining experiment, an ``init`` other than scratch / pretrained, or
                ``checkpoint_every`` different from ``eval_every`` (the flat format ties them as
                ``valid_steps``).
        """
        from uniter_tf.training.finetune import FinetuneConfig  # pylint: disable=import-outside-toplevel

        if self.task_name == "pretraining":
            raise ValueError(f"{self.source}: a pretraining experiment has no flat FinetuneConfig")
        params = self.task_params
        init = params.pop("init", "scratch")
        init_path = params.pop("init_path", "")
        if init not in ("scratch", "pretrained"):
            raise ValueError(f"{self.source}: task.init={init!r} has no flat FinetuneConfig (only scratch and "
                             "pretrained); train it with `uniter train`")
        trainer = self.trainer
        valid_steps = trainer.eval_every or trainer.num_train_steps
        if trainer.checkpoint_every != valid_steps:
            raise ValueError(f"{self.source}: the flat FinetuneConfig checkpoints at every evaluation; "
                             f"trainer.checkpoint_every={trainer.checkpoint_every} differs from eval_every={valid_steps}")
        run_keys = ("model_overrides", "train_files", "eval_files", "train_batch_size", "eval_batch_size",
                    "max_text_length", "dropout")
        values = {key: params.pop(key) for key in run_keys if key in params}
        if "model" in params:
            values["model_config"] = params.pop("model")
        flat_trainer = {key: value for key, value in trainer.to_dict().items()
                        if key not in ("checkpoint_every", "eval_every", "eval_batches")}
        try:
            return FinetuneConfig.from_dict({
                    "task": self.task_name, "task_config": params, **values,
                    "pretrained_checkpoint": init_path if init == "pretrained" else None, **flat_trainer,
                    "valid_steps": valid_steps, "max_eval_batches": trainer.eval_batches, **self.runtime.to_dict()})
        except ValueError as error:
            raise ValueError(f"{self.source}: {error}") from None

    def build_task(self):
        """The task: ``uniter_tf.tasks.get_task(task.name, **task params)``.

        Raises:
            ValueError: an unknown task name or task parameter, or a bad value (the message names the file).
        """
        from uniter_tf import tasks  # pylint: disable=import-outside-toplevel

        try:
            return tasks.get_task(self.task_name, **self.task_params)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{self.source}: task: {error}") from None

    def build_trainer(self, strategy=None, log: Callable[[str], None] = print):
        """The :class:`uniter_tf.training.trainer.Trainer` of this run (the task is built here).

        Args:
            strategy: a ``tf.distribute.Strategy`` to use instead of ``runtime.strategy`` (tests, TFX).
            log: where progress lines go.
        """
        from uniter_tf.training.trainer import Trainer  # pylint: disable=import-outside-toplevel

        # The run record (stored with the task's run files, e.g. finetune_config.json) is this experiment.
        return Trainer(self.build_task(), self.trainer, self.runtime, strategy=strategy, log=log,
                       run_record=self.to_dict())


def _names(keys: Sequence[str]) -> str:
    return ", ".join(repr(key) for key in keys)


def _section(cls, name: str, values: Any, source: str):
    """Builds a trainer / runtime section, with errors that name the key, the section and the file."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: {name}: the section must be an object, got {values!r}")
    values = {key: value for key, value in values.items() if not str(key).startswith("_")}
    known = sorted(field.name for field in dataclasses.fields(cls))
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{source}: {name}: unknown key {_names(unknown)}; known: {known}")
    try:
        return cls.from_dict(values)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{source}: {error}") from None


def load_experiment(path: Union[str, os.PathLike], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """``ExperimentConfig.from_file(path, overrides)``."""
    return ExperimentConfig.from_file(path, overrides)


def write_experiment(config: ExperimentConfig, output_dir: Optional[str] = None) -> str:
    """Writes the resolved config as ``experiment.json`` into the run directory (``tf.io.gfile``).

    Returns:
        The path written.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    output_dir = output_dir or config.runtime.output_dir
    tf.io.gfile.makedirs(output_dir)
    path = os.path.join(output_dir, EXPERIMENT_FILE_NAME)  # posixpath: gs:// URLs join the same way
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(config.to_dict(), indent=2) + "\n")
    return path


def prepare_experiment(config: ExperimentConfig, *, strategy=None, log: Callable[[str], None] = print):
    """The first half of :func:`run_experiment`: builds the trainer and writes ``experiment.json`` (chief only).

    For callers that need the :class:`~uniter_tf.training.trainer.Trainer` itself (the TFX ``run_fn`` reads
    ``is_chief`` and the latest checkpoint, or checkpoints an untrained model); call ``trainer.train()`` next.

    Args:
        config: the experiment.
        strategy: optional ``tf.distribute.Strategy`` replacing ``runtime.strategy``.
        log: where progress lines go.

    Returns:
        The run's Trainer, not yet trained.
    """
    trainer = config.build_trainer(strategy=strategy, log=log)
    if getattr(trainer, "is_chief", True):
        write_experiment(config)
    return trainer


def run_experiment(config: ExperimentConfig, *, strategy=None, log: Callable[[str], None] = print):
    """Runs a whole experiment: builds the trainer, writes ``experiment.json``, trains.

    The resolved config goes into ``runtime.output_dir`` before training (by the chief only, when the
    trainer knows it is not the chief), so a run directory always says how it was made. Rerunning with
    the same ``output_dir`` resumes from the last checkpoint (the Trainer's behaviour).

    Args:
        config: the experiment.
        strategy: optional ``tf.distribute.Strategy`` replacing ``runtime.strategy``.
        log: where progress lines go.

    Returns:
        What :meth:`Trainer.train` returns (the run's summary).
    """
    return prepare_experiment(config, strategy=strategy, log=log).train()


__all__ = ["ExperimentConfig", "SECTIONS", "EXPERIMENT_FILE_NAME", "REQUIRED_NOTES", "is_experiment_dict",
           "read_config_file", "parse_value", "apply_section_overrides", "load_experiment", "write_experiment",
           "prepare_experiment", "run_experiment"]
