"""UNITER evaluation as a library: metrics, the eval split, scorers and the evaluation routine.

Used by the TFX evaluation gate (``components/uniter_evaluator``, a thin executor), by
``uniter evaluate --run DIR --files ...`` and by a trainer's periodic evaluation
(:func:`evaluate_keras_model`). Nothing here imports TFX; TensorFlow is imported where records are
parsed or a model is loaded. See docs/evaluation.md.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from uniter_tf.evaluation.baseline import (QUESTION_TYPE_PREFIXES, question_prior_answers, question_prior_score,
                                           question_type)
from uniter_tf.evaluation.evaluator import ITM_LOGITS, VQA_LOGITS, Scorer, evaluate, retrieval_score_matrix
from uniter_tf.evaluation.metrics import RECALL_KS, bless, itm_accuracy, retrieval_recalls, vqa_soft_score
from uniter_tf.evaluation.records import (CAPTION, OTHER, VQA, EvalRecords, FilePatterns, image_id,
                                          iter_serialized_records, list_record_files, question_fields,
                                          read_questions, record_task, soft_score, with_image)
from uniter_tf.evaluation.scorers import keras_scorer, resolve_saved_model, saved_model_scorer
from uniter_tf.evaluation.task_metrics import TASK_METRICS, evaluate_task


def evaluate_files(run: str, files: FilePatterns, *, batch_size: int = 32, max_gallery_texts: int = 1000,
                   train_files: Optional[FilePatterns] = None) -> Dict[str, float]:
    """Evaluates an exported model on TFRecord files (what ``uniter evaluate`` runs).

    Args:
        run: a SavedModel, TFX ``Model`` artifact, serving base path or fine-tuning run directory
            (:func:`resolve_saved_model`).
        files: glob patterns of the eval records (GZIP when the name ends in ``.gz``).
        batch_size: records per model call.
        max_gallery_texts: the first this-many captions form the retrieval queries.
        train_files: optional training records; their VQA questions give the question-only baseline.

    Returns:
        The metrics of :func:`evaluate`.

    Raises:
        ValueError: no model at ``run``, no file matches, or a record is malformed.
    """
    model_dir = resolve_saved_model(run)  # a wrong --run fails before any record is read
    records = EvalRecords.from_files(files)
    train_questions = read_questions(iter_serialized_records(train_files)) if train_files else None
    scorer = saved_model_scorer(model_dir)
    return evaluate(scorer, records, batch_size, max_gallery_texts, train_questions=train_questions)


def evaluate_keras_model(backbone, itm_head, model_config, files: FilePatterns, *, task_head=None,
                         max_text_length: int = 60, batch_size: int = 32, max_gallery_texts: int = 1000,
                         train_questions: Optional[Sequence] = None) -> Dict[str, float]:
    """Evaluates in-memory Keras layers on TFRecord files: the hook for a trainer's periodic evaluation.

    Args:
        backbone, itm_head, model_config, task_head, max_text_length: see :func:`keras_scorer`.
        files: glob patterns of the eval records.
        batch_size, max_gallery_texts, train_questions: see :func:`evaluate`.

    Returns:
        The metrics of :func:`evaluate` (ITM / retrieval from the ITM head, ``vqa_score`` from a task head
        that outputs answer logits).
    """
    scorer = keras_scorer(backbone, itm_head, model_config, task_head=task_head, max_text_length=max_text_length)
    return evaluate(scorer, EvalRecords.from_files(files), batch_size, max_gallery_texts,
                    has_vqa_head=task_head is not None, train_questions=train_questions)


__all__ = [
        "CAPTION", "OTHER", "VQA", "ITM_LOGITS", "VQA_LOGITS", "RECALL_KS", "QUESTION_TYPE_PREFIXES",
        "EvalRecords", "Scorer", "bless", "evaluate", "evaluate_files", "evaluate_keras_model", "image_id",
        "itm_accuracy", "iter_serialized_records", "keras_scorer", "list_record_files", "question_fields",
        "question_prior_answers", "question_prior_score", "question_type", "read_questions", "record_task",
        "resolve_saved_model", "retrieval_recalls", "retrieval_score_matrix", "saved_model_scorer",
        "soft_score", "vqa_soft_score", "with_image", "TASK_METRICS", "evaluate_task",
]
