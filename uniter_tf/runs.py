"""Trained run directories: what they hold, the checkpoint layouts, and rebuilding their model.

Training (:mod:`uniter_tf.training`) writes run directories; the exporter (:mod:`uniter_tf.export`),
``uniter visualize`` and evaluation read them. Neither side imports the other (tests/test_import_layering.py
checks it): what both need lives here, so the file names and the checkpoint layout are defined once.

A run directory holds:

* ``checkpoints/``: ``tf.train.Checkpoint`` files. A pretraining run keys the model as
  ``model -> {backbone.<path>, heads.<path>}`` (:func:`model_variable_tree`); a task run keys
  ``backbone.<path>``, ``head`` and ``itm_head`` (:func:`task_checkpoint`).
* ``finetune_config.json`` (task runs): ``{"task_name", "task", "max_text_length", "model", "finetune"}``:
  the task's registered name and constructor arguments (:meth:`DownstreamTask.get_config`), the text
  limit of training (tokens without ``[CLS]``/``[SEP]``), the :class:`~uniter_tf.config.UniterConfig`
  dict and the training configuration as given (kept for the record; only the keys above are read).
* ``model_config.json`` (pretraining runs, optional): the :class:`~uniter_tf.config.UniterConfig` dict,
  so that the run can be rebuilt without naming its configuration.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

import tensorflow as tf

#: The checkpoints' sub-directory of a run directory.
CHECKPOINT_SUBDIR = "checkpoints"
#: The task run's description (see the module docstring).
TASK_RUN_CONFIG_FILE = "finetune_config.json"
#: A pretraining run's model configuration.
MODEL_CONFIG_FILE = "model_config.json"
#: Name of the model's dependency inside pretraining checkpoints (``tf.train.Checkpoint(model=...)``).
MODEL_KEY = "model"
#: Prefix of the backbone's weights inside a variable tree.
BACKBONE_KEY = "backbone"


# ------------------------------------------------------------------------------------------ layouts

def _relative_path(variable, owner_name: str) -> str:
    path = str(getattr(variable, "path", None) or variable.name).split(":")[0]
    head, _, rest = path.partition("/")
    return rest if head == owner_name and rest else path


def _backbone_entries(backbone):
    entries = {}
    for variable in backbone.weights:
        key = f"{BACKBONE_KEY}.{_relative_path(variable, backbone.name)}".replace("/", ".")
        if key in entries:
            raise ValueError(f"two backbone weights share the checkpoint key {key!r}")
        entries[key] = getattr(variable, "value", variable)
    return entries


def backbone_variable_tree(backbone) -> tf.train.Checkpoint:
    """A checkpointable tree ``{backbone.<path>: variable}`` over every weight of a backbone.

    Why not ``tf.train.Checkpoint(model=keras_model)``: Keras 3 does not expose layers held in a Python
    list (the backbone's ``encoder_layers``) as checkpoint dependencies, so an object-graph checkpoint
    silently leaves out the whole transformer. Keying every weight by its Keras path avoids that.
    """
    return tf.train.Checkpoint(**_backbone_entries(backbone))


def model_variable_tree(model) -> tf.train.Checkpoint:
    """The variable tree of a pretraining model: the backbone's keys plus ``heads.<path>`` for the rest."""
    entries = _backbone_entries(model.backbone)
    backbone_ids = {id(variable) for variable in entries.values()}
    for variable in model.weights:
        tf_variable = getattr(variable, "value", variable)
        if id(tf_variable) in backbone_ids:
            continue
        key = f"heads.{_relative_path(variable, model.name)}".replace("/", ".")
        if key in entries:
            raise ValueError(f"two model weights share the checkpoint key {key!r}")
        entries[key] = tf_variable
    return tf.train.Checkpoint(**entries)


def task_checkpoint(backbone, head, itm_head, **extra) -> tf.train.Checkpoint:
    """The checkpoint layout of a task (fine-tuning) run: backbone by path, the task head, the ITM head.

    Args:
        backbone: the :class:`~uniter_tf.models.backbone.UniterBackbone`.
        head: the task head.
        itm_head: the ITM head (kept so a task model still scores image-text pairs).
        **extra: more dependencies (the trainer's optimizers and step).
    """
    return tf.train.Checkpoint(backbone=backbone_variable_tree(backbone), head=head, itm_head=itm_head, **extra)


def resolve_checkpoint_path(checkpoint_dir_or_prefix: str) -> str:
    """The checkpoint prefix of a directory (its latest checkpoint, also looking in ``checkpoints/``)
    or a prefix itself.

    Raises:
        FileNotFoundError: nothing restorable there.
    """
    path = os.fspath(checkpoint_dir_or_prefix)
    if tf.io.gfile.isdir(path):
        for directory in (path, os.path.join(path, CHECKPOINT_SUBDIR)):
            latest = tf.train.latest_checkpoint(directory)
            if latest:
                return latest
        raise FileNotFoundError(f"no checkpoint in {path!r} (nor in {path}/{CHECKPOINT_SUBDIR})")
    if tf.io.gfile.exists(path + ".index"):
        return path
    raise FileNotFoundError(f"{path!r} is neither a checkpoint directory nor a checkpoint prefix")


def restore_pretraining_model(model, checkpoint_dir: str) -> str:
    """Restores every weight (backbone and heads) of a pretraining model from one of our checkpoints.

    Args:
        model: a :class:`~uniter_tf.models.pretraining_model.UniterPretrainingModel` of the same config.
        checkpoint_dir: a run directory, its ``checkpoints/`` directory, or a checkpoint prefix.

    Returns:
        The checkpoint prefix that was restored.

    Raises:
        FileNotFoundError: no checkpoint found.
        AssertionError: (from TensorFlow) a model variable has no value in the checkpoint.
    """
    path = resolve_checkpoint_path(checkpoint_dir)
    status = tf.train.Checkpoint(**{MODEL_KEY: model_variable_tree(model)}).restore(path)
    status.expect_partial()
    status.assert_existing_objects_matched()
    return path


# ------------------------------------------------------------------------------- run descriptions

def _write_json(path: str, values: Mapping[str, Any]) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(values, indent=2, sort_keys=True))


