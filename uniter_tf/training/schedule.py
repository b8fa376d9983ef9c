"""Learning-rate schedule of UNITER pretraining and fine-tuning (official ``optim/sched.py``, spec §3.8)."""

from __future__ import annotations

import keras
import tensorflow as tf

#: The official code replaces non-positive rates (the end of the decay) by this value.
MIN_LEARNING_RATE = 1e-8


@keras.saving.register_keras_serializable(package="uniter_tf")
class LinearWarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``learning_rate`` over ``warmup_steps``, then linear decay to 0 at ``total_steps``.

    ``lr(step) = base · step / warmup`` for ``step < warmup``, else
    ``base · max(0, (total − step) / (total − warmup))``; values ``<= 0`` become ``1e-8``. ``step`` is the
    official 1-based update counter (the first update uses ``step = 1``).

    Args:
        learning_rate: the peak rate.
        warmup_steps: updates of the warm-up (0: none).
        total_steps: update at which the rate reaches 0 (``num_train_steps``).
    """

    def __init__(self, learning_rate: float, warmup_steps: int, total_steps: int):
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        if warmup_steps < 0 or total_steps <= warmup_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
                             f"total_steps={total_steps}")
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = float(max(self.warmup_steps, 1))
        warming = self.learning_rate * step / warmup
        decaying = self.learning_rate * tf.maximum(
                0.0, (self.total_steps - step) / float(self.total_steps - self.warmup_steps))
        rate = tf.where(step < self.warmup_steps, warming, decaying)
        return tf.where(rate <= 0.0, MIN_LEARNING_RATE, rate)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}
