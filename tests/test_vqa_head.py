"""VQA head, targets, loss and score against NumPy re-statements of the official formulas (spec §5.1)."""

import math

import numpy as np
import pytest

import tensorflow as tf
import keras

from uniter_tf.models import task as task_lib  # noqa: E402
from uniter_tf.models import vqa  # noqa: E402


def _numpy_head(pooled, state_dict):
    """The official Sequential(Linear, GELU(erf), LayerNorm(1e-12), Linear) in NumPy, PyTorch layout."""
    hidden = pooled @ state_dict["vqa_output.0.weight"].T + state_dict["vqa_output.0.bias"]
    hidden = 0.5 * hidden * (1.0 + np.vectorize(math.erf)(hidden / math.sqrt(2.0)))
    mean = hidden.mean(-1, keepdims=True)
    variance = ((hidden - mean) ** 2).mean(-1, keepdims=True)
    hidden = (hidden - mean) / np.sqrt(variance + 1e-12)
    hidden = hidden * state_dict["vqa_output.2.weight"] + state_dict["vqa_output.2.bias"]
    return hidden @ state_dict["vqa_output.3.weight"].T + state_dict["vqa_output.3.bias"]


def _official_state_dict(hidden_size, num_answers, seed=0):
    rng = np.random.default_rng(seed)
    return {
            "vqa_output.0.weight": rng.normal(0, 0.3, (2 * hidden_size, hidden_size)).astype(np.float32),
            "vqa_output.0.bias": rng.normal(0, 0.3, (2 * hidden_size,)).astype(np.float32),
            "vqa_output.2.weight": rng.normal(1, 0.1, (2 * hidden_size,)).astype(np.float32),
            "vqa_output.2.bias": rng.normal(0, 0.1, (2 * hidden_size,)).astype(np.float32),
            "vqa_output.3.weight": rng.normal(0, 0.3, (num_answers, 2 * hidden_size)).astype(np.float32),
            "vqa_output.3.bias": rng.normal(0, 0.3, (num_answers,)).astype(np.float32),
    }


def test_head_with_official_weights_matches_reference():
    hidden_size, num_answers = 8, 5
    head = vqa.VqaHead(hidden_size=hidden_size, num_answers=num_answers)
    state_dict = _official_state_dict(hidden_size, num_answers)
    head.load_official_weights(state_dict)
    pooled = np.random.default_rng(1).normal(size=(3, hidden_size)).astype(np.float32)
    logits = head({"pooled_output": tf.constant(pooled)}).numpy()
    np.testing.assert_allclose(logits, _numpy_head(pooled.astype(np.float64), state_dict), rtol=1e-4, atol=1e-4)
    # Every official key maps to a distinct variable of the head; nothing of the head is left unmapped.
    mapped = {id(variable) for variable, _ in head.official_weight_map().values()}
    assert mapped == {id(variable) for variable in head.weights}
    assert set(head.official_weight_map()) == set(vqa.OFFICIAL_HEAD_PARAMETERS)


def test_load_official_weights_rejects_wrong_shape_and_missing_key():
    head = vqa.VqaHead(hidden_size=8, num_answers=5)
    state_dict = _official_state_dict(8, 6)
    with pytest.raises(ValueError, match="vqa_output.3.weight"):
        head.load_official_weights(state_dict)
    del state_dict["vqa_output.0.bias"]
    with pytest.raises(KeyError, match="vqa_output.0.bias"):
        head.load_official_weights(state_dict)


def test_head_get_config_round_trip():
    head = vqa.VqaHead(hidden_size=8, num_answers=7, initializer_range=0.05, layer_norm_epsilon=1e-6,
                       name="vqa_output")
    clone = vqa.VqaHead.from_config(head.get_config())
    assert (clone.hidden_size, clone.num_answers, clone.initializer_range, clone.layer_norm_epsilon) == (
            8, 7, 0.05, 1e-6)


def test_dense_target_scatters_ragged_and_padded_lists():
    labels = tf.ragged.constant([[2, 0], [], [4]], dtype=tf.int64)
    scores = tf.ragged.constant([[0.3, 1.0], [], [0.6]], dtype=tf.float32)
    expected = np.zeros((3, 5), np.float32)
    expected[0, 2], expected[0, 0], expected[2, 4] = 0.3, 1.0, 0.6
    np.testing.assert_allclose(vqa.dense_vqa_target(labels, scores, 5).numpy(), expected)
    padded_labels = tf.constant([[2, 0], [-1, -1], [4, -1]])
    padded_scores = tf.constant([[0.3, 1.0], [0.0, 0.0], [0.6, 0.0]])
    np.testing.assert_allclose(vqa.dense_vqa_target(padded_labels, padded_scores, 5).numpy(), expected)


def test_dense_target_rejects_label_outside_vocabulary():
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_answers"):
        vqa.dense_vqa_target(tf.ragged.constant([[7]], dtype=tf.int64), tf.ragged.constant([[1.0]]), 5)


def test_loss_is_bce_summed_over_answers_mean_over_questions():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 6)).astype(np.float32)
    targets = rng.uniform(size=(4, 6)).astype(np.float32)
    probabilities = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -(targets * np.log(probabilities) + (1 - targets) * np.log(1 - probabilities))
    expected = bce.sum(axis=1).mean()
    assert vqa.vqa_bce_loss(tf.constant(targets), tf.constant(logits)).numpy() == pytest.approx(expected, rel=1e-5)


def test_vqa_score_is_target_score_of_argmax_answer():
    logits = tf.constant([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    targets = tf.constant([[0.0, 0.6, 1.0], [0.3, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(vqa.vqa_score(targets, logits).numpy(), [0.6, 0.3, 0.0])


def test_task_registry_and_targets_from_parsed_features():
    task = task_lib.get_task("vqa", num_answers=4, answer_vocabulary=["yes", "no", "2", "red"])
    assert isinstance(task, vqa.VqaTask)
    assert task.head_learning_rate_multiplier == 10.0
    features = {"answer_labels": tf.constant([[1, 3], [0, -1]]), "answer_scores": tf.constant([[1.0, 0.3], [0.9, 0.0]])}
    targets = task.targets_from_features(features)
    logits = tf.constant([[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    np.testing.assert_allclose(task.compute_metrics(targets, logits)["vqa_score"].numpy(), [1.0, 0.0])
    assert task.answer_strings(logits.numpy()) == ["no", "red"]
    with pytest.raises(KeyError, match="answer_scores"):
        task.targets_from_features({"answer_labels": features["answer_labels"]})
    with pytest.raises(ValueError, match="unknown task"):
        task_lib.get_task("no-such-task")
    with pytest.raises(ValueError, match="answer_vocabulary"):
        vqa.VqaTask(num_answers=3, answer_vocabulary=["a"])