def _read_json_object(path: str) -> dict:
    with tf.io.gfile.GFile(path, "r") as handle:
        try:
            values = json.loads(handle.read())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return values


def write_task_run_config(run_dir: str, task, model_config, max_text_length: int,
                          training_config: Optional[Mapping[str, Any]] = None) -> str:
    """Writes ``finetune_config.json``: everything needed to rebuild the task model of ``run_dir``.

    Args:
        run_dir: the run directory.
        task: the :class:`~uniter_tf.models.task.DownstreamTask` (its ``name`` and ``get_config()``).
        model_config: the :class:`~uniter_tf.config.UniterConfig`.
        max_text_length: the text limit of training (tokens without ``[CLS]``/``[SEP]``).
        training_config: the training configuration, stored under ``finetune`` for the record.

    Returns:
        The written path.
    """
    path = os.path.join(run_dir, TASK_RUN_CONFIG_FILE)
    _write_json(path, {"task_name": task.name, "task": task.get_config(), "max_text_length": int(max_text_length),
                       "model": model_config.to_dict(), "finetune": dict(training_config or {})})
    return path


def write_model_config(run_dir: str, model_config) -> str:
    """Writes a pretraining run's ``model_config.json`` (so export needs no ``--config``)."""
    path = os.path.join(run_dir, MODEL_CONFIG_FILE)
    _write_json(path, model_config.to_dict())
    return path


def is_task_run(run_dir: str) -> bool:
    """Whether ``run_dir`` is a task run (holds ``finetune_config.json``)."""
    return tf.io.gfile.exists(os.path.join(run_dir, TASK_RUN_CONFIG_FILE))


