"""NLVR2 as a task: one statement about two images, True or False (spec §5.3; issue 12).

Records are the canonical pair records (:mod:`uniter_tf.data.schema`: the left image in the one-image
fields, the right image in the ``*_2`` fields; ``uniter ingest --format nlvr2``). The model's inputs are
the statement once plus both images' regions (``region_features`` / ``region_features_2``, ...);
:class:`Nlvr2TaskModel` lays them out for the chosen variant exactly as the official collate does:

* ``paired`` and ``paired_attn``: two backbone rows per example, ``[CLS] s [SEP] + left`` at row 2k and
  ``[CLS] s [SEP] + right`` at row 2k+1, region type ids 1 and 2 (``use_img_type``);
* ``triplet``: one row, ``[CLS] s [SEP] + left regions ++ right regions`` with type ids 1 then 2.

The type table therefore has 3 rows (official ``init_type_embedding()``: row 2 = row 1 of the pretrained
table); the task grows a pretrained 2-row table when it initialises (:meth:`Nlvr2Task.initialize`).
Loss: softmax cross-entropy, mean over examples. Metrics: accuracy and **consistency** (official
``scripts/eval_nlvr2.py``: the share of sentences, an identifier with its third dash-separated field
blanked, whose every image pair is answered correctly; :func:`nlvr2_consistency`). Predictions: the
official ``identifier,True|False`` CSV (:func:`write_predictions_csv`). No head learning-rate multiplier
(the official NLVR2 training has one schedule for all parameters).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import types
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from uniter_tf.data import schema
from uniter_tf.models.nlvr2_paired import Nlvr2PairedHead, nlvr2_loss
from uniter_tf.models.nlvr2_paired_attention import Nlvr2PairedAttentionHead
from uniter_tf.models.nlvr2_triplet import Nlvr2TripletHead
from uniter_tf.models.task import EXAMPLE_ID_KEY, DownstreamTask, ExportOutputs, register_task
from uniter_tf.models.task_model import TaskModel

NLVR2_TASK_NAME = "nlvr2"
#: The three official variants (``--model`` of ``train_nlvr2.py``, ``paired-attn`` spelt with ``_``).
VARIANTS = ("paired", "triplet", "paired_attn")
#: Class names, index = class (official target 1 = "True").
NLVR2_LABELS = ("False", "True")
NLVR2_TARGET_KEY = "nlvr2_target"
#: Type-table rows an NLVR2 model needs: text 0, left image 1, right image 2.
NLVR2_TYPE_VOCAB_SIZE = 3
LEFT_IMAGE_TYPE, RIGHT_IMAGE_TYPE = 1, 2
#: The model's inputs: the statement once and each image's regions.
PAIR_INPUT_KEYS = ("token_ids", "text_mask", "region_features", "region_positions", "region_mask",
                   "region_features_2", "region_positions_2", "region_mask_2")


# ------------------------------------------------------------------------------------------- metrics


def nlvr2_sentence_key(identifier: str) -> str:
    """The sentence an identifier belongs to: its third dash-separated field blanked (``eval_nlvr2.py``).

    ``dev-850-0-1`` and ``dev-850-3-1`` (one sentence written for several image pairs) share ``dev-850--1``.

    Raises:
        ValueError: an identifier with fewer than four dash-separated fields (not an NLVR2 identifier).
    """
    fields = str(identifier).split("-")
    if len(fields) < 4:
        raise ValueError(f"NLVR2 identifier {identifier!r} must have 4 dash-separated fields "
                         "(split-set-pair-sentence), e.g. dev-850-0-1")
    fields[2] = ""
    return "-".join(fields)


def nlvr2_consistency(identifiers: Sequence[str], correct: Sequence[bool]) -> float:
    """Consistency: the share of sentences whose every example is answered correctly.

    Args:
        identifiers: the examples' NLVR2 identifiers.
        correct: whether each example's prediction equals its label.

    Returns:
        ``#{sentences all correct} / #{sentences}`` (0.0 when there is no example).
    """
    if len(identifiers) != len(correct):
        raise ValueError(f"{len(identifiers)} identifiers but {len(correct)} correctness values")
    all_correct: Dict[str, bool] = collections.OrderedDict()
    for identifier, is_correct in zip(identifiers, correct):
        key = nlvr2_sentence_key(identifier)
        all_correct[key] = all_correct.get(key, True) and bool(is_correct)
    return float(np.mean(list(all_correct.values()))) if all_correct else 0.0


def nlvr2_accuracy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example accuracy ``[B]`` float32: 1.0 where the argmax class is the label."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(predicted, tf.reshape(tf.cast(labels, tf.int32), [-1])), tf.float32)


def write_predictions_csv(path: str, identifiers: Iterable[str], predicted_classes: Iterable[int]) -> str:
    """Writes the official prediction file: one ``identifier,True|False`` line per example, no header.

    Args:
        path: the CSV file (any ``tf.io.gfile`` path).
        identifiers: the examples' identifiers.
        predicted_classes: 1 (True) or 0 (False) per example.

    Returns:
        ``path``.
    """
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    with tf.io.gfile.GFile(path, "w") as handle:
        for identifier, predicted in zip(identifiers, predicted_classes):
            handle.write(f"{identifier},{NLVR2_LABELS[int(predicted)]}\n")
    return path


def read_predictions_csv(path: str) -> Dict[str, bool]:
    """Reads an ``identifier,True|False`` file (this module's or the official ``inf_nlvr2.py``'s).

    Raises:
        ValueError: a line that is not ``identifier,True`` / ``identifier,False`` (named by line number).
    """
    predictions = {}
    with tf.io.gfile.GFile(path, "r") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            identifier, _, value = line.rpartition(",")
            if not identifier or value not in NLVR2_LABELS:
                raise ValueError(f"{path}:{number}: expected 'identifier,True|False', got {line!r}")
            predictions[identifier] = value == "True"
    return predictions


# ----------------------------------------------------------------------------------------- the model


def paired_rows(inputs: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Pair inputs ``[B, ...]`` → backbone rows ``[2B, ...]``: row 2k = left image, 2k+1 = right image.

    Both images' regions are padded to the wider of the two; region type ids are 1 (left) and 2 (right).
    """
    def pad_to(values, width):
        padding = [[0, 0], [0, width - tf.shape(values)[1]]] + [[0, 0]] * (len(values.shape) - 2)
        return tf.pad(values, padding)

    width = tf.maximum(tf.shape(inputs["region_mask"])[1], tf.shape(inputs["region_mask_2"])[1])
    rows = {}
    for key in ("region_features", "region_positions", "region_mask"):
        left, right = pad_to(inputs[key], width), pad_to(tf.cast(inputs[f"{key}_2"], inputs[key].dtype), width)
        stacked = tf.stack([left, right], axis=1)  # [B, 2, N, ...]
        rows[key] = tf.reshape(stacked, tf.concat([[-1], tf.shape(stacked)[2:]], axis=0))
    batch = tf.shape(inputs["region_mask"])[0]
    image_type = tf.tile(tf.constant([[LEFT_IMAGE_TYPE], [RIGHT_IMAGE_TYPE]], tf.int32), [batch, 1])  # [2B, 1]
    rows["region_type_ids"] = image_type * tf.ones([1, width], tf.int32)
    rows["token_ids"] = tf.repeat(inputs["token_ids"], 2, axis=0)
    rows["text_mask"] = tf.repeat(inputs["text_mask"], 2, axis=0)
    return rows


