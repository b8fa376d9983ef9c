"""Speed settings: the dense-rows layers, the persistent XLA cache and the bf16-without-hardware warning."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.env_info import cpu_features
from uniter_tf.layers.rows import dense_rows
from uniter_tf.training import performance
from uniter_tf.training.performance import bfloat16_warning, enable_xla_persistent_cache

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def test_dense_rows_equals_the_keras_layer_and_its_gradients():
    dense = keras.layers.Dense(5, bias_initializer="random_normal")
    dense.build((None, 3))
    inputs = tf.constant(np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(inputs)
        flat = dense_rows(dense, inputs)
        plain = dense(inputs)
        flat_loss, plain_loss = tf.reduce_sum(flat ** 2), tf.reduce_sum(plain ** 2)
    assert flat.shape == (2, 4, 5)
    np.testing.assert_allclose(flat.numpy(), plain.numpy(), atol=1e-6)
    for flat_gradient, plain_gradient in zip(tape.gradient(flat_loss, [inputs] + dense.trainable_variables),
                                             tape.gradient(plain_loss, [inputs] + dense.trainable_variables)):
        np.testing.assert_allclose(flat_gradient.numpy(), plain_gradient.numpy(), rtol=1e-5, atol=1e-5)


def test_dense_rows_keeps_the_static_shape_of_unknown_leading_dims():
    dense = keras.layers.Dense(7)
    dense.build((None, 3))
    traced = tf.function(lambda x: dense_rows(dense, x)).get_concrete_function(
            tf.TensorSpec([None, None, 3], tf.float32))
    assert traced.structured_outputs.shape.as_list() == [None, None, 7]


def test_bfloat16_warning_only_without_bf16_hardware_on_cpu():
    plain_avx2 = {"avx2": True, "avx512_bf16": False, "amx_bf16": False}
    message = bfloat16_warning("mixed_bfloat16", devices={"CPU": 1}, features=plain_avx2)
    assert message and "slower" in message and "float32" in message
    assert bfloat16_warning("float32", devices={"CPU": 1}, features=plain_avx2) is None
    assert bfloat16_warning("mixed_bfloat16", devices={"CPU": 1}, features={**plain_avx2, "amx_bf16": True}) is None
    assert bfloat16_warning("mixed_bfloat16", devices={"CPU": 1},
                            features={**plain_avx2, "avx512_bf16": True}) is None
    assert bfloat16_warning("mixed_bfloat16", devices={"CPU": 1, "GPU": 1}, features=plain_avx2) is None


def test_pretrainer_warns_before_training_when_bf16_will_be_slow(tmp_path):
    from uniter_tf.training.pretrain_config import PretrainConfig
    from uniter_tf.training.pretrainer import Pretrainer

    messages = []
    config = PretrainConfig(model="tiny", train_files=[str(tmp_path / "none*")], output_dir=str(tmp_path / "run"),
                            precision="mixed_bfloat16", num_train_steps=2, warmup_steps=0, progress_bar=False)
    Pretrainer(config, log=messages.append)
    flags = cpu_features()["features"]
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    expected = not (flags["avx512_bf16"] or flags["amx_bf16"] or has_gpu)
    assert any("mixed_bfloat16" in message and "slower" in message for message in messages) == expected


def test_xla_cache_flag_is_not_added_once_tensorflow_runs(monkeypatch, tmp_path):
    tf.constant(1.0).numpy()  # this process's runtime is up: the flags were read already
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_min_cluster_size=2")
    assert enable_xla_persistent_cache(str(tmp_path / "cache")) is None
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_min_cluster_size=2"
    monkeypatch.setenv("TF_XLA_FLAGS", f"--tf_xla_persistent_cache_directory={tmp_path}/mine")
    assert enable_xla_persistent_cache(str(tmp_path / "cache")) == f"{tmp_path}/mine"  # the user's wins
    monkeypatch.delenv("TF_XLA_FLAGS")
    monkeypatch.setenv(performance.CACHE_ENV, "off")
    assert performance.default_cache_directory() == "off"


def test_xla_compile_is_written_to_and_read_from_the_cache(tmp_path):
    """A fresh process enables the cache before TensorFlow starts; its XLA compile lands on disk and a
    second process finds the same entry (no new file)."""
    cache = tmp_path / "xla"
    script = (
            "import sys; sys.path.insert(0, %r)\n"
            "from uniter_tf.training.performance import enable_xla_persistent_cache\n"
            "print(enable_xla_persistent_cache(%r))\n"
            "import tensorflow as tf\n"
            "f = tf.function(lambda x: tf.nn.gelu(tf.matmul(x, x)) + 1.0, jit_compile=True)\n"
            "print(float(tf.reduce_sum(f(tf.ones([8, 8])))))\n" % (REPO, str(cache)))
    env = {key: value for key, value in os.environ.items() if key != "TF_XLA_FLAGS"}
    outputs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout.split())
        entries = sorted(os.listdir(cache))
        assert len(entries) == 1 and entries[0].startswith("xla_compile_cache") and "XLA_CPU_JIT" in entries[0]
    assert outputs[0] == outputs[1] and outputs[0][0] == str(cache)


@pytest.mark.slow
def test_xla_compiled_serving_signature_matches_the_keras_model(tmp_path):
    """``ExportOptions(jit_compile=True)``: the loaded SavedModel's scores equal the eager Keras model for
    batch sizes that pad to a bucket (3 -> 4) and that fill it (1), with the task head's answers."""
    import dataclasses

    from uniter_tf.export.exporter import example_inputs, export_uniter
    from uniter_tf.export.tiny import TINY_OPTIONS, build_tiny_model

    model = build_tiny_model()
    options = dataclasses.replace(TINY_OPTIONS, jit_compile=True, warmup=False)
    path = export_uniter(str(tmp_path / "uniter"), model.backbone, model.itm_head, task=model.task_hook(),
                         options=options, version=1)
    graph_def = tf.saved_model.load(path)
    signature = graph_def.signatures["score_tensors"]
    for batch_size in (3, 1):
        inputs = example_inputs(model.config.region_feature_dim, batch_size=batch_size, num_regions=5,
                                seed=batch_size)["score_tensors"]
        inputs["region_mask"][0, 3:] = 0  # one shorter example
        outputs = signature(**{name: tf.constant(value) for name, value in inputs.items()})
        for row in range(batch_size):
            single = {name: tf.constant(value[row:row + 1]) for name, value in inputs.items()}
            real = int(inputs["region_mask"][row].sum())
            single["region_features"] = single["region_features"][:, :real]
            single["region_positions"] = single["region_positions"][:, :real]
            single["region_mask"] = single["region_mask"][:, :real]
            encoded = model.backbone(single, training=False)
            np.testing.assert_allclose(outputs["itm_logits"][row].numpy(),
                                       model.itm_head(encoded["pooled_output"])[0].numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(outputs["task_logits"][row].numpy(), model.vqa_head(encoded)[0].numpy(),
                                       rtol=1e-4, atol=1e-5)
        assert outputs["answers"].shape == (batch_size, TINY_OPTIONS.top_k)
    # The model part is one XLA cluster in the saved function library.
    from tensorflow.python.saved_model import loader_impl

    library = loader_impl.parse_saved_model(path).meta_graphs[0].graph_def.library
    assert any(function.attr["_XlaMustCompile"].b for function in library.function)


def test_xla_cache_is_skipped_when_its_existing_folder_is_not_writable():
    """Bazel's sandbox mounts the home read-only with ~/.cache/uniter_tf/xla already there: makedirs
    succeeds on it but XLA's first write fails the compiled call, so the cache must stay off. /proc is
    such a folder even for root."""
    script = (
            "import os, sys; sys.path.insert(0, %r)\n"
            "from uniter_tf.training.performance import enable_xla_persistent_cache\n"
            "print(enable_xla_persistent_cache('/proc'), repr(os.environ.get('TF_XLA_FLAGS', '')))\n" % REPO)
    env = {key: value for key, value in os.environ.items() if key != "TF_XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["None", "''"]
