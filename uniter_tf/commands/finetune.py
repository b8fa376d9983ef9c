"""``uniter finetune``: fine-tune a downstream task (VQA first) from a pretraining checkpoint."""

from __future__ import annotations

NAME = "finetune"
HELP = ("Fine-tune a downstream task (vqa) from a pretraining checkpoint; writes checkpoints, validation "
        "metrics and predictions (and a SavedModel with --export).")


# The tasks of uniter_tf.models.task.TASK_REGISTRY, listed here so that `--help` needs no TensorFlow
# import (tests/test_cli_errors.py checks the two agree).
TASKS = ("vqa",)


def add_arguments(parser):
    parser.add_argument("--task", required=True, choices=TASKS, help=f"Task name: {', '.join(TASKS)}.")
    parser.add_argument("--config", required=True,
                        help="Fine-tuning JSON config (see configs/finetune_vqa_tiny.json for the keys).")
    parser.add_argument("--train-files", nargs="+", default=None, help="Override: training record globs.")
    parser.add_argument("--eval-files", nargs="+", default=None, help="Override: validation record globs.")
    parser.add_argument("--pretrained-checkpoint", default=None,
                        help="Override: pretraining checkpoint (directory or prefix) to start from.")
    parser.add_argument("--output-dir", default=None, help="Override: output directory.")
    parser.add_argument("--num-train-steps", type=int, default=None, help="Override: number of updates.")
    parser.add_argument("--export", default=None, metavar="BASE",
                        help="After training, export the run as a servable version BASE/<version> (what "
                             "`uniter export --model-dir OUTPUT_DIR --output BASE` does).")


def run(args) -> int:
    import json

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
