"""UNITER's evaluation metrics and the blessing decision (NumPy only: no TensorFlow, no TFX).

VQA follows the official ``compute_score_with_logits`` (spec §5.1): the target soft score of the argmax
answer, 0 for a question whose answers are all outside the vocabulary (it still counts in the mean).
Retrieval follows the official ``utils/itm_eval.py`` definitions (spec §5.4) except for its image-
retrieval counting bug (spec §7.20): here every caption contributes exactly once to IR R@K.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

RECALL_KS = (1, 5, 10)


def _ranks_descending(scores: np.ndarray, target_index: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of ``scores[i, target_index[i]]`` in row i: the number of other entries scoring at
    least as high (ties count against the target, so a constant model gets no credit)."""
    target_scores = scores[np.arange(scores.shape[0]), target_index]
    return np.sum(scores >= target_scores[:, None], axis=1) - 1


def retrieval_recalls(score_matrix: np.ndarray, text_to_image: Sequence[int],
                      ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
    """Image retrieval (text → image) and text retrieval (image → text) recall@K.

    Args:
        score_matrix: ``[n_texts, n_images]`` matching scores (higher = better match).
        text_to_image: for every text, the column of its ground-truth image.
        ks: the K values.

    Returns:
        ``img_r{K}`` (text → image: fraction of texts whose image ranks < K), ``txt_r{K}`` (image → text:
        fraction of images whose best ground-truth text ranks < K among all texts), ``img_r_mean``,
        ``txt_r_mean`` and ``r_mean`` (their average), as fractions.

    Raises:
        ValueError: if the shapes disagree or an image has no text.
    """
    scores = np.asarray(score_matrix, dtype=np.float64)
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[0] != text_to_image.shape[0]:
        raise ValueError(f"score_matrix {scores.shape} does not match {text_to_image.shape[0]} texts")
    if scores.shape[0] == 0:
        raise ValueError("retrieval needs at least one text")
    if text_to_image.min() < 0 or text_to_image.max() >= scores.shape[1]:
        raise ValueError(f"text_to_image holds an index outside [0, {scores.shape[1]})")
    num_images = scores.shape[1]
    images_without_text = sorted(set(range(num_images)) - set(text_to_image.tolist()))
    if images_without_text:
        raise ValueError(f"images {images_without_text[:5]} have no text in the gallery")

    image_ranks = _ranks_descending(scores, text_to_image)
    # For each image: how many texts that are not its own score at least as high as its best own text.
    text_ranks_per_image = np.empty(num_images, np.int64)
    for image_index in range(num_images):
        column = scores[:, image_index]
        own = text_to_image == image_index
        best_own = column[own].max()
        text_ranks_per_image[image_index] = int(np.sum(column[~own] >= best_own))

    metrics = {}
    for k in ks:
        metrics[f"img_r{k}"] = float(np.mean(image_ranks < k))
        metrics[f"txt_r{k}"] = float(np.mean(text_ranks_per_image < k))
    metrics["img_r_mean"] = float(np.mean([metrics[f"img_r{k}"] for k in ks]))
    metrics["txt_r_mean"] = float(np.mean([metrics[f"txt_r{k}"] for k in ks]))
    metrics["r_mean"] = (metrics["img_r_mean"] + metrics["txt_r_mean"]) / 2
    return metrics


def vqa_soft_score(answer_labels: Sequence[int], answer_scores: Sequence[float], answer: int) -> float:
    """The VQA credit of predicting ``answer`` for one question: its soft score, 0 when it is not a label.

    Args:
        answer_labels: the question's in-vocabulary answer labels (may be empty: every human answer was
            outside the vocabulary, and then every prediction scores 0).
        answer_scores: their soft scores, parallel to ``answer_labels``.
        answer: the predicted answer label.

    Raises:
        ValueError: the two lists differ in length.
    """
    labels = np.asarray(answer_labels, np.int64).reshape(-1)
    scores = np.asarray(answer_scores, np.float32).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} answer labels but {scores.size} answer scores")
    return float(np.sum(scores[labels == int(answer)]))


def itm_accuracy(positive_logits: np.ndarray, negative_logits: np.ndarray) -> float:
    """Accuracy of the 2-way ITM classifier on matched (label 1) and mismatched (label 0) pairs.

    Args:
        positive_logits: ``[P, 2]`` logits of matched pairs.
        negative_logits: ``[Q, 2]`` logits of mismatched pairs.

    Returns:
        The fraction of the P + Q pairs whose argmax is the right class.
    """
    positive_logits = np.asarray(positive_logits).reshape(-1, 2)
    negative_logits = np.asarray(negative_logits).reshape(-1, 2)
    total = positive_logits.shape[0] + negative_logits.shape[0]
    if total == 0:
        raise ValueError("ITM accuracy needs at least one pair")
    correct = np.sum(np.argmax(positive_logits, axis=1) == 1) + np.sum(np.argmax(negative_logits, axis=1) == 0)
    return float(correct) / total


def bless(metrics: Mapping[str, float], lower_bounds: Mapping[str, float],
          baseline_metrics: Optional[Mapping[str, float]] = None,
          max_regression: Optional[Mapping[str, float]] = None) -> Tuple[bool, Sequence[str]]:
    """Decides whether a model passes the gate.

    Args:
        metrics: the candidate's metrics.
        lower_bounds: metric → smallest acceptable value (value thresholds).
        baseline_metrics: the last blessed model's metrics on the same data, or None when there is none
            (the candidate is then judged on the value thresholds only, like TFMA's rubber stamp).
        max_regression: metric → largest acceptable drop below the baseline (change thresholds; 0 = must
            not be worse). Metrics not named here are not compared.

    Returns:
        ``(blessed, reasons)``: reasons lists every failed check (empty when blessed).
    """
    reasons = [text for passed, text in gate_checks(metrics, lower_bounds, baseline_metrics, max_regression)
               if not passed]
    return not reasons, reasons


def gate_checks(metrics: Mapping[str, float], lower_bounds: Mapping[str, float],
                baseline_metrics: Optional[Mapping[str, float]] = None,
                max_regression: Optional[Mapping[str, float]] = None) -> List[Tuple[bool, str]]:
    """Every check of :func:`bless`, passed or failed, each as ``(passed, text naming the metric)``.

    The failed texts are :func:`bless`'s reasons; the passed ones say what held (e.g. ``r_mean = 0.5210 >=
    threshold 0.3000``), so a gate report names the figures a blessing rests on.
    """
    checks: List[Tuple[bool, str]] = []
    for name, bound in sorted(lower_bounds.items()):
        value = metrics.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            checks.append((False, f"{name}: not computed for this model (threshold {bound})"))
        elif value < bound:
            checks.append((False, f"{name} = {value:.4f} < threshold {bound:.4f}"))
        else:
            checks.append((True, f"{name} = {value:.4f} >= threshold {bound:.4f}"))
    if baseline_metrics is not None:
        for name, allowed_drop in sorted((max_regression or {}).items()):
            if name not in baseline_metrics:
                continue
            value = metrics.get(name)
            if value is None:
                checks.append((False, f"{name}: not computed for this model but the baseline has it"))
            elif value < baseline_metrics[name] - allowed_drop:
                checks.append((False, f"{name} = {value:.4f} is more than {allowed_drop:.4f} below the last blessed "
                                      f"model's {baseline_metrics[name]:.4f}"))
            else:
                checks.append((True, f"{name} = {value:.4f} is at most {allowed_drop:.4f} below the last blessed "
                                     f"model's {baseline_metrics[name]:.4f}"))
    return checks
