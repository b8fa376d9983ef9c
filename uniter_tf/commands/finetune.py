"""``uniter finetune``: fine-tune a downstream task (VQA first) from a pretraining checkpoint.

An alias of ``uniter train`` for downstream tasks: ``--config`` takes an experiment config (sections
``task`` / ``trainer`` / ``runtime``, whose ``task.name`` must be ``--task``; ``--set section.key=value``)
or the older flat :class:`~uniter_tf.training.finetune.FinetuneConfig` format. The override flags
(``--train-files``, ``--output-dir``, ...) work with both.
"""

from __future__ import annotations

NAME = "finetune"
HELP = ("Fine-tune a downstream task (vqa) from a pretraining checkpoint; writes checkpoints, validation "
        "metrics and predictions (and a SavedModel with --export).")


# The tasks of uniter_tf.models.task.TASK_REGISTRY, listed here so that `--help` needs no TensorFlow
# import (tests/test_cli_errors.py checks the two agree).
TASKS = ("nlvr2", "refcoco", "retrieval", "vcr", "ve", "vqa")


def add_arguments(parser):
    parser.add_argument("--task", required=True, choices=TASKS, help=f"Task name: {', '.join(TASKS)}.")
    parser.add_argument("--config", required=True,
                        help="An experiment config (configs/finetune_vqa_*.json: sections task / trainer / "
                             "runtime) or a flat FinetuneConfig JSON.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="Override a field of an experiment config (e.g. --set trainer.learning_rate=1e-4); "
                             "JSON values; repeatable.")
    parser.add_argument("--train-files", nargs="+", default=None, help="Override: training record globs.")
    parser.add_argument("--eval-files", nargs="+", default=None, help="Override: validation record globs.")
    parser.add_argument("--pretrained-checkpoint", default=None,
                        help="Override: pretraining checkpoint (directory or prefix) to start from.")
    parser.add_argument("--output-dir", default=None, help="Override: output directory.")
    parser.add_argument("--num-train-steps", type=int, default=None, help="Override: number of updates.")
    parser.add_argument("--export", default=None, metavar="BASE",
                        help="After training, export the run as a servable version BASE/<version> (what "
                             "`uniter export --model-dir OUTPUT_DIR --output BASE` does).")


def _experiment_overrides(args):
    """The override flags as ``section.key=value`` strings of an experiment config (flags win over --set)."""
    import json

    changes = {"task.train_files": args.train_files, "task.eval_files": args.eval_files,
               "runtime.output_dir": args.output_dir, "trainer.num_train_steps": args.num_train_steps}
    if args.pretrained_checkpoint is not None:
        changes.update({"task.init": "pretrained", "task.init_path": args.pretrained_checkpoint})
    return list(args.overrides) + [f"{key}={json.dumps(value)}" for key, value in changes.items() if value is not None]


def _run_experiment(args) -> int:
    import json

    from uniter_tf.commands import train as train_command

    experiment = train_command.load(args.config, _experiment_overrides(args), expected_task=args.task)
    summary, is_chief = train_command.run_quietly(experiment)
    if not is_chief:  # MultiWorkerMirrored: the chief exports and reports
        return 0
    summary = dict(summary) if isinstance(summary, dict) else {}
    summary["export_dir"] = None
    if args.export:
        # Training writes the run directory only; exporting it is the exporter's job.
        from uniter_tf.export.model_dir import export_model_dir

        summary["export_dir"] = export_model_dir(experiment.runtime.output_dir, args.export).path
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


def run(args) -> int:
    import json

    from uniter_tf.console import UserError
    from uniter_tf.training.experiment import is_experiment_dict, read_config_file

    from uniter_tf.commands.train import config_file_exists

    # A local path is checked before TensorFlow is imported (seconds), so that a typo fails at once.
    if not config_file_exists(args.config):
        raise UserError(f"--config {args.config}: no such file")
    if is_experiment_dict(read_config_file(args.config)):
        return _run_experiment(args)
    if args.overrides:
        raise UserError(f"--set applies to experiment configs (sections task / trainer / runtime); {args.config} "
                        "is a flat fine-tuning config: use the override flags or edit the file")
    from uniter_tf.training import finetune

    # Progress is logged by uniter_tf.training.finetune: the CLI's console shows our loggers at INFO.
    overrides = {
            "task": args.task,
            "train_files": args.train_files,
            "eval_files": args.eval_files,
            "pretrained_checkpoint": args.pretrained_checkpoint,
            "output_dir": args.output_dir,
            "num_train_steps": args.num_train_steps,
    }
    # A missing or bad config raises OSError / ValueError: the CLI reports it in one line (exit 2).
    config = finetune.FinetuneConfig.from_json(args.config, **overrides)
    result = finetune.FinetuneRun(config).train()
    summary = {key: result[key] for key in ("step", "train", "eval", "checkpoint", "restored_from")}
    summary["export_dir"] = None
    if args.export:
        # Training writes the run directory only; exporting it is the exporter's job.
        from uniter_tf.export.model_dir import export_model_dir

        summary["export_dir"] = export_model_dir(config.output_dir, args.export).path
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
