"""VCR as a task (spec §5.6, §6): Q→A and QA→R fine-tuning, Q→AR evaluation, the leaderboard files.

**Records.** One canonical record per question (:func:`make_vcr_example`): the image fields of
:mod:`uniter_tf.data.schema` (ground-truth boxes first, then detected boxes, as official), ``text`` /
``token_ids`` = the question, ``task = "vcr"``, plus the VCR fields of :data:`VCR_FEATURES`: the four
answers and four rationales (strings and WordPiece ids with object references already mapped, see
:mod:`uniter_tf.data.readers.vcr`), ``vcr_answer_label`` / ``vcr_rationale_label`` (-1 on test) and
``vcr_num_gt_regions``.

**Rows.** Every question expands to rows scored one by one by the 2-way head
(:class:`~uniter_tf.models.vcr.VcrHead`), built in-graph with
:func:`uniter_tf.tokenization.pack_segments` (types: question 0, answer 2, rationale 3):

* training and validation: 4 Q→A rows ``[CLS] q [SEP] a_i [SEP]`` then 4 QA→R rows ``[CLS] q [SEP]
  a_gt [SEP] r_j [SEP]`` = 8 rows; each row's target is 1 for the right choice. The official trainer
  draws Q→A and QA→R examples (4 rows each) from two concatenated datasets; here both formats of a
  question are in the same batch (same rows, same per-row loss);
* ``eval_rows = 20`` (``inf_vcr.py``, and the only choice for test, whose labels are withheld): 4 Q→A rows
  then every answer × every rationale (rows ``4 + 4·a + j``).

Loss: 2-way softmax cross-entropy per row, mean over rows (``model/vcr.py``). Metrics per question:
``acc_qa`` (argmax of the 4 Q→A scores), ``acc_qar`` (argmax of the 4 rationale scores conditioned on
the right answer), ``acc`` (both right). The score of a row is its class-1 logit.

**Lengths.** ``max_text_length`` counts segment tokens without ``[CLS]``/``[SEP]`` (official ``id2len``,
220 for VCR). Training drops a question whose longest row does not fit (official: over-long examples are
dropped, spec §7.14); evaluation keeps every question and cuts its rows longest-segment-first
(:func:`uniter_tf.tokenization.trim_segments`).

**Model.** The word table has 81 extra rows (object references) and the type table 4 rows:
:meth:`VcrTask.model_config` grows a standard config; a standard pretrained backbone is grown after
restoring as the official ``init_type_embedding()`` / ``init_word_embedding(81)`` do
(:func:`grow_backbone_for_vcr`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from uniter_tf.data import schema
from uniter_tf.data.readers.vcr import NUM_CHOICES, annot_sort_key
from uniter_tf.models.official_init import VCR_NUM_SPECIAL_TOKENS, VCR_TYPE_ROWS
from uniter_tf.models.task import EXAMPLE_ID_KEY, DownstreamTask, ExportOutputs, register_task
from uniter_tf.models.vcr import VcrHead, vcr_loss
from uniter_tf.tokenization import ANSWER_TYPE_ID, QUESTION_TYPE_ID, RATIONALE_TYPE_ID, pack_segments

VCR_TASK_NAME = "vcr"
VCR_ANSWERS = "vcr_answers"
VCR_RATIONALES = "vcr_rationales"
VCR_ANSWER_TOKEN_IDS = "vcr_answer_token_ids"
VCR_ANSWER_LENGTHS = "vcr_answer_lengths"
VCR_RATIONALE_TOKEN_IDS = "vcr_rationale_token_ids"
VCR_RATIONALE_LENGTHS = "vcr_rationale_lengths"
VCR_ANSWER_LABEL = "vcr_answer_label"
VCR_RATIONALE_LABEL = "vcr_rationale_label"
VCR_NUM_GT_REGIONS = "vcr_num_gt_regions"
#: The VCR fields a record carries besides the canonical ones.
VCR_FEATURES = (VCR_ANSWERS, VCR_RATIONALES, VCR_ANSWER_TOKEN_IDS, VCR_ANSWER_LENGTHS, VCR_RATIONALE_TOKEN_IDS,
                VCR_RATIONALE_LENGTHS, VCR_ANSWER_LABEL, VCR_RATIONALE_LABEL, VCR_NUM_GT_REGIONS)
#: Target keys of a batch.
ROW_TARGETS = "vcr_row_targets"
#: Rows per question: training / validation (4 Q→A + 4 QA→R) and inference (4 + 4 × 4).
TRAIN_ROWS, ALL_ROWS = 2 * NUM_CHOICES, NUM_CHOICES + NUM_CHOICES * NUM_CHOICES
QA_TYPES = (QUESTION_TYPE_ID, ANSWER_TYPE_ID)
QAR_TYPES = (QUESTION_TYPE_ID, ANSWER_TYPE_ID, RATIONALE_TYPE_ID)


# ---------------------------------------------------------------------------------------------- records
def make_vcr_example(*, example_id: str, image_id: str, question: str, question_ids: Sequence[int],
                     answers: Sequence[str], answer_ids: Sequence[Sequence[int]], rationales: Sequence[str],
                     rationale_ids: Sequence[Sequence[int]], answer_label: int, rationale_label: int,
                     region_features, region_boxes, image_height: int, image_width: int, num_gt_regions: int,
                     soft_labels=None):
    """One VCR question as a canonical ``tf.train.Example`` plus the :data:`VCR_FEATURES`.

    Args:
        example_id: ``annot_id``.
        image_id: the image (``img_fn``).
        question: the rendered question (object references written ``[i]``).
        question_ids: its ids (references mapped, no ``[CLS]``/``[SEP]``).
        answers: the 4 rendered answers; answer_ids: their ids.
        rationales: the 4 rendered rationales; rationale_ids: their ids.
        answer_label: 0..3, or -1 (test).
        rationale_label: 0..3, or -1 (test).
        region_features: ``[n, D]``, ground-truth boxes first.
        region_boxes: ``[n, 4]`` pixels.
        image_height: pixels; image_width: pixels.
        num_gt_regions: how many leading regions are the ground-truth boxes (references index them).
        soft_labels: optional ``[n, C]`` class distributions of the regions (second-stage MRC-kl).

    Raises:
        ValueError: not 4 choices, a label outside -1..3 or a bad region count (naming the record).
    """
    for name, values in (("answers", answers), ("answer_ids", answer_ids), ("rationales", rationales),
                         ("rationale_ids", rationale_ids)):
        if len(values) != NUM_CHOICES:
            raise ValueError(f"VCR record {example_id!r}: {name} must have {NUM_CHOICES} entries, got {len(values)}")
    for name, label in (("answer_label", answer_label), ("rationale_label", rationale_label)):
        if not -1 <= int(label) < NUM_CHOICES:
            raise ValueError(f"VCR record {example_id!r}: {name} must be -1..{NUM_CHOICES - 1}, got {label}")
    if not 0 <= int(num_gt_regions) <= len(region_features):
        raise ValueError(f"VCR record {example_id!r}: num_gt_regions {num_gt_regions} is not within the "
                         f"{len(region_features)} regions")
    example = schema.make_example(image_id=image_id, region_features=region_features, region_boxes=region_boxes,
                                  image_height=image_height, image_width=image_width, example_id=example_id,
                                  text=question, token_ids=list(question_ids), task=schema.TASK_VCR,
                                  soft_labels=soft_labels)
    feature = example.features.feature

    def put_ints(key, values):
        feature[key].int64_list.value.extend(int(value) for value in values)

    feature[VCR_ANSWERS].bytes_list.value.extend(text.encode("utf-8") for text in answers)
    feature[VCR_RATIONALES].bytes_list.value.extend(text.encode("utf-8") for text in rationales)
    put_ints(VCR_ANSWER_TOKEN_IDS, [token for ids in answer_ids for token in ids])
    put_ints(VCR_ANSWER_LENGTHS, [len(ids) for ids in answer_ids])
    put_ints(VCR_RATIONALE_TOKEN_IDS, [token for ids in rationale_ids for token in ids])
    put_ints(VCR_RATIONALE_LENGTHS, [len(ids) for ids in rationale_ids])
    put_ints(VCR_ANSWER_LABEL, [answer_label])
    put_ints(VCR_RATIONALE_LABEL, [rationale_label])
    put_ints(VCR_NUM_GT_REGIONS, [num_gt_regions])
    return example


def _vcr_feature_spec():
    def ints():
        return tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True)

    return {VCR_ANSWERS: tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True),
            VCR_RATIONALES: tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True),
            VCR_ANSWER_TOKEN_IDS: ints(), VCR_ANSWER_LENGTHS: ints(), VCR_RATIONALE_TOKEN_IDS: ints(),
            VCR_RATIONALE_LENGTHS: ints(),
            VCR_ANSWER_LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
            VCR_RATIONALE_LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
            VCR_NUM_GT_REGIONS: tf.io.FixedLenFeature([], tf.int64, default_value=0)}


def parse_vcr_record(serialized, feature_dim: Optional[int] = None) -> Dict[str, Any]:
    """A serialized VCR record → :func:`schema.parse_and_decode`'s dict plus ``answer_ids`` /
    ``rationale_ids`` (int32 ragged ``[4, None]``) and the labels (int32 scalars).

    Raises:
        tf.errors.InvalidArgumentError: a record without 4 answers and 4 rationales (names the record).
    """
    parsed = dict(schema.parse_and_decode(serialized, feature_dim))
    vcr = tf.io.parse_single_example(serialized, _vcr_feature_spec())
    checks = []
    for lengths, ids, name in ((VCR_ANSWER_LENGTHS, VCR_ANSWER_TOKEN_IDS, "answers"),
                               (VCR_RATIONALE_LENGTHS, VCR_RATIONALE_TOKEN_IDS, "rationales")):
        checks.append(tf.debugging.Assert(
                tf.logical_and(tf.equal(tf.size(vcr[lengths]), NUM_CHOICES),
                               tf.equal(tf.reduce_sum(vcr[lengths]), tf.cast(tf.size(vcr[ids]), tf.int64))),
                [f"VCR record without {NUM_CHOICES} {name} (a record of another task?); example_id:",
                 parsed[schema.EXAMPLE_ID]]))
    with tf.control_dependencies(checks):
        parsed["answer_ids"] = tf.RaggedTensor.from_row_lengths(tf.cast(vcr[VCR_ANSWER_TOKEN_IDS], tf.int32),
                                                                vcr[VCR_ANSWER_LENGTHS])
        parsed["rationale_ids"] = tf.RaggedTensor.from_row_lengths(
                tf.cast(vcr[VCR_RATIONALE_TOKEN_IDS], tf.int32), vcr[VCR_RATIONALE_LENGTHS])
    parsed[VCR_ANSWER_LABEL] = tf.cast(vcr[VCR_ANSWER_LABEL], tf.int32)
    parsed[VCR_RATIONALE_LABEL] = tf.cast(vcr[VCR_RATIONALE_LABEL], tf.int32)
    parsed[VCR_NUM_GT_REGIONS] = tf.cast(vcr[VCR_NUM_GT_REGIONS], tf.int32)
    return parsed


def question_rows(question_ids: tf.Tensor, answer_ids: tf.RaggedTensor, rationale_ids: tf.RaggedTensor,
                  answer_label: tf.Tensor, num_rows: int, cls_id: int, sep_id: int,
                  max_text_length: Optional[int] = None):
    """The rows of one question: ``(token_ids, token_type_ids)`` ragged ``[num_rows, None]``.

    ``num_rows`` 8: Q→A rows then QA→R rows with the right answer; 20: Q→A rows then QA→R rows for every
    answer (rows ``4 + 4·a + j``).
    """
    question = tf.RaggedTensor.from_tensor(tf.tile(question_ids[tf.newaxis], [NUM_CHOICES, 1]))
    qa_ids, qa_types = pack_segments([question, answer_ids], QA_TYPES, cls_id, sep_id, max_text_length)
    if num_rows == TRAIN_ROWS:
        answers = tf.gather(answer_ids, tf.fill([NUM_CHOICES], answer_label))
        rationales = rationale_ids
    elif num_rows == ALL_ROWS:
        answers = tf.gather(answer_ids, tf.repeat(tf.range(NUM_CHOICES), NUM_CHOICES))
        rationales = tf.gather(rationale_ids, tf.tile(tf.range(NUM_CHOICES), [NUM_CHOICES]))
    else:
        raise ValueError(f"VCR rows per question are {TRAIN_ROWS} or {ALL_ROWS}, got {num_rows}")
    count = NUM_CHOICES if num_rows == TRAIN_ROWS else NUM_CHOICES * NUM_CHOICES
    question_r = tf.RaggedTensor.from_tensor(tf.tile(question_ids[tf.newaxis], [count, 1]))
    qar_ids, qar_types = pack_segments([question_r, answers, rationales], QAR_TYPES, cls_id, sep_id,
                                       max_text_length)
    return tf.concat([qa_ids, qar_ids], axis=0), tf.concat([qa_types, qar_types], axis=0)


def build_vcr_dataset(file_patterns, model_config, batch_size: int, *, max_text_length: int = 220,
                      training: bool = True, num_rows: int = TRAIN_ROWS, seed: int = 42,
                      shuffle_buffer_size: int = 1024, input_context=None) -> tf.data.Dataset:
    """Batches of ``(model inputs, labels)`` with ``batch_size`` questions = ``batch_size × num_rows`` rows.

    ``inputs``: the backbone keys (``token_type_ids`` included) over rows, regions repeated per row, and
    ``example_id`` per question; ``labels``: ``vcr_row_targets [rows]``, ``vcr_answer_label [B]``,
    ``vcr_rationale_label [B]``.
    """
    from uniter_tf.data.finetune_inputs import _record_dataset, list_record_files  # pylint: disable=import-outside-toplevel

    if training and num_rows != TRAIN_ROWS:
        raise ValueError(f"VCR training uses {TRAIN_ROWS} rows per question (Q→A and QA→R with the right answer)")
    dataset = _record_dataset(list_record_files(file_patterns))
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        dataset = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.map(lambda serialized: parse_vcr_record(serialized, model_config.region_feature_dim),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.filter(lambda parsed: tf.equal(parsed[schema.TASK], schema.TASK_VCR))
    if training or num_rows == TRAIN_ROWS:
        # Rows with the right answer need it (and training needs both labels).
        dataset = dataset.filter(lambda parsed: tf.logical_and(parsed[VCR_ANSWER_LABEL] >= 0,
                                                               parsed[VCR_RATIONALE_LABEL] >= 0))
    if training:
        def fits(parsed):
            question = tf.size(parsed[schema.TOKEN_IDS])
            longest_qa = question + tf.cast(tf.reduce_max(parsed["answer_ids"].row_lengths()), tf.int32)
            longest_qar = (question + tf.cast(parsed["answer_ids"].row_lengths()[parsed[VCR_ANSWER_LABEL]], tf.int32)
                           + tf.cast(tf.reduce_max(parsed["rationale_ids"].row_lengths()), tf.int32))
            return tf.maximum(longest_qa, longest_qar) <= max_text_length

        dataset = dataset.filter(fits)
    truncate_to = None if training else max_text_length

    def to_rows(parsed):
        token_ids, type_ids = question_rows(
                tf.cast(parsed[schema.TOKEN_IDS], tf.int32), parsed["answer_ids"], parsed["rationale_ids"],
                tf.maximum(parsed[VCR_ANSWER_LABEL], 0), num_rows, model_config.cls_token_id,
                model_config.sep_token_id, truncate_to)
        answer, rationale = parsed[VCR_ANSWER_LABEL], parsed[VCR_RATIONALE_LABEL]
        targets = tf.concat([tf.one_hot(answer, NUM_CHOICES, dtype=tf.int32),
                             tf.one_hot(rationale, NUM_CHOICES, dtype=tf.int32)
                             if num_rows == TRAIN_ROWS else
                             tf.reshape(tf.one_hot(answer, NUM_CHOICES, dtype=tf.int32)[:, tf.newaxis]
                                        * tf.one_hot(rationale, NUM_CHOICES, dtype=tf.int32)[tf.newaxis], [-1])],
                            axis=0)
        num_regions = tf.shape(parsed[schema.REGION_FEATURES])[0]
        inputs = {"token_ids": token_ids.to_tensor(0), "token_type_ids": type_ids.to_tensor(0),
                  "text_mask": tf.ones_like(token_ids).to_tensor(0),
                  "region_features": parsed[schema.REGION_FEATURES],
                  "region_positions": parsed[schema.REGION_POSITIONS],
                  "region_mask": tf.ones([num_regions], tf.int32), EXAMPLE_ID_KEY: parsed[schema.EXAMPLE_ID]}
        labels = {ROW_TARGETS: targets, VCR_ANSWER_LABEL: answer, VCR_RATIONALE_LABEL: rationale}
        return inputs, labels

    dataset = dataset.map(to_rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    per_replica = input_context.get_per_replica_batch_size(batch_size) if input_context else batch_size
    dataset = dataset.padded_batch(per_replica, drop_remainder=False)

    def flatten_rows(inputs, labels):
        questions = tf.shape(inputs["token_ids"])[0]
        flat = {key: tf.reshape(inputs[key], [questions * num_rows, -1])
                for key in ("token_ids", "token_type_ids", "text_mask")}
        for key in ("region_features", "region_positions", "region_mask"):
            flat[key] = tf.repeat(inputs[key], num_rows, axis=0)
        flat[EXAMPLE_ID_KEY] = inputs[EXAMPLE_ID_KEY]
        labels = dict(labels)
        labels[ROW_TARGETS] = tf.reshape(labels[ROW_TARGETS], [-1])
        return flat, labels

    return dataset.map(flatten_rows).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------------------- metrics
def question_scores(logits: tf.Tensor, num_questions) -> tf.Tensor:
    """Class-1 logits of the rows, ``[questions, rows per question]`` (official ``rank_scores``)."""
    return tf.reshape(tf.cast(logits, tf.float32)[:, 1], [num_questions, -1])


def vcr_accuracies(scores, answer_label, rationale_label) -> Dict[str, np.ndarray]:
    """``acc_qa``, ``acc_qar``, ``acc`` and the choice losses ``loss_qa`` / ``loss_qar`` (softmax CE over the 4
    choice scores) per question from ``[Q, 8]`` or ``[Q, 20]`` row scores (``inf_vcr.py``).

    With 20 rows the rationale scores are those conditioned on the right answer (rows ``4 + 4·a + j``).
    """
    scores = np.asarray(scores, np.float64)
    answer_label = np.asarray(answer_label).reshape(-1)
    rationale_label = np.asarray(rationale_label).reshape(-1)
    if scores.shape[1] == ALL_ROWS:
        columns = NUM_CHOICES + NUM_CHOICES * answer_label[:, None] + np.arange(NUM_CHOICES)[None]
        rationale_scores = np.take_along_axis(scores, columns, axis=1)
    elif scores.shape[1] == TRAIN_ROWS:
        rationale_scores = scores[:, NUM_CHOICES:]
    else:
        raise ValueError(f"VCR scores must have {TRAIN_ROWS} or {ALL_ROWS} rows per question, got {scores.shape}")
    qa = (np.argmax(scores[:, :NUM_CHOICES], axis=1) == answer_label).astype(np.float32)
    qar = (np.argmax(rationale_scores, axis=1) == rationale_label).astype(np.float32)

    def choice_cross_entropy(choice_scores, labels):  # inf_vcr.py's validation losses: CE over the 4 scores
        shifted = choice_scores - choice_scores.max(axis=1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -np.take_along_axis(log_softmax, labels[:, None], axis=1)[:, 0]

    return {"acc_qa": qa, "acc_qar": qar, "acc": qa * qar,
            "loss_qa": choice_cross_entropy(scores[:, :NUM_CHOICES], answer_label),
            "loss_qar": choice_cross_entropy(rationale_scores, rationale_label)}


def write_leaderboard_files(results: Mapping[str, Sequence[float]], result_dir: str, checkpoint) -> Dict[str, str]:
    """``results_{checkpoint}_all.json`` and, for 20-score results, the leaderboard ``.csv`` (``inf_vcr.py``).

    The CSV has the index column ``annot_id`` then ``answer_0..3`` and ``rationale_conditioned_on_a{i}_{j}``,
    rows sorted by the integer after the dash of ``annot_id``; values are the raw class-1 logits (the
    official file calls them probabilities but writes logits).

    Returns:
        ``{"json": path, "csv": path or absent}``.
    """
    tf.io.gfile.makedirs(result_dir)
    paths = {"json": os.path.join(result_dir, f"results_{checkpoint}_all.json")}
    with tf.io.gfile.GFile(paths["json"], "w") as handle:
        handle.write(json.dumps({key: [float(value) for value in values] for key, values in results.items()}))
    if results and all(len(values) == ALL_ROWS for values in results.values()):
        groups = ["answer"] + [f"rationale_conditioned_on_a{index}" for index in range(NUM_CHOICES)]
        header = ["annot_id"] + [f"{group}_{index}" for group in groups for index in range(NUM_CHOICES)]
        paths["csv"] = os.path.join(result_dir, f"results_{checkpoint}_all.csv")
        with tf.io.gfile.GFile(paths["csv"], "w") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            for annot_id in sorted(results, key=annot_sort_key):
                writer.writerow([annot_id] + [repr(float(value)) for value in results[annot_id]])
    return paths


# ---------------------------------------------------------------------------------------- initialisation
def grow_backbone_for_vcr(source_backbone, target_backbone, seed: Optional[int] = None) -> None:
    """Copies a standard backbone into a VCR-sized one as ``init_type_embedding()`` + ``init_word_embedding(81)``.

    Type rows ``[T0, T1, T0, T0]``; word rows: the source's then 81 fresh N(0, initializer_range) rows. A
    source that already has the VCR sizes (a second-stage checkpoint) is copied as it is. With
    ``region_feature_standardization`` the source's statistics are copied too (they are no official weight).

    Raises:
        ValueError: the sizes fit neither case (naming them).
    """
    from uniter_tf.checkpoints.official import backbone_variable_map  # pylint: disable=import-outside-toplevel

    source, target = backbone_variable_map(source_backbone), backbone_variable_map(target_backbone)
    word_key = "uniter.embeddings.word_embeddings.weight"
    type_key = "uniter.embeddings.token_type_embeddings.weight"
    config = target_backbone.config
    for key, (variable, _) in target.items():
        value = source[key][0].numpy()
        if key == word_key and value.shape[0] + VCR_NUM_SPECIAL_TOKENS == variable.shape[0]:
            rows = np.random.default_rng(seed).normal(0.0, config.initializer_range,
                                                      (VCR_NUM_SPECIAL_TOKENS, value.shape[1]))
            value = np.concatenate([value, rows.astype(value.dtype)], axis=0)
        elif key == type_key and value.shape[0] == 2 and variable.shape[0] == len(VCR_TYPE_ROWS):
            value = value[list(VCR_TYPE_ROWS)]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"cannot initialise the VCR model's {key} {list(variable.shape)} from "
                             f"{list(value.shape)}")
        variable.assign(value.astype(np.dtype(variable.dtype)))
    if config.region_feature_standardization:
        # Not in the variable map: without this copy the VCR model would keep mean 0 / scale 1 and see its
        # regions unstandardised while every weight was trained on standardised ones.
        if not source_backbone.config.region_feature_standardization:
            raise ValueError("cannot initialise a VCR model with region_feature_standardization from a backbone "
                             "without it (no statistics to carry)")
        source_region = source_backbone.region_embeddings
        target_backbone.region_embeddings.set_feature_statistics(source_region.feature_mean.numpy(),
                                                                 source_region.feature_scale.numpy())


# ------------------------------------------------------------------------------------------------ export
@dataclasses.dataclass(frozen=True)
class MultipleChoiceOutputs(ExportOutputs):
    """The export declaration of a multiple-choice task over text segments (VCR).

    The exporter (``uniter_tf.export.choice_signatures``) then offers signatures that take the question,
    the ``num_choices`` answers (and rationales) as separate string inputs plus the regions, build the
    rows in-graph with ``segment_types`` and answer per-choice scores (the head's class-1 logit) and the
    chosen index (``answer_scores`` / ``chosen_answer``, ``rationale_scores`` / ``chosen_rationale``).

    Attributes:
        multiple_choice: marks the declaration for the exporter (always True).
        num_choices: choices per question (4).
        segment_types: token types of question, answer, rationale (0, 2, 3).
        num_reference_ids: object-reference word ids after the WordPiece vocabulary (81).
    """

    multiple_choice: bool = True
    num_choices: int = NUM_CHOICES
    segment_types: tuple = QAR_TYPES
    num_reference_ids: int = VCR_NUM_SPECIAL_TOKENS


# -------------------------------------------------------------------------------------------------- task
@register_task("vcr")  # a literal: tests read the registered names from the source
class VcrTask(DownstreamTask):
    """Visual commonsense reasoning (spec §5.6).

    Args:
        eval_rows: rows per question in evaluation: 8 (validation during training, as ``train_vcr.py``) or
            20 (``inf_vcr.py``: every answer × every rationale; required for test, writes the leaderboard CSV).
        head_learning_rate_multiplier: the official ``lr_mul`` of ``vcr_output`` (1.0 in the configs).
    """

    name = VCR_TASK_NAME
    label_keys = (ROW_TARGETS, VCR_ANSWER_LABEL, VCR_RATIONALE_LABEL)
    primary_metric = "acc"

    def __init__(self, eval_rows: int = TRAIN_ROWS, head_learning_rate_multiplier: float = 1.0):
        if eval_rows not in (TRAIN_ROWS, ALL_ROWS):
            raise ValueError(f"task 'vcr': eval_rows must be {TRAIN_ROWS} or {ALL_ROWS}, got {eval_rows!r}")
        if head_learning_rate_multiplier <= 0:
            raise ValueError(f"head_learning_rate_multiplier must be > 0, got {head_learning_rate_multiplier}")
        self.eval_rows = int(eval_rows)
        self.head_learning_rate_multiplier = float(head_learning_rate_multiplier)

    def model_config(self):
        """The run's config grown to the VCR tables (word +81, 4 types).

        A config with the standard 2 type rows (``uniter-base``, ``tiny``, ...) is grown; one that already
        has 4 (a second-stage layout given through ``model_overrides``) is kept as it is.
        """
        config = super().model_config()
        if config.type_vocab_size == 2:
            config = config.replace(vocab_size=config.vocab_size + VCR_NUM_SPECIAL_TOKENS,
                                    type_vocab_size=len(VCR_TYPE_ROWS))
        elif config.type_vocab_size != len(VCR_TYPE_ROWS):
            raise ValueError(f"task 'vcr': the model has {config.type_vocab_size} token types; VCR needs a "
                             f"standard (2) or a VCR (4) type table")
        return config

    def build_head(self, hidden_size: int) -> keras.layers.Layer:
        return VcrHead(hidden_size=hidden_size, name="vcr_output")

    def export_outputs(self) -> ExportOutputs:
        # Rows are scored one by one; the signatures rank the choices (uniter_tf/export/choice_signatures.py).
        return MultipleChoiceOutputs(name=self.name, activation="softmax", logits_output="row_logits",
                                     labels_output="choice_labels", scores_output="choice_scores")

    def targets_from_features(self, features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        missing = [key for key in self.label_keys if key not in features]
        if missing:
            raise KeyError(f"VCR needs the batch labels {missing}; the batch has {sorted(features)}")
        return {key: tf.cast(features[key], tf.int32) for key in self.label_keys}

    def compute_loss(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> tf.Tensor:
        return vcr_loss(logits, targets[ROW_TARGETS])[1]

    def compute_metrics(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> Dict[str, tf.Tensor]:
        answer, rationale = targets[VCR_ANSWER_LABEL], targets[VCR_RATIONALE_LABEL]
        scores = question_scores(logits, tf.shape(answer)[0])
        qa = tf.cast(tf.equal(tf.argmax(scores[:, :NUM_CHOICES], axis=1, output_type=tf.int32), answer), tf.float32)
        qar = tf.cast(tf.equal(tf.argmax(scores[:, NUM_CHOICES:TRAIN_ROWS], axis=1, output_type=tf.int32),
                               rationale), tf.float32)
        return {"acc_qa": qa, "acc_qar": qar, "acc": qa * qar}

    def build_inputs(self, stream: str, input_context=None, seed: int = 42, training: bool = True):
        del stream
        if not self.train_files and training:
            raise ValueError("task 'vcr': train_files is empty: give the task's training records")
        return build_vcr_dataset(self.train_files if training else self.eval_files, self.model_config(),
                                 self.run_param("train_batch_size" if training else "eval_batch_size"),
                                 max_text_length=self.run_param("max_text_length"), training=training,
                                 num_rows=TRAIN_ROWS if training else self.eval_rows, seed=seed,
                                 input_context=input_context)

    def batch_size(self, batch):
        _, targets = batch
        return tf.shape(targets[VCR_ANSWER_LABEL])[0]

    def initialize(self, model, init: Optional[str] = None, init_path: Optional[str] = None, log=print) -> None:
        """``scratch``: only the region-feature statistics of the training records (with
        ``region_feature_standardization``); otherwise the standard initialisation of a standard-size model,
        then :func:`grow_backbone_for_vcr` into ``model`` (a second-stage VCR checkpoint is copied as it is),
        statistics included."""
        init = init or self.params["init"]
        if init == "scratch":
            self.initialize_feature_standardization(model.backbone, log=log)
            return
        standard = DownstreamTask.model_config(self)
        if init == "pretrained":
            from uniter_tf import runs  # pylint: disable=import-outside-toplevel

            stored = runs.read_model_config(init_path if init_path is not None else self.params["init_path"])
            if stored is not None and stored.type_vocab_size == len(VCR_TYPE_ROWS):
                standard = self.model_config()  # a second-stage run (vcr_pretraining): already VCR-sized
        source = DownstreamTask.build_model(self, standard)
        DownstreamTask.initialize(self, source, init, init_path, log=log)
        grow_backbone_for_vcr(source.backbone, model.backbone, seed=0)
        if source.backbone.config.type_vocab_size == len(VCR_TYPE_ROWS):
            log("the source is already VCR-sized (a second-stage run): copied as it is")
        else:
            log("grew the word table by 81 reference rows and the type table to 4 rows (init_word_embedding / "
                "init_type_embedding)")

    def evaluate(self, model, files=None, max_batches=None, *, seed: int = 43, output_dir=None, step=None):
        """``acc_qa``, ``acc_qar``, ``acc`` and the per-format losses (means over questions) on ``files``.

        With ``output_dir`` and ``step`` also ``results_{split}/results_{step}_all.json`` and, with 20 rows,
        the leaderboard CSV (:func:`write_leaderboard_files`). Questions without labels (test) are scored
        but left out of the accuracies.
        """
        del seed
        files = files or self.eval_files
        dataset = build_vcr_dataset(files, self.model_config(), self.run_param("eval_batch_size"),
                                    max_text_length=self.run_param("max_text_length"), training=False,
                                    num_rows=self.eval_rows)
        forward = getattr(model, "_uniter_vcr_eval_step", None)
        if forward is None:
            forward = tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True)
            object.__setattr__(model, "_uniter_vcr_eval_step", forward)
        results, totals, labelled, questions = {}, {}, 0, 0
        for batch_index, (inputs, labels) in enumerate(dataset):
            if max_batches is not None and batch_index >= max_batches:
                break
            ids = [value.decode("utf-8") for value in inputs[EXAMPLE_ID_KEY].numpy()]
            logits = forward({key: value for key, value in inputs.items() if key != EXAMPLE_ID_KEY})
            scores = question_scores(logits, len(ids)).numpy()
            results.update(zip(ids, scores.tolist()))
            questions += len(ids)
            answer, rationale = labels[VCR_ANSWER_LABEL].numpy(), labels[VCR_RATIONALE_LABEL].numpy()
            known = (answer >= 0) & (rationale >= 0)
            if known.any():
                labelled += int(known.sum())
                for name, values in vcr_accuracies(scores[known], answer[known], rationale[known]).items():
                    totals[name] = totals.get(name, 0.0) + float(values.sum())
        if questions == 0:
            raise ValueError(f"the eval files {files} hold no VCR question")
        result = {"num_examples": float(questions), "num_labelled": float(labelled)}
        if labelled:
            result.update({name: total / labelled for name, total in totals.items()})
            result["loss"] = (result["loss_qa"] + result["loss_qar"]) / 2
        if output_dir is not None and step is not None:
            split = "test" if labelled == 0 else "val"
            write_leaderboard_files(results, os.path.join(output_dir, f"results_{split}"), step)
        return result

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "VcrTask":
        arguments = dict(config)
        unknown = sorted(set(arguments) - {"eval_rows", "head_learning_rate_multiplier"})
        if unknown:
            raise ValueError(f"task 'vcr' has no argument(s) {unknown}; it takes eval_rows, "
                             "head_learning_rate_multiplier")
        return cls(**arguments)

    def get_config(self) -> Dict[str, object]:
        return {"eval_rows": self.eval_rows, "head_learning_rate_multiplier": self.head_learning_rate_multiplier}


# The second-stage pretraining task registers itself here: importing this module (the registry's task
# modules list it) makes "vcr_pretraining" available to get_task as well.
from uniter_tf.tasks import vcr_pretraining as _vcr_pretraining  # noqa: E402,F401  pylint: disable=wrong-import-position
