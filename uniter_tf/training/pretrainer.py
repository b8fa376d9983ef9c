"""``Pretrainer``: a pretraining run from one :class:`PretrainConfig` (``uniter pretrain``, the TFX ``run_fn``).

A thin wrapper: it splits the flat :class:`~uniter_tf.training.pretrain_config.PretrainConfig` into a
:class:`~uniter_tf.tasks.pretraining.PretrainingTask` (model, data, mix, masking, init), a
:class:`~uniter_tf.training.trainer_config.TrainerConfig` and a
:class:`~uniter_tf.training.trainer_config.RuntimeConfig`, and is the
:class:`~uniter_tf.training.trainer.Trainer` of those (the loop, its resume and its outputs are documented
there). The names the rest of the code used from this module are re-exported.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import tensorflow as tf

from uniter_tf.tasks.pretraining import PretrainingTask, evaluate_pretraining
from uniter_tf.training.pretrain_config import PretrainConfig
from uniter_tf.training.trainer import (EVAL_CURVES, EVAL_TASK, LOSS_CURVES_FILE, METRICS_FILE, SUMMARY_FILE, Trainer,
                                        plot_loss_curves, trim_metrics_log)


class Pretrainer(Trainer):
    """Builds the model, optimizer, inputs and checkpoints of a pretraining run, and runs it.

    Args:
        config: the run configuration (``self.config``).
        strategy: a strategy to use instead of the one named in ``config`` (tests).
        log: where progress messages go (default ``print``).

    Attributes:
        mix_keys: the input streams (tasks, or ``task/dataset`` pairs).
        tasks: the pretraining tasks with a positive ratio.
        input_config: the input-pipeline options.
    """

    def __init__(self, config: PretrainConfig, strategy: Optional[tf.distribute.Strategy] = None,
                 log: Callable[[str], None] = print):
        task = PretrainingTask.from_config(config.task_params())
        super().__init__(task, config.trainer_config(), config.runtime_config(), strategy=strategy, log=log,
                         run_record=config.to_dict())
        self.config = config
        self.input_config = task.input_config
        self.mix_keys = self.streams
        self.tasks: List[str] = task.active_tasks()

    def evaluate(self, files: Optional[List[str]] = None, max_batches: Optional[int] = None,
                 step: Optional[int] = None) -> Dict[str, float]:
        """Held-out metrics of every active task (no dropout): see :func:`evaluate_pretraining`."""
        return super().evaluate(files, max_batches, step)


__all__ = ["Pretrainer", "evaluate_pretraining", "plot_loss_curves", "trim_metrics_log", "METRICS_FILE",
           "SUMMARY_FILE", "LOSS_CURVES_FILE", "EVAL_TASK", "EVAL_CURVES"]
