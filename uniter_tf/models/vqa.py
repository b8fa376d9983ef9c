"""VQA: the head, targets, loss and VQA score of the official ``UniterForVisualQuestionAnswering``.

Spec §5.1: pooled ``[CLS]`` → Linear(H, 2H) → exact (erf) GELU → LayerNorm(2H, eps 1e-12) →
Linear(2H, #answers). Loss: binary cross-entropy with logits against the dense soft-score target,
mean over all entries × #answers (= summed over answers, averaged over questions). The head's learning
rate is 10× the base rate. Metric: the target soft score of the argmax answer.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from uniter_tf.models.task import DownstreamTask, ExportOutputs, register_task

ANSWER_LABELS_KEY = "answer_labels"
ANSWER_SCORES_KEY = "answer_scores"
VQA_TARGET_KEY = "vqa_target"
#: The stream name of ITM rehearsal (:class:`VqaTask` with ``itm_rehearsal_ratio`` > 0).
ITM_REHEARSAL_STREAM = "itm"
#: Size of the official answer vocabulary (``utils/ans2label.json``).
OFFICIAL_NUM_ANSWERS = 3129

#: Official state-dict key → (sub-layer name, variable name, transpose?). Indices 1 (GELU) carries no
#: parameters, as in the official ``nn.Sequential``.
OFFICIAL_HEAD_PARAMETERS: Dict[str, Tuple[str, str, bool]] = {
        "vqa_output.0.weight": ("dense_expand", "kernel", True),
        "vqa_output.0.bias": ("dense_expand", "bias", False),
        "vqa_output.2.weight": ("layer_norm", "gamma", False),
        "vqa_output.2.bias": ("layer_norm", "beta", False),
        "vqa_output.3.weight": ("answer_classifier", "kernel", True),
        "vqa_output.3.bias": ("answer_classifier", "bias", False),
}


@keras.saving.register_keras_serializable(package="uniter_tf")
class VqaHead(keras.layers.Layer):
    """The VQA answer classifier on top of the pooled ``[CLS]`` output.

    Args:
        hidden_size: H, the backbone's hidden size.
        num_answers: size of the answer vocabulary (3129 for the official VQA v2 vocabulary).
        initializer_range: standard deviation of the normal kernel initialiser (official 0.02).
        layer_norm_epsilon: LayerNorm epsilon (official 1e-12).
        **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(self, hidden_size: int, num_answers: int = OFFICIAL_NUM_ANSWERS,
                 initializer_range: float = 0.02, layer_norm_epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        if hidden_size <= 0 or num_answers <= 0:
            raise ValueError(f"VqaHead needs hidden_size > 0 and num_answers > 0, got {hidden_size}, "
                             f"{num_answers}")
        self.hidden_size = hidden_size
        self.num_answers = num_answers
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon
        kernel_initializer = keras.initializers.RandomNormal(stddev=initializer_range)
        self.dense_expand = keras.layers.Dense(2 * hidden_size, kernel_initializer=kernel_initializer,
                                               name="dense_expand", dtype=self.dtype_policy)
        self.layer_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name="layer_norm",
                                                          dtype=self.dtype_policy)
        self.answer_classifier = keras.layers.Dense(num_answers, kernel_initializer=kernel_initializer,
                                                    name="answer_classifier", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.dense_expand.build((None, self.hidden_size))
        self.layer_norm.build((None, 2 * self.hidden_size))
        self.answer_classifier.build((None, 2 * self.hidden_size))
        self.built = True

    def call(self, encoder_outputs: Union[Mapping[str, tf.Tensor], tf.Tensor],
             training: Optional[bool] = None) -> tf.Tensor:
        """Maps the backbone outputs (or ``pooled_output`` itself) to answer logits ``[B, #answers]``."""
        pooled_output = (encoder_outputs["pooled_output"] if isinstance(encoder_outputs, Mapping)
                         else encoder_outputs)
        hidden = self.dense_expand(pooled_output)
        hidden = keras.activations.gelu(hidden, approximate=False)
        hidden = self.layer_norm(hidden)
        return self.answer_classifier(hidden)

    def official_weight_map(self) -> Dict[str, Tuple[keras.Variable, bool]]:
        """Official state-dict key → (this layer's variable, whether the array must be transposed)."""
        if not self.built:
            self.build()
        mapping = {}
        for official_key, (sublayer_name, variable_name, transpose) in OFFICIAL_HEAD_PARAMETERS.items():
            sublayer = getattr(self, sublayer_name)
            mapping[official_key] = (getattr(sublayer, variable_name), transpose)
        return mapping

    def load_official_weights(self, state_dict: Mapping[str, np.ndarray], prefix: str = "") -> None:
        """Assigns the official ``vqa_output.*`` parameters.

        Args:
            state_dict: official key → numpy array (PyTorch layout: Linear weights are ``[out, in]``).
            prefix: a prefix in front of ``vqa_output`` in the keys, if any.

        Raises:
            KeyError: if a parameter is missing; ValueError: if a shape does not match.
        """
        for official_key, (variable, transpose) in self.official_weight_map().items():
            full_key = prefix + official_key
            if full_key not in state_dict:
                raise KeyError(f"official VQA head parameter {full_key!r} is missing from the state dict")
            array = np.asarray(state_dict[full_key], dtype=np.float32)
            if transpose:
                array = array.T
            if tuple(array.shape) != tuple(variable.shape):
                raise ValueError(f"{full_key}: shape {tuple(array.shape)} (after transpose={transpose}) "
                                 f"does not match {variable.path} {tuple(variable.shape)}")
            variable.assign(array)

    def get_config(self):
        config = super().get_config()
        config.update({
                "hidden_size": self.hidden_size,
                "num_answers": self.num_answers,
                "initializer_range": self.initializer_range,
                "layer_norm_epsilon": self.layer_norm_epsilon,
        })
        return config


def _ragged_label_lists(answer_labels, answer_scores) -> Tuple[tf.RaggedTensor, tf.RaggedTensor]:
    """Normalises (label, score) lists given as ragged, sparse or dense (-1 padded) tensors to ragged."""
    def to_ragged(values):
        if isinstance(values, tf.RaggedTensor):
            return values
        if isinstance(values, tf.SparseTensor):
            return tf.RaggedTensor.from_sparse(values)
        return None

    labels, scores = to_ragged(answer_labels), to_ragged(answer_scores)
    if labels is not None and scores is not None:
        return tf.cast(labels, tf.int64), tf.cast(scores, tf.float32)
    if labels is not None or scores is not None:
        raise TypeError("answer_labels and answer_scores must both be ragged/sparse or both dense")
    labels = tf.cast(tf.convert_to_tensor(answer_labels), tf.int64)
    scores = tf.cast(tf.convert_to_tensor(answer_scores), tf.float32)
    if labels.shape.rank == 1:
        # One unbatched record.
        labels, scores = labels[tf.newaxis], scores[tf.newaxis]
    real_entries = labels >= 0
    return tf.ragged.boolean_mask(labels, real_entries), tf.ragged.boolean_mask(scores, real_entries)


def dense_vqa_target(answer_labels, answer_scores, num_answers: int) -> tf.Tensor:
    """Scatters per-question (label, soft score) lists into the dense ``[B, #answers]`` target.

    This is the official ``_get_vqa_target``. Dense padded inputs must pad labels with -1.

    Args:
        answer_labels: ``[B, (k)]`` int answer indices (ragged, sparse, or dense padded with -1).
        answer_scores: ``[B, (k)]`` float soft scores aligned with the labels (padded with 0).
        num_answers: the vocabulary size C.

    Returns:
        A float32 ``[B, C]`` tensor.

    Raises:
        tf.errors.InvalidArgumentError: if a label is outside ``[0, C)`` or the two lists differ in length.
    """
    labels, scores = _ragged_label_lists(answer_labels, answer_scores)
    checks = [
            tf.debugging.assert_equal(labels.row_lengths(), scores.row_lengths(),
                                      message="answer_labels and answer_scores differ in length"),
            tf.debugging.assert_greater_equal(labels.flat_values, tf.constant(0, tf.int64),
                                              message="answer_labels holds a negative index"),
            tf.debugging.assert_less(labels.flat_values, tf.constant(num_answers, tf.int64),
                                     message=f"answer_labels holds an index >= num_answers ({num_answers})"),
    ]
    with tf.control_dependencies(checks):
        row_ids = labels.value_rowids()
        indices = tf.stack([row_ids, labels.flat_values], axis=1)
        batch_size = labels.nrows()
        return tf.tensor_scatter_nd_add(tf.zeros(tf.stack([batch_size, tf.constant(num_answers, tf.int64)]),
                                                 tf.float32),
                                        indices, scores.flat_values)


def vqa_bce_loss(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """The official VQA loss: BCE-with-logits, mean over all entries × #answers.

    Equivalent to summing the per-answer BCE and averaging over questions.

    Args:
        targets: ``[B, C]`` dense soft scores.
        logits: ``[B, C]`` answer logits.

    Returns:
        A scalar float32 loss.
    """
    logits = tf.cast(logits, tf.float32)
    per_entry = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(targets, tf.float32), logits=logits)
    num_answers = tf.cast(tf.shape(logits)[-1], tf.float32)
    return tf.reduce_mean(per_entry) * num_answers


def vqa_score(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-question VQA score: the target soft score of the argmax answer (official
    ``compute_score_with_logits``, summed over answers).

    Args:
        targets: ``[B, C]`` dense soft scores.
        logits: ``[B, C]`` answer logits.

    Returns:
        ``[B]`` float32 scores; their mean over a split is the VQA accuracy.
    """
    predicted_answers = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.gather(tf.cast(targets, tf.float32), predicted_answers, axis=1, batch_dims=1)


@register_task("vqa")
class VqaTask(DownstreamTask):
    """Visual question answering (spec §5.1).

    Optional **ITM rehearsal** (off by default): with ``itm_rehearsal_ratio`` r > 0 the Trainer mixes a second
    stream, ``"itm"``, of caption/image pairs from ``itm_rehearsal_files`` (canonical caption records, half
    of the pairs given another image, as in pretraining) trained with the pretraining ITM loss (CE +
    optimal transport) on the pretrained ITM head, r ITM updates per VQA update. The ITM head is then
    trained with the backbone instead of riding along untouched, so the exported ITM scores stay valid
    while the backbone moves fast for VQA (docs/pipeline.md, "The demo's recipe").

    Args:
        num_answers: size of the answer vocabulary.
        answer_vocabulary: optional answer strings, index = label; used to name predictions.
        head_learning_rate_multiplier: the head's LR multiplier (official ``lr_mul`` = 10).
        itm_rehearsal_ratio: ITM updates per VQA update (0: no rehearsal).
        itm_rehearsal_files: caption records (file patterns) of the ITM stream; required when the ratio > 0.
        itm_rehearsal_inputs: :class:`~uniter_tf.data.pretraining_inputs.PretrainingInputConfig` fields of
            the ITM stream (``batch_size`` defaults to the task's ``train_batch_size``, ``max_text_length``
            to its ``max_text_length``).

    Raises:
        ValueError: a negative ratio, a ratio without files, or an invalid input option (named).
    """

    name = "vqa"
    label_keys = (ANSWER_LABELS_KEY, ANSWER_SCORES_KEY)
    primary_metric = "vqa_score"

    def __init__(self, num_answers: int = OFFICIAL_NUM_ANSWERS,
                 answer_vocabulary: Optional[Sequence[str]] = None,
                 head_learning_rate_multiplier: float = 10.0,
                 itm_rehearsal_ratio: float = 0.0,
                 itm_rehearsal_files: Union[str, Sequence[str]] = (),
                 itm_rehearsal_inputs: Optional[Mapping[str, Any]] = None):
        if answer_vocabulary is not None and len(answer_vocabulary) != num_answers:
            raise ValueError(f"answer_vocabulary has {len(answer_vocabulary)} entries but num_answers is "
                             f"{num_answers}")
        self.num_answers = int(num_answers)
        self.answer_vocabulary = list(answer_vocabulary) if answer_vocabulary is not None else None
        self.head_learning_rate_multiplier = float(head_learning_rate_multiplier)
        if isinstance(itm_rehearsal_ratio, bool) or not isinstance(itm_rehearsal_ratio, (int, float)) \
                or itm_rehearsal_ratio < 0:
            raise ValueError(f"task 'vqa': itm_rehearsal_ratio must be a number >= 0, got {itm_rehearsal_ratio!r}")
        self.itm_rehearsal_ratio = float(itm_rehearsal_ratio)
        files = [itm_rehearsal_files] if isinstance(itm_rehearsal_files, str) else list(itm_rehearsal_files or [])
        if self.itm_rehearsal_ratio > 0 and not files:
            raise ValueError("task 'vqa': itm_rehearsal_ratio > 0 needs itm_rehearsal_files (caption records)")
        self.itm_rehearsal_files = files
        self.itm_rehearsal_inputs = dict(itm_rehearsal_inputs or {})
        if self.itm_rehearsal_ratio > 0:
            self._rehearsal_input_config(batch_size=1, max_text_length=60)  # fail now on a bad option

    # ------------------------------------------------------------------------------ rehearsal
    def _rehearsal_input_config(self, batch_size: int, max_text_length: int):
        from uniter_tf.data.pretraining_inputs import PretrainingInputConfig  # pylint: disable=import-outside-toplevel

        options = {"batch_size": batch_size, "max_text_length": max_text_length, **self.itm_rehearsal_inputs}
        try:
            return PretrainingInputConfig.from_dict(options)
        except (TypeError, ValueError) as error:
            raise ValueError(f"task 'vqa': invalid itm_rehearsal_inputs {self.itm_rehearsal_inputs}: {error}") from None

    def stream_ratios(self) -> Dict[str, float]:
        """``{"vqa": 1}``, plus ``{"itm": itm_rehearsal_ratio}`` with rehearsal."""
        ratios = {self.name: 1.0}
        if self.itm_rehearsal_ratio > 0:
            ratios[ITM_REHEARSAL_STREAM] = self.itm_rehearsal_ratio
        return ratios

    def build_model(self, backbone=None, hidden_size: Optional[int] = None, *, dtype=None):
        """:meth:`DownstreamTask.build_model`; with rehearsal the ITM head becomes a tracked sub-layer of
        the Task-form model, so the Trainer trains its variables (at the base learning rate)."""
        model = super().build_model(backbone, hidden_size, dtype=dtype)
        if self.itm_rehearsal_ratio > 0 and not isinstance(backbone, keras.layers.Layer):
            model.itm_rehearsal_head = self.pretraining_model(model).itm_head
        return model

    def build_inputs(self, stream: str, input_context=None, seed: int = 42, training: bool = True):
        """The VQA stream (:meth:`DownstreamTask.build_inputs`) or the ITM rehearsal stream of caption pairs."""
        if stream != ITM_REHEARSAL_STREAM:
            return DownstreamTask.build_inputs(self, stream, input_context, seed, training)
        from uniter_tf.data import pretraining_inputs  # pylint: disable=import-outside-toplevel

        global_batch = self.run_param("train_batch_size")
        batch_size = input_context.get_per_replica_batch_size(global_batch) if input_context else global_batch
        options = self._rehearsal_input_config(batch_size, self.run_param("max_text_length"))
        return pretraining_inputs.build_task_dataset("itm", self.itm_rehearsal_files, self.model_config(), options,
                                                     seed=seed + 1, input_context=input_context)

    def prepare_batch(self, stream: str, batch):
        if stream == ITM_REHEARSAL_STREAM:
            return batch
        return DownstreamTask.prepare_batch(self, stream, batch)

    def compute_batch_loss(self, model, stream: str, batch, training: bool):
        if stream == ITM_REHEARSAL_STREAM:
            return self.pretraining_model(model).compute_task_loss("itm", batch, training=training)
        return DownstreamTask.compute_batch_loss(self, model, stream, batch, training)

    def batch_size(self, batch):
        if isinstance(batch, Mapping):  # an ITM rehearsal batch (a dict; VQA batches are (inputs, labels))
            return tf.shape(batch["token_ids"])[0]
        return DownstreamTask.batch_size(self, batch)

    def build_head(self, hidden_size: int) -> VqaHead:
        return VqaHead(hidden_size=hidden_size, num_answers=self.num_answers, name="vqa_output")

    def keep_record(self, parsed: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return tf.size(parsed[ANSWER_LABELS_KEY]) > 0

    def targets_from_features(self, features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        for key in self.label_keys:
            if key not in features:
                raise KeyError(f"VQA needs the record feature {key!r}; the batch has {sorted(features)}")
        return {VQA_TARGET_KEY: dense_vqa_target(features[ANSWER_LABELS_KEY], features[ANSWER_SCORES_KEY],
                                                 self.num_answers)}

    def compute_loss(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> tf.Tensor:
        return vqa_bce_loss(targets[VQA_TARGET_KEY], logits)

    def compute_metrics(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> Dict[str, tf.Tensor]:
        return {"vqa_score": vqa_score(targets[VQA_TARGET_KEY], logits)}

    def answer_strings(self, logits: tf.Tensor) -> list:
        """The argmax answer of every question, as strings when a vocabulary is set, else indices."""
        predicted = np.argmax(np.asarray(logits), axis=-1)
        if self.answer_vocabulary is None:
            return [int(index) for index in predicted]
        return [self.answer_vocabulary[int(index)] for index in predicted]

    def export_outputs(self) -> ExportOutputs:
        # Trained with binary cross-entropy per answer (spec §5.1): each answer's score is its sigmoid.
        return ExportOutputs(name=self.name, activation="sigmoid", labels=self.answer_vocabulary)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "VqaTask":
        """Constructs the task; ``answer_vocabulary_file`` (an ``ans2label.json`` mapping answer -> index)
        gives ``answer_vocabulary`` and, unless set, ``num_answers``.

        Raises:
            ValueError: the vocabulary file is not an answer -> index map, or an index is invalid or
                repeated (the message names the file and the answer).
        """
        arguments = dict(config)
        vocabulary_file = arguments.pop("answer_vocabulary_file", None)
        if vocabulary_file:
            arguments["answer_vocabulary"] = read_answer_vocabulary(vocabulary_file)
            arguments.setdefault("num_answers", len(arguments["answer_vocabulary"]))
        return cls(**arguments)

    def get_config(self):
        config = {"num_answers": self.num_answers, "answer_vocabulary": self.answer_vocabulary,
                  "head_learning_rate_multiplier": self.head_learning_rate_multiplier}
        if self.itm_rehearsal_ratio > 0:
            config.update(itm_rehearsal_ratio=self.itm_rehearsal_ratio, itm_rehearsal_files=self.itm_rehearsal_files,
                          itm_rehearsal_inputs=self.itm_rehearsal_inputs)
        return config


def read_answer_vocabulary(path: str) -> list:
    """The answers of an ``ans2label.json`` (answer -> index), index = label.

    Raises:
        ValueError: not an answer -> index map, or an index is invalid or repeated.
    """
    with tf.io.gfile.GFile(path, "r") as handle:
        answer_to_label = json.loads(handle.read())
    if not isinstance(answer_to_label, dict):
        raise ValueError(f"answer_vocabulary_file {path!r} must map answer -> index")
    vocabulary = [None] * len(answer_to_label)
    for answer, label in answer_to_label.items():
        if not isinstance(label, int) or not 0 <= label < len(vocabulary) or vocabulary[label] is not None:
            raise ValueError(f"answer_vocabulary_file {path!r}: answer {answer!r} has an invalid or repeated "
                             f"index {label!r}")
        vocabulary[label] = answer
    return vocabulary
