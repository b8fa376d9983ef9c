"""Fine-tuning of a downstream task (spec §5) from one :class:`FinetuneConfig` (``uniter finetune``, TFX).

:class:`FinetuneRun` is a thin wrapper: it splits the flat config into the task (a
:class:`~uniter_tf.models.task.DownstreamTask`, which is a :class:`uniter_tf.tasks.Task`), a
:class:`~uniter_tf.training.trainer_config.TrainerConfig` and a
:class:`~uniter_tf.training.trainer_config.RuntimeConfig`, and is the
:class:`~uniter_tf.training.trainer.Trainer` of those: the same loop as pretraining (strategies, mixed
precision, accumulation, XLA, kill -9 resume). Per update: the task loss of one batch, gradients, one
global-norm clip over **all** trainable variables (``grad_norm``), then the UNITER AdamW step with the
linear warm-up / linear decay schedule. The head gets ``lr × head_learning_rate_multiplier`` (VQA: 10, the
official ``lr_mul``) through the optimizer's per-variable multiplier, which is exactly the official two
parameter groups (each Adam slot is per variable, and the decoupled decay uses the group's rate).

The backbone starts from the pretraining checkpoint by partial restore (the pretraining heads other than
ITM are not needed; the ITM head is kept so the fine-tuned export still answers ITM / retrieval
queries). Validation every ``valid_steps`` updates and at the end; a checkpoint at every validation.

A run writes its directory (checkpoints, ``finetune_config.json``, metrics, predictions) and nothing
else: exporting is :func:`uniter_tf.export.model_dir.export_model_dir` on that directory, called by
``uniter export``, ``uniter finetune --export`` and the TFX ``run_fn``. The layout is
:mod:`uniter_tf.runs`'s, shared with the exporter without either importing the other.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Union

import tensorflow as tf

from uniter_tf.training.trainer import Trainer

_LOG = logging.getLogger(__name__)

EXAMPLE_ID_KEY = "example_id"
CONFIG_FILE_NAME = "finetune_config.json"  # = uniter_tf.runs.TASK_RUN_CONFIG_FILE
METRICS_FILE_NAME = "metrics.json"
CHECKPOINT_SUBDIR = "checkpoints"  # = uniter_tf.runs.CHECKPOINT_SUBDIR


@dataclasses.dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs (the JSON of ``uniter finetune --config``).

    Keys starting with ``_`` (e.g. ``_command``, ``_expected``) are documentation and ignored.

    Attributes:
        task: registered task name (``vqa``).
        task_config: the task's constructor arguments (VQA: ``num_answers``; ``answer_vocabulary_file``
            names an ``ans2label.json`` whose answers are then used as ``answer_vocabulary``).
        model_config: a preset name, a JSON file or a dict of :class:`uniter_tf.config.UniterConfig`.
        model_overrides: ``UniterConfig`` fields changed on top of ``model_config`` (as in pretraining).
        train_files: glob patterns of canonical TFRecords with the task's labels.
        eval_files: glob patterns of the validation records (optional).
        pretrained_checkpoint: pretraining checkpoint (directory or prefix) to start from; None = random.
        output_dir: the run directory: checkpoints, ``finetune_config.json``, metrics and predictions.
        train_batch_size: examples per update.
        eval_batch_size: examples per validation batch.
        learning_rate: peak base rate (8e-5 for VQA-base).
        warmup_steps: linear warm-up updates.
        num_train_steps: total updates.
        weight_decay: decoupled weight decay.
        beta_1: Adam β1.
        beta_2: Adam β2 (0.98 in UNITER).
        epsilon: Adam ε (1e-6 in UNITER).
        grad_norm: global-norm clip; -1 disables it.
        dropout: every dropout rate of the backbone (official ``set_dropout``).
        seed: seeds TensorFlow, NumPy and the input shuffle.
        max_text_length: longer texts are dropped (official ``max_txt_len``).
        valid_steps: validate and checkpoint every this many updates.
        max_eval_batches: cap on validation batches (None = the whole split).
        log_every: log the training loss every this many updates.
        gradient_accumulation_steps: micro-batches per update (gradients summed).
        precision: ``float32``, ``mixed_float16`` or ``mixed_bfloat16``.
        jit_compile: compile the forward/backward pass with XLA.
        keep_checkpoints: checkpoints kept.
        progress_bar: show a Keras progress bar.
        strategy: the ``tf.distribute`` strategy name (:mod:`uniter_tf.training.strategy`).
        logical_cpus: with ``mirrored`` on a CPU-only machine, split the CPU into this many devices.
        tpu_address: TPU name/address for ``tpu``.
    """

    task: str = "vqa"
    task_config: Dict[str, Any] = dataclasses.field(default_factory=dict)
    model_config: Union[str, Dict[str, Any]] = "tiny"
    model_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    train_files: List[str] = dataclasses.field(default_factory=list)
    eval_files: List[str] = dataclasses.field(default_factory=list)
    pretrained_checkpoint: Optional[str] = None
    output_dir: str = "runs/finetune"
    train_batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float = 8e-5
    warmup_steps: int = 600
    num_train_steps: int = 6000
    weight_decay: float = 0.01
    beta_1: float = 0.9
    beta_2: float = 0.98
    epsilon: float = 1e-6
    grad_norm: float = 2.0
    dropout: float = 0.1
    seed: int = 42
    max_text_length: int = 60
    valid_steps: int = 500
    max_eval_batches: Optional[int] = None
    log_every: int = 10
    gradient_accumulation_steps: int = 1
    precision: str = "float32"
    jit_compile: bool = False
    keep_checkpoints: int = 3
    progress_bar: bool = False
    strategy: str = "default"
    logical_cpus: int = 0
    tpu_address: str = ""

    def __post_init__(self):
        if isinstance(self.train_files, str):
            self.train_files = [self.train_files]
        if isinstance(self.eval_files, str):
            self.eval_files = [self.eval_files]
        for name in ("train_batch_size", "eval_batch_size", "num_train_steps", "valid_steps", "log_every",
                     "max_text_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FinetuneConfig.{name} must be a positive int, got {value!r}")
        if not 0 <= self.warmup_steps < self.num_train_steps:
            raise ValueError(f"FinetuneConfig needs 0 <= warmup_steps < num_train_steps, got "
                             f"{self.warmup_steps}, {self.num_train_steps}")
        if self.learning_rate <= 0:
            raise ValueError(f"FinetuneConfig.learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"FinetuneConfig.dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], **overrides: Any) -> "FinetuneConfig":
        """Builds a config from a dict (``_``-prefixed keys ignored); ``overrides`` win.

        Raises:
            ValueError: an unknown key (named in the message).
        """
        merged = {key: value for key, value in values.items() if not key.startswith("_")}
        merged.update({key: value for key, value in overrides.items() if value is not None})
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"unknown fine-tuning config keys {unknown}; known: {sorted(known)}")
        return cls(**merged)

    @classmethod
    def from_json(cls, path: str, **overrides: Any) -> "FinetuneConfig":
        """Reads a JSON config file (relative data paths are resolved against the working directory)."""
        with tf.io.gfile.GFile(path, "r") as handle:
            try:
                values = json.loads(handle.read())
            except json.JSONDecodeError as error:
                raise ValueError(f"fine-tuning config {path!r} is not valid JSON: {error}") from None
        if not isinstance(values, dict):
            raise ValueError(f"fine-tuning config {path!r} must hold a JSON object")
        return cls.from_dict(values, **overrides)

    def to_dict(self) -> Dict[str, Any]:
        """The config as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def task_params(self) -> Dict[str, Any]:
        """The ``task`` section of the run: run parameters plus the task's own ``task_config``."""
        params = dict(self.task_config)
        params.update(model=self.model_config, model_overrides=dict(self.model_overrides),
                      train_files=list(self.train_files), eval_files=list(self.eval_files),
                      init="pretrained" if self.pretrained_checkpoint else "scratch",
                      init_path=self.pretrained_checkpoint or "", train_batch_size=self.train_batch_size,
                      eval_batch_size=self.eval_batch_size, max_text_length=self.max_text_length,
                      dropout=self.dropout)
        return params

    def trainer_config(self):
        """The :class:`~uniter_tf.training.trainer_config.TrainerConfig` of the run (validation and
        checkpoints every ``valid_steps``)."""
        from uniter_tf.training.trainer_config import TrainerConfig  # pylint: disable=import-outside-toplevel

        return TrainerConfig(
                num_train_steps=self.num_train_steps, warmup_steps=self.warmup_steps,
                learning_rate=float(self.learning_rate), beta_1=self.beta_1, beta_2=self.beta_2,
                epsilon=self.epsilon, weight_decay=self.weight_decay, grad_norm=self.grad_norm,
                gradient_accumulation_steps=self.gradient_accumulation_steps, precision=self.precision,
                jit_compile=self.jit_compile, checkpoint_every=self.valid_steps,
                keep_checkpoints=self.keep_checkpoints, log_every=self.log_every, eval_every=self.valid_steps,
                eval_batches=self.max_eval_batches or 1, progress_bar=self.progress_bar, seed=self.seed)

    def runtime_config(self):
        """The :class:`~uniter_tf.training.trainer_config.RuntimeConfig` of the run."""
        from uniter_tf.training.trainer_config import RuntimeConfig  # pylint: disable=import-outside-toplevel

        return RuntimeConfig(output_dir=self.output_dir, strategy=self.strategy, logical_cpus=self.logical_cpus,
                             tpu_address=self.tpu_address)


