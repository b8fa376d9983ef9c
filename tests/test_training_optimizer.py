"""AdamW (official HF variant), loss scaling, LR schedule, task sampling and the pretraining config."""

import json

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.training.optimizer import AdamW, DynamicLossScale, exempt_from_weight_decay
from uniter_tf.training.pretrain_config import DEFAULT_TASK_RATIOS, PretrainConfig, load_config
from uniter_tf.training.schedule import LinearWarmupLinearDecay
from uniter_tf.training.task_sampler import TaskSampler


def _reference_adamw(param, grads, lr, beta_1=0.9, beta_2=0.98, eps=1e-6, weight_decay=0.01):
    """The vendored HF AdamW of the official code (optim/adamw.py), in numpy."""
    param = param.astype(np.float64).copy()
    m = np.zeros_like(param)
    v = np.zeros_like(param)
    for step, grad in enumerate(grads, start=1):
        m = beta_1 * m + (1 - beta_1) * grad
        v = beta_2 * v + (1 - beta_2) * grad * grad
        step_size = lr * np.sqrt(1 - beta_2 ** step) / (1 - beta_1 ** step)
        param = param - step_size * m / (np.sqrt(v) + eps)
        param = param - lr * weight_decay * param
    return param


class _Named(tf.Module):
    def __init__(self, value, name):
        super().__init__()
        self.variable = tf.Variable(value, name=name)


def test_adamw_matches_the_official_update():
    rng = np.random.default_rng(0)
    initial = rng.normal(size=(3, 4)).astype(np.float32)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(5)]
    kernel = tf.Variable(initial, name="dense/kernel")
    bias = tf.Variable(initial[0], name="dense/bias")
    optimizer = AdamW(learning_rate=0.01, weight_decay=0.1)
    optimizer.build([kernel, bias])
    for grad in grads:
        optimizer.apply_gradients([tf.constant(grad), tf.constant(grad[0])], [kernel, bias], tf.constant(0.01))
    np.testing.assert_allclose(kernel.numpy(), _reference_adamw(initial, grads, 0.01, weight_decay=0.1),
                               rtol=1e-5, atol=1e-6)
    # Biases get no weight decay.
    np.testing.assert_allclose(bias.numpy(), _reference_adamw(initial[0], [g[0] for g in grads], 0.01,
                                                              weight_decay=0.0), rtol=1e-5, atol=1e-6)
    assert int(optimizer.iterations.numpy()) == 5


def test_adamw_skips_non_finite_updates_and_unlisted_variables():
    first = tf.Variable(np.ones([2], np.float32), name="a/kernel")
    second = tf.Variable(np.ones([2], np.float32), name="b/kernel")
    optimizer = AdamW(learning_rate=0.1)
    optimizer.build([first, second])
    optimizer.apply_gradients([tf.constant([1.0, 1.0])], [first], tf.constant(0.1),
                              apply_update=tf.constant(False), variable_indices=[0])
    np.testing.assert_array_equal(first.numpy(), [1.0, 1.0])
    assert int(optimizer.iterations.numpy()) == 0
    optimizer.apply_gradients([tf.constant([1.0, 1.0])], [second], tf.constant(0.1), variable_indices=[1])
    np.testing.assert_array_equal(first.numpy(), [1.0, 1.0])  # no gradient: untouched (official)
    assert np.all(second.numpy() < 1.0)
    assert np.all(optimizer.first_moments[0].numpy() == 0)


def test_weight_decay_exemptions():
    assert exempt_from_weight_decay(tf.Variable([1.0], name="layer_0/attention_output/bias"))
    assert exempt_from_weight_decay(tf.Variable([1.0], name="region_embeddings/img_layer_norm/gamma"))
    assert exempt_from_weight_decay(tf.Variable([1.0], name="text_embeddings/layer_norm/beta"))
    assert not exempt_from_weight_decay(tf.Variable([1.0], name="layer_0/query/kernel"))
    assert not exempt_from_weight_decay(tf.Variable([1.0], name="text_embeddings/word_embeddings/embeddings"))


def test_pretraining_model_decay_groups():
    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.models.pretraining_model import UniterPretrainingModel

    model = UniterPretrainingModel(UniterBackbone(UniterConfig.from_preset("tiny")))
    decayed = {v.path for v in model.trainable_variables if not exempt_from_weight_decay(v)}
    exempt = {v.path for v in model.trainable_variables if exempt_from_weight_decay(v)}
    assert decayed and exempt
    assert all(not path.endswith("bias") and not path.endswith("gamma") for path in decayed)
    # Every LayerNorm of the model (image LNs and head LNs included) is exempt.
    layer_norm_paths = {v.path for layer in model._flatten_layers() if "LayerNormalization" in type(layer).__name__
                        for v in layer.trainable_variables}
    assert layer_norm_paths and layer_norm_paths <= exempt


def test_dynamic_loss_scale_halves_and_grows():
    scale = DynamicLossScale(initial_scale=8.0, growth_interval=2)
    scale.update(tf.constant(False))
    assert float(scale.scale.numpy()) == 4.0
    scale.update(tf.constant(True))
    scale.update(tf.constant(True))
    assert float(scale.scale.numpy()) == 8.0
    assert int(scale.good_steps.numpy()) == 0


