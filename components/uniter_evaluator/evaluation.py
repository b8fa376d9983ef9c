"""Evaluation of one model on canonical records: ITM accuracy, retrieval recall@K, VQA score.

The model is reached through a *scorer*: a callable that takes a list of serialized canonical records
(``tf.train.Example`` bytes, names from :mod:`uniter_tf.data.schema`) and returns a dict of numpy arrays
with ``itm_logits [B, 2]`` and, for a VQA-fine-tuned model, ``task_logits [B, #answers]`` (the
names of the export's ``serve_examples`` signature). Building the
ITM negatives and the retrieval pairs by re-combining records (the text of one record with the image of
another) keeps this module independent of how the model batches its inputs.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from components.uniter_evaluator import metrics as metrics_lib

_LOG = logging.getLogger(__name__)

ITM_LOGITS = "itm_logits"
#: The export's task-head output (uniter_tf.export); for a VQA-fine-tuned model, the answer logits.
VQA_LOGITS = "task_logits"

Scorer = Callable[[Sequence[bytes]], Mapping[str, np.ndarray]]

#: VQA v2 question types (the annotations' ``question_type``: a question's opening words) that the
#: question-only baseline groups by. The canonical record keeps the question text but not this field, so
#: the type is re-derived: the longest of these prefixes the question starts with, else its first two words.
QUESTION_TYPE_PREFIXES = (
        "what color is the", "what color are the", "what color", "what shape is the", "what shape",
        "what is the", "what is", "what are the", "what kind of", "what type of", "how many people are",
        "how many", "is the", "is there a", "is this a", "is this", "is there", "is it", "are there", "are the",
        "are these", "does the", "do you", "can you", "where is the", "where are the", "which", "who is",
        "why", "none of the above")


class EvalRecords:
    """The eval split, split into caption records (ITM, retrieval) and question records (VQA).

    Args:
        serialized_records: the split's serialized canonical records.

    Raises:
        ValueError: a record is malformed (named by its id) or the split is empty.
    """

    def __init__(self, serialized_records: Sequence[bytes]):
        import tensorflow as tf

        from uniter_tf.data import schema

        self.captions: List[tf.train.Example] = []
        self.questions: List[tf.train.Example] = []
        self.image_records: Dict[bytes, tf.train.Example] = {}
        for index, serialized in enumerate(serialized_records):
            try:
                example = tf.train.Example.FromString(serialized)
                decoded = schema.decode_example(example)
            except Exception as error:  # the decoder names the field; add the position in the split
                raise ValueError(f"eval record #{index} cannot be decoded: {error}") from error
            if schema.TOKEN_IDS not in decoded or not len(decoded[schema.TOKEN_IDS]):
                continue  # a per-image record without text
            self.image_records.setdefault(decoded[schema.IMAGE_ID], example)
            if len(decoded.get(schema.ANSWER_LABELS, ())):
                self.questions.append(example)
            else:
                self.captions.append(example)
        if not self.captions and not self.questions:
            raise ValueError("the eval split holds no text records")


def question_type(question: str) -> str:
    """The VQA question type of ``question`` (see :data:`QUESTION_TYPE_PREFIXES`).

    >>> question_type("What color is the circle?"), question_type("How many squares are there?")
    ('what color is the', 'how many')
    """
    words = "".join(character if character.isalnum() or character.isspace() else " "
                    for character in question.lower()).split()
    text = " ".join(words)
    for prefix in sorted(QUESTION_TYPE_PREFIXES, key=len, reverse=True):
        if text == prefix or text.startswith(prefix + " "):
            return prefix
    return " ".join(words[:2])


def _question_fields(example) -> tuple:
    """``(question text, answer labels, soft scores)`` of a question record (a ``tf.train.Example``)."""
    from uniter_tf.data import schema

    feature_map = example.features.feature
    text = feature_map[schema.TEXT].bytes_list.value[0].decode("utf-8") if schema.TEXT in feature_map else ""
    labels = np.asarray(feature_map[schema.ANSWER_LABELS].int64_list.value, np.int64)
    scores = np.asarray(feature_map[schema.ANSWER_SCORES].float_list.value, np.float32)
    return text, labels, scores


def question_prior_answers(train_questions: Sequence) -> Dict[str, int]:
    """The question-only baseline: per question type, the answer label with the most soft credit in training.

    Args:
        train_questions: the training split's question records (``tf.train.Example``).

    Returns:
        ``{question type: answer label}``, plus the key ``""``: the best answer over all types (used for
        types that training never saw).

    Raises:
        ValueError: ``train_questions`` is empty.
    """
    if not train_questions:
        raise ValueError("the question-only baseline needs training questions; the train split holds none")
    credit: Dict[str, Dict[int, float]] = {}
    for example in train_questions:
        text, labels, scores = _question_fields(example)
        for key in (question_type(text), ""):
            per_answer = credit.setdefault(key, {})
            for label, score in zip(labels.tolist(), scores.tolist()):
                per_answer[label] = per_answer.get(label, 0.0) + score
    # Ties go to the smaller label, so the baseline is deterministic.
    return {key: min(per_answer, key=lambda label: (-per_answer[label], label))
            for key, per_answer in credit.items() if per_answer}


def soft_score(example, answer: int) -> float:
    """The VQA credit of answer label ``answer`` for a question record (its soft score, 0 if not a label)."""
    _, labels, scores = _question_fields(example)
    return float(np.sum(scores[labels == answer]))


def question_prior_score(prior_answers: Mapping[str, int], questions: Sequence) -> float:
    """VQA score of answering each question with its type's training prior (:func:`question_prior_answers`)."""
    if not questions:
        raise ValueError("no questions to score the question-only baseline on")
    fallback = prior_answers.get("")
    total = 0.0
    for example in questions:
        answer = prior_answers.get(question_type(_question_fields(example)[0]), fallback)
        total += soft_score(example, answer) if answer is not None else 0.0
    return total / len(questions)


