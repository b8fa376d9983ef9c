"""Signatures of a multiple-choice task over text segments (a ``multiple_choice`` declaration: VCR).

A task declares it with an export declaration that has ``multiple_choice = True`` (VCR's
``MultipleChoiceOutputs``); nothing here names a task. The segments are separate string inputs,
tokenized in-graph; object references written ``[i]`` become the reference word ids
(:func:`uniter_tf.tokenization.tokenize_with_references`) and must name one of the example's regions.
Each (question, choice) row is packed ``[CLS] q [SEP] a [SEP] (r [SEP])`` with the declaration's token
types, scored by backbone + head, and the score of a row is the head's class-1 logit (as the task ranks
choices in evaluation):

* ``serving_default`` (Q→A then QA→R): ``question [B]``, ``answers [B, C]``, ``rationales [B, C]``,
  ``region_features [B, N, D]``, ``region_boxes [B, N, 4]`` (pixels), ``image_size [B, 2]``,
  ``num_regions [B]`` → ``answer_scores [B, C]``, ``chosen_answer [B]``, ``rationale_scores [B, C]``
  (rows built with the chosen answer), ``chosen_rationale [B]``;
* ``answer_question`` (Q→A): the same without ``rationales`` → ``answer_scores``, ``chosen_answer``;
* ``score_rationales`` (QA→R with a given answer, as the official QA→R evaluation):
  ``question [B]``, ``answer [B]``, ``rationales [B, C]`` + the regions → ``rationale_scores``,
  ``chosen_rationale``;
* ``tokenize``: ``text [B]`` → ids (references mapped), mask and vocabulary entries.

Segments are cut longest-first so that a row has at most ``max_text_length - 2`` segment tokens (the
task's evaluation rule, :func:`uniter_tf.tokenization.trim_segments`). A request with another number of
choices than ``C`` is refused by the server's input check (the signature fixes dimension 1 of
``answers`` / ``rationales`` and the message names the input); an empty choice, a reference to a region
the example does not have, zero regions or too many regions fail in-graph assertions naming the input
(INVALID_ARGUMENT). There are no ITM outputs (an ITM score of a multi-segment row means nothing).
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from uniter_tf.export.signatures import SERVING_DEFAULT, TOKENIZE, ServingGraph, _bucket_width, _fit_axis1

ANSWER_QUESTION = "answer_question"
SCORE_RATIONALES = "score_rationales"


def is_multiple_choice(task) -> bool:
    """Whether a :class:`~uniter_tf.export.task_heads.TaskHeadExport` declares a multiple-choice task."""
    return task is not None and bool(getattr(task.outputs, "multiple_choice", False))


class ChoiceServingGraph(ServingGraph):
    """The serving graph of a multiple-choice task (module docstring); arguments as :class:`ServingGraph`.

    Raises:
        ValueError: the task hook does not declare ``multiple_choice``, or the text limit cannot hold
            three segments.
    """

    def __init__(self, backbone, itm_head, preprocessor, options, task=None, label_table=None, vocab_table=None):
        if not is_multiple_choice(task):
            raise ValueError("ChoiceServingGraph needs a task hook whose declaration has multiple_choice=True")
        super().__init__(backbone, itm_head, preprocessor, options, task=task, label_table=label_table,
                         vocab_table=vocab_table)
        declared = task.outputs
        self.num_choices = int(declared.num_choices)
        self.question_type, self.answer_type, self.rationale_type = (int(value) for value in declared.segment_types)
        self.num_reference_ids = int(declared.num_reference_ids)
        # The limit counts [CLS]/[SEP] of a one-text row, so the segment budget is the task's max_text_length
        # (as its evaluation trims); a model with fewer positions than [CLS] q [SEP] a [SEP] r [SEP] needs
        # cuts the segments to what it can read.
        positions = int(backbone.config.max_position_embeddings)
        self.segment_budget = min(int(options.max_text_length) - 2, positions - 4)
        if self.segment_budget < 3:
            raise ValueError(f"task {task.name!r}: max_text_length {options.max_text_length} cannot hold 3 segments")
        self.longest_row = self.segment_budget + 4
        vocab = self.tokenizer.vocab_size
        if vocab + self.num_reference_ids > int(backbone.config.vocab_size):
            raise ValueError(f"task {task.name!r}: the model's word table ({backbone.config.vocab_size}) has no "
                             f"room for {self.num_reference_ids} reference ids after the {vocab}-entry vocabulary")
        self.row_buckets = tuple(sorted(set(int(width) for width in options.text_buckets
                                            if width < self.longest_row) | {self.longest_row}))

    # --------------------------------------------------------------------------------- rows

    def _segments(self, texts, field: str):
        """``[R]`` strings -> ragged ids (references mapped) with the check that no choice is empty."""
        from uniter_tf.tokenization import tokenize_with_references

        ids = tokenize_with_references(self.tokenizer, texts, self.num_reference_ids)
        check = tf.debugging.assert_greater_equal(
                tf.reduce_min(tf.concat([ids.row_lengths(), [1]], axis=0)), tf.constant(1, tf.int64),
                message=f"{field}: a text has no tokens (every question and choice needs at least one word)")
        with tf.control_dependencies([check]):
            return tf.identity(ids)

    def _reference_checks(self, segments, row_regions, fields):
        """Every ``[i]`` must name one of the row's regions (region ``i`` exists)."""
        vocab = self.tokenizer.vocab_size
        checks = []
        for segment, field in zip(segments, fields):
            index = tf.ragged.map_flat_values(lambda ids: tf.where(ids >= vocab, ids - vocab, -1), segment)
            highest = tf.reduce_max(index, axis=1)  # [R]; a row without a reference is below every count
            checks.append(tf.debugging.assert_less(
                    highest, row_regions,
                    message=f"{field}: an object reference [i] names a region the example does not have "
                            f"(i >= num_regions)"))
        return checks

    def _score_rows(self, segments, types: Sequence[int], fields, region_features, positions, region_mask):
        """Class-1 logits ``[R]`` of rows made of ``segments`` (ragged ``[R, None]`` each)."""
        from uniter_tf.tokenization import pack_segments

        row_regions = tf.reduce_sum(region_mask, axis=1)
        checks = self._reference_checks(segments, row_regions, fields)
        with tf.control_dependencies(checks):
            token_ids, type_ids = pack_segments(segments, types, self.tokenizer.cls_id, self.tokenizer.sep_id,
                                                self.segment_budget)
        text_mask = tf.ones_like(token_ids).to_tensor(0)
        token_ids, type_ids = token_ids.to_tensor(self.tokenizer.pad_id), type_ids.to_tensor(0)
        longest_text = tf.maximum(tf.shape(token_ids)[1], 1)
        most_regions = tf.reduce_max(tf.concat([row_regions, [1]], axis=0))
        text_width = _bucket_width(longest_text, tf.constant(self.row_buckets, tf.int32))
        region_width = _bucket_width(most_regions, tf.constant(self.options.region_buckets, tf.int32))
        inputs = {"token_ids": _fit_axis1(token_ids, longest_text, text_width),
                  "token_type_ids": _fit_axis1(type_ids, longest_text, text_width),
                  "text_mask": _fit_axis1(text_mask, longest_text, text_width),
                  "region_features": _fit_axis1(region_features, most_regions, region_width),
                  "region_positions": _fit_axis1(positions, most_regions, region_width),
                  "region_mask": _fit_axis1(region_mask, most_regions, region_width)}
        inputs["region_features"] = tf.ensure_shape(inputs["region_features"], [None, None, self.feature_dim])
        inputs["region_positions"] = tf.ensure_shape(inputs["region_positions"], [None, None, 7])
        encoded = self.backbone(inputs, training=False)
        head_inputs = dict(encoded)
        head_inputs.setdefault("region_mask", inputs["region_mask"])
        logits = tf.cast(self.task.head(head_inputs, training=False), tf.float32)
        return logits[:, 1]

    def _regions(self, question, region_features, region_boxes, image_size, num_regions, choice_inputs):
        """Checks the region inputs and the batch sizes; returns ``(features, positions, mask)`` per example."""
        batch = tf.shape(question)[0]
        checks = [tf.debugging.assert_equal(tf.shape(region_features)[0], batch,
                                            message="region_features: needs one example per question"),
                  tf.debugging.assert_equal(tf.shape(image_size)[0], batch,
                                            message="image_size: needs one [height, width] row per question"),
                  tf.debugging.assert_greater_equal(
                          tf.reduce_min(tf.concat([num_regions, [1]], axis=0)), 1,
                          message="num_regions: an example has zero regions")]
        for name, value in choice_inputs:
            checks.append(tf.debugging.assert_equal(tf.shape(value)[0], batch,
                                                    message=f"{name}: needs one row of choices per question"))
        region_mask = self._check_region_inputs(region_features, num_regions, checks)
        positions = self.boxes_to_positions(region_boxes, image_size)
        return tf.cast(region_features, tf.float32), positions, region_mask

    def _repeat(self, tensors, times):
        return [tf.repeat(tensor, times, axis=0) for tensor in tensors]

    def _answer_scores(self, question, answers, regions):
        count = self.num_choices
        question_ids = self._segments(tf.repeat(question, count), "question")
        answer_ids = self._segments(tf.reshape(answers, [-1]), "answers")
        scores = self._score_rows([question_ids, answer_ids], (self.question_type, self.answer_type),
                                  ("question", "answers"), *self._repeat(regions, count))
        return tf.reshape(scores, [-1, count])

    def _rationale_scores(self, question, answer, rationales, regions, answer_field="answer"):
        count = self.num_choices
        question_ids = self._segments(tf.repeat(question, count), "question")
        answer_ids = self._segments(tf.repeat(answer, count), answer_field)
        rationale_ids = self._segments(tf.reshape(rationales, [-1]), "rationales")
        scores = self._score_rows([question_ids, answer_ids, rationale_ids],
                                  (self.question_type, self.answer_type, self.rationale_type),
                                  ("question", answer_field, "rationales"), *self._repeat(regions, count))
        return tf.reshape(scores, [-1, count])

    # ------------------------------------------------------------------------------ signatures

    def serving_default(self, question, answers, rationales, region_features, region_boxes, image_size, num_regions):
        """Q→A, then QA→R with the chosen answer."""
        regions = self._regions(question, region_features, region_boxes, image_size, num_regions,
                                [("answers", answers), ("rationales", rationales)])
        answer_scores = self._answer_scores(question, answers, regions)
        chosen_answer = tf.argmax(answer_scores, axis=1, output_type=tf.int32)
        answer = tf.gather(answers, chosen_answer, axis=1, batch_dims=1)
        rationale_scores = self._rationale_scores(question, answer, rationales, regions, answer_field="answers")
        return {"answer_scores": answer_scores, "chosen_answer": chosen_answer,
                "rationale_scores": rationale_scores,
                "chosen_rationale": tf.argmax(rationale_scores, axis=1, output_type=tf.int32)}

    def answer_question(self, question, answers, region_features, region_boxes, image_size, num_regions):
        """Q→A only."""
        regions = self._regions(question, region_features, region_boxes, image_size, num_regions,
                                [("answers", answers)])
        answer_scores = self._answer_scores(question, answers, regions)
        return {"answer_scores": answer_scores,
                "chosen_answer": tf.argmax(answer_scores, axis=1, output_type=tf.int32)}

    def score_rationales(self, question, answer, rationales, region_features, region_boxes, image_size, num_regions):
        """QA→R with the given answer."""
        regions = self._regions(question, region_features, region_boxes, image_size, num_regions,
                                [("answer", answer), ("rationales", rationales)])
        rationale_scores = self._rationale_scores(question, answer, rationales, regions)
        return {"rationale_scores": rationale_scores,
                "chosen_rationale": tf.argmax(rationale_scores, axis=1, output_type=tf.int32)}

    def tokenize(self, text):
        """Ids with references mapped, as one ``[CLS] text [SEP]`` row (type of a question)."""
        from uniter_tf.tokenization import pack_segments

        # One segment: a plain cut (tensorflow-text's trimmer fails to trace a single segment of unknown shape).
        ids = self._segments(tf.reshape(text, [-1]), "text")[:, :self.segment_budget]
        token_ids, _ = pack_segments([ids], (self.question_type,), self.tokenizer.cls_id, self.tokenizer.sep_id)
        text_mask = tf.ones_like(token_ids).to_tensor(0)
        token_ids = token_ids.to_tensor(self.tokenizer.pad_id)
        vocab = self.tokenizer.vocab_size
        words = self.vocab_table.lookup(tf.cast(tf.minimum(token_ids, vocab - 1), tf.int64))
        references = tf.strings.join(["[", tf.strings.as_string(token_ids - vocab), "]"])
        tokens = tf.where(token_ids >= vocab, references, words)
        tokens = tf.where(text_mask > 0, tokens, tf.constant("", tf.string))
        return {"token_ids": token_ids, "text_mask": text_mask, "tokens": tokens}

    def input_signatures(self) -> Dict[str, Sequence[tf.TensorSpec]]:
        """The specs of the multiple-choice signatures (module docstring)."""
        count = self.num_choices
        question = tf.TensorSpec([None], tf.string, name="question")
        answers = tf.TensorSpec([None, count], tf.string, name="answers")
        rationales = tf.TensorSpec([None, count], tf.string, name="rationales")
        regions = [tf.TensorSpec([None, None, self.feature_dim], tf.float32, name="region_features"),
                   tf.TensorSpec([None, None, 4], tf.float32, name="region_boxes"),
                   tf.TensorSpec([None, 2], tf.float32, name="image_size"),
                   tf.TensorSpec([None], tf.int32, name="num_regions")]
        return {SERVING_DEFAULT: [question, answers, rationales, *regions],
                ANSWER_QUESTION: [question, answers, *regions],
                SCORE_RATIONALES: [question, tf.TensorSpec([None], tf.string, name="answer"), rationales, *regions],
                TOKENIZE: [tf.TensorSpec([None], tf.string, name="text")]}

    def functions(self):
        """Signature name -> function (the one-text signatures are not offered: their rows would lack types)."""
        return {SERVING_DEFAULT: self.serving_default, ANSWER_QUESTION: self.answer_question,
                SCORE_RATIONALES: self.score_rationales, TOKENIZE: self.tokenize}


def choice_example_inputs(feature_dim: int, num_choices: int = 4, batch_size: int = 1, num_regions: int = 3,
                          seed: int = 0) -> Dict[str, Dict[str, np.ndarray]]:
    """Small valid inputs for every multiple-choice signature (warm-up requests, smoke tests)."""
    from uniter_tf.export.exporter import example_inputs

    base = example_inputs(feature_dim, batch_size, num_regions, seed=seed)[SERVING_DEFAULT]
    regions = {key: base[key] for key in ("region_features", "region_boxes", "image_size", "num_regions")}

    def strings(texts):
        return np.array([[text.encode("utf-8") for text in texts]] * batch_size, dtype=object)

    question = np.array([b"Why is [0] next to [1] ?"] * batch_size, dtype=object)
    answers = strings([f"because of the colour number {index}" for index in range(num_choices)])
    rationales = strings([f"[{index % num_regions}] is the one" for index in range(num_choices)])
    return {SERVING_DEFAULT: {"question": question, "answers": answers, "rationales": rationales, **regions},
            ANSWER_QUESTION: {"question": question, "answers": answers, **regions},
            SCORE_RATIONALES: {"question": question, "answer": answers[:, 0], "rationales": rationales, **regions},
            TOKENIZE: {"text": question}}
