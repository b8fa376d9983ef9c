"""The pretraining run configuration: a JSON file plus ``--set key=value`` overrides.

The file is one JSON object with the fields of :class:`PretrainConfig`; keys starting with ``_`` (such as
``_command`` and ``_expect``, the command that runs the config and the result to expect) are comments.
``inputs`` holds the :class:`~uniter_tf.data.pretraining_inputs.PretrainingInputConfig` fields and
``model_overrides`` any :class:`~uniter_tf.config.UniterConfig` field. Overrides use dotted keys for nested
objects (``--set inputs.batch_size=16``) and JSON values (``--set task_ratios='{"mlm": 1}'``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from uniter_tf.data.pretraining_inputs import PretrainingInputConfig, TASKS
from uniter_tf.tasks.base_task import INIT_TYPES
from uniter_tf.tasks.pretraining import DEFAULT_TASK_RATIOS, OWN_PARAMS, mix_ratios, mix_task
from uniter_tf.tasks.pretraining import check_task_ratios as _check_task_ratios
from uniter_tf.tasks.pretraining import checked_dataset as _checked_dataset
from uniter_tf.training.experiment import parse_value
from uniter_tf.training.trainer_config import PRECISIONS, RuntimeConfig, TrainerConfig

#: PretrainConfig fields of the task section (the others are TrainerConfig / RuntimeConfig fields).
TASK_FIELDS = ("model", "model_overrides", "train_files", "eval_files", "init", "init_path") + OWN_PARAMS


@dataclasses.dataclass
class PretrainConfig:
    """Everything a pretraining run needs.

    Attributes:
        model: a ``UniterConfig`` preset name or JSON path (``uniter-base``, ``tiny``, ...).
        model_overrides: ``UniterConfig`` fields to change (e.g. dropout).
        train_files: glob(s) of canonical GZIP TFRecord shards (one dataset; tasks mixed by ``task_ratios``).
        train_datasets: instead of ``train_files``, the official per-dataset mix (spec §3.9): a list of
            ``{"name": ..., "files": [...], "task_ratios": {...}}``; one (task, dataset) pair is drawn per
            update with probability proportional to its ratio, e.g. coco ``{"itm": 6, "mlm": 8, "mrfr": 4,
            "mrckl": 4}`` beside vg ``{"itm": 9, "mlm": 12, ...}``. Each pair has its own input stream, so
            ITM negatives come from the images of the same dataset. ``task_ratios`` is then unused.
        eval_files: held-out shards evaluated at the end (and every ``eval_every`` steps); may be empty.
        output_dir: checkpoints (``checkpoints/``), TensorBoard (``tensorboard/``), ``metrics.jsonl``,
            ``loss_curves.png`` and ``summary.json`` go here.
        inputs: input-pipeline options (:class:`PretrainingInputConfig` fields).
        task_ratios: task → mix ratio; one task is drawn per optimizer update, ``P ∝ ratio``.
        num_train_steps: optimizer updates of the run (the LR reaches 0 there).
        warmup_steps: linear warm-up updates.
        learning_rate: peak learning rate.
        beta_1: Adam β1.
        beta_2: Adam β2.
        epsilon: Adam ε.
        weight_decay: decoupled weight decay (none on biases and LayerNorms).
        grad_norm: global-norm clipping threshold; ``<= 0`` disables clipping (official ``-1``).
        gradient_accumulation_steps: micro-batches per update (same task); gradients are summed.
        precision: ``float32``, ``mixed_float16`` (GPU, dynamic loss scale per task) or ``mixed_bfloat16``
            (CPU/TPU). The optimal-transport distance always runs in float32.
        jit_compile: compile the forward/backward pass with XLA.
        strategy: ``default``, ``one_device``, ``mirrored``, ``multi_worker_mirrored`` or ``tpu``.
        logical_cpus: with ``mirrored`` on a CPU-only machine, split the CPU into this many devices.
        tpu_address: TPU name/address for ``tpu`` (empty: this VM's TPU).
        init: ``scratch``, ``bert`` (HF-BERT safetensors / MiniLM preset, text side), ``official``
            (official UNITER ``.pt``/``.npz`` state dict) or ``pretrained`` (our own checkpoint directory).
        init_path: the file or directory of ``init``.
        max_masked_tokens: static K of masked tokens per example (XLA); ``null``: dynamic, exact.
        max_masked_regions: static K of masked regions per example (XLA); ``null``: dynamic, exact.
        checkpoint_every: updates between checkpoints (and at the end).
        keep_checkpoints: checkpoints kept by the CheckpointManager.
        log_every: updates between TensorBoard / ``metrics.jsonl`` records.
        eval_every: updates between evaluations on ``eval_files`` (0: only at the end).
        eval_batches: batches per task per evaluation.
        progress_bar: show a Keras progress bar.
        seed: run seed (task draws, masks, negatives, shuffles, initialisation, dropout).
    """

    model: str = "tiny"
    model_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    train_files: List[str] = dataclasses.field(default_factory=list)
    train_datasets: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    eval_files: List[str] = dataclasses.field(default_factory=list)
    output_dir: str = "runs/pretrain"
    inputs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    task_ratios: Dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_TASK_RATIOS))
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
    strategy: str = "default"
    logical_cpus: int = 0
    tpu_address: str = ""
    init: str = "scratch"
    init_path: str = ""
    max_masked_tokens: Optional[int] = None
    max_masked_regions: Optional[int] = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 20
    progress_bar: bool = True
    seed: int = 42

    def __post_init__(self):
        if isinstance(self.train_files, str):
            self.train_files = [self.train_files]
        if isinstance(self.eval_files, str):
            self.eval_files = [self.eval_files] if self.eval_files else []
        _check_task_ratios(self.task_ratios, "task_ratios")
        self.train_datasets = [_checked_dataset(entry, index) for index, entry in enumerate(self.train_datasets)]
        names = [entry["name"] for entry in self.train_datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"train_datasets: dataset names must be unique, got {names}")
        if self.train_datasets and self.train_files:
            raise ValueError("give either train_files (one dataset, mixed by task_ratios) or train_datasets "
                             "(a mix per dataset), not both")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.init not in INIT_TYPES:
            raise ValueError(f"init must be one of {INIT_TYPES}, got {self.init!r}")
        if self.init != "scratch" and not self.init_path:
            raise ValueError(f"init={self.init!r} needs init_path")
        if self.num_train_steps < 1 or self.warmup_steps < 0 or self.warmup_steps >= self.num_train_steps:
            raise ValueError(f"need num_train_steps >= 1 and 0 <= warmup_steps < num_train_steps, got "
                             f"{self.num_train_steps} / {self.warmup_steps}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        for name in ("checkpoint_every", "keep_checkpoints", "log_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        # Validate the input options now, so a typo fails before any TensorFlow work.
        self.input_config()

    def input_config(self) -> PretrainingInputConfig:
        """The input-pipeline options as a :class:`PretrainingInputConfig`."""
        return PretrainingInputConfig.from_dict(self.inputs)

    def active_tasks(self) -> List[str]:
        """Tasks with a positive ratio (in any dataset), in a fixed order."""
        return sorted({mix_task(key) for key in self.mix_ratios()}, key=TASKS.index)

    def mix_ratios(self) -> Dict[str, float]:
        """The mixing ratio of every input stream: ``task`` keys for ``train_files``, ``task/dataset`` keys
        for ``train_datasets`` (see :func:`mix_task`)."""
        return mix_ratios(self.task_ratios, self.train_datasets)

    def files_for(self, mix_key: str) -> List[str]:
        """The training files of the stream ``mix_key`` (a key of :meth:`mix_ratios`)."""
        if "/" not in mix_key:
            return list(self.train_files)
        name = mix_key.split("/", 1)[1]
        for entry in self.train_datasets:
            if entry["name"] == name:
                return list(entry["files"])
        raise KeyError(f"no training dataset named {name!r}")

    def to_dict(self) -> Dict[str, Any]:
        """The config as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def task_params(self) -> Dict[str, Any]:
        """The parameters of the run's :class:`~uniter_tf.tasks.pretraining.PretrainingTask`."""
        return {name: getattr(self, name) for name in TASK_FIELDS}

    def trainer_config(self) -> TrainerConfig:
        """The run's :class:`TrainerConfig` (the fields of the same names)."""
        return TrainerConfig(**{field.name: getattr(self, field.name) for field in dataclasses.fields(TrainerConfig)})

    def runtime_config(self) -> RuntimeConfig:
        """The run's :class:`RuntimeConfig` (the fields of the same names)."""
        return RuntimeConfig(**{field.name: getattr(self, field.name) for field in dataclasses.fields(RuntimeConfig)})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PretrainConfig":
        """Builds a config; ``_``-prefixed keys are comments, unknown keys raise ``ValueError``."""
        values = {key: value for key, value in values.items() if not key.startswith("_")}
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown pretraining config keys: {unknown}")
        return cls(**values)


def apply_overrides(values: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Applies ``key=value`` overrides (dotted keys for nested objects; values parsed as JSON).

    Raises:
        ValueError: an override without ``=``.
    """
    values = json.loads(json.dumps(values))
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"--set expects key=value, got {override!r}")
        key, text = override.split("=", 1)
        target = values
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {key}: {part!r} is not an object")
        target[parts[-1]] = parse_value(text)
    return values


def load_config(path: Optional[Union[str, os.PathLike]] = None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Reads a JSON config file (optional) and applies ``overrides``.

    Paths in ``train_files`` / ``eval_files`` / ``init_path`` / ``output_dir`` stay as written (relative
    to the working directory, as the configs' ``_command`` lines assume).
    """
    values: Dict[str, Any] = {}
    if path:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        with tf.io.gfile.GFile(os.fspath(path), "r") as handle:
            values = json.loads(handle.read())
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a pretraining config must be a JSON object")
    return PretrainConfig.from_dict(apply_overrides(values, overrides))


__all__ = ["PretrainConfig", "DEFAULT_TASK_RATIOS", "mix_task", "PRECISIONS", "INIT_TYPES", "apply_overrides", "load_config"]
