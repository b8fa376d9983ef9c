"""TFX Trainer module of the pretraining step: ``run_fn(fn_args)``, referenced as ``pipeline.pretrain_module.run_fn``.

It runs what ``uniter train`` runs: an :class:`~uniter_tf.training.experiment.ExperimentConfig` of the
``pretraining`` task, built from the Trainer's arguments (:func:`experiment_from_fn_args`), through
:func:`~uniter_tf.training.experiment.prepare_experiment` (writes ``experiment.json``) and the one
:class:`~uniter_tf.training.trainer.Trainer`, on the ``Examples`` artifact (``fn_args.train_files`` /
``eval_files``: GZIP canonical TFRecords). ``fn_args.custom_config`` is flat (what ``pipeline/configs.py``
sets); each key goes to its section:

* ``model_config`` → ``task.model``; ``batch_size`` → ``task.inputs.batch_size``; the pretraining task's
  keys (``model_overrides``, ``inputs``, ``task_ratios``, ``train_datasets``, ``init``, ``init_path``,
  ``max_masked_tokens``, ``max_masked_regions``) → ``task``;
* :class:`~uniter_tf.training.trainer_config.TrainerConfig` fields (``learning_rate``, ``warmup_steps``,
  ``precision``, ``eval_every``, ``seed``, ...) → ``trainer``; ``strategy``, ``logical_cpus``, ``tpu_address``
  → ``runtime``;
* any other key is an error naming it.

``fn_args.train_steps`` is ``trainer.num_train_steps``, ``fn_args.eval_steps`` ``trainer.eval_batches``.

Outputs: training checkpoints, TensorBoard, ``metrics.jsonl``, ``loss_curves.png``, ``experiment.json``
under ``fn_args.model_run_dir`` (with ``model_config.json``, so the run directory describes its model); the
SavedModel that the exporter (:func:`uniter_tf.export.model_dir.export_model_dir`, the one ``uniter export``
runs) makes of that run directory in ``fn_args.serving_model_dir``; and a copy of the final checkpoint in
``checkpoints/`` beside the serving directory, where the fine-tuning module (``pipeline/finetune_module.py``)
looks for its starting point (:func:`uniter_tf.training.checkpointing.restore_backbone` reads it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, Mapping

_LOG = logging.getLogger(__name__)

#: Keys the run_fn sets from the Trainer's own arguments (a custom_config that sets them is refused).
FROM_FN_ARGS = ("train_files", "eval_files", "output_dir")


def _split_patterns(files) -> list:
    """TFX passes split directories or file patterns; turn directories into a glob of their shards."""
    import tensorflow as tf

    patterns = []
    for entry in ([files] if isinstance(files, str) else list(files or [])):
        patterns.append(os.path.join(entry, "*") if tf.io.gfile.isdir(entry) else entry)
    return patterns


def section_fields() -> Dict[str, tuple]:
    """The ``trainer`` and ``runtime`` field names of an experiment config."""
    from uniter_tf.training.trainer_config import RuntimeConfig, TrainerConfig

    return {"trainer": tuple(field.name for field in dataclasses.fields(TrainerConfig)),
            "runtime": tuple(field.name for field in dataclasses.fields(RuntimeConfig))}


def sort_into_sections(custom: Mapping[str, Any], task_keys, renamed: Mapping[str, str], where: str
                       ) -> Dict[str, Dict[str, Any]]:
    """Sorts the flat keys of a Trainer's ``custom_config`` into the ``task`` / ``trainer`` / ``runtime``
    sections of an experiment config.

    Args:
        custom: the flat ``custom_config``.
        task_keys: the keys that belong to the task section (under their own names).
        renamed: flat key → ``section.key`` for keys whose name differs in the experiment config.
        where: the Trainer, for error messages.

    Returns:
        ``{"task": {...}, "trainer": {...}, "runtime": {...}}``.

    Raises:
        ValueError: a key that belongs nowhere, or one the run_fn takes from ``fn_args`` (named).
    """
    fields = section_fields()
    sections: Dict[str, Dict[str, Any]] = {"task": {}, "trainer": {}, "runtime": {}}
    for key, value in custom.items():
        if key in FROM_FN_ARGS:
            raise ValueError(f"custom_config of the {where}: {key!r} is set from the Trainer's inputs "
                             "(examples, model_run_dir), not from custom_config")
        if key in renamed:
            section, name = renamed[key].split(".", 1)
        elif key in task_keys:
            section, name = "task", key
        elif key in fields["trainer"]:
            section, name = "trainer", key
        elif key in fields["runtime"]:
            section, name = "runtime", key
        else:
            known = sorted(set(task_keys) | set(renamed) | set(fields["trainer"]) | set(fields["runtime"]))
            raise ValueError(f"custom_config of the {where}: unknown key {key!r}; known: "
                             f"{[name for name in known if name not in FROM_FN_ARGS]}")
        sections[section][name] = value
    return sections


#: The defaults of a pipeline pretraining run (TFX logs are files, not terminals: no progress bar).
PRETRAIN_DEFAULTS: Dict[str, Any] = {"task": {"name": "pretraining"}, "trainer": {"progress_bar": False}}
#: custom_config keys named differently in the experiment config.
PRETRAIN_RENAMED = {"model_config": "task.model", "batch_size": "task.inputs.batch_size"}


def experiment_from_fn_args(fn_args) -> "Any":
    """The :class:`~uniter_tf.training.experiment.ExperimentConfig` of a pretraining Trainer execution.

    Raises:
        ValueError: an unknown ``custom_config`` key (named) or a bad value.
    """
    from uniter_tf.tasks.base_task import COMMON_PARAMS
    from uniter_tf.tasks.pretraining import OWN_PARAMS
    from uniter_tf.training.experiment import ExperimentConfig

    custom: Dict[str, Any] = dict(getattr(fn_args, "custom_config", None) or {})
    sections = sort_into_sections(custom, COMMON_PARAMS + OWN_PARAMS, PRETRAIN_RENAMED, "PretrainTrainer")
    task, trainer, runtime = sections["task"], sections["trainer"], sections["runtime"]
    if "inputs.batch_size" in task:  # the renamed batch_size lands in the inputs object
        task.setdefault("inputs", {})
        task["inputs"] = {**task["inputs"], "batch_size": int(task.pop("inputs.batch_size"))}
    steps = int(getattr(fn_args, "train_steps", 0) or trainer.get("num_train_steps", 0) or 100)
    trainer["num_train_steps"] = steps
    trainer.setdefault("warmup_steps", max(0, min(steps - 1, steps // 10)))
    trainer.setdefault("checkpoint_every", max(1, steps // 4))
    trainer.setdefault("log_every", max(1, steps // 20))
    if getattr(fn_args, "eval_steps", None):
        trainer["eval_batches"] = int(fn_args.eval_steps)
    task["train_files"] = _split_patterns(fn_args.train_files)
    task["eval_files"] = _split_patterns(getattr(fn_args, "eval_files", None))
    runtime["output_dir"] = fn_args.model_run_dir
    changes = {f"{section}.{key}": value for section, values in sections.items() for key, value in values.items()}
    return ExperimentConfig.from_dict(PRETRAIN_DEFAULTS, source="PretrainTrainer custom_config").with_overrides(changes)


def _publish_checkpoint(latest: str, destination: str) -> None:
    """Copies the files of checkpoint ``latest`` and a ``checkpoint`` state file into ``destination``."""
    import tensorflow as tf

    tf.io.gfile.makedirs(destination)
    for path in tf.io.gfile.glob(latest + ".*"):
        tf.io.gfile.copy(path, os.path.join(destination, os.path.basename(path)), overwrite=True)
    tf.compat.v1.train.update_checkpoint_state(destination, os.path.join(destination, os.path.basename(latest)))


def check_data_contract(fn_args, train_files) -> None:
    """Checks the first training records against ``fn_args.schema_path`` (the curated schema the pipeline's
    DataGate passed on) before any training; a Trainer without a schema input skips the check (logged).

    Raises:
        pipeline.data_contract.SchemaMismatchError: a record does not match (record, feature and schema named).
    """
    from pipeline import data_contract

    schema_path = getattr(fn_args, "schema_path", None)
    if not schema_path:
        _LOG.warning("no schema given to the Trainer: the records are not checked against a data contract")
        return
    checked = data_contract.check_records(schema_path, train_files)
    _LOG.info("data contract: %d training records match %s", checked, schema_path)


def run_fn(fn_args) -> None:
    """Entry point: the TFX Trainer calls ``run_fn(fn_args)`` once per execution (imported by module path)."""
    from uniter_tf.export.model_dir import export_model_dir
    from uniter_tf.training.experiment import prepare_experiment

    config = experiment_from_fn_args(fn_args)
    check_data_contract(fn_args, config.task["train_files"])
    _LOG.info("pretraining %s for %d updates on %s", config.task.get("model", "tiny"), config.trainer.num_train_steps,
              config.task["train_files"])
    trainer = prepare_experiment(config, log=_LOG.info)
    summary = trainer.train()
    _LOG.info("pretraining finished: %s", summary)
    if not trainer.is_chief:
        return
    export_model_dir(config.runtime.output_dir, fn_args.serving_model_dir, flat=True)
    latest = trainer.manager.latest_checkpoint
    if latest:
        _publish_checkpoint(latest, os.path.join(os.path.dirname(fn_args.serving_model_dir.rstrip("/")),
                                                 "checkpoints"))
    # The caption records this model was pretrained on: fine-tuning's ITM rehearsal reads them from here
    # (a TFX Trainer takes one Examples input; the fine-tuning Trainer's is the VQA examples).
    write_pretraining_files(os.path.dirname(fn_args.serving_model_dir.rstrip("/")), config.task["train_files"])


#: Beside the pretraining model's ``checkpoints/``: the caption file patterns it was trained on.
PRETRAINING_FILES_NAME = "pretraining_train_files.json"


def write_pretraining_files(model_uri: str, train_files) -> None:
    """Records ``train_files`` as ``<model_uri>/pretraining_train_files.json``."""
    import json

    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(model_uri, PRETRAINING_FILES_NAME), "w") as handle:
        handle.write(json.dumps({"train_files": list(train_files)}))
