"""``uniter train``: train any task from one experiment config (``task`` / ``trainer`` / ``runtime``)."""

from __future__ import annotations

NAME = "train"
HELP = ("Train any task (pretraining, vqa, ...) from an experiment config (sections task / trainer / runtime); "
        "rerunning the same command resumes from the last checkpoint.")


def add_arguments(parser):
    parser.add_argument("--config", required=True,
                        help="experiment JSON (configs/*.json): sections task, trainer, runtime (docs/training.md)")
    add_set_argument(parser)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (what the run writes as experiment.json) and exit")


def add_set_argument(parser):
    """The ``--set section.key=value`` flag (shared with ``uniter pretrain`` / ``uniter finetune``)."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config field: section.key (dotted into nested objects), JSON value "
                             "(e.g. --set trainer.num_train_steps=100 --set task.inputs.batch_size=16 "
                             "--set runtime.output_dir=/tmp/run); repeatable")


def load(path: str, overrides, expected_task=None):
    """Reads an experiment config for a command, with errors a person can act on.

    Args:
        path: the ``--config`` file.
        overrides: the ``--set`` strings.
        expected_task: when given (the ``pretrain`` / ``finetune`` aliases), the task the file must train.

    Raises:
        UserError: a missing file, invalid JSON, an unknown key, a bad value or the wrong task.
    """
    from uniter_tf.console import UserError
    from uniter_tf.training.experiment import ExperimentConfig

    try:
        config = ExperimentConfig.from_file(path, overrides)
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    if expected_task is not None and config.task_name != expected_task:
        raise UserError(f"{path}: task.name is {config.task_name!r}, not {expected_task!r}; run it with "
                        f"`uniter train --config {path}`")
    return config


def print_config(config) -> None:
    """Checks the task section (builds the task: unknown task keys are named) and prints the resolved
    config as JSON (what the run writes as ``experiment.json``)."""
    import json

    config.build_task()
    print(json.dumps(config.to_dict(), indent=2))


def config_file_exists(path: str) -> bool:
    """Whether ``path`` is a file: local paths without importing TensorFlow (a typo fails at once), URLs
    (``gs://``, ``ram://``, ...) through ``tf.io.gfile``."""
    import os

    if "://" not in path:
        return os.path.isfile(path)
    import tensorflow as tf

    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def run_quietly(config):
    """Runs the experiment (writes ``experiment.json``, trains).

    Returns:
        ``(summary, is_chief)``: the Trainer's summary, and whether this process is the chief (under
        MultiWorkerMirrored every worker runs the command; only the chief reports).
    """
    from uniter_tf.training.experiment import prepare_experiment

    trainer = prepare_experiment(config)
    return trainer.train(), bool(getattr(trainer, "is_chief", True))


def train(config):
    """Runs the experiment and prints its summary (one JSON object) on the chief only; returns the summary."""
    import json

    summary, is_chief = run_quietly(config)
    if is_chief and isinstance(summary, dict):
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return summary


def run(args) -> int:
    config = load(args.config, args.overrides)
    if args.print_config:
        print_config(config)
        return 0
    train(config)
    return 0
