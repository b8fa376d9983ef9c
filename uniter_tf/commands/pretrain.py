"""``uniter pretrain``: multi-task UNITER pretraining (MLM, MRFR, MRC-kl, ITM+WRA) from a JSON config.

An alias of ``uniter train`` for the ``pretraining`` task: ``--config`` takes an experiment config
(sections ``task`` / ``trainer`` / ``runtime``; ``--set section.key=value``) or the older flat
:class:`~uniter_tf.training.pretrain_config.PretrainConfig` format (``--set key=value``).
"""

from __future__ import annotations

NAME = "pretrain"
HELP = ("Pretrain UNITER on canonical TFRecords (MLM / MRFR / MRC-kl / ITM+OT) from a JSON config; "
        "rerunning the same command resumes from the last checkpoint.")


def add_arguments(parser):
    parser.add_argument("--config", help="JSON config: an experiment config (configs/pretrain_*.json, sections "
                                         "task / trainer / runtime) or a flat PretrainConfig")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field; dotted keys for nested fields, JSON values: "
                             "section.key for an experiment config (--set trainer.num_train_steps=100 "
                             "--set task.inputs.batch_size=16), key for a flat one (--set num_train_steps=100); "
                             "repeatable")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args) -> int:
    import json

    from uniter_tf.console import UserError

    from uniter_tf.commands.train import config_file_exists

    # A local path is checked before the TensorFlow import below (seconds), so that a typo fails at once.
    if args.config and not config_file_exists(args.config):
        raise UserError(f"--config {args.config}: no such file")
    if args.config:
        from uniter_tf.commands import train as train_command
        from uniter_tf.training.experiment import is_experiment_dict, read_config_file

        if is_experiment_dict(read_config_file(args.config)):
            experiment = train_command.load(args.config, args.overrides, expected_task="pretraining")
            if args.print_config:
                train_command.print_config(experiment)
            else:
                train_command.train(experiment)
            return 0
    from uniter_tf.training.pretrain_config import load_config

    try:
        config = load_config(args.config, args.overrides)
    except FileNotFoundError:
        raise UserError(f"--config {args.config}: no such file") from None
    except json.JSONDecodeError as error:
        raise UserError(f"--config {args.config}: not valid JSON ({error})") from None
    except ValueError as error:  # unknown keys, bad --set syntax, values out of range
        raise UserError(f"config: {error}") from None
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        return 0
    from uniter_tf.training.pretrainer import Pretrainer

    trainer = Pretrainer(config)
    summary = trainer.train()
    if trainer.is_chief:
        print(json.dumps({"final_step": summary["final_step"], "resumed_from_step": summary["resumed_from_step"],
                          "evaluation": summary["evaluation"], "checkpoint": summary["checkpoint"]}, sort_keys=True))
    return 0