def triplet_rows(inputs: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Pair inputs → one row per example: the left image's regions, then the right image's, as one
    compact prefix (the backbone's region mask must be a prefix of ones), type ids 1 then 2."""
    left_width = tf.shape(inputs["region_mask"])[1]
    right_width = tf.shape(inputs["region_mask_2"])[1]
    left_count = tf.reduce_sum(tf.cast(inputs["region_mask"], tf.int32), axis=1, keepdims=True)  # [B, 1]
    right_count = tf.reduce_sum(tf.cast(inputs["region_mask_2"], tf.int32), axis=1, keepdims=True)
    slot = tf.range(left_width + right_width)[tf.newaxis]  # [1, N1 + N2]
    in_left = slot < left_count
    valid = slot < left_count + right_count
    # Slot j of the compact row reads the left block at j, or the right block (placed after the left
    # block's padded width) at j - n1.
    index = tf.where(valid, tf.where(in_left, slot, left_width + slot - left_count), 0)
    rows = {}
    for key in ("region_features", "region_positions"):
        concatenated = tf.concat([inputs[key], tf.cast(inputs[f"{key}_2"], inputs[key].dtype)], axis=1)
        gathered = tf.gather(concatenated, index, batch_dims=1)
        rows[key] = gathered * tf.cast(valid, gathered.dtype)[..., tf.newaxis]
    rows["region_mask"] = tf.cast(valid, tf.int32)
    rows["region_type_ids"] = tf.where(in_left, LEFT_IMAGE_TYPE, RIGHT_IMAGE_TYPE) * rows["region_mask"]
    rows["token_ids"] = inputs["token_ids"]
    rows["text_mask"] = inputs["text_mask"]
    return rows


@keras.saving.register_keras_serializable(package="uniter_tf")
class Nlvr2TaskModel(TaskModel):
    """A :class:`TaskModel` whose inputs are one statement and two images, laid out per variant.

    Args:
        backbone: the UNITER backbone (type table of at least 3 rows).
        head: the variant's head.
        variant: one of :data:`VARIANTS`.
        **kwargs: passed to :class:`TaskModel`.
    """

    def __init__(self, backbone, head, variant: str = "paired", **kwargs):
        if variant not in VARIANTS:
            raise ValueError(f"NLVR2 variant must be one of {VARIANTS}, got {variant!r}")
        super().__init__(backbone=backbone, head=head, **kwargs)
        self.variant = variant

    def backbone_rows(self, inputs: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """The backbone inputs of the variant (:func:`paired_rows` or :func:`triplet_rows`).

        Raises:
            KeyError: naming the missing input (e.g. a request with one image's regions only).
        """
        missing = [key for key in PAIR_INPUT_KEYS if inputs.get(key) is None]
        if missing:
            raise KeyError(f"NLVR2 needs the statement and both images' regions; missing inputs {missing}")
        return triplet_rows(inputs) if self.variant == "triplet" else paired_rows(inputs)

    def call(self, inputs: Mapping[str, tf.Tensor], training: Optional[bool] = None) -> tf.Tensor:
        return super().call(self.backbone_rows(inputs), training=training)

    def get_config(self):
        config = super().get_config()
        config["variant"] = self.variant
        return config


# ------------------------------------------------------------------------------------------ the inputs


def pair_example_to_inputs(parsed: Mapping[str, tf.Tensor], model_config,
                           max_text_length: Optional[int] = None) -> Dict[str, tf.Tensor]:
    """One parsed pair record (``parse_and_decode(..., second_image=True)``) → unbatched pair inputs.

    Args:
        parsed: the parsed record.
        model_config: supplies the ``[CLS]`` / ``[SEP]`` ids.
        max_text_length: if given, the statement is truncated to this many WordPieces (evaluation).

    Returns:
        :data:`PAIR_INPUT_KEYS` plus ``example_id`` and ``label``.
    """
    word_ids = tf.cast(parsed[schema.TOKEN_IDS], tf.int32)
    if max_text_length is not None:
        word_ids = word_ids[:max_text_length]
    token_ids = tf.concat([[model_config.cls_token_id], word_ids, [model_config.sep_token_id]], axis=0)
    return {
            "token_ids": token_ids,
            "text_mask": tf.ones_like(token_ids),
            "region_features": parsed[schema.REGION_FEATURES],
            "region_positions": parsed[schema.REGION_POSITIONS],
            "region_mask": tf.ones([tf.shape(parsed[schema.REGION_FEATURES])[0]], tf.int32),
            "region_features_2": parsed[schema.REGION_FEATURES_2],
            "region_positions_2": parsed[schema.REGION_POSITIONS_2],
            "region_mask_2": tf.ones([tf.shape(parsed[schema.REGION_FEATURES_2])[0]], tf.int32),
            EXAMPLE_ID_KEY: parsed[schema.EXAMPLE_ID],
            schema.LABEL: parsed[schema.LABEL],
    }


def build_nlvr2_dataset(file_patterns, task: "Nlvr2Task", model_config, batch_size: int, *,
                        max_text_length: int = 60, training: bool = True, seed: int = 42,
                        shuffle_buffer_size: int = 1024, input_context=None) -> tf.data.Dataset:
    """Batches of ``(pair inputs, {"label"})`` from canonical pair records.

    Records the task cannot use (no label, no second image: :meth:`Nlvr2Task.keep_record`) are skipped;
    in training statements longer than ``max_text_length`` are dropped (spec §7.14), in evaluation they
    are truncated so every example stays in the denominator.
    """
    from uniter_tf.data.finetune_inputs import _record_dataset, list_record_files  # pylint: disable=import-outside-toplevel

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = _record_dataset(list_record_files(file_patterns))
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        dataset = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.map(lambda serialized: schema.parse_and_decode(serialized, model_config.region_feature_dim,
                                                                     second_image=True),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.filter(task.keep_record)
    if training:
        dataset = dataset.filter(lambda parsed: tf.size(parsed[schema.TOKEN_IDS]) <= max_text_length)
    truncate_to = None if training else max_text_length
    dataset = dataset.map(lambda parsed: pair_example_to_inputs(parsed, model_config, truncate_to),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.padded_batch(batch_size, drop_remainder=False)
    return dataset.map(lambda batch: (batch, {schema.LABEL: batch.pop(schema.LABEL)})).prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------------------------------------------ the export


@dataclasses.dataclass(frozen=True)
class ImagePairOutputs(ExportOutputs):
    """The export declaration of a task whose example is one text about two images (NLVR2).

    The exporter (``uniter_tf.export.pair_signatures``) then gives every scoring signature a second
    image's inputs (the one-image names with ``_2``: ``region_features_2``, ``region_boxes_2``,
    ``image_size_2``, ``num_regions_2``, ...), refuses an example whose either image has zero regions
    (INVALID_ARGUMENT naming ``num_regions`` / ``num_regions_2``), runs :meth:`pair_model` instead of
    backbone + head, and answers ``probability_output [B]`` (the softmax probability of class
    ``positive_class``) and ``label_output [B]`` (the argmax label) beside the logits and the labels.
    The pair signatures have no ITM outputs (an ITM score of a text with two images means nothing).

    Attributes:
        image_pair: marks the declaration for the exporter (always True).
        variant: the NLVR2 variant, which decides how the two images are laid out (:data:`VARIANTS`).
        positive_class: the class whose probability ``probability_output`` is (1 = "True").
        probability_output: output name of that probability.
        label_output: output name of the argmax label string.
    """

    image_pair: bool = True
    variant: str = "paired"
    positive_class: int = 1
    probability_output: str = "p_true"
    label_output: str = "label"

    def pair_model(self, backbone, head) -> "Nlvr2TaskModel":
        """The pair model over the export's backbone and head: pair inputs -> logits ``[B, 2]``.

        It holds no weights of its own (the exporter tracks the backbone and head it is given).
        """
        return Nlvr2TaskModel(backbone=backbone, head=head, variant=self.variant, task_name=self.name,
                              name=f"uniter_{self.name}_serving", dtype=backbone.dtype_policy.name)


# ------------------------------------------------------------------------------------------- the task


@register_task("nlvr2")  # a literal: tests read the registered names from the source
class Nlvr2Task(DownstreamTask):
    """NLVR2 (spec §5.3): is the statement true of the two images?

    Args:
        variant: ``paired``, ``triplet`` or ``paired_attn`` (the released configs' choice).
        head_learning_rate_multiplier: the head's LR multiplier; the official NLVR2 training has none (1.0).
    """

    name = NLVR2_TASK_NAME
    label_keys = (schema.LABEL,)
    primary_metric = "accuracy"

    def __init__(self, variant: str = "paired_attn", head_learning_rate_multiplier: float = 1.0):
        if variant not in VARIANTS:
            raise ValueError(f"task 'nlvr2': variant must be one of {VARIANTS}, got {variant!r}")
        if head_learning_rate_multiplier <= 0:
            raise ValueError(f"head_learning_rate_multiplier must be > 0, got {head_learning_rate_multiplier}")
        self.variant = variant
        self.head_learning_rate_multiplier = float(head_learning_rate_multiplier)

    # ---------------------------------------------------------------------------- model
    def model_config(self):
        config = super().model_config()
        # Region type 2 (the right image) needs the third row of the official init_type_embedding().
        if config.type_vocab_size < NLVR2_TYPE_VOCAB_SIZE:
            config = config.replace(type_vocab_size=NLVR2_TYPE_VOCAB_SIZE)
        return config

    def _head(self, model_config, dtype=None) -> keras.layers.Layer:
        kwargs = {"dtype": dtype} if dtype else {}
        hidden, init_range = model_config.hidden_size, model_config.initializer_range
        if self.variant == "paired":
            return Nlvr2PairedHead(hidden, init_range, name="nlvr2_head", **kwargs)
        if self.variant == "triplet":
            return Nlvr2TripletHead(hidden, init_range, name="nlvr2_head", **kwargs)
        return Nlvr2PairedAttentionHead(hidden, model_config.num_attention_heads, init_range,
                                        attention_dropout_rate=model_config.attention_probs_dropout_prob,
                                        hidden_dropout_rate=model_config.hidden_dropout_prob, name="nlvr2_head",
                                        **kwargs)

    def build_head(self, hidden_size: int) -> keras.layers.Layer:
        """The variant's head for hidden size H (the paired-attention head takes its attention heads and
        dropout from the task's model config, which :meth:`build_model` passes directly)."""
        config = self.model_config()
        if config.hidden_size != hidden_size:
            config = config.replace(hidden_size=hidden_size, num_attention_heads=max(1, hidden_size // 64))
        return self._head(config)

    def build_model(self, backbone=None, hidden_size: Optional[int] = None, *, dtype=None) -> "keras.Model":
        """As :meth:`DownstreamTask.build_model`, with an :class:`Nlvr2TaskModel` (pair inputs)."""
        if isinstance(backbone, keras.layers.Layer):
            if backbone.config.type_vocab_size < NLVR2_TYPE_VOCAB_SIZE:
                raise ValueError(f"an NLVR2 model needs a type table of {NLVR2_TYPE_VOCAB_SIZE} rows (region types 1 "
                                 f"and 2), the backbone has {backbone.config.type_vocab_size}: grow it with "
                                 "uniter_tf.models.official_init.init_type_embedding")
            # The model and its head follow the given backbone's dtype policy (never the global one).
            policy = backbone.dtype_policy.name
            return Nlvr2TaskModel(backbone=backbone, head=self._head(backbone.config, policy), variant=self.variant,
                                  task_name=self.name, name=f"uniter_{self.name}", dtype=policy)
        from uniter_tf.models.backbone import UniterBackbone  # pylint: disable=import-outside-toplevel
        from uniter_tf.models.pretraining_model import UniterPretrainingModel  # pylint: disable=import-outside-toplevel

        model_config = backbone if backbone is not None else self.model_config()
        if model_config.type_vocab_size < NLVR2_TYPE_VOCAB_SIZE:
            model_config = model_config.replace(type_vocab_size=NLVR2_TYPE_VOCAB_SIZE)
        backbone_layer = UniterBackbone(model_config, dtype=dtype) if dtype else UniterBackbone(model_config)
        pretraining_model = UniterPretrainingModel(backbone_layer)
        # The model's own policy too: a Keras model built without one takes the global policy.
        policy = backbone_layer.dtype_policy.name
        model = Nlvr2TaskModel(backbone=backbone_layer, head=self._head(model_config, policy), variant=self.variant,
                               task_name=self.name, name=f"uniter_{self.name}", dtype=policy)
        model.head.build()
        # Untracked on purpose, as DownstreamTask.build_model: the ITM head rides along untrained.
        object.__setattr__(model, "_uniter_pretraining_model", pretraining_model)
        return model

    def initialize(self, model, init: Optional[str] = None, init_path: Optional[str] = None, log=print) -> None:
        """As :meth:`DownstreamTask.initialize`, then the official ``init_type_embedding()``.

        Pretrained and official checkpoints have a 2-row type table: they are restored into a 2-row copy
        of the model, whose table then grows to 3 rows (row 2 = row 1) before every weight is copied in.
        """
        init = init or self.params["init"]
        if init == "scratch":
            # The 3-row type table is already the model's; only the feature statistics (when enabled) remain.
            self.initialize_feature_standardization(self.pretraining_model(model).backbone, log=log)
            return
        from uniter_tf.checkpoints.official import backbone_variable_map  # pylint: disable=import-outside-toplevel
        from uniter_tf.models import official_init  # pylint: disable=import-outside-toplevel
        from uniter_tf.models.backbone import UniterBackbone  # pylint: disable=import-outside-toplevel
        from uniter_tf.models.pretraining_model import UniterPretrainingModel  # pylint: disable=import-outside-toplevel

        target = self.pretraining_model(model)
        two_types = target.backbone.config.replace(type_vocab_size=2)
        source = UniterPretrainingModel(UniterBackbone(two_types))
        super().initialize(types.SimpleNamespace(_uniter_pretraining_model=source), init, init_path, log=log)
        grown = official_init.init_type_embedding(source, "nlvr2")
        source_map, target_map = backbone_variable_map(grown.backbone), backbone_variable_map(target.backbone)
        for key, (variable, _) in target_map.items():
            variable.assign(tf.cast(source_map[key][0], variable.dtype))
        target.itm_head.set_weights(grown.itm_head.get_weights())
        if target.backbone.config.region_feature_standardization:
            # Not an official weight, so not in the variable map: the statistics (restored from the pretraining
            # run or computed on the training records by the initialisation above) are carried over here.
            source_region, target_region = grown.backbone.region_embeddings, target.backbone.region_embeddings
            target_region.set_feature_statistics(source_region.feature_mean.numpy(),
                                                 source_region.feature_scale.numpy())
        log(f"grew the type table to {NLVR2_TYPE_VOCAB_SIZE} rows (row 2 = row 1, official init_type_embedding)")

    # ------------------------------------------------------------------------ data, loss, metrics
    def keep_record(self, parsed: Mapping[str, tf.Tensor]) -> tf.Tensor:
        # A record of the task has a True/False label and a second image (one-image records are other tasks').
        label = tf.reshape(tf.cast(parsed[schema.LABEL], tf.int32), [])
        has_pair = tf.greater(tf.reshape(tf.cast(parsed.get(schema.NUM_REGIONS_2, 0), tf.int32), []), 0)
        return tf.logical_and(tf.logical_and(label >= 0, label < len(NLVR2_LABELS)), has_pair)

    def build_inputs(self, stream: str, input_context=None, seed: int = 42, training: bool = True):
        del stream
        global_batch = self.run_param("train_batch_size" if training else "eval_batch_size")
        batch_size = input_context.get_per_replica_batch_size(global_batch) if input_context else global_batch
        files = self.train_files if training else self.eval_files
        if not files:
            raise ValueError(f"task 'nlvr2': {'train' if training else 'eval'}_files is empty: give its pair records")
        return build_nlvr2_dataset(files, self, self.model_config(), batch_size,
                                   max_text_length=self.run_param("max_text_length"), training=training, seed=seed,
                                   input_context=input_context)

    def targets_from_features(self, features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        if schema.LABEL not in features:
            raise KeyError(f"NLVR2 needs the record feature {schema.LABEL!r}; the batch has {sorted(features)}")
        labels = tf.reshape(tf.cast(features[schema.LABEL], tf.int32), [-1])
        checks = [tf.debugging.assert_non_negative(labels, message="label: an NLVR2 record has no label"),
                  tf.debugging.assert_less(labels, len(NLVR2_LABELS), message="label: an NLVR2 label is not 0/1")]
        with tf.control_dependencies(checks):
            return {NLVR2_TARGET_KEY: tf.identity(labels)}

    def compute_loss(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> tf.Tensor:
        return nlvr2_loss(logits, targets[NLVR2_TARGET_KEY])[1]

    def compute_metrics(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> Dict[str, tf.Tensor]:
        return {"accuracy": nlvr2_accuracy(targets[NLVR2_TARGET_KEY], logits)}

    def answer_strings(self, logits) -> list:
        """``"True"`` / ``"False"`` per example (argmax of the two logits, as ``inf_nlvr2.py``)."""
        return [NLVR2_LABELS[int(index)] for index in np.argmax(np.asarray(logits), axis=-1)]

    def evaluate(self, model, files=None, max_batches=None, *, seed: int = 43, output_dir=None, step=None,
                 predictions_path: Optional[str] = None):
        """Loss, accuracy and consistency on ``files``; with ``output_dir`` and ``step`` also the official
        predictions file ``results/results_{step}.csv`` (``identifier,True|False``), with
        ``predictions_path`` that file there (``uniter evaluate --task nlvr2 --output``).

        Raises:
            ValueError: the files hold no NLVR2 pair record.
        """
        del seed
        files = files or self.eval_files
        dataset = build_nlvr2_dataset(files, self, self.model_config(), self.run_param("eval_batch_size"),
                                      max_text_length=self.run_param("max_text_length"), training=False)
        identifiers, predicted, labels, losses = self.predict(model, dataset, max_batches=max_batches)
        if not identifiers:
            raise ValueError(f"the eval files {files} hold no usable NLVR2 pair records")
        correct = predicted == labels
        result = {"loss": float(np.mean(losses)), "num_examples": float(len(identifiers)),
                  "accuracy": float(np.mean(correct)), "consistency": nlvr2_consistency(identifiers, correct)}
        if output_dir is not None and step is not None:
            write_predictions_csv(os.path.join(output_dir, "results", f"results_{step}.csv"), identifiers, predicted)
        if predictions_path:
            write_predictions_csv(predictions_path, identifiers, predicted)
        return result

    def predict(self, model, dataset, max_batches: Optional[int] = None
                ) -> Tuple[list, np.ndarray, np.ndarray, np.ndarray]:
        """``(identifiers, predicted classes, labels, per-example losses)`` over ``(inputs, labels)`` batches."""
        step = getattr(model, "_uniter_nlvr2_eval_step", None)
        if step is None:
            def forward(inputs, label):
                logits = tf.cast(model({key: value for key, value in inputs.items() if key != EXAMPLE_ID_KEY},
                                       training=False), tf.float32)
                return logits, nlvr2_loss(logits, label)[0]

            step = tf.function(forward, reduce_retracing=True)
            object.__setattr__(model, "_uniter_nlvr2_eval_step", step)
        identifiers, predicted, labels, losses = [], [], [], []
        for index, (inputs, label_features) in enumerate(dataset):
            if max_batches is not None and index >= max_batches:
                break
            logits, loss = step(inputs, label_features[schema.LABEL])
            identifiers.extend(value.decode("utf-8") for value in inputs[EXAMPLE_ID_KEY].numpy())
            predicted.append(np.argmax(logits.numpy(), axis=-1))
            labels.append(label_features[schema.LABEL].numpy())
            losses.append(loss.numpy())
        if not identifiers:
            return [], np.zeros([0], np.int64), np.zeros([0], np.int64), np.zeros([0], np.float32)
        return identifiers, np.concatenate(predicted), np.concatenate(labels), np.concatenate(losses)

    def export_outputs(self) -> ExportOutputs:
        # Softmax over (False, True): p_true is the "True" probability; the pair signatures take both images.
        return ImagePairOutputs(name=self.name, activation="softmax", labels=list(NLVR2_LABELS),
                                labels_output="labels", scores_output="label_scores", variant=self.variant,
                                positive_class=NLVR2_LABELS.index("True"))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Nlvr2Task":
        """Constructs the task from :meth:`get_config`'s dict.

        Raises:
            ValueError: an unknown argument (named).
        """
        arguments = dict(config)
        unknown = sorted(set(arguments) - {"variant", "head_learning_rate_multiplier"})
        if unknown:
            raise ValueError(f"task 'nlvr2' has no argument(s) {unknown}; it takes variant "
                             f"({'|'.join(VARIANTS)}) and head_learning_rate_multiplier")
        return cls(**arguments)

    def get_config(self) -> Dict[str, object]:
        return {"variant": self.variant, "head_learning_rate_multiplier": self.head_learning_rate_multiplier}
