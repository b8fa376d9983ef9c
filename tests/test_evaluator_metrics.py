"""Evaluation-gate metrics: retrieval recall (with the correct IR count), ITM accuracy, blessing rules."""

import numpy as np
import pytest

from components.uniter_evaluator import metrics


def _brute_force_recalls(scores, text_to_image, k):
    """A direct restatement: sort each row / column and look for the ground truth."""
    num_texts, num_images = scores.shape
    image_hits = 0
    for text in range(num_texts):
        order = sorted(range(num_images), key=lambda image: -scores[text, image])
        image_hits += text_to_image[text] in order[:k]
    text_hits = 0
    for image in range(num_images):
        order = sorted(range(num_texts), key=lambda text: -scores[text, image])
        text_hits += any(text_to_image[text] == image for text in order[:k])
    return image_hits / num_texts, text_hits / num_images


def test_retrieval_recalls_match_brute_force():
    rng = np.random.default_rng(0)
    text_to_image = np.repeat(np.arange(12), 3)  # 3 captions per image, like a small Flickr gallery
    scores = rng.normal(size=(36, 12))
    scores[np.arange(36), text_to_image] += 1.0  # make the task learnable, not perfect
    result = metrics.retrieval_recalls(scores, text_to_image)
    for k in (1, 5, 10):
        image_recall, text_recall = _brute_force_recalls(scores, text_to_image, k)
        assert result[f"img_r{k}"] == pytest.approx(image_recall)
        assert result[f"txt_r{k}"] == pytest.approx(text_recall)
    assert result["r_mean"] == pytest.approx((result["img_r_mean"] + result["txt_r_mean"]) / 2)


def test_image_recall_counts_each_caption_once():
    # The official code counts captions 0..K-1 twice when they hit (spec §7.20); here a perfect model
    # gets exactly 1.0 and a model that always fails gets exactly 0.0.
    perfect = np.eye(4)
    assert metrics.retrieval_recalls(perfect, [0, 1, 2, 3])["img_r1"] == 1.0
    wrong = 1 - np.eye(4)
    result = metrics.retrieval_recalls(wrong, [0, 1, 2, 3], ks=(1,))
    assert result["img_r1"] == 0.0 and result["txt_r1"] == 0.0


def test_retrieval_rejects_image_without_caption_and_bad_shapes():
    with pytest.raises(ValueError, match="no text"):
        metrics.retrieval_recalls(np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="does not match"):
        metrics.retrieval_recalls(np.zeros((2, 3)), [0, 1, 2])


def test_itm_accuracy_counts_both_classes():
    positives = np.array([[0.0, 1.0], [2.0, 0.0]])  # one right, one wrong
    negatives = np.array([[3.0, 0.0], [1.0, 0.5], [0.0, 4.0]])  # two right, one wrong
    assert metrics.itm_accuracy(positives, negatives) == pytest.approx(3 / 5)


def test_bless_value_and_change_thresholds():
    blessed, reasons = metrics.bless({"itm_accuracy": 0.8, "vqa_score": 0.5}, {"itm_accuracy": 0.7})
    assert blessed and not reasons
    blessed, reasons = metrics.bless({"itm_accuracy": 0.6}, {"itm_accuracy": 0.7})
    assert not blessed and "itm_accuracy" in reasons[0]
    blessed, reasons = metrics.bless({"itm_accuracy": 0.8}, {"vqa_score": 0.1})
    assert not blessed and "not computed" in reasons[0]
    baseline = {"itm_accuracy": 0.9, "vqa_score": 0.5}
    blessed, reasons = metrics.bless({"itm_accuracy": 0.85, "vqa_score": 0.55}, {}, baseline,
                                     {"itm_accuracy": 0.01, "vqa_score": 0.0})
    assert not blessed and len(reasons) == 1 and "last blessed" in reasons[0]
    blessed, _ = metrics.bless({"itm_accuracy": 0.895, "vqa_score": 0.5}, {}, baseline,
                               {"itm_accuracy": 0.01, "vqa_score": 0.0})
    assert blessed


def test_constant_scores_get_no_credit():
    # Ties count against the ground truth: a model that scores every pair alike retrieves nothing.
    result = metrics.retrieval_recalls(np.zeros((6, 3)), [0, 0, 1, 1, 2, 2], ks=(1, 5))
    assert result["img_r1"] == 0.0 and result["txt_r1"] == 0.0
    # Image -> text: 4 captions of other images tie with the best own caption, so its rank is 4 (< 5).
    assert result["txt_r5"] == 1.0 and result["img_r5"] == 1.0
