"""The shipped local fine-tuning configs pointed at records written into a test's folder."""

from __future__ import annotations

import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


def sample_experiment(root: pathlib.Path, config_name: str, **overrides):
    """``configs/<config_name>`` training on ``root/records/{train,eval}-*.tfrecord.gz`` into ``root/run``.

    Args:
        root: the test's folder (records are written to ``root/records`` by the caller).
        config_name: a file of ``configs/``, e.g. ``"finetune_ve_tiny.json"``.
        **overrides: more ``section.key`` overrides (``trainer__num_train_steps=...`` for ``trainer.num_train_steps``).

    Returns:
        The :class:`uniter_tf.training.experiment.ExperimentConfig`.
    """
    from uniter_tf.training.experiment import ExperimentConfig

    return ExperimentConfig.from_file(str(REPO_ROOT / "configs" / config_name)).with_overrides({
            "runtime.output_dir": str(root / "run"),
            "task.train_files": [str(root / "records" / "train-*.tfrecord.gz")],
            "task.eval_files": [str(root / "records" / "eval-*.tfrecord.gz")],
            **{key.replace("__", "."): value for key, value in overrides.items()}})
