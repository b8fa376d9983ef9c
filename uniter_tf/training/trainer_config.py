"""The two task-independent sections of a training run: :class:`TrainerConfig` and :class:`RuntimeConfig`.

A run = a :class:`uniter_tf.tasks.Task` (what to learn: model, inputs, loss, metrics, initialisation) +
a :class:`TrainerConfig` (how: optimizer, schedule, precision, accumulation, checkpoint / log / eval
cadence) + a :class:`RuntimeConfig` (where: output directory, ``tf.distribute`` strategy). The
:class:`uniter_tf.training.trainer.Trainer` takes the three. Both dataclasses validate themselves on
construction with messages that name the field, and ``from_dict`` rejects unknown keys by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _from_dict(cls, values: Mapping[str, Any], section: str):
    if not isinstance(values, Mapping):
        raise ValueError(f"the {section} section must be an object, got {type(values).__name__}")
    values = {key: value for key, value in values.items() if not str(key).startswith("_")}
    known = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {section} config keys {unknown}; known: {sorted(known)}")
    return cls(**values)


@dataclasses.dataclass
class TrainerConfig:
    """How a task is trained (the ``trainer`` section of an experiment config).

    Attributes:
        num_train_steps: optimizer updates of the run (the learning rate reaches 0 there).
        warmup_steps: linear warm-up updates (``0 <= warmup_steps < num_train_steps``).
        learning_rate: peak base learning rate; a task may scale it per variable
            (:meth:`uniter_tf.tasks.Task.learning_rate_multipliers`, e.g. the VQA head ×10).
        beta_1: Adam β1.
        beta_2: Adam β2 (0.98 in UNITER).
        epsilon: Adam ε (1e-6 in UNITER).
        weight_decay: decoupled weight decay (none on biases and LayerNorms).
        grad_norm: global-norm clipping threshold; ``<= 0`` disables clipping (official ``-1``).
        gradient_accumulation_steps: micro-batches per update (of one stream); gradients are summed.
        precision: ``float32``, ``mixed_float16`` (dynamic loss scale per stream's task) or
            ``mixed_bfloat16``.
        jit_compile: compile the forward/backward pass with XLA.
        checkpoint_every: updates between checkpoints (and one at the end).
        keep_checkpoints: checkpoints kept by the CheckpointManager.
        log_every: updates between TensorBoard / ``metrics.jsonl`` records.
        eval_every: updates between evaluations on the task's eval files (0: only at the end).
        eval_batches: batches (per stream) of each evaluation, read from the start of the eval files; ``0``
            (or ``null``): the whole split, as ``uniter evaluate`` and the TFX evaluator read it.
        progress_bar: show a Keras progress bar.
        seed: run seed (stream draws, masks, shuffles, initialisation, dropout).
    """

    num_train_steps: int = 200_000
    warmup_steps: int = 10_000
    learning_rate: float = 5e-5
    beta_1: float = 0.9
    beta_2: float = 0.98
    epsilon: float = 1e-6
    weight_decay: float = 0.01
    grad_norm: float = 5.0
    gradient_accumulation_steps: int = 1
    precision: str = "float32"
    jit_compile: bool = False
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    eval_every: int = 0
    eval_batches: Optional[int] = 20
    progress_bar: bool = True
    seed: int = 42

    def __post_init__(self):
        if self.eval_batches is None:
            self.eval_batches = 0  # null in a config file: the whole split
        for name in ("num_train_steps", "warmup_steps", "gradient_accumulation_steps", "checkpoint_every",
                     "keep_checkpoints", "log_every", "eval_every", "eval_batches", "seed"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"trainer.{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay", "grad_norm"):
            if not _is_number(getattr(self, name)):
                raise ValueError(f"trainer.{name} must be a number, got {getattr(self, name)!r}")
        for name in ("jit_compile", "progress_bar"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"trainer.{name} must be true or false, got {getattr(self, name)!r}")
        if self.num_train_steps < 1:
            raise ValueError(f"trainer.num_train_steps must be >= 1, got {self.num_train_steps}")
        if not 0 <= self.warmup_steps < self.num_train_steps:
            raise ValueError(f"trainer.warmup_steps must be in [0, num_train_steps={self.num_train_steps}), "
                             f"got {self.warmup_steps}")
        if self.learning_rate <= 0:
            raise ValueError(f"trainer.learning_rate must be > 0, got {self.learning_rate}")
        for name in ("beta_1", "beta_2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.epsilon <= 0:
            raise ValueError(f"trainer.epsilon must be > 0, got {self.epsilon}")
        if self.weight_decay < 0:
            raise ValueError(f"trainer.weight_decay must be >= 0, got {self.weight_decay}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("gradient_accumulation_steps", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"trainer.eval_every must be >= 0 (0: only at the end), got {self.eval_every}")
        if self.eval_batches < 0:
            raise ValueError(f"trainer.eval_batches must be >= 0 (0 or null: the whole split), got {self.eval_batches}")

    @property
    def eval_batch_limit(self) -> Optional[int]:
        """``eval_batches`` as a cap for :meth:`uniter_tf.tasks.Task.evaluate`: None for the whole split."""
        return self.eval_batches or None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainerConfig":
        """Builds the config; ``_``-prefixed keys are comments.

        Raises:
            ValueError: an unknown key (named) or an invalid value (field named).
        """
        return _from_dict(cls, values, "trainer")

    def to_dict(self) -> Dict[str, Any]:
        """The config as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RuntimeConfig:
    """Where a run happens (the ``runtime`` section of an experiment config).

    Attributes:
        output_dir: the run directory (checkpoints, TensorBoard, ``metrics.jsonl``, ``summary.json``,
            ``loss_curves.png``, the run's config files); any ``tf.io.gfile`` path (``gs://...`` too).
        strategy: ``default``, ``one_device``, ``mirrored``, ``multi_worker_mirrored`` or ``tpu``.
        logical_cpus: with ``mirrored`` on a CPU-only machine, split the CPU into this many devices.
        tpu_address: TPU name/address for ``tpu`` (empty: this VM's TPU).
    """

    output_dir: str = "runs/train"
    strategy: str = "default"
    logical_cpus: int = 0
    tpu_address: str = ""

    def __post_init__(self):
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(f"runtime.output_dir must be a non-empty path, got {self.output_dir!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"runtime.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not _is_int(self.logical_cpus) or self.logical_cpus < 0:
            raise ValueError(f"runtime.logical_cpus must be an integer >= 0, got {self.logical_cpus!r}")
        if not isinstance(self.tpu_address, str):
            raise ValueError(f"runtime.tpu_address must be a string, got {self.tpu_address!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RuntimeConfig":
        """Builds the config; ``_``-prefixed keys are comments.

        Raises:
            ValueError: an unknown key (named) or an invalid value (field named).
        """
        return _from_dict(cls, values, "runtime")

    def to_dict(self) -> Dict[str, Any]:
        """The config as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


__all__ = ["TrainerConfig", "RuntimeConfig", "PRECISIONS", "STRATEGIES"]
