"""The evaluation routine: ITM accuracy, retrieval recall@K and the VQA score of one model on an eval split.

The model is reached through a *scorer*: a callable that takes a list of serialized canonical records
(``tf.train.Example`` bytes, names from :mod:`uniter_tf.data.schema`) and returns a dict of numpy arrays
with ``itm_logits [B, 2]`` and, for a VQA-fine-tuned model, ``task_logits [B, #answers]`` (the outputs
of the export's ``serve_examples`` signature; :mod:`uniter_tf.evaluation.scorers` builds one from a
SavedModel or from in-memory Keras layers). ITM negatives and retrieval pairs re-combine records (the
text of one record with the image of another), so this module does not depend on how the model batches.

Memory: retrieval scores every query caption against every gallery image, ``T × I`` pairs (200,000 for
1,000 captions × 200 images). The pairs are generated batch by batch (:func:`iter_pair_batches`) and
only their match logit is kept, in a ``[T, I]`` float32 matrix; a pair's record is never held beyond its
batch. Peak memory is therefore the records' text parts + one copy of each gallery image + one batch +
the score matrix (bench/retrieval_memory.py, docs/performance.md).
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from uniter_tf.evaluation import baseline as baseline_lib
from uniter_tf.evaluation import metrics as metrics_lib
from uniter_tf.evaluation.records import EvalRecords, question_fields

_LOG = logging.getLogger(__name__)

ITM_LOGITS = "itm_logits"
#: The export's task-head output; for a VQA-fine-tuned model, the answer logits.
VQA_LOGITS = "task_logits"

Scorer = Callable[[Sequence[bytes]], Mapping[str, np.ndarray]]


def _checked_output(result: Mapping[str, np.ndarray], output_key: str, expected_rows: int) -> np.ndarray:
    if output_key not in result:
        raise KeyError(f"the model's scoring signature has no output {output_key!r} (it has {sorted(result)})")
    values = np.asarray(result[output_key])
    if values.shape[0] != expected_rows:
        raise ValueError(f"the scorer returned {values.shape[0]} rows of {output_key!r} for {expected_rows} records")
    return values


def iter_pair_batches(records: EvalRecords, pairs: Iterator[Tuple[object, bytes]],
                      batch_size: int) -> Iterator[List[bytes]]:
    """Groups ``(text part, image id)`` pairs into lists of at most ``batch_size`` serialized records.

    Only one batch of serialized records exists at a time.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: List[bytes] = []
    for text_part, target_image in pairs:
        batch.append(records.serialized_pair(text_part, target_image))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_pairs(scorer: Scorer, records: EvalRecords, pairs: Iterator[Tuple[object, bytes]], num_pairs: int,
                output_key: str, batch_size: int, column: Optional[int] = None) -> np.ndarray:
    """Scores ``num_pairs`` streamed pairs; returns ``[num_pairs, C]`` outputs (or column ``column``: ``[num_pairs]``).

    Keeping one column (the ITM match logit) is what bounds retrieval's memory to the score matrix.
    """
    outputs: Optional[np.ndarray] = None
    row = 0
    for batch in iter_pair_batches(records, pairs, batch_size):
        values = _checked_output(scorer(batch), output_key, len(batch))
        if column is not None:
            values = values[:, column]
        if outputs is None:
            outputs = np.empty((num_pairs,) + values.shape[1:], np.float32)
        if row + len(batch) > num_pairs:
            raise ValueError(f"more than the announced {num_pairs} pairs were generated")
        outputs[row:row + len(batch)] = values
        row += len(batch)
    if row != num_pairs:
        raise ValueError(f"{row} pairs were generated, {num_pairs} announced")
    return outputs if outputs is not None else np.empty((0,), np.float32)


def retrieval_score_matrix(scorer: Scorer, records: EvalRecords, queries: Sequence, gallery: Sequence[bytes],
                           batch_size: int) -> np.ndarray:
    """The ``[len(queries), len(gallery)]`` match logits (ITM class 1) of every query × gallery image, streamed."""
    pairs = ((query, target) for query in queries for target in gallery)
    flat = score_pairs(scorer, records, pairs, len(queries) * len(gallery), ITM_LOGITS, batch_size, column=1)
    return flat.reshape(len(queries), len(gallery))