def resolve_model_config(config: FinetuneConfig):
    """The :class:`UniterConfig` of the run, with the run's dropout rates."""
    from uniter_tf.config import UniterConfig  # pylint: disable=import-outside-toplevel

    if isinstance(config.model_config, Mapping):
        model_config = UniterConfig.from_dict(dict(config.model_config))
    else:
        model_config = UniterConfig.resolve(config.model_config)
    if config.model_overrides:
        model_config = model_config.replace(**config.model_overrides)
    return model_config.replace(hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout)


def build_task(config: FinetuneConfig):
    """Constructs the task of ``config`` with its run parameters (the task reads e.g. VQA's
    ``answer_vocabulary_file`` itself)."""
    from uniter_tf.tasks import get_task  # pylint: disable=import-outside-toplevel

    return get_task(config.task, **config.task_params())


def restore_pretrained_weights(pretraining_model, checkpoint: str) -> str:
    """Partial restore from a pretraining checkpoint into the backbone and the ITM head.

    The whole pretraining model (backbone + heads) is read with the trainer's
    :func:`uniter_tf.training.checkpointing.restore_pretraining_model`; a checkpoint without heads (e.g.
    a converted backbone) falls back to :func:`~uniter_tf.training.checkpointing.restore_backbone`, and
    the ITM head then keeps its fresh initialisation (logged). Either way every backbone weight must be
    in the checkpoint.

    Args:
        pretraining_model: a :class:`uniter_tf.models.pretraining_model.UniterPretrainingModel` around the
            fine-tuning backbone (only its backbone and ITM head are used afterwards).
        checkpoint: a pretraining output directory, its ``checkpoints/`` or a checkpoint prefix.

    Returns:
        The restored checkpoint prefix.
    """
    from uniter_tf.training import checkpointing

    try:
        path = checkpointing.restore_pretraining_model(pretraining_model, checkpoint)
        _LOG.info("restored the backbone and the ITM head from %s", path)
    except AssertionError:
        path = checkpointing.restore_backbone(pretraining_model.backbone, checkpoint)
        _LOG.warning("restored the backbone from %s, which has no pretraining heads; the exported ITM scores "
                     "use a fresh ITM head", path)
    return path


