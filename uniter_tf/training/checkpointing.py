"""Checkpoints of pretraining runs and initialisation of the backbone from other checkpoints.

* The layouts themselves (:func:`model_variable_tree`, :func:`backbone_variable_tree`) and
  :func:`resolve_checkpoint_path` / :func:`restore_pretraining_model` are :mod:`uniter_tf.runs`'s, shared
  with the exporter.
* :func:`make_checkpoint_manager`: a ``tf.train.CheckpointManager`` over the run state (model, optimizer,
  global step, loss scales, dropout RNG state). Under MultiWorkerMirrored every worker must save; workers
  other than the chief write to a scratch directory that is deleted afterwards.
* :func:`restore_backbone`: partial restore of **only the backbone** from one of our pretraining
  checkpoints (what fine-tuning calls).
* :func:`initialize_backbone`: ``scratch`` / ``bert`` / ``official`` / ``pretrained`` initialisation.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import tensorflow as tf

# The checkpoint layouts and the run-directory files are shared with the exporter, so they live in
# uniter_tf.runs (training and export never import each other); re-exported here for training code.
from uniter_tf.runs import (BACKBONE_KEY, MODEL_KEY, backbone_variable_tree,  # noqa: F401
                            model_variable_tree, resolve_checkpoint_path, restore_pretraining_model)


def checkpoint_directory(output_dir: str, strategy: Optional[tf.distribute.Strategy] = None) -> str:
    """Where this worker writes checkpoints: ``{output_dir}/checkpoints``, or a per-worker scratch dir
    for non-chief MultiWorkerMirrored workers (they must save too, but their files are discarded)."""
    from uniter_tf.training.strategy import is_chief

    directory = os.path.join(output_dir, "checkpoints")
    if strategy is not None and not is_chief(strategy):
        resolver = strategy.cluster_resolver
        directory = os.path.join(output_dir, "worker_scratch", f"{resolver.task_type}_{resolver.task_id}")
    return directory


def make_checkpoint_manager(checkpoint: tf.train.Checkpoint, output_dir: str, max_to_keep: int,
                            strategy: Optional[tf.distribute.Strategy] = None) -> tf.train.CheckpointManager:
    """A CheckpointManager in :func:`checkpoint_directory` keeping ``max_to_keep`` checkpoints."""
    return tf.train.CheckpointManager(checkpoint, checkpoint_directory(output_dir, strategy),
                                      max_to_keep=max_to_keep)


def discard_worker_scratch(output_dir: str, strategy: Optional[tf.distribute.Strategy]) -> None:
    """Deletes a non-chief worker's scratch checkpoints (no-op on the chief)."""
    from uniter_tf.training.strategy import is_chief

    if strategy is not None and not is_chief(strategy):
        directory = checkpoint_directory(output_dir, strategy)
        # tf.io.gfile: the run directory may be on gs:// (or any TF file system).
        if tf.io.gfile.exists(directory):
            tf.io.gfile.rmtree(directory)


def restore_backbone(backbone, checkpoint_dir: str) -> str:
    """Restores the backbone weights of one of our pretraining checkpoints into ``backbone``.

    Only the backbone is read (heads, optimizer slots and the step are ignored), so a fine-tuning model
    built around a fresh :class:`~uniter_tf.models.backbone.UniterBackbone` starts from pretraining.

    Args:
        backbone: a built ``UniterBackbone`` with the same configuration as the pretrained one.
        checkpoint_dir: a run's output directory, its ``checkpoints/`` directory, or a checkpoint prefix.

    Returns:
        The checkpoint prefix that was restored.

    Raises:
        FileNotFoundError: no checkpoint found.
        AssertionError: (from TensorFlow) a backbone variable has no value in the checkpoint, e.g. a
            config mismatch; the message names the variable.
    """
    path = resolve_checkpoint_path(checkpoint_dir)
    # The training checkpoint's tree (model -> backbone.* and heads.*), reading only backbone.* keys.
    reader = tf.train.Checkpoint(**{MODEL_KEY: backbone_variable_tree(backbone)})
    status = reader.restore(path)
    status.expect_partial()
    status.assert_existing_objects_matched()
    return path


def initialize_backbone(model, init: str, init_path: str = "", log: Callable[[str], None] = print) -> None:
    """Initialises a :class:`~uniter_tf.models.pretraining_model.UniterPretrainingModel` before training.

    Args:
        model: the pretraining model (its ``backbone`` is initialised; ``official`` also loads heads).
        init: ``scratch`` (keep the random N(0, 0.02) init), ``bert`` (HF-BERT weights on the text side,
            e.g. the MiniLM preset), ``official`` (an official UNITER state dict) or ``pretrained`` (the
            backbone of one of our checkpoints).
        init_path: file/directory for ``bert`` (an HF ``model.safetensors`` or its directory, e.g. the
            all-MiniLM-L6-v2 files with the ``uniter-mini`` preset), ``official`` or ``pretrained``.
        log: where to print what was loaded.

    Raises:
        ValueError: unknown ``init``.
    """
    if init == "scratch":
        return
    if init == "pretrained":
        restored = restore_backbone(model.backbone, init_path)
        log(f"initialised the backbone from our checkpoint {restored}")
        return
    if init == "official":
        from uniter_tf.checkpoints import official

        state_dict = official.read_state_dict(init_path)
        report = official.load_official_state_dict(model, state_dict)
        log(f"initialised from the official checkpoint {init_path}: {_report_summary(report)}")
        return
    if init == "bert":
        from uniter_tf.checkpoints import hf_bert

        report = hf_bert.init_text_from_hf_bert(model, init_path)
        log(f"initialised the text side from HF BERT {init_path}: {_report_summary(report)}")
        return
    raise ValueError(f"unknown init {init!r}; expected scratch, bert, official or pretrained")


def _report_summary(report) -> str:
    fields = []
    for name in ("loaded", "missing", "unexpected"):
        value = getattr(report, name, None)
        if value is not None:
            fields.append(f"{len(value)} {name}")
    return ", ".join(fields) if fields else str(report)


__all__ = ["MODEL_KEY", "BACKBONE_KEY", "backbone_variable_tree", "model_variable_tree", "restore_pretraining_model",
           "checkpoint_directory", "make_checkpoint_manager", "discard_worker_scratch",
           "resolve_checkpoint_path", "restore_backbone", "initialize_backbone"]
