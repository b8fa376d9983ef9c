"""TFX Trainer module of the pretraining step: ``run_fn(fn_args)``, referenced as ``pipeline.pretrain_module.run_fn``.

It runs the same code path as ``uniter pretrain`` (:class:`uniter_tf.training.pretrainer.Pretrainer`) on the
``Examples`` artifact (``fn_args.train_files`` / ``eval_files``: GZIP canonical TFRecords), with:

* ``fn_args.custom_config``: ``model_config`` (a preset name or JSON path, e.g. ``tiny``), ``batch_size``
  (per replica) and any other :class:`~uniter_tf.training.pretrain_config.PretrainConfig` field
  (``task_ratios``, ``learning_rate``, ``inputs``, ``strategy``, ``precision``, ...);
* ``fn_args.train_steps``: optimizer updates; ``fn_args.eval_steps``: evaluation batches per task.

Outputs: training checkpoints, TensorBoard, ``metrics.jsonl``, ``loss_curves.png`` under
``fn_args.model_run_dir`` (with ``model_config.json``, so the run directory describes its model); the
SavedModel that the exporter (:func:`uniter_tf.export.model_dir.export_model_dir`, the one ``uniter export``
runs) makes of that run directory in ``fn_args.serving_model_dir``; and a copy of the final checkpoint in ``checkpoints/`` beside the serving
directory, where the fine-tuning module (``pipeline/finetune_module.py``) looks for its starting point
(:func:`uniter_tf.training.checkpointing.restore_backbone` reads it).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict

_LOG = logging.getLogger(__name__)

#: custom_config keys that are not PretrainConfig fields.
_ALIASES = {"model_config": "model"}


def _split_patterns(files) -> list:
    """TFX passes split directories or file patterns; turn directories into a glob of their shards."""
    import tensorflow as tf

    patterns = []
    for entry in ([files] if isinstance(files, str) else list(files or [])):
        patterns.append(os.path.join(entry, "*") if tf.io.gfile.isdir(entry) else entry)
    return patterns


def pretrain_config_from_fn_args(fn_args) -> "Any":
    """Builds the :class:`~uniter_tf.training.pretrain_config.PretrainConfig` of a Trainer execution."""
    from uniter_tf.training.pretrain_config import PretrainConfig

    custom: Dict[str, Any] = dict(getattr(fn_args, "custom_config", None) or {})
    values: Dict[str, Any] = {}
    inputs = dict(custom.pop("inputs", {}) or {})
    if "batch_size" in custom:
        inputs["batch_size"] = int(custom.pop("batch_size"))
    for key, value in custom.items():
        values[_ALIASES.get(key, key)] = value
    steps = int(getattr(fn_args, "train_steps", 0) or values.get("num_train_steps", 0) or 100)
    values["num_train_steps"] = steps
    values.setdefault("warmup_steps", max(0, min(steps - 1, steps // 10)))
    values["train_files"] = _split_patterns(fn_args.train_files)
    values["eval_files"] = _split_patterns(getattr(fn_args, "eval_files", None))
    values["output_dir"] = fn_args.model_run_dir
    values["inputs"] = inputs
    values.setdefault("checkpoint_every", max(1, steps // 4))
    values.setdefault("log_every", max(1, steps // 20))
    if getattr(fn_args, "eval_steps", None):
        values["eval_batches"] = int(fn_args.eval_steps)
    values.setdefault("progress_bar", False)  # TFX logs are files, not terminals
    return PretrainConfig.from_dict(values)


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
    from uniter_tf.training.pretrainer import Pretrainer

    config = pretrain_config_from_fn_args(fn_args)
    check_data_contract(fn_args, config.train_files)
    _LOG.info("pretraining %s for %d updates on %s", config.model, config.num_train_steps, config.train_files)
    trainer = Pretrainer(config, log=_LOG.info)
    summary = trainer.train()
    _LOG.info("pretraining finished: %s", summary)
    if not trainer.is_chief:
        return
    export_model_dir(config.output_dir, fn_args.serving_model_dir, flat=True)
    latest = trainer.manager.latest_checkpoint
    if latest:
        _publish_checkpoint(latest, os.path.join(os.path.dirname(fn_args.serving_model_dir.rstrip("/")),
                                                 "checkpoints"))
