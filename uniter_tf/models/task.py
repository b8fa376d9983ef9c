"""The downstream-task interface: what a task adds on top of the UNITER backbone.

A task (VQA, SNLI-VE, NLVR2, ITM retrieval, RefCOCO, VCR) is described by one :class:`DownstreamTask`
subclass. It owns everything that differs between tasks:

* the head (``build_head``), applied to the backbone's outputs by :class:`TaskModel`;
* the targets it reads from a parsed canonical record (``label_keys`` / ``targets_from_features``);
* the loss (``compute_loss``) and per-example metrics (``compute_metrics``);
* the head's learning-rate multiplier (``head_learning_rate_multiplier``), e.g. 10 for VQA;
* its export outputs (:meth:`DownstreamTask.export_outputs`): the served output names, the label
  vocabulary and how logits become scores (sigmoid or softmax);
* how it is rebuilt from its stored arguments (:meth:`DownstreamTask.from_config`).

The fine-tuning loop (:mod:`uniter_tf.training.finetune`), the ``uniter finetune`` command, the TFX
``run_fn``, the exporter and the evaluator only talk to this interface, so a new task is one file that
subclasses it and one line in :data:`TASK_REGISTRY`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import keras
import tensorflow as tf

# The registry is the Task registry (uniter_tf.tasks): a DownstreamTask is a Task. Re-exported here so
# `from uniter_tf.models.task import get_task, register_task` keeps working.
from uniter_tf.tasks.base_task import (COMMON_PARAMS, TASK_REGISTRY, Task, check_common_params,  # noqa: F401
                                       get_task, register_task)

#: Run parameters of every downstream task besides :data:`COMMON_PARAMS` (the ``task`` config section).
DOWNSTREAM_PARAMS = {"train_batch_size": 32, "eval_batch_size": 64, "max_text_length": 60, "dropout": 0.1}
#: The input feature that names an example (kept out of the model's inputs; names predictions).
EXAMPLE_ID_KEY = "example_id"


#: How served logits become scores.
EXPORT_ACTIVATIONS = ("sigmoid", "softmax")


@dataclasses.dataclass(frozen=True)
class ExportOutputs:
    """What a task adds to every scoring signature of an export (docs/serving.md).

    The exporter reads this and nothing else about the task, so it never names one.

    Attributes:
        name: the task's name, recorded in the export's metadata.
        activation: how logits become label scores: ``"sigmoid"`` for heads trained with binary
            cross-entropy per class (VQA, SNLI-VE in UNITER), ``"softmax"`` for cross-entropy heads.
        labels: the label strings, index = class (e.g. the VQA answers), or None (then only the logits
            are served).
        logits_output: the output name of the head's logits ``[B, C]``.
        labels_output: the output name of the ``top_k`` best labels ``[B, k]`` (with ``labels``).
        scores_output: the output name of their scores ``[B, k]`` (with ``labels``).
    """

    name: str
    activation: str = "softmax"
    labels: Optional[Sequence[str]] = None
    logits_output: str = "task_logits"
    labels_output: str = "answers"
    scores_output: str = "answer_scores"

    def __post_init__(self):
        if not self.name:
            raise ValueError("ExportOutputs.name must be non-empty")
        if self.activation not in EXPORT_ACTIVATIONS:
            raise ValueError(f"ExportOutputs.activation of task {self.name!r} must be one of {EXPORT_ACTIVATIONS}, "
                             f"got {self.activation!r}")
        names = (self.logits_output, self.labels_output, self.scores_output)
        if len(set(names)) != 3 or not all(names):
            raise ValueError(f"ExportOutputs of task {self.name!r}: the output names must be distinct and "
                             f"non-empty, got {names}")


class DownstreamTask(Task):
    """Base class of a downstream task: head, targets, loss and metrics.

    Subclasses set the class attributes and implement the abstract methods. Targets and predictions
    are dicts of tensors whose first dimension is the batch.
    """

    #: The CLI / registry name of the task.
    name: str = ""
    #: Canonical-record features (``uniter_tf.data.schema`` names) the targets are built from.
    label_keys: Tuple[str, ...] = ()
    #: Learning rate of the head's variables = base rate × this (the official ``lr_mul``).
    head_learning_rate_multiplier: float = 1.0
    #: The metric the evaluator and the fine-tuning loop report as the task's headline number.
    primary_metric: str = ""

    @abc.abstractmethod
    def build_head(self, hidden_size: int) -> keras.layers.Layer:
        """Builds the task head, a Keras layer mapping the backbone's output dict to logits.

        Args:
            hidden_size: H, the backbone's hidden size.
        """

    @abc.abstractmethod
    def targets_from_features(self, features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Turns a batch of parsed canonical-record features into dense targets.

        Args:
            features: the parsed batch (dense or ragged tensors keyed by schema names).

        Returns:
            A dict of dense target tensors with leading batch dimension.
        """

    @abc.abstractmethod
    def compute_loss(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> tf.Tensor:
        """The scalar training loss of a batch, reduced as the official code reduces it."""

    @abc.abstractmethod
    def compute_metrics(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Per-example metric values ``{name: [B] float32}``; their mean over a split is the metric."""

    def keep_record(self, parsed: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Whether a parsed canonical record carries this task's labels (a scalar bool tensor).

        The default keeps every record; tasks override it (VQA keeps records with answers).
        """
        del parsed
        return tf.constant(True)

    def build_model(self, backbone=None, hidden_size: Optional[int] = None, *, dtype=None) -> "keras.Model":
        """Builds the task model (a :class:`uniter_tf.models.task_model.TaskModel`).

        Two forms:

        * ``build_model(backbone, hidden_size)``: the given (usually pretrained) backbone with this task's
          head (what the exporter uses to rebuild a run's model);
        * ``build_model(model_config=None, dtype=None)``: the Task form the Trainer uses. It builds a fresh
          backbone (of the task's ``model`` with its ``dropout``) and the head with the dtype policy
          ``dtype``, plus the ITM head of a pretraining model around the same backbone: it rides along
          untouched (not trained, not a tracked sub-layer) so the fine-tuned export still scores
          image-text pairs, and the pretraining model gives the layout a partial restore reads.

        Args:
            backbone: a UNITER backbone layer, or a :class:`~uniter_tf.config.UniterConfig` / None.
            hidden_size: H (with a backbone layer).
            dtype: a Keras dtype policy name for the Task form.
        """
        from uniter_tf.models.task_model import TaskModel  # pylint: disable=import-outside-toplevel

        if isinstance(backbone, keras.layers.Layer):
            if hidden_size is None:
                raise ValueError("build_model(backbone, hidden_size): hidden_size is required with a backbone")
            # The model and its head follow the given backbone's dtype policy (never the global one).
            policy = backbone.dtype_policy.name
            return TaskModel(backbone=backbone, head=_head_with_dtype(self.build_head(hidden_size), policy),
                             task_name=self.name, name=f"uniter_{self.name}", dtype=policy)
        from uniter_tf.models.backbone import UniterBackbone  # pylint: disable=import-outside-toplevel
        from uniter_tf.models.pretraining_model import UniterPretrainingModel  # pylint: disable=import-outside-toplevel

        model_config = backbone if backbone is not None else self.model_config()
        backbone_layer = UniterBackbone(model_config, dtype=dtype) if dtype else UniterBackbone(model_config)
        pretraining_model = UniterPretrainingModel(backbone_layer)
        policy = backbone_layer.dtype_policy.name
        head = _head_with_dtype(self.build_head(model_config.hidden_size), policy)
        # The model's own policy too: a Keras model built without one takes the global policy.
        model = TaskModel(backbone=backbone_layer, head=head, task_name=self.name, name=f"uniter_{self.name}",
                          dtype=policy)
        model.head.build()
        # Untracked on purpose (object.__setattr__ bypasses Keras tracking): the ITM head is not trained
        # and must not appear in model.trainable_variables; the checkpoint names it itself.
        object.__setattr__(model, "_uniter_pretraining_model", pretraining_model)
        return model

    # --------------------------------------------------------------------- the Task interface
    def run_param(self, key: str):
        """A run parameter of :data:`COMMON_PARAMS` / :data:`DOWNSTREAM_PARAMS` (its default if unset)."""
        if key in DOWNSTREAM_PARAMS:
            return self.params.get(key, DOWNSTREAM_PARAMS[key])
        return self.params[key]

    def configure(self, **run_params) -> "DownstreamTask":
        """Sets the run parameters (``model``, ``train_files``, ``train_batch_size``, ...); returns self.

        Raises:
            ValueError: an unknown or invalid parameter (named).
        """
        unknown = sorted(set(run_params) - set(COMMON_PARAMS) - set(DOWNSTREAM_PARAMS))
        if unknown:
            raise ValueError(f"unknown run parameters {unknown} for task {self.name!r}")
        params = check_common_params(run_params, self.name)
        for key, default in DOWNSTREAM_PARAMS.items():
            value = run_params.get(key, default)
            if key == "dropout":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                    raise ValueError(f"task {self.name!r}: dropout must be in [0, 1), got {value!r}")
                value = float(value)
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"task {self.name!r}: {key} must be a positive integer, got {value!r}")
            params[key] = value
        self._task_params = params
        return self

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "DownstreamTask":
        """Builds the task from a ``task`` config section: run parameters plus the task's own arguments.

        Raises:
            ValueError: an unknown key (named) or an invalid value.
        """
        values = {key: value for key, value in dict(params).items() if not str(key).startswith("_")}
        run_keys = set(COMMON_PARAMS) | set(DOWNSTREAM_PARAMS)
        run_params = {key: value for key, value in values.items() if key in run_keys}
        own = {key: value for key, value in values.items() if key not in run_keys}
        try:
            task = cls.from_config(own)
        except TypeError as error:
            # An unknown constructor argument: say which key of which task.
            raise ValueError(f"task {cls.name!r}: invalid parameters {sorted(own)}: {error}; run parameters: "
                             f"{sorted(run_keys)}") from None
        return task.configure(**run_params)

    def model_config(self):
        config = super().model_config()
        dropout = self.run_param("dropout")
        return config.replace(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)

    def stream_ratios(self) -> Dict[str, float]:
        """One stream, named after the task."""
        return {self.name: 1.0}

    def build_inputs(self, stream: str, input_context=None, seed: int = 42, training: bool = True):
        """``(inputs, labels)`` batches of ``train_batch_size / replicas`` examples (per replica)."""
        from uniter_tf.data.finetune_inputs import build_finetune_dataset  # pylint: disable=import-outside-toplevel

        del stream
        global_batch = self.run_param("train_batch_size" if training else "eval_batch_size")
        batch_size = input_context.get_per_replica_batch_size(global_batch) if input_context else global_batch
        if not self.train_files and training:
            raise ValueError(f"task {self.name!r}: train_files is empty: give the task's training records")
        return build_finetune_dataset(self.train_files if training else self.eval_files, self, self.model_config(),
                                      batch_size, max_text_length=self.run_param("max_text_length"),
                                      training=training, seed=seed, input_context=input_context)

    def prepare_batch(self, stream: str, batch):
        """``(inputs, labels)`` → ``(model inputs without the example id, dense targets)``."""
        del stream
        inputs, labels = batch
        return ({key: value for key, value in inputs.items() if key != EXAMPLE_ID_KEY},
                self.targets_from_features(labels))

    def compute_batch_loss(self, model, stream: str, batch, training: bool):
        del stream
        inputs, targets = batch
        # The loss in float32 whatever the compute dtype (mixed precision).
        logits = tf.cast(model(inputs, training=training), tf.float32)
        loss = self.compute_loss(targets, logits)
        metrics = {name: tf.reduce_mean(tf.cast(values, tf.float32))
                   for name, values in self.compute_metrics(targets, logits).items()}
        return loss, metrics

    def batch_size(self, batch):
        inputs, _ = batch
        return tf.shape(tf.nest.flatten(inputs)[0])[0]

    def learning_rate_multipliers(self, model):
        """The head's variables get ``head_learning_rate_multiplier`` (official ``lr_mul``), the rest 1."""
        head_ids = {id(variable) for variable in model.head.trainable_variables}
        multiplier = float(self.head_learning_rate_multiplier)
        return [multiplier if id(variable) in head_ids else 1.0 for variable in model.trainable_variables]

    @staticmethod
    def pretraining_model(model):
        """The pretraining model around ``model``'s backbone (its ITM head rides along; see build_model)."""
        pretraining_model = getattr(model, "_uniter_pretraining_model", None)
        if pretraining_model is None:
            raise ValueError("the model was not built by DownstreamTask.build_model(model_config): it has no ITM head")
        return pretraining_model

    def initialize(self, model, init: Optional[str] = None, init_path: Optional[str] = None,
                   log=print) -> None:
        """``pretrained``: backbone + ITM head from a pretraining run (partial restore); ``official`` /
        ``bert``: :func:`uniter_tf.training.checkpointing.initialize_backbone`; ``scratch``: nothing. Except after
        ``pretrained``, :meth:`initialize_feature_standardization` then sets the region-feature statistics."""
        init = init or self.params["init"]
        init_path = init_path if init_path is not None else self.params["init_path"]
        pretraining_model = self.pretraining_model(model)
        if init == "scratch":
            self.initialize_feature_standardization(pretraining_model.backbone, log=log)
            return
        if init == "pretrained":
            from uniter_tf.training.finetune import restore_pretrained_weights  # pylint: disable=import-outside-toplevel

            restored = restore_pretrained_weights(pretraining_model, init_path)
            log(f"initialised the backbone and the ITM head from {restored}")
            self.restored_from = restored
            return
        from uniter_tf.training import checkpointing  # pylint: disable=import-outside-toplevel

        checkpointing.initialize_backbone(pretraining_model, init, init_path, log=log)
        self.restored_from = init_path
        self.initialize_feature_standardization(pretraining_model.backbone, log=log)

    def initialize_feature_standardization(self, backbone, log=print) -> None:
        """Sets ``region_feature_standardization``'s statistics from the task's training records.

        For a backbone that does not come from a pretraining run (``scratch``, ``bert``, ``official``: none
        carries statistics; a pretraining run's checkpoint brings its own as non-trainable weights). Does
        nothing with the option off. Checkpoints and the export then carry the statistics.

        Raises:
            ValueError: the option is on and the task has no training records.
        """
        if not backbone.config.region_feature_standardization:
            return
        from uniter_tf.data import feature_stats  # pylint: disable=import-outside-toplevel

        if not self.train_files:
            raise ValueError(f"task {self.name!r}: region_feature_standardization needs train_files for its statistics")
        feature_stats.initialize_standardization(backbone, list(self.train_files), log=log)

    def checkpoint_items(self, model) -> Dict[str, Any]:
        """``backbone`` (by path), ``head``, ``itm_head``: :func:`uniter_tf.runs.task_checkpoint`'s layout,
        which the exporter reads."""
        from uniter_tf import runs  # pylint: disable=import-outside-toplevel

        return {"backbone": runs.backbone_variable_tree(model.backbone), "head": model.head,
                "itm_head": self.pretraining_model(model).itm_head}

    def write_run_files(self, output_dir: str, model_config, training_config: Mapping[str, Any]) -> None:
        """``finetune_config.json`` (:func:`uniter_tf.runs.write_task_run_config`), what the exporter reads."""
        from uniter_tf import runs  # pylint: disable=import-outside-toplevel

        runs.write_task_run_config(output_dir, self, model_config, max_text_length=self.run_param("max_text_length"),
                                   training_config=training_config)

    def evaluation_inputs(self, files=None, *, output_dir=None, step=None):
        """The setup :meth:`evaluate` overrides share: the files, one ordered pass over them and the
        predictions file.

        Args:
            files: eval file patterns (None or empty: the task's eval files).
            output_dir: the run directory for the predictions (None: no predictions file).
            step: the step the predictions file is named after (None: no predictions file).

        Returns:
            ``(files, dataset, predictions_path)``: the files read, their ``(inputs, labels)`` batches of
            ``eval_batch_size`` records in file order (:func:`uniter_tf.data.finetune_inputs.build_finetune_dataset`,
            ``training=False``) and ``output_dir/results/results_{step}.json``, or None without both
            ``output_dir`` and ``step``.
        """
        import os  # pylint: disable=import-outside-toplevel

        from uniter_tf.data.finetune_inputs import build_finetune_dataset  # pylint: disable=import-outside-toplevel

        files = files or self.eval_files
        dataset = build_finetune_dataset(files, self, self.model_config(), self.run_param("eval_batch_size"),
                                         max_text_length=self.run_param("max_text_length"), training=False)
        predictions_path = None
        if output_dir is not None and step is not None:
            predictions_path = os.path.join(output_dir, "results", f"results_{step}.json")
        return files, dataset, predictions_path

    def evaluate(self, model, files=None, max_batches=None, *, seed: int = 43, output_dir=None, step=None):
        """Held-out loss and metrics on ``files``: the task's loss (mean over examples) and the evaluation
        library's figures (:func:`library_metrics`: ``vqa_score``, ``itm_accuracy``, recalls, counts), the
        same routine ``uniter evaluate`` and the TFX evaluator run, so a training log's figure is the
        evaluator's on the same records. With ``output_dir`` and a task that names its answers
        (``answer_strings``) also ``results/results_{step}.json`` ``{example_id: prediction}``.

        Args:
            model: the task model (built by :meth:`build_model`).
            files: eval file patterns (default: the task's eval files).
            max_batches: read the first this-many batches (of ``eval_batch_size`` records); None: the whole split.
            seed: unused (one ordered pass).
            output_dir: the run directory for the predictions.
            step: the step the predictions file is named after.
        """
        del seed  # one ordered pass: nothing is random
        files, dataset, predictions_path = self.evaluation_inputs(files, output_dir=output_dir, step=step)
        result = evaluate_task_model(self, model, dataset, max_batches=max_batches, predictions_path=predictions_path,
                                     files=files)
        max_records = None if max_batches is None else max_batches * self.run_param("eval_batch_size")
        # The library's figures win over the task's per-batch means of the same name: they are the evaluator's.
        result.update(self.library_metrics(model, files, max_records=max_records))
        return result

    def library_metrics(self, model, files, max_records: Optional[int] = None) -> Dict[str, float]:
        """The evaluation library's metrics (:func:`uniter_tf.evaluation.evaluate`) of the in-memory model on
        the first ``max_records`` records of ``files`` (None: all), scored with its ITM head and task head.

        Returns:
            Those of the metrics the split supports (e.g. ``vqa_score`` for VQA questions, ``itm_accuracy``
            and recalls for captions of 2 or more images) and the record counts, as floats.
        """
        import itertools  # pylint: disable=import-outside-toplevel

        from uniter_tf import evaluation  # pylint: disable=import-outside-toplevel

        scorer = evaluation.keras_scorer(model.backbone, self.pretraining_model(model).itm_head, self.model_config(),
                                         task_head=model.head, max_text_length=self.run_param("max_text_length"))
        try:
            records = evaluation.EvalRecords(itertools.islice(evaluation.iter_serialized_records(files), max_records))
        except ValueError as error:
            if "holds no caption or question records" in str(error):
                return {}  # records of a task the library does not score (e.g. SNLI-VE): the task's metrics only
            raise
        return evaluation.evaluate(scorer, records, self.run_param("eval_batch_size"), has_vqa_head=True)

    def export_outputs(self) -> ExportOutputs:
        """The task's served outputs; by default its logits under softmax, without labels.

        Tasks with a label vocabulary or a sigmoid head override this.
        """
        return ExportOutputs(name=self.name)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "DownstreamTask":
        """Constructs the task from :meth:`get_config`'s dict (or a config file's ``task_config``)."""
        return cls(**dict(config))

    def get_config(self) -> Dict[str, object]:
        """Constructor arguments of the task (stored next to checkpoints and exports)."""
        return {}


def _head_with_dtype(head, policy: str):
    """``head`` with the dtype policy ``policy``: heads come from ``build_head(hidden_size)``, which takes no
    policy, so a head built with another one is rebuilt from its config with ``dtype=policy``."""
    if head.dtype_policy.name == policy:
        return head
    return head.__class__.from_config({**head.get_config(), "dtype": policy})


def evaluate_task_model(task: DownstreamTask, model, dataset, *, max_batches: Optional[int] = None,
                        predictions_path: Optional[str] = None, files=None) -> Dict[str, float]:
    """Loss and metrics of ``model`` over ``dataset`` (means over examples); optionally writes predictions.

    Args:
        task: the task (targets, loss, metrics, ``answer_strings`` if it names its predictions).
        model: the task model.
        dataset: ``(inputs, labels)`` batches.
        max_batches: stop after this many batches (None: the whole dataset).
        predictions_path: JSON file (any ``tf.io.gfile`` path) for ``{example_id: prediction}``.
        files: the files the dataset reads (for the error message).

    Raises:
        ValueError: the dataset holds no usable record of the task.
    """
    import json  # pylint: disable=import-outside-toplevel
    import os  # pylint: disable=import-outside-toplevel

    import numpy as np  # pylint: disable=import-outside-toplevel

    step = getattr(model, "_uniter_eval_step", None)
    if step is None:
        def forward(inputs, labels):
            logits = tf.cast(model({key: value for key, value in inputs.items() if key != EXAMPLE_ID_KEY},
                                   training=False), tf.float32)
            targets = task.targets_from_features(labels)
            return task.compute_loss(targets, logits), task.compute_metrics(targets, logits), logits

        # Batches are padded to their longest text / region count: generalise over the varying dims.
        step = tf.function(forward, reduce_retracing=True)
        object.__setattr__(model, "_uniter_eval_step", step)
    totals: Dict[str, float] = {}
    count, loss_sum, predictions = 0, 0.0, {}
    for batch_index, (inputs, labels) in enumerate(dataset):
        if max_batches is not None and batch_index >= max_batches:
            break
        loss, metrics, logits = step(inputs, labels)
        batch_size = int(logits.shape[0])
        count += batch_size
        loss_sum += float(loss) * batch_size
        for name, values in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(np.sum(values.numpy()))
        if predictions_path is not None and hasattr(task, "answer_strings"):
            ids = [value.decode("utf-8") for value in inputs[EXAMPLE_ID_KEY].numpy()]
            predictions.update(zip(ids, task.answer_strings(logits.numpy())))
    if count == 0:
        raise ValueError(f"the eval files {files} hold no usable {task.name} records")
    result = {"loss": loss_sum / count, "num_examples": float(count)}
    result.update({name: total / count for name, total in totals.items()})
    if predictions_path is not None:
        tf.io.gfile.makedirs(os.path.dirname(predictions_path))
        with tf.io.gfile.GFile(predictions_path, "w") as handle:
            handle.write(json.dumps(predictions, indent=1, sort_keys=True))
    return result
