"""UniterPretrainingModel, its losses and WRA / IPOT."""

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.checkpoints.official import to_official_state_dict
from uniter_tf.config import UniterConfig
from uniter_tf.layers import optimal_transport
from uniter_tf.models import losses
from uniter_tf.models.backbone import UniterBackbone
from uniter_tf.models.pretraining_model import TASKS, UniterPretrainingModel, first_masked_indices
from uniter_tf.testing import numpy_reference

CONFIG = UniterConfig(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32, region_feature_dim=12, num_soft_labels=5,
                      unk_token_id=4, cls_token_id=1, sep_token_id=2, mask_token_id=3, first_word_id=5)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.random((2, 4, 12), dtype=np.float32)
    soft = rng.random((2, 4, 5)).astype(np.float32)
    soft[0, 1, 3] = 0.0  # a zero target probability exercises the t = 0 branch of the KL
    return {
            "token_ids": np.array([[1, 3, 8, 3, 2], [1, 10, 3, 0, 0]], np.int32),
            "text_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32),
            "region_features": features,
            "region_positions": rng.random((2, 4, 7), dtype=np.float32),
            "region_mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.int32),
            "mlm_labels": np.array([[-1, 17, -1, 30, -1], [-1, -1, 44, -1, -1]], np.int32),
            "masked_regions": np.array([[False, True, True, False], [False, False, False, True]]),
            "region_feature_targets": features,
            "soft_labels": soft / soft.sum(-1, keepdims=True),
            "itm_labels": np.array([1, 0], np.int32),
    }


@pytest.fixture(scope="module")
def model():
    return UniterPretrainingModel(UniterBackbone(CONFIG))


def test_first_masked_indices_keeps_row_major_order_and_pads_with_zero_weight():
    mask = np.array([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0]], bool)
    indices, weights = first_masked_indices(mask)
    np.testing.assert_array_equal(indices.numpy(), [[1, 3, 4], [0, 1, 2]])
    np.testing.assert_array_equal(weights.numpy(), [[1, 1, 1], [1, 0, 0]])
    indices, weights = first_masked_indices(mask, max_count=2)
    np.testing.assert_array_equal(indices.numpy(), [[1, 3], [0, 1]])
    np.testing.assert_array_equal(weights.numpy(), [[1, 1], [1, 0]])


@pytest.mark.parametrize("task", TASKS)
def test_every_task_gives_a_finite_loss_and_metrics(model, task):
    loss, metrics = model.compute_task_loss(task, _batch())
    assert loss.shape == () and loss.dtype == tf.float32 and np.isfinite(loss.numpy())
    assert f"{task}_loss" in metrics
    expected_metric = {"mlm": "mlm_accuracy", "mrc": "mrc_accuracy", "mrckl": "mrckl_accuracy",
                       "itm": "itm_accuracy", "mrfr": "mrfr_loss"}[task]
    assert expected_metric in metrics
    if task == "itm":
        assert {"ot_loss", "itm_ce_loss", "ot_positive_mean", "ot_negative_mean"} <= set(metrics)


def test_task_losses_match_the_official_reductions(model):
    batch = _batch()
    state = to_official_state_dict(model)
    mlm = model(batch, task="mlm")
    labels = batch["mlm_labels"]
    sequence = mlm["sequence_output"].numpy().astype(np.float64)
    scores = numpy_reference.mlm_scores(state, sequence, labels)
    expected = numpy_reference.cross_entropy(scores, labels[labels != -1]).mean()
    np.testing.assert_allclose(mlm["loss"].numpy(), expected, rtol=1e-5)

    mrckl = model(batch, task="mrckl")
    masks = batch["masked_regions"]
    joint_targets = np.zeros((2, mrckl["sequence_output"].shape[1]), bool)
    for row, text_length in enumerate([5, 3]):
        joint_targets[row, text_length:text_length + 4] = masks[row]
    logits = numpy_reference.mrc_logits(state, mrckl["sequence_output"].numpy().astype(np.float64), joint_targets)
    expected = numpy_reference.kl_div_elementwise(logits, batch["soft_labels"][masks]).mean()  # over classes too
    np.testing.assert_allclose(mrckl["loss"].numpy(), expected, rtol=1e-5)

    mrfr = model(batch, task="mrfr")
    predicted = numpy_reference.mrfr_predictions(state, mrfr["sequence_output"].numpy().astype(np.float64),
                                                 joint_targets)
    expected = ((predicted - batch["region_features"][masks]) ** 2).mean()  # over feature dims too
    np.testing.assert_allclose(mrfr["loss"].numpy(), expected, rtol=1e-5)


