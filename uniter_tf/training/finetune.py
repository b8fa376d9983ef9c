"""Fine-tuning of a downstream task (spec §5): the official common loop on a :class:`DownstreamTask`.

Per update: the task loss of one batch, gradients, one global-norm clip over **all** trainable variables
(``grad_norm``), then the UNITER AdamW step (:class:`uniter_tf.training.optimizer.AdamW`) with the linear
warm-up / linear decay schedule (:class:`uniter_tf.training.schedule.LinearWarmupLinearDecay`). The head
gets ``lr × head_learning_rate_multiplier`` (VQA: 10, the official ``lr_mul``) through a second AdamW on
the head's variables, which is exactly the official two parameter groups (each Adam slot is per
variable, and the decoupled decay uses the group's rate).

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
import time
from typing import Any, Dict, List, Mapping, Optional, Union

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
        with open(path, "r", encoding="utf-8") as handle:
            try:
                values = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"fine-tuning config {path!r} is not valid JSON: {error}") from None
        if not isinstance(values, dict):
            raise ValueError(f"fine-tuning config {path!r} must hold a JSON object")
        return cls.from_dict(values, **overrides)

    def to_dict(self) -> Dict[str, Any]:
        """The config as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


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
    """Constructs the task of ``config`` (the task reads e.g. VQA's ``answer_vocabulary_file`` itself)."""
    from uniter_tf.models.task import get_task  # pylint: disable=import-outside-toplevel

    return get_task(config.task, **config.task_config)


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