def with_image(text_example, image_example):
    """The text of ``text_example`` on the image of ``image_example`` (the image id changes too)."""
    from uniter_tf.data import schema

    combined = type(text_example)()
    combined.CopyFrom(text_example)
    del combined.features.feature[schema.IMAGE_ID]
    return schema.merge_image_features(combined, image_example)


def _score_in_batches(scorer: Scorer, examples: Sequence, output_key: str, batch_size: int) -> np.ndarray:
    outputs = []
    for start in range(0, len(examples), batch_size):
        batch = [example.SerializeToString() for example in examples[start:start + batch_size]]
        result = scorer(batch)
        if output_key not in result:
            raise KeyError(f"the model's scoring signature has no output {output_key!r} (it has {sorted(result)})")
        outputs.append(np.asarray(result[output_key]))
    return np.concatenate(outputs, axis=0)


def image_id(example) -> bytes:
    """The image id of a canonical record (a ``tf.train.Example``)."""
    from uniter_tf.data import schema

    return example.features.feature[schema.IMAGE_ID].bytes_list.value[0]


def evaluate(scorer: Scorer, records: EvalRecords, batch_size: int = 32, max_gallery_texts: int = 1000,
             has_vqa_head: Optional[bool] = None, train_questions: Optional[Sequence] = None) -> Dict[str, float]:
    """Computes every metric the model supports on ``records``.

    Args:
        scorer: see the module docstring.
        records: the eval split.
        batch_size: records per scorer call.
        max_gallery_texts: the first this-many captions form the retrieval queries; their images the
            gallery.
        has_vqa_head: whether to compute the VQA score; None: when the scorer returns ``task_logits``.
        train_questions: the training split's question records; with them (and a VQA score) the
            question-only baseline is computed on the same split: ``vqa_baseline_score`` (each eval question
            answered with its type's most credited training answer) and ``vqa_score_over_baseline``.

    Returns:
        ``itm_accuracy``, ``img_r1/5/10``, ``txt_r1/5/10``, ``img_r_mean``, ``txt_r_mean``, ``r_mean``
        (when the split has captions of at least 2 images), ``vqa_score`` (when the split has questions
        and the model a VQA head), the baseline figures above, and the counts ``num_captions``, ``num_gallery_images``,
        ``num_questions``.
    """
    metrics: Dict[str, float] = {"num_captions": float(len(records.captions)),
                                 "num_questions": float(len(records.questions))}
    image_ids = sorted({image_id(example) for example in records.captions})
    if len(image_ids) >= 2:
        # ITM: every caption with its own image (label 1) and with the next image in id order (label 0).
        next_image = {image_id: image_ids[(position + 1) % len(image_ids)]
                      for position, image_id in enumerate(image_ids)}
        negatives = [with_image(example, records.image_records[next_image[image_id(example)]])
                     for example in records.captions]
        positive_logits = _score_in_batches(scorer, records.captions, ITM_LOGITS, batch_size)
        negative_logits = _score_in_batches(scorer, negatives, ITM_LOGITS, batch_size)
        metrics["itm_accuracy"] = metrics_lib.itm_accuracy(positive_logits, negative_logits)

        # Retrieval: every query caption against every gallery image; the score is the match logit.
        queries = records.captions[:max_gallery_texts]
        gallery = sorted({image_id(example) for example in queries})
        if len(gallery) >= 2:
            column = {image_id: position for position, image_id in enumerate(gallery)}
            pairs = [with_image(query, records.image_records[image_id]) for query in queries for image_id in gallery]
            pair_logits = _score_in_batches(scorer, pairs, ITM_LOGITS, batch_size)
            score_matrix = pair_logits[:, 1].reshape(len(queries), len(gallery))
            metrics.update(metrics_lib.retrieval_recalls(
                    score_matrix, [column[image_id(query)] for query in queries]))
            metrics["num_gallery_images"] = float(len(gallery))
    else:
        _LOG.warning("ITM and retrieval skipped: the eval split has captions of %d image(s), 2 are needed",
                     len(image_ids))

    if records.questions:
        if has_vqa_head is None:
            has_vqa_head = VQA_LOGITS in scorer([records.questions[0].SerializeToString()])
        if has_vqa_head:
            logits = _score_in_batches(scorer, records.questions, VQA_LOGITS, batch_size)
            predicted = np.argmax(logits, axis=-1)
            metrics["vqa_score"] = float(np.mean([soft_score(example, int(answer))
                                                  for example, answer in zip(records.questions, predicted)]))
            if train_questions:
                baseline = question_prior_score(question_prior_answers(train_questions), records.questions)
                metrics["vqa_baseline_score"] = baseline
                metrics["vqa_score_over_baseline"] = metrics["vqa_score"] - baseline
    return metrics