def evaluate(scorer: Scorer, records: EvalRecords, batch_size: int = 32, max_gallery_texts: int = 1000,
             has_vqa_head: Optional[bool] = None, train_questions: Optional[Sequence] = None) -> Dict[str, float]:
    """Computes every metric the model supports on ``records``.

    Every annotated VQA question is scored and counts in the VQA mean, including questions whose human
    answers are all outside the answer vocabulary (their target is all zeros, so they score 0; official
    ``train_vqa.py`` validation). No question is dropped for its length: the scorer truncates long texts
    (the export's ``serve_examples`` packs at most its ``max_text_length`` tokens; the Keras scorer of
    :func:`uniter_tf.evaluation.scorers.keras_scorer` truncates the same way).

    Args:
        scorer: see the module docstring.
        records: the eval split.
        batch_size: records per scorer call (also the bound on serialized pairs held at once).
        max_gallery_texts: the first this-many captions form the retrieval queries; their images the
            gallery.
        has_vqa_head: whether to compute the VQA score; None: when the scorer returns ``task_logits``.
        train_questions: the training split's question records; with them (and a VQA score) the
            question-only baseline is computed on the same split: ``vqa_baseline_score`` (each eval question
            answered with its type's most credited training answer) and ``vqa_score_over_baseline``.

    Returns:
        ``itm_accuracy``, ``img_r1/5/10``, ``txt_r1/5/10``, ``img_r_mean``, ``txt_r_mean``, ``r_mean``
        (when the split has captions of at least 2 images), ``vqa_score`` (when the split has questions
        and the model a VQA head), the baseline figures above, and the counts ``num_captions``,
        ``num_gallery_images``, ``num_questions`` (the VQA denominator),
        ``num_questions_without_vocabulary_answer`` (those scoring 0 by construction) and
        ``num_unannotated_questions``.
    """
    metrics: Dict[str, float] = {
            "num_captions": float(len(records.captions)),
            "num_questions": float(len(records.questions)),
            "num_questions_without_vocabulary_answer": float(sum(
                    1 for question in records.questions if not len(question_fields(question)[1]))),
            "num_unannotated_questions": float(records.num_unannotated_questions),
    }
    caption_images = records.caption_image_ids
    image_ids = sorted(set(caption_images))
    if len(image_ids) >= 2:
        # ITM: every caption with its own image (label 1) and with the next image in id order (label 0).
        next_image = {key: image_ids[(position + 1) % len(image_ids)] for position, key in enumerate(image_ids)}
        num_captions = len(records.captions)
        positive_logits = score_pairs(scorer, records, zip(records.captions, caption_images), num_captions,
                                      ITM_LOGITS, batch_size)
        negative_logits = score_pairs(scorer, records,
                                      ((caption, next_image[key]) for caption, key in
                                       zip(records.captions, caption_images)),
                                      num_captions, ITM_LOGITS, batch_size)
        metrics["itm_accuracy"] = metrics_lib.itm_accuracy(positive_logits, negative_logits)

        # Retrieval: every query caption against every gallery image; the score is the match logit.
        queries = records.captions[:max_gallery_texts]
        query_images = caption_images[:max_gallery_texts]
        gallery = sorted(set(query_images))
        if len(gallery) >= 2:
            column = {key: position for position, key in enumerate(gallery)}
            score_matrix = retrieval_score_matrix(scorer, records, queries, gallery, batch_size)
            metrics.update(metrics_lib.retrieval_recalls(score_matrix, [column[key] for key in query_images]))
            metrics["num_gallery_images"] = float(len(gallery))
    else:
        _LOG.warning("ITM and retrieval skipped: the eval split has captions of %d image(s), 2 are needed",
                     len(image_ids))

    if records.questions:
        questions = records.questions
        if has_vqa_head is None:
            probe = scorer([records.serialized_pair(questions[0], records.question_image_ids[0])])
            has_vqa_head = VQA_LOGITS in probe
        if has_vqa_head:
            logits = score_pairs(scorer, records, zip(questions, records.question_image_ids),
                                 len(questions), VQA_LOGITS, batch_size)
            predicted = np.argmax(logits, axis=-1)
            total = 0.0
            for question, answer in zip(questions, predicted):
                _, labels, scores = question_fields(question)
                total += metrics_lib.vqa_soft_score(labels, scores, int(answer))
            metrics["vqa_score"] = total / len(questions)
            if train_questions:
                baseline = baseline_lib.question_prior_score(baseline_lib.question_prior_answers(train_questions),
                                                             questions)
                metrics["vqa_baseline_score"] = baseline
                metrics["vqa_score_over_baseline"] = metrics["vqa_score"] - baseline
    return metrics
