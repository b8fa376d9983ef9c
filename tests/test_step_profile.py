"""bench/step_profile.py: reading a profiler trace back into per-op kernel time and grouping it."""

import os
import sys

import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bench"))

import step_profile  # noqa: E402  pylint: disable=wrong-import-position


def test_op_category_splits_matmuls_model_ops_and_the_update():
    category = step_profile.op_category
    assert category("uniter_pretraining_1/uniter_backbone_1/layer_0_1/intermediate_1/BiasAdd",
                    "_MklNativeFusedMatMul") == "forward matmul"
    assert category("gradient_tape/uniter_pretraining_1/uniter_backbone_1/layer_0_1/intermediate_1/MatMul/MatMul",
                    "_MklMatMul") == "backward matmul"
    assert category("uniter_pretraining_1/uniter_backbone_1/layer_0_1/Gelu/Erf", "Erf") == "other forward"
    assert category("gradient_tape/uniter_pretraining_1/uniter_backbone_1/layer_0_1/Gelu/mul", "Mul") == \
        "other backward"
    assert category("AddN", "AddN") == "other backward"
    assert category("cond/then/_0/cond/ResourceApplyAdam", "ResourceApplyAdam") == "optimizer"
    assert category("clip_by_global_norm/mul", "Mul") == "optimizer"


def test_per_op_seconds_reads_the_kernels_of_a_trace(tmp_path):
    weights = tf.Variable(tf.random.normal([64, 64]))
    inputs = tf.random.normal([32, 64])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.matmul(inputs, weights) ** 2)
        weights.assign_sub(1e-6 * tape.gradient(loss, weights))
        return loss

    step()
    tf.profiler.experimental.start(str(tmp_path))
    for _ in range(3):
        step().numpy()
    tf.profiler.experimental.stop()
    totals = step_profile.per_op_seconds(str(tmp_path))
    kernels = {kernel for _, kernel in totals}
    assert any("MatMul" in kernel for kernel in kernels), kernels
    assert all(seconds >= 0 for seconds in totals.values())
    groups = {step_profile.op_category(node, kernel) for node, kernel in totals}
    assert {"forward matmul", "backward matmul"} <= groups, groups
    # Executor and eager wrappers span many ops; counting them would add the step twice.
    assert not any(kernel in ("Process", "Run") or " " in node for node, kernel in totals)