def test_static_caps_padded_form_and_default_targets_agree(model):
    batch = _batch()
    capped = UniterPretrainingModel(model.backbone, max_masked_tokens=4, max_masked_regions=3)
    capped.set_weights(model.get_weights())
    for task in ("mlm", "mrfr", "mrckl", "itm"):
        np.testing.assert_allclose(capped.compute_task_loss(task, batch)[0].numpy(),
                                   model.compute_task_loss(task, batch)[0].numpy(), rtol=1e-6)
    padded = dict(batch)
    del padded["mlm_labels"]
    padded.update(mlm_positions=np.array([[1, 3, 0], [2, 0, 0]], np.int32),
                  mlm_label_ids=np.array([[17, 30, 0], [44, 0, 0]], np.int32),
                  mlm_weights=np.array([[1, 1, 0], [1, 0, 0]], np.float32))
    np.testing.assert_allclose(model.compute_task_loss("mlm", padded)[0].numpy(),
                               model.compute_task_loss("mlm", batch)[0].numpy(), rtol=1e-6)
    without_targets = dict(batch)
    del without_targets["region_feature_targets"]
    np.testing.assert_allclose(model.compute_task_loss("mrfr", without_targets)[0].numpy(),
                               model.compute_task_loss("mrfr", batch)[0].numpy(), rtol=1e-6)


@pytest.mark.slow
def test_jit_compiled_gradients_match_eager():
    """Loss and gradients of a fixed-K model compile with XLA (ITM includes the IPOT loop)."""
    model = UniterPretrainingModel(UniterBackbone(CONFIG), max_masked_tokens=4, max_masked_regions=4)
    batch = {key: tf.constant(value) for key, value in _batch().items()}

    def loss_and_gradients(task):
        def compute(inputs):
            with tf.GradientTape() as tape:
                loss, _ = model.compute_task_loss(task, inputs, training=False)
            return loss, tape.gradient(loss, model.backbone.trainable_variables)

        return compute

    for task in ("mlm", "itm"):
        eager_loss, eager_gradients = loss_and_gradients(task)(batch)
        compiled_loss, compiled_gradients = tf.function(loss_and_gradients(task), jit_compile=True)(batch)
        np.testing.assert_allclose(compiled_loss.numpy(), eager_loss.numpy(), rtol=1e-4)
        word_table_gradient = compiled_gradients[0]
        np.testing.assert_allclose(tf.convert_to_tensor(word_table_gradient).numpy(),
                                   tf.convert_to_tensor(eager_gradients[0]).numpy(), atol=1e-5)


def test_errors_name_the_missing_key_and_the_task(model):
    batch = _batch()
    del batch["itm_labels"]
    with pytest.raises(ValueError, match=r"'itm' batch needs \['itm_labels'\]"):
        model.compute_task_loss("itm", batch)
    with pytest.raises(ValueError, match="unknown pretraining task 'vqa'"):
        model.compute_task_loss("vqa", batch)
    batch = _batch()
    del batch["masked_regions"]
    with pytest.raises(ValueError, match="masked_regions"):
        model.compute_task_loss("mrfr", batch)


@pytest.mark.parametrize("key, value, message", [
        ("mlm_labels", np.zeros((2, 4), np.int32), r"'mlm_labels': expected shape \[2, 5\], received \[2, 4\]"),
        ("soft_labels", np.zeros((2, 4, 7), np.float32),
         r"'soft_labels': expected shape \[2, 4, 5\], received \[2, 4, 7\]"),
        ("region_feature_targets", np.zeros((2, 4, 11), np.float32),
         r"'region_feature_targets': expected shape \[2, 4, 12\], received \[2, 4, 11\]"),
        ("itm_labels", np.zeros((3,), np.int32), r"'itm_labels': expected shape \[2\], received \[3\]"),
])
def test_task_inputs_with_wrong_shapes_raise(model, key, value, message):
    batch = _batch()
    batch[key] = value
    with pytest.raises(ValueError, match=message):
        model.compute_task_loss("itm", batch)


def test_pretraining_model_config_round_trip(model, tmp_path):
    rebuilt = UniterPretrainingModel.from_config(model.get_config())
    assert rebuilt.get_config()["max_masked_tokens"] is None
    path = str(tmp_path / "pretraining.weights.h5")
    model.save_weights(path)
    rebuilt.load_weights(path)
    np.testing.assert_allclose(rebuilt.compute_task_loss("itm", _batch())[0].numpy(),
                               model.compute_task_loss("itm", _batch())[0].numpy(), rtol=1e-6)


# ------------------------------------------------------------------------------------------------ OT
def _ot_inputs(seed=0, text_pad=0, region_pad=0):
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((3, 6, 8)).astype(np.float32)
    regions = rng.standard_normal((3, 5, 8)).astype(np.float32)
    text = np.pad(text, ((0, 0), (0, text_pad), (0, 0)), constant_values=7.0)  # padding values must not matter
    regions = np.pad(regions, ((0, 0), (0, region_pad), (0, 0)), constant_values=-3.0)
    text_padding = np.arange(6 + text_pad)[None] >= np.array([6, 3, 4])[:, None]
    region_padding = np.arange(5 + region_pad)[None] >= np.array([5, 5, 2])[:, None]
    return text, regions, text_padding, region_padding