def _train_record(metrics: Mapping[str, float]) -> Dict[str, float]:
    # The historical name of the gradient norm in metrics.json is kept beside the Trainer's.
    record = dict(metrics)
    if "grad_norm" in record:
        record["gradient_norm"] = record["grad_norm"]
    return record


class FinetuneRun(Trainer):
    """One fine-tuning run: a :class:`~uniter_tf.training.trainer.Trainer` of the config's task.

    The model is built and initialised (partial restore from ``pretrained_checkpoint``, or resumed from the
    run's latest checkpoint) on construction.

    Args:
        config: the run's configuration (``self.config``).
        task: the task; built from ``config`` when omitted (its run parameters are then set from ``config``).
        strategy: a strategy to use instead of ``config.strategy`` (tests).
        log: where progress messages go (default: this module's logger).

    Attributes:
        backbone: the model's backbone. itm_head: the ITM head that rides along. step: the update counter.
        restored_from: the pretraining checkpoint restored, or None.
    """

    def __init__(self, config: FinetuneConfig, task=None, strategy=None, log=None):
        if not config.train_files:
            raise ValueError("FinetuneConfig.train_files is empty: give the task's training records")
        if task is None:
            task = build_task(config)
        else:
            params = config.task_params()
            task.configure(**{key: params[key] for key in params if key not in config.task_config})
        super().__init__(task, config.trainer_config(), config.runtime_config(), strategy=strategy,
                         log=log or _LOG.info, run_record=config.to_dict())
        self.config = config
        self.backbone = self.model.backbone
        self.itm_head = task.pretraining_model(self.model).itm_head
        self.step = self.global_step
        head_ids = {id(variable) for variable in self.model.head.trainable_variables}
        self.head_variables = [variable for variable in self.variables if id(variable) in head_ids]
        self.backbone_variables = [variable for variable in self.variables if id(variable) not in head_ids]
        self.history: List[Dict[str, Any]] = []
        task.restored_from = None
        self.restore_or_initialize()
        self.restored_from = task.restored_from

    # ----------------------------------------------------------------------------------------------
    def datasets(self):
        """``(train, eval)`` datasets of ``(inputs, labels)`` batches; eval is None without eval files."""
        from uniter_tf.data.finetune_inputs import build_finetune_dataset

        train = self.task.build_inputs(self.task.name, seed=self.config.seed, training=True)
        evaluation = None
        if self.config.eval_files:
            evaluation = build_finetune_dataset(self.config.eval_files, self.task, self.model_config,
                                                self.config.eval_batch_size,
                                                max_text_length=self.config.max_text_length, training=False)
        return train, evaluation

    def _train_step(self, inputs, labels):
        """One update on the given batch (benchmarks): ``(loss, gradient norm, metrics)``."""
        values = self.train_on_batch((inputs, labels))
        return values["loss"], values["grad_norm"], values

    def evaluate(self, dataset=None, predictions_path: Optional[str] = None, *, files=None, max_batches=None,
                 step: Optional[int] = None) -> Dict[str, float]:
        """Loss and metrics (mean over examples) of ``dataset`` (default: the eval files); optionally writes
        the predictions (``results/results_{step}.json`` when the Trainer evaluates).

        Args:
            dataset: ``(inputs, labels)`` batches; None reads ``files`` (default: the config's eval files).
            predictions_path: JSON file for ``{example_id: predicted answer}``.
            files: eval files when ``dataset`` is None.
            max_batches: cap on batches (default ``max_eval_batches``).
            step: the step the predictions are named after (when ``dataset`` is None).
        """
        from uniter_tf.models.task import evaluate_task_model  # pylint: disable=import-outside-toplevel

        max_batches = max_batches or self.config.max_eval_batches
        if dataset is not None:
            return evaluate_task_model(self.task, self.model, dataset, max_batches=max_batches,
                                       predictions_path=predictions_path, files=self.config.eval_files)
        step = int(self.global_step.numpy()) if step is None else step
        result = self.task.evaluate(self.model, files or self.config.eval_files, max_batches,
                                    output_dir=self.output_dir if self.is_chief else None, step=step)
        self.history.append({"step": step, "train": _train_record(self.last_train_metrics), "eval": dict(result)})
        return result

    def train(self) -> Dict[str, Any]:
        """Runs the loop to ``num_train_steps``; resumes from the run's latest checkpoint if any.

        Returns:
            The Trainer's summary plus ``{"step", "train": last training metrics, "eval": last validation
            metrics or None, "checkpoint", "restored_from", "seconds", "history"}`` (also ``metrics.json``).
        """
        from uniter_tf.training.trainer import write_json  # pylint: disable=import-outside-toplevel

        summary = super().train()
        train_metrics = _train_record(summary.get("last_metrics") or {})
        result = dict(summary)
        result.update({"step": summary["final_step"], "train": train_metrics, "eval": summary["evaluation"] or None,
                       "restored_from": self.restored_from, "seconds": summary["seconds_this_run"],
                       "history": self.history})
        if self.is_chief:
            write_json(os.path.join(self.output_dir, METRICS_FILE_NAME), result)
        return result

    def write_run_config(self) -> str:
        """Writes ``finetune_config.json`` (what the exporter rebuilds the task model from)."""
        self.write_run_files()
        return os.path.join(self.output_dir, CONFIG_FILE_NAME)
