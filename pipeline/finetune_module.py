"""TFX Trainer module of the fine-tuning step: ``run_fn(fn_args)``, referenced as ``pipeline.finetune_module.run_fn``.

The Trainer passes the ``Examples`` of UniterExampleGen (``fn_args.train_files`` / ``eval_files``), the
pretraining Trainer's model as ``fn_args.base_model`` and the run's settings in ``fn_args.custom_config``
(a :class:`uniter_tf.training.finetune.FinetuneConfig` dict; ``model_config``, ``task`` and
``task_config`` are required there). Training writes its run directory (checkpoints, metrics,
predictions) to ``fn_args.model_run_dir``; the exporter (:func:`uniter_tf.export.model_dir.export_model_dir`,
the one ``uniter export`` runs) then writes that run's model to ``fn_args.serving_model_dir`` (what
Evaluator and Pusher read).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

_LOG = logging.getLogger(__name__)


def find_pretraining_checkpoint(base_model: Optional[str]) -> Optional[str]:
    """The checkpoint to fine-tune from, given the pretraining Trainer's ``Format-Serving`` directory.

    Looked for, in order: a ``checkpoints/`` directory beside or inside the serving directory (where
    the pretraining run_fn keeps its training checkpoints), then the SavedModel's own variables (a
    checkpoint with the same object graph when the export tracks the pretraining model as ``model``).

    Returns:
        A checkpoint directory or prefix, or None when ``base_model`` is None.

    Raises:
        FileNotFoundError: ``base_model`` is given but holds nothing restorable.
    """
    import tensorflow as tf

    if not base_model:
        return None
    candidates = [os.path.join(os.path.dirname(base_model.rstrip("/")), "checkpoints"),
                  os.path.join(base_model, "checkpoints")]
    for directory in candidates:
        if tf.io.gfile.isdir(directory) and tf.train.latest_checkpoint(directory):
            return directory
    variables_prefix = os.path.join(base_model, "variables", "variables")
    if tf.io.gfile.exists(variables_prefix + ".index"):
        return variables_prefix
    raise FileNotFoundError(f"the base model {base_model!r} has neither training checkpoints ({candidates}) nor "
                            f"SavedModel variables")


def find_answer_vocabulary(train_files) -> Optional[str]:
    """The ``ans2label.json`` UniterExampleGen writes at the root of a VQA ``Examples`` artifact.

    ``train_files`` are the Trainer's split patterns (``<examples uri>/Split-train/*``).
    """
    import tensorflow as tf

    from uniter_tf.data import ingest

    for pattern in train_files:
        candidate = os.path.join(os.path.dirname(os.path.dirname(pattern)), ingest.ANSWER_VOCABULARY_FILE)
        if tf.io.gfile.exists(candidate):
            return candidate
    return None


def untrained(fn_args) -> bool:
    """Whether the run asks for 0 updates (``custom_config["num_train_steps"] = 0``).

    TFX turns ``TrainArgs(num_steps=0)`` into "unset", so 0 updates are asked for in ``custom_config``. The
    initial model (the pretrained backbone, or a random one, with a fresh task head) is then exported
    without training: what the evaluation gate must refuse (tests/test_pipeline_local_e2e.py).
    """
    return (fn_args.custom_config or {}).get("num_train_steps") == 0


def finetune_config_from_fn_args(fn_args) -> "Any":
    """Builds the :class:`FinetuneConfig` of a Trainer execution."""
    from uniter_tf.training.finetune import FinetuneConfig

    custom_config: Dict[str, Any] = dict(fn_args.custom_config or {})
    if untrained(fn_args):
        # FinetuneConfig needs one update to be valid; run_fn never runs it.
        custom_config.update(num_train_steps=1, warmup_steps=0, valid_steps=1)
    pretrained = custom_config.pop("pretrained_checkpoint", None) or find_pretraining_checkpoint(
            getattr(fn_args, "base_model", None))
    train_steps = getattr(fn_args, "train_steps", None)
    overrides = {
            "train_files": list(fn_args.train_files),
            "eval_files": list(fn_args.eval_files or []),
            "pretrained_checkpoint": pretrained,
            "output_dir": fn_args.model_run_dir,
    }
    if train_steps and not untrained(fn_args):
        overrides["num_train_steps"] = int(train_steps)
    eval_steps = getattr(fn_args, "eval_steps", None)
    if eval_steps:
        overrides["max_eval_batches"] = int(eval_steps)
    config_values = dict(custom_config)
    config_values.update(overrides)
    task_config = dict(config_values.get("task_config") or {})
    if "answer_vocabulary_file" not in task_config and "num_answers" not in task_config:
        vocabulary_file = find_answer_vocabulary(fn_args.train_files)
        if vocabulary_file is None:
            raise ValueError("the fine-tuning examples carry no ans2label.json; set task_config.num_answers or "
                             "task_config.answer_vocabulary_file in the Trainer's custom_config")
        task_config["answer_vocabulary_file"] = vocabulary_file
    config_values["task_config"] = task_config
    if config_values.get("warmup_steps", 0) >= config_values.get("num_train_steps", 1):
        # A short pipeline run with the default warm-up: keep a tenth of the steps for it.
        config_values["warmup_steps"] = max(0, int(config_values["num_train_steps"]) // 10)
    return FinetuneConfig.from_dict(config_values)


def run_fn(fn_args) -> None:
    """Fine-tunes the task, then exports the run directory into ``fn_args.serving_model_dir``."""
    from pipeline.pretrain_module import check_data_contract
    from uniter_tf.export.model_dir import export_model_dir
    from uniter_tf.training.finetune import FinetuneRun

    # TFX (absl) owns the root handler; let the library's progress lines through it.
    logging.getLogger("uniter_tf").setLevel(logging.INFO)
    _LOG.setLevel(logging.INFO)
    config = finetune_config_from_fn_args(fn_args)
    check_data_contract(fn_args, config.train_files)
    _LOG.info("fine-tuning %s from %s for %d steps", config.task, config.pretrained_checkpoint,
              config.num_train_steps)
    run = FinetuneRun(config)
    if untrained(fn_args):
        _LOG.warning("fine-tuning: 0 updates asked for; exporting the initial model untrained")
        run.save_checkpoint()
    else:
        result = run.train()
        _LOG.info("fine-tuning done: step %d, eval %s", result["step"], result["eval"])
    exported = export_model_dir(config.output_dir, fn_args.serving_model_dir, flat=True)
    _LOG.info("exported %s to %s", exported.source, exported.path)