def test_ot_matches_the_numpy_reference_and_ignores_padding():
    text, regions, text_padding, region_padding = _ot_inputs()
    distance, cost, plan = optimal_transport.optimal_transport_distance(text, regions, text_padding, region_padding)
    # The reference scatters a joint sequence; build one in the official layout (text then regions).
    lengths_text = (~text_padding).sum(1)
    lengths_regions = (~region_padding).sum(1)
    joint = np.zeros((3, 11, 8), np.float32)
    for row in range(3):
        joint[row, :lengths_text[row]] = text[row, :lengths_text[row]]
        joint[row, lengths_text[row]:lengths_text[row] + lengths_regions[row]] = regions[row, :lengths_regions[row]]
    scatter = numpy_reference.ot_scatter(lengths_text, 6, 11)
    reference = numpy_reference.optimal_transport(joint.astype(np.float64), scatter, scatter.max(), text_padding,
                                                  region_padding)
    np.testing.assert_allclose(distance.numpy(), reference["ot_dist"], atol=1e-5)
    np.testing.assert_allclose(cost.numpy(), reference["ot_cost"], atol=1e-5)
    np.testing.assert_allclose(plan.numpy(), reference["ot_T"], atol=1e-6)
    # The plan's marginals are the uniform distributions over the real positions.
    np.testing.assert_allclose(plan.numpy().sum(axis=2)[0], np.full(5, 1 / 5), atol=1e-3)
    np.testing.assert_allclose(plan.numpy().sum(axis=1)[2, :4], np.full(4, 1 / 4), atol=1e-3)
    padded = optimal_transport.optimal_transport_distance(*_ot_inputs(text_pad=3, region_pad=2))[0]
    np.testing.assert_allclose(padded.numpy(), distance.numpy(), atol=1e-6)


def test_ot_gradient_flows_through_the_cost_only_and_jit_and_bfloat16_work():
    text, regions, text_padding, region_padding = _ot_inputs()
    text_variable = tf.Variable(text)
    with tf.GradientTape(persistent=True) as tape:
        distance, _, plan = optimal_transport.optimal_transport_distance(text_variable, regions, text_padding,
                                                                         region_padding)
        plan_total = tf.reduce_sum(plan)
        distance_total = tf.reduce_sum(distance)
    assert tape.gradient(plan_total, text_variable) is None
    gradient = tape.gradient(distance_total, text_variable).numpy()
    assert np.abs(gradient).max() > 0 and np.abs(gradient[1, 3:]).max() == 0  # padded tokens get nothing

    compiled = tf.function(optimal_transport.optimal_transport_distance, jit_compile=True)
    np.testing.assert_allclose(compiled(text, regions, text_padding, region_padding)[0].numpy(), distance.numpy(),
                               atol=1e-5)
    bf16_distance = optimal_transport.optimal_transport_distance(tf.cast(text, tf.bfloat16), tf.cast(regions, tf.bfloat16),
                                                                 text_padding, region_padding)[0]
    assert bf16_distance.dtype == tf.float32
    np.testing.assert_allclose(bf16_distance.numpy(), distance.numpy(), atol=5e-2)


def test_loss_functions_on_hand_computed_values():
    logits = np.log(np.array([[[0.5, 0.25, 0.25]], [[0.1, 0.8, 0.1]]], np.float32))
    targets = np.array([[[0.5, 0.5, 0.0]], [[0.0, 1.0, 0.0]]], np.float32)
    weights = np.array([[1.0], [0.0]], np.float32)
    # The reductions of UniterPretrainingModel: mean over the C classes / D dims, then over masked rows.
    def mean_over_rows(elementwise, row_weights):
        return losses.weighted_mean(tf.reduce_mean(elementwise, axis=-1), row_weights).numpy()

    # Only row 0 counts: KL = 0.5 log(0.5/0.5) + 0.5 log(0.5/0.25) = 0.5 log 2, divided by C = 3.
    np.testing.assert_allclose(mean_over_rows(losses.mrc_kl_elementwise_losses(logits, targets), weights),
                               0.5 * np.log(2) / 3, rtol=1e-5)
    np.testing.assert_array_equal(losses.mrc_hard_labels(np.array([[0.9, 0.02, 0.08]])).numpy(), [2])
    np.testing.assert_allclose(mean_over_rows(losses.mrfr_elementwise_losses(np.ones((1, 2, 4)), np.zeros((1, 2, 4))),
                                              np.array([[1.0, 1.0]])), 1.0)
    np.testing.assert_allclose(losses.ot_loss(np.array([1.0, 2.0, 4.0]), np.array([1, 0, 1])).numpy(), 1.0)
    itm_ce = tf.reduce_mean(losses.itm_example_losses(np.zeros((2, 2)), np.array([1, 0])))
    np.testing.assert_allclose((itm_ce + 0.1 * losses.ot_loss(np.array([3.0, 1.0]), np.array([1, 0]))).numpy(),
                               np.log(2) + 0.1 * (3.0 - 1.0) / 2, rtol=1e-6)
    assert losses.weighted_mean(np.ones(3), np.zeros(3)).numpy() == 0.0
    mlm = losses.mlm_token_losses(np.zeros((2, 4)), np.array([2, -1]))
    np.testing.assert_allclose(mlm.numpy(), [np.log(4), 0.0], rtol=1e-6)
