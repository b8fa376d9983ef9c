"""TFX Trainer module of the fine-tuning step: ``run_fn(fn_args)``, referenced as ``pipeline.finetune_module.run_fn``.

The Trainer passes the ``Examples`` of UniterExampleGen (``fn_args.train_files`` / ``eval_files``), the
pretraining Trainer's model as ``fn_args.base_model`` and the run's settings in ``fn_args.custom_config``.
The run_fn runs what ``uniter train`` runs: an :class:`~uniter_tf.training.experiment.ExperimentConfig`
(:func:`experiment_from_fn_args`) through :func:`~uniter_tf.training.experiment.prepare_experiment` and the
one :class:`~uniter_tf.training.trainer.Trainer`. The flat ``custom_config`` keys go to their sections:

* ``task`` (default ``vqa``) → ``task.name``; ``model_config`` → ``task.model``; ``task_config`` (the task's
  own arguments, e.g. ``head_learning_rate_multiplier``, ``num_answers``) → into ``task`` unchanged;
  ``model_overrides``, ``train_batch_size``, ``eval_batch_size``, ``max_text_length``, ``dropout``,
  ``init``, ``init_path`` → ``task``; ``pretrained_checkpoint`` → ``task.init = "pretrained"`` +
  ``task.init_path`` (default: the pretraining Trainer's checkpoint, :func:`find_pretraining_checkpoint`);
* ``valid_steps`` → ``trainer.eval_every`` and ``trainer.checkpoint_every``; ``max_eval_batches`` →
  ``trainer.eval_batches``; the other :class:`~uniter_tf.training.trainer_config.TrainerConfig` fields →
  ``trainer``; ``strategy``, ``logical_cpus``, ``tpu_address`` → ``runtime``;
* ``first_stage_steps`` (retrieval, > 0): after training, the run_fn also trains the retrieve-then-rerank
  first stage (:func:`uniter_tf.retrieval.first_stage.train_first_stage`) on the training captions for this
  many updates (``first_stage_batch_size`` distinct images a batch, default 32), embeds the eval split's
  images into an image index (``<model_run_dir>/image_index``) and exports the model with the
  ``embed_text`` / ``embed_image`` signatures and that index under ``assets.extra/retrieval/``, so the
  Pusher pushes model and index as one version (:func:`train_first_stage_and_index`);
* any other key is an error naming it.

Training writes its run directory (checkpoints, ``metrics.jsonl``, ``experiment.json``, predictions) to
``fn_args.model_run_dir``; the exporter (:func:`uniter_tf.export.model_dir.export_model_dir`, the one
``uniter export`` runs) then writes that run's model to ``fn_args.serving_model_dir`` (what Evaluator and
Pusher read).
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


def find_pretraining_files(base_model: Optional[str]) -> list:
    """The caption file patterns the pretraining Trainer recorded beside its model (for ITM rehearsal).

    Raises:
        ValueError: no base model, or it recorded no files (the message says what to set instead).
    """
    import json

    import tensorflow as tf

    from pipeline.pretrain_module import PRETRAINING_FILES_NAME

    path = os.path.join(os.path.dirname(base_model.rstrip("/")), PRETRAINING_FILES_NAME) if base_model else None
    if not path or not tf.io.gfile.exists(path):
        raise ValueError("task_config.itm_rehearsal_ratio > 0 needs caption records: set "
                         f"task_config.itm_rehearsal_files, or fine-tune from a pretraining Trainer ({path} is missing)")
    with tf.io.gfile.GFile(path) as handle:
        return list(json.loads(handle.read())["train_files"])


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


#: The defaults of a pipeline fine-tuning run: the official VQA-base settings where the Trainer's differ
#: (spec §5.1: lr 8e-5, clip 2.0, 6000 updates with 600 warm-up), a validation and a checkpoint every 500
#: updates, the whole eval split (``eval_batches: 0``), no progress bar (TFX logs are files).
FINETUNE_DEFAULTS: Dict[str, Any] = {
        "task": {"name": "vqa"},
        "trainer": {"learning_rate": 8e-5, "grad_norm": 2.0, "num_train_steps": 6000, "warmup_steps": 600,
                    "checkpoint_every": 500, "eval_every": 500, "eval_batches": 0, "progress_bar": False},
}
#: custom_config keys of the retrieval first stage, read by :func:`run_fn` (not experiment settings).
FIRST_STAGE_KEYS = ("first_stage_steps", "first_stage_batch_size")
#: Where the retrieval Trainer writes the eval gallery's image index inside its run directory.
IMAGE_INDEX_SUBDIR = "image_index"
#: custom_config keys named differently in the experiment config (``valid_steps`` sets two fields).
FINETUNE_RENAMED = {"task": "task.name", "model_config": "task.model", "max_eval_batches": "trainer.eval_batches",
                    "valid_steps": "trainer.eval_every"}


def experiment_from_fn_args(fn_args) -> "Any":
    """The :class:`~uniter_tf.training.experiment.ExperimentConfig` of a fine-tuning Trainer execution.

    Raises:
        ValueError: an unknown ``custom_config`` key (named), a ``task_config`` key that repeats a run
            setting, or examples without an answer vocabulary for VQA.
    """
    from pipeline.pretrain_module import sort_into_sections
    from uniter_tf.models.task import DOWNSTREAM_PARAMS
    from uniter_tf.tasks.base_task import COMMON_PARAMS
    from uniter_tf.training.experiment import ExperimentConfig

    custom: Dict[str, Any] = {key: value for key, value in (fn_args.custom_config or {}).items()
                              if key not in FIRST_STAGE_KEYS}
    task_config = dict(custom.pop("task_config", None) or {})
    pretrained = custom.pop("pretrained_checkpoint", None)
    sections = sort_into_sections(custom, COMMON_PARAMS + tuple(DOWNSTREAM_PARAMS), FINETUNE_RENAMED,
                                  "FinetuneTrainer")
    task, trainer = sections["task"], sections["trainer"]
    if "eval_every" in trainer:  # valid_steps: validate and checkpoint together, as the flat format did
        trainer.setdefault("checkpoint_every", trainer["eval_every"])
    repeated = sorted(set(task_config) & (set(task) | {"name"}))
    if repeated:
        raise ValueError(f"custom_config of the FinetuneTrainer: task_config repeats {repeated}, set at the top "
                         "level of custom_config")
    task.update(task_config)  # the task's own arguments, passed through unchanged
    if untrained(fn_args):
        # TrainerConfig needs one update to be valid; run_fn checkpoints the initial model instead.
        trainer.update(num_train_steps=1, warmup_steps=0, checkpoint_every=1, eval_every=0)
    elif getattr(fn_args, "train_steps", None):
        trainer["num_train_steps"] = int(fn_args.train_steps)
    steps = int(trainer.get("num_train_steps", FINETUNE_DEFAULTS["trainer"]["num_train_steps"]))
    if int(trainer.get("warmup_steps", FINETUNE_DEFAULTS["trainer"]["warmup_steps"])) >= steps:
        # A short pipeline run with the default warm-up: keep a tenth of the steps for it.
        trainer["warmup_steps"] = max(0, steps // 10)
    for key in ("checkpoint_every", "eval_every"):
        trainer.setdefault(key, min(FINETUNE_DEFAULTS["trainer"][key], steps))
    if getattr(fn_args, "eval_steps", None):
        trainer["eval_batches"] = int(fn_args.eval_steps)
    if pretrained and "init" in task:
        raise ValueError("custom_config of the FinetuneTrainer: give pretrained_checkpoint or init / init_path, "
                         "not both")
    if "init" not in task:
        pretrained = pretrained or find_pretraining_checkpoint(getattr(fn_args, "base_model", None))
        if pretrained:
            task.update(init="pretrained", init_path=pretrained)
    name = task.get("name", FINETUNE_DEFAULTS["task"]["name"])
    if name == "vqa" and "answer_vocabulary_file" not in task and "num_answers" not in task:
        vocabulary_file = find_answer_vocabulary(fn_args.train_files)
        if vocabulary_file is None:
            raise ValueError("the fine-tuning examples carry no ans2label.json; set task_config.num_answers or "
                             "task_config.answer_vocabulary_file in the Trainer's custom_config")
        task["answer_vocabulary_file"] = vocabulary_file
    if task.get("itm_rehearsal_ratio") and not task.get("itm_rehearsal_files"):
        if untrained(fn_args):
            task["itm_rehearsal_ratio"] = 0.0  # no update: nothing to rehearse, and maybe no pretraining
        else:
            # ITM rehearsal on the captions the base model was pretrained on (pipeline/pretrain_module.py).
            task["itm_rehearsal_files"] = find_pretraining_files(getattr(fn_args, "base_model", None))
    task["train_files"] = list(fn_args.train_files)
    task["eval_files"] = list(fn_args.eval_files or [])
    sections["runtime"]["output_dir"] = fn_args.model_run_dir
    changes = {f"{section}.{key}": value for section, values in sections.items() for key, value in values.items()}
    return ExperimentConfig.from_dict(FINETUNE_DEFAULTS, source="FinetuneTrainer custom_config").with_overrides(changes)


def train_first_stage_and_index(fn_args, run_dir: str, train_files) -> Optional[str]:
    """Retrieval: trains the run's first stage and indexes the eval split's images with it.

    Args:
        fn_args: the Trainer's arguments (``custom_config["first_stage_steps"]`` /
            ``["first_stage_batch_size"]``, ``eval_files``).
        run_dir: the fine-tuned run (its backbone initialises the first stage, saved to ``run_dir/first_stage``).
        train_files: the caption records the run was trained on.

    Returns:
        The image index directory, or None when ``first_stage_steps`` is not set (or 0).

    Raises:
        ValueError: a bad first-stage setting (named), or no eval files to index.
    """
    from uniter_tf.retrieval.first_stage import train_first_stage
    from uniter_tf.retrieval.index import build_image_index

    custom = fn_args.custom_config or {}
    steps, batch_size = custom.get("first_stage_steps") or 0, custom.get("first_stage_batch_size", 32)
    for key, value in (("first_stage_steps", steps), ("first_stage_batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"custom_config of the FinetuneTrainer: {key} must be a non-negative integer, "
                             f"got {value!r}")
    if not steps:
        return None
    if not fn_args.eval_files:
        raise ValueError("custom_config of the FinetuneTrainer: first_stage_steps needs an eval split to index")
    train_first_stage(run_dir, list(train_files), steps=steps, batch_size=batch_size, log=_LOG.info)
    index_dir = os.path.join(run_dir, IMAGE_INDEX_SUBDIR)
    index = build_image_index(run_dir, list(fn_args.eval_files), run=run_dir)
    index.save(index_dir)
    _LOG.info("indexed the %d eval images with first stage %s in %s", len(index), index.model_version, index_dir)
    return index_dir


def run_fn(fn_args) -> None:
    """Fine-tunes the task, then exports the run directory into ``fn_args.serving_model_dir`` (with a
    retrieval run's first stage and eval-gallery index when ``first_stage_steps`` is set)."""
    from pipeline.pretrain_module import check_data_contract
    from uniter_tf.export.model_dir import export_model_dir
    from uniter_tf.training.experiment import prepare_experiment

    # TFX (absl) owns the root handler; let the library's progress lines through it.
    logging.getLogger("uniter_tf").setLevel(logging.INFO)
    _LOG.setLevel(logging.INFO)
    config = experiment_from_fn_args(fn_args)
    check_data_contract(fn_args, config.task["train_files"])
    _LOG.info("fine-tuning %s from %s for %d steps", config.task_name, config.task.get("init_path") or "scratch",
              config.trainer.num_train_steps)
    trainer = prepare_experiment(config, log=_LOG.info)
    if untrained(fn_args):
        _LOG.warning("fine-tuning: 0 updates asked for; exporting the initial model untrained")
        trainer.restore_or_initialize()
        trainer.save_checkpoint()
    else:
        summary = trainer.train()
        _LOG.info("fine-tuning done: step %d, eval %s", summary["final_step"], summary["evaluation"])
    if not trainer.is_chief:
        return
    index_dir = train_first_stage_and_index(fn_args, config.runtime.output_dir, config.task["train_files"])
    # The index is written into the export before it is published (export_model_dir's staging directory), so
    # the model directory the Pusher copies already holds it: model and index are pushed as one version.
    index_options = {} if index_dir is None else {"first_stage": True, "index": index_dir,
                                                  "index_features": list(fn_args.eval_files)}
    exported = export_model_dir(config.runtime.output_dir, fn_args.serving_model_dir, flat=True, **index_options)
    _LOG.info("exported %s to %s", exported.source, exported.path)