def test_schedule_is_official_warmup_then_linear_decay():
    schedule = LinearWarmupLinearDecay(1e-4, warmup_steps=10, total_steps=110)
    values = {step: float(schedule(step)) for step in (1, 5, 10, 60, 110, 200)}
    assert values[1] == pytest.approx(1e-5)
    assert values[5] == pytest.approx(5e-5)
    assert values[10] == pytest.approx(1e-4)
    assert values[60] == pytest.approx(5e-5)
    assert values[110] == pytest.approx(1e-8)  # official: non-positive rates become 1e-8
    assert values[200] == pytest.approx(1e-8)
    assert LinearWarmupLinearDecay.from_config(schedule.get_config()).get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="warmup_steps"):
        LinearWarmupLinearDecay(1e-4, warmup_steps=10, total_steps=10)


def test_task_sampler_is_deterministic_and_follows_ratios():
    sampler = TaskSampler(DEFAULT_TASK_RATIOS, seed=42)
    sequence = [sampler.task_for_step(step) for step in range(1, 4401)]
    again = [TaskSampler(DEFAULT_TASK_RATIOS, seed=42).task_for_step(step) for step in range(1, 4401)]
    assert sequence == again
    shares = {task: sequence.count(task) / len(sequence) for task in DEFAULT_TASK_RATIOS}
    for task, ratio in DEFAULT_TASK_RATIOS.items():
        assert shares[task] == pytest.approx(ratio / 11, abs=0.03)
    other = [TaskSampler(DEFAULT_TASK_RATIOS, seed=7).task_for_step(step) for step in range(1, 101)]
    assert other != sequence[:100]
    assert sampler.counts(1, 100) == {task: sequence[:100].count(task) for task in sampler.tasks}


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_command": "uniter pretrain --config x", "model": "tiny",
                                "train_files": ["a*"], "inputs": {"batch_size": 4}}))
    config = load_config(str(path), ["num_train_steps=50", "warmup_steps=5", "inputs.batch_size=16",
                                     'task_ratios={"mlm": 1}', "output_dir=/tmp/out"])
    assert config.num_train_steps == 50 and config.input_config().batch_size == 16
    assert config.active_tasks() == ["mlm"] and config.output_dir == "/tmp/out"
    assert PretrainConfig().task_ratios == {"itm": 3, "mlm": 4, "mrfr": 2, "mrckl": 2}
    with pytest.raises(ValueError, match="unknown pretraining config keys"):
        load_config(str(path), ["learning_rat=1"])
    with pytest.raises(ValueError, match="precision"):
        load_config(str(path), ["precision=float64"])
    with pytest.raises(ValueError, match="task_ratios"):
        load_config(str(path), ['task_ratios={"wra": 1}'])
    with pytest.raises(ValueError, match="key=value"):
        load_config(str(path), ["num_train_steps"])


@pytest.mark.parametrize("name", ["pretrain_uniter_base_alldata.json", "pretrain_local.json"])
def test_shipped_configs_load(name):
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "configs", name)
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    assert "uniter train --config" in raw["_command"]
    assert raw["_expect"]
    # The shipped configs are experiment configs (task / trainer / runtime); the same run as a flat config.
    from uniter_tf.training.experiment import ExperimentConfig

    config = ExperimentConfig.from_file(path).to_pretrain_config()
    if name.startswith("pretrain_uniter_base"):
        assert (config.learning_rate, config.warmup_steps, config.num_train_steps) == (5e-5, 10_000, 200_000)
        assert (config.beta_1, config.beta_2, config.weight_decay, config.grad_norm) == (0.9, 0.98, 0.01, 5.0)
        assert config.gradient_accumulation_steps == 6 and config.input_config().max_tokens == 10240
        # The official all-data mix per (task, dataset): tasks 30:40:20:20, datasets coco/vg/cc/sbu 22:33:33:22.
        ratios = config.mix_ratios()
        assert {task: sum(value for key, value in ratios.items() if key.startswith(task + "/"))
                for task in ("itm", "mlm", "mrfr", "mrckl")} == {"itm": 30, "mlm": 40, "mrfr": 20, "mrckl": 20}
        assert {name: sum(value for key, value in ratios.items() if key.endswith("/" + name))
                for name in ("coco", "vg", "cc", "sbu")} == {"coco": 22, "vg": 33, "cc": 33, "sbu": 22}


def test_float16_trainer_skips_an_overflowing_update_and_halves_the_scale(tmp_path):
    from uniter_tf.config import UniterConfig
    from uniter_tf.training.pretrainer import Pretrainer
    from uniter_tf.testing.synthetic_data import write_synthetic_records

    write_synthetic_records(str(tmp_path / "train"), UniterConfig.from_preset("tiny"), num_images=8)
    config = PretrainConfig(
            model="tiny", train_files=[str(tmp_path / "train*")], output_dir=str(tmp_path / "run"),
            inputs={"batch_size": 4, "shuffle_buffer": 0, "text_bucket_boundaries": [64],
                    "region_bucket_boundaries": [16]},
            task_ratios={"mlm": 1}, num_train_steps=10, warmup_steps=1, learning_rate=1e-3,
            precision="mixed_float16", progress_bar=False, seed=5)
    trainer = Pretrainer(config)
    first = trainer.train_update("mlm")
    assert first["update_skipped"] == 0.0 and np.isfinite(first["loss"])
    assert int(trainer.optimizer.iterations.numpy()) == 1
    before = [variable.numpy().copy() for variable in trainer.variables]
    trainer.loss_scales["mlm"].scale.assign(3e38)  # float16 gradients overflow to inf
    skipped = trainer.train_update("mlm")
    assert skipped["update_skipped"] == 1.0
    for old, variable in zip(before, trainer.variables):
        np.testing.assert_array_equal(old, variable.numpy())
    assert int(trainer.optimizer.iterations.numpy()) == 1
    assert float(trainer.loss_scales["mlm"].scale.numpy()) == pytest.approx(1.5e38)