class FinetuneRun:
    """One fine-tuning run: model, optimizers, data and the loop (see the module docstring).

    Args:
        config: the run's configuration.
        task: the task; built from ``config`` when omitted.
    """

    def __init__(self, config: FinetuneConfig, task=None):
        import numpy as np
        import tensorflow as tf

        from uniter_tf import runs
        from uniter_tf.models.backbone import UniterBackbone
        from uniter_tf.models.pretraining_model import UniterPretrainingModel
        from uniter_tf.training.optimizer import AdamW
        from uniter_tf.training.schedule import LinearWarmupLinearDecay

        if not config.train_files:
            raise ValueError("FinetuneConfig.train_files is empty: give the task's training records")
        self.config = config
        self.task = task if task is not None else build_task(config)
        self.model_config = resolve_model_config(config)
        tf.random.set_seed(config.seed)
        np.random.seed(config.seed)

        self.backbone = UniterBackbone(self.model_config)
        # The pretraining model around the same backbone gives the checkpoint layout to restore from and
        # the ITM head, which rides along untouched so the export can still score image-text pairs.
        pretraining_model = UniterPretrainingModel(self.backbone)
        self.itm_head = pretraining_model.itm_head
        self.model = self.task.build_model(self.backbone, self.model_config.hidden_size)
        self.model.head.build()
        self.restored_from = None
        if config.pretrained_checkpoint:
            self.restored_from = restore_pretrained_weights(pretraining_model, config.pretrained_checkpoint)

        self.backbone_variables = list(self.backbone.trainable_variables)
        self.head_variables = list(self.model.head.trainable_variables)
        base_schedule = LinearWarmupLinearDecay(config.learning_rate, config.warmup_steps, config.num_train_steps)
        multiplier = float(self.task.head_learning_rate_multiplier)

        def head_schedule(step):
            # Official: the head group's rate = the (floored) base rate × lr_mul, at every step.
            return multiplier * base_schedule(step)

        optimizer_args = dict(beta_1=config.beta_1, beta_2=config.beta_2, epsilon=config.epsilon,
                              weight_decay=config.weight_decay)
        self.backbone_optimizer = AdamW(base_schedule, name="backbone_adamw", **optimizer_args)
        self.head_optimizer = AdamW(head_schedule, name="head_adamw", **optimizer_args)
        self.backbone_optimizer.build(self.backbone_variables)
        self.head_optimizer.build(self.head_variables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.checkpoint = runs.task_checkpoint(self.backbone, self.model.head, self.itm_head,
                                               backbone_optimizer=self.backbone_optimizer,
                                               head_optimizer=self.head_optimizer, step=self.step)
        self.checkpoint_manager = tf.train.CheckpointManager(
                self.checkpoint, os.path.join(config.output_dir, CHECKPOINT_SUBDIR), max_to_keep=3)
        # Batches are padded to their longest text / region count, so shapes vary: let tf.function
        # generalise to unknown dims instead of tracing once per shape.
        self._train_step = tf.function(self._train_step_fn, reduce_retracing=True)
        self._eval_step = tf.function(self._eval_step_fn, reduce_retracing=True)

    # ----------------------------------------------------------------------------------------------
    def datasets(self):
        """``(train, eval)`` datasets of ``(inputs, labels)`` batches; eval is None without eval files."""
        from uniter_tf.data.finetune_inputs import build_finetune_dataset

        train = build_finetune_dataset(self.config.train_files, self.task, self.model_config,
                                       self.config.train_batch_size, max_text_length=self.config.max_text_length,
                                       training=True, seed=self.config.seed)
        evaluation = None
        if self.config.eval_files:
            evaluation = build_finetune_dataset(self.config.eval_files, self.task, self.model_config,
                                                self.config.eval_batch_size,
                                                max_text_length=self.config.max_text_length, training=False)
        return train, evaluation

    @staticmethod
    def _model_inputs(inputs):
        return {key: value for key, value in inputs.items() if key != EXAMPLE_ID_KEY}

    def _train_step_fn(self, inputs, labels):
        import tensorflow as tf

        variables = self.backbone_variables + self.head_variables
        with tf.GradientTape() as tape:
            logits = self.model(self._model_inputs(inputs), training=True)
            targets = self.task.targets_from_features(labels)
            loss = self.task.compute_loss(targets, logits)
        gradients = tape.gradient(loss, variables)
        # Variables the task does not reach (e.g. the MRM mask embedding) get no gradient.
        gradients = [tf.zeros_like(variable) if gradient is None else tf.convert_to_tensor(gradient)
                     for gradient, variable in zip(gradients, variables)]
        gradient_norm = tf.linalg.global_norm(gradients)
        if self.config.grad_norm > 0:
            gradients, _ = tf.clip_by_global_norm(gradients, self.config.grad_norm, use_norm=gradient_norm)
        num_backbone = len(self.backbone_variables)
        self.backbone_optimizer.apply_gradients(gradients[:num_backbone], self.backbone_variables,
                                                self.backbone_optimizer.current_learning_rate())
        self.head_optimizer.apply_gradients(gradients[num_backbone:], self.head_variables,
                                            self.head_optimizer.current_learning_rate())
        self.step.assign_add(1)
        metrics = {name: tf.reduce_mean(values) for name, values in self.task.compute_metrics(targets, logits).items()}
        return loss, gradient_norm, metrics

    def _eval_step_fn(self, inputs, labels):
        logits = self.model(self._model_inputs(inputs), training=False)
        targets = self.task.targets_from_features(labels)
        return self.task.compute_loss(targets, logits), self.task.compute_metrics(targets, logits), logits

    # ----------------------------------------------------------------------------------------------
    def evaluate(self, dataset, predictions_path: Optional[str] = None) -> Dict[str, float]:
        """Loss and metrics over ``dataset`` (mean over examples); optionally writes the predictions.

        Args:
            dataset: ``(inputs, labels)`` batches.
            predictions_path: JSON file for ``{example_id: predicted answer}``.
        """
        import numpy as np

        totals: Dict[str, float] = {}
        count, loss_sum, predictions = 0, 0.0, {}
        for batch_index, (inputs, labels) in enumerate(dataset):
            if self.config.max_eval_batches is not None and batch_index >= self.config.max_eval_batches:
                break
            loss, metrics, logits = self._eval_step(inputs, labels)
            batch_size = int(logits.shape[0])
            count += batch_size
            loss_sum += float(loss) * batch_size
            for name, values in metrics.items():
                totals[name] = totals.get(name, 0.0) + float(np.sum(values.numpy()))
            if predictions_path is not None and hasattr(self.task, "answer_strings"):
                ids = [value.decode("utf-8") for value in inputs[EXAMPLE_ID_KEY].numpy()]
                predictions.update(zip(ids, self.task.answer_strings(logits.numpy())))
        if count == 0:
            raise ValueError(f"the eval files {self.config.eval_files} hold no usable {self.task.name} records")
        result = {"loss": loss_sum / count, "num_examples": float(count)}
        result.update({name: total / count for name, total in totals.items()})
        if predictions_path is not None:
            os.makedirs(os.path.dirname(predictions_path), exist_ok=True)
            with open(predictions_path, "w", encoding="utf-8") as handle:
                json.dump(predictions, handle, indent=1, sort_keys=True)
        return result

    def train(self) -> Dict[str, Any]:
        """Runs the loop to ``num_train_steps``; resumes from the run's latest checkpoint if any.

        Returns:
            ``{"step", "train": last training metrics, "eval": last validation metrics or None,
            "checkpoint": path, "seconds": wall time, ...}``.
        """
        config = self.config
        self.write_run_config()
        if self.checkpoint_manager.latest_checkpoint:
            self.checkpoint.restore(self.checkpoint_manager.latest_checkpoint)
            _LOG.info("resumed %s at step %d", self.checkpoint_manager.latest_checkpoint, int(self.step))
        train_dataset, eval_dataset = self.datasets()
        started = time.time()
        train_metrics: Dict[str, float] = {}
        eval_metrics = None
        history = []
        iterator = iter(train_dataset)
        while int(self.step) < config.num_train_steps:
            try:
                inputs, labels = next(iterator)
            except StopIteration:
                raise ValueError(f"the training files {config.train_files} hold no usable {self.task.name} "
                                 f"records (with labels, text <= {config.max_text_length} tokens)") from None
            loss, gradient_norm, metrics = self._train_step(inputs, labels)
            step = int(self.step)
            train_metrics = {"loss": float(loss), "gradient_norm": float(gradient_norm)}
            train_metrics.update({name: float(value) for name, value in metrics.items()})
            if step % config.log_every == 0 or step == 1:
                _LOG.info("%s step %d/%d %s", self.task.name, step, config.num_train_steps,
                          " ".join(f"{key}={value:.4f}" for key, value in sorted(train_metrics.items())))
            if step % config.valid_steps == 0 or step == config.num_train_steps:
                if eval_dataset is not None:
                    eval_metrics = self.evaluate(eval_dataset, os.path.join(
                            config.output_dir, "results", f"results_{step}.json"))
                    _LOG.info("%s validation at step %d: %s", self.task.name, step, eval_metrics)
                history.append({"step": step, "train": dict(train_metrics), "eval": eval_metrics})
                self.checkpoint_manager.save(checkpoint_number=step)
        result = {"step": int(self.step), "train": train_metrics, "eval": eval_metrics,
                  "checkpoint": self.checkpoint_manager.latest_checkpoint,
                  "restored_from": self.restored_from, "seconds": time.time() - started, "history": history}
        with open(os.path.join(config.output_dir, METRICS_FILE_NAME), "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2, sort_keys=True)
        return result

    def write_run_config(self) -> str:
        """Writes ``finetune_config.json`` (what the exporter rebuilds the task model from)."""
        from uniter_tf import runs

        os.makedirs(self.config.output_dir, exist_ok=True)
        return runs.write_task_run_config(self.config.output_dir, self.task, self.model_config,
                                          max_text_length=self.config.max_text_length,
                                          training_config=self.config.to_dict())

    def save_checkpoint(self) -> str:
        """Checkpoints the current state at the current step (with the run's config file).

        For a run that is exported without (more) training, e.g. the TFX ``run_fn`` asked for 0 updates.

        Returns:
            The checkpoint prefix.
        """
        self.write_run_config()
        return self.checkpoint_manager.save(checkpoint_number=int(self.step))