def read_model_config(run_dir: str):
    """The :class:`~uniter_tf.config.UniterConfig` of a pretraining run's ``model_config.json``, or None."""
    from uniter_tf.config import UniterConfig  # pylint: disable=import-outside-toplevel

    path = os.path.join(run_dir, MODEL_CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return None
    return UniterConfig.from_dict(_read_json_object(path), allow_unknown=True)


@dataclasses.dataclass
class TaskRunConfig:
    """What ``finetune_config.json`` says about a task run.

    Attributes:
        task: the constructed task.
        model_config: the :class:`~uniter_tf.config.UniterConfig`.
        max_text_length: the text limit of training (tokens without ``[CLS]``/``[SEP]``), or None.
    """

    task: Any
    model_config: Any
    max_text_length: Optional[int]


def read_task_run_config(run_dir: str) -> TaskRunConfig:
    """Reads ``finetune_config.json`` and constructs the run's task.

    Files written before ``task_name`` / ``max_text_length`` were stored at the top level are read from
    their ``finetune`` section (``task``, ``task_config``, ``max_text_length``).

    Raises:
        ValueError: the file lacks the model or the task (the message names the file and the key).
    """
    from uniter_tf.config import UniterConfig  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.task import get_task  # pylint: disable=import-outside-toplevel

    path = os.path.join(run_dir, TASK_RUN_CONFIG_FILE)
    stored = _read_json_object(path)
    training = stored.get("finetune") or {}
    if not isinstance(stored.get("model"), dict):
        raise ValueError(f"{path} has no \"model\" object (the UniterConfig of the run)")
    task_name = stored.get("task_name") or training.get("task")
    if not task_name:
        raise ValueError(f"{path} names no task (\"task_name\", or \"task\" in \"finetune\")")
    task_arguments = stored.get("task")
    if not isinstance(task_arguments, dict):
        task_arguments = training.get("task_config") or {}
    max_text_length = stored.get("max_text_length", training.get("max_text_length"))
    return TaskRunConfig(task=get_task(task_name, **task_arguments),
                         model_config=UniterConfig.from_dict(stored["model"], allow_unknown=True),
                         max_text_length=None if max_text_length is None else int(max_text_length))


@dataclasses.dataclass
class TaskRunModel:
    """The model of a task run, rebuilt with its latest checkpoint's weights.

    Attributes:
        task: the task.
        model_config: the :class:`~uniter_tf.config.UniterConfig`.
        backbone: the backbone.
        head: the task head.
        itm_head: the ITM head.
        checkpoint: the restored checkpoint prefix.
        max_text_length: the text limit of training (without ``[CLS]``/``[SEP]``), or None.
    """

    task: Any
    model_config: Any
    backbone: Any
    head: Any
    itm_head: Any
    checkpoint: str
    max_text_length: Optional[int]


def load_task_run(run_dir: str) -> TaskRunModel:
    """Rebuilds the task model of ``run_dir`` and restores its latest checkpoint.

    Raises:
        FileNotFoundError: the run has no checkpoint.
        AssertionError: (from TensorFlow) a weight of the model is missing from the checkpoint.
    """
    from uniter_tf.models.backbone import UniterBackbone  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.pretraining_heads import ItmHead  # pylint: disable=import-outside-toplevel

    described = read_task_run_config(run_dir)
    config = described.model_config
    backbone = UniterBackbone(config)
    task_model = described.task.build_model(backbone, config.hidden_size)
    task_model.head.build()
    itm_head = ItmHead(config.hidden_size, config.initializer_range, name="itm_head")
    itm_head.build()
    prefix = resolve_checkpoint_path(run_dir)
    status = task_checkpoint(backbone, task_model.head, itm_head).restore(prefix)
    status.expect_partial()
    status.assert_existing_objects_matched()
    return TaskRunModel(described.task, config, backbone, task_model.head, itm_head, prefix,
                        described.max_text_length)
