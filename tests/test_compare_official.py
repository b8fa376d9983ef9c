"""bench/compare_official.py: the matmuls of one training update and the bound they put on its speed."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bench"))

import compare_official  # noqa: E402  pylint: disable=wrong-import-position
import model_bench  # noqa: E402  pylint: disable=wrong-import-position

from uniter_tf.config import UniterConfig  # noqa: E402


def test_step_gemms_count_the_same_flops_as_the_step_model():
    config = UniterConfig.resolve("uniter-base")
    gemms = compare_official.step_gemms(8, 50, 36, config)
    counted = compare_official.gemm_flops(gemms)
    # training_flops is forward × 3 (it also counts the region features' gradient and the heads, which the
    # GEMM list leaves out): the two must agree to a fraction of a percent.
    assert counted == pytest.approx(model_bench.training_flops(config, 8, 50, 36), rel=5e-3)


def test_every_forward_product_has_its_input_and_weight_gradient():
    config = UniterConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                          region_feature_dim=32)
    gemms = compare_official.step_gemms(2, 5, 3, config)
    # In order: the region projection, then per block Q, K, V, output, intermediate, FFN output and the two
    # attention products; then the backward products.
    forward, backward = gemms[: 1 + 3 * 8], gemms[1 + 3 * 8:]
    assert forward[0] == [1, 2 * 3, 32, 64, 0, 0]
    dense = [g for g in forward if g[0] == 1]
    input_gradients = [g for g in backward if g[0] == 1 and g[5]]
    weight_gradients = [g for g in backward if g[0] == 1 and g[4]]
    assert len(dense) == 6 * 3 + 1
    # dX = dY Wᵀ is [m, n] @ [k, n]ᵀ for every block's dense layer (the region features need no dX) ...
    assert sorted((m, n, k) for _, m, k, n, _, _ in dense[1:]) == sorted(tuple(g[1:4]) for g in input_gradients)
    # ... and dW = Xᵀ dY is [m, k]ᵀ @ [m, n] for every dense layer.
    assert sorted((k, m, n) for _, m, k, n, _, _ in dense) == sorted(tuple(g[1:4]) for g in weight_gradients)
    # Backward products cost twice the forward ones, less the region features' input gradient.
    region_forward = compare_official.gemm_flops(forward[:1])
    assert compare_official.gemm_flops(backward) == pytest.approx(2 * compare_official.gemm_flops(forward)
                                                                 - region_forward)


def test_matmul_step_worker_runs_the_products_and_reports_their_rate():
    config = UniterConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          region_feature_dim=16)
    gemms = compare_official.step_gemms(2, 6, 4, config)
    result = compare_official.time_gemms(gemms, 0, 2)
    assert result["gemms"] == len(gemms) and len(result["all_s"]) == 2
    assert result["gflop"] == pytest.approx(compare_official.gemm_flops(gemms) / 1e9)
    assert result["gflops"] == pytest.approx(result["gflop"] / result["median_s"])


def test_the_bound_is_the_official_update_over_our_matmuls_alone():
    train = {"case": "train-itm", "official": 4.89, "ours": 4.53, "speedup": 4.89 / 4.53}
    matmuls = {"case": "matmul-step", "official": 2.95, "ours": 3.82, "speedup": 2.95 / 3.82}
    bound = compare_official.matmul_bound(train, matmuls)
    assert bound["best_ratio"] == pytest.approx(4.89 / 3.82)
    assert bound["ours_matmul_share"] == pytest.approx(3.82 / 4.53)
    assert bound["official_matmul_share"] == pytest.approx(2.95 / 4.89)
    line = compare_official.format_table([dict(train, official_runs=[4.89], ours_runs=[4.53], other_cores_max=0.0),
                                          dict(matmuls, official_runs=[2.95], ours_runs=[3.82],
                                               other_cores_max=0.0)],
                                         {"cpu_model": "x", "logical_cpus": 2, "features": ["avx2"],
                                          "fma_peak": {"gflops": 156.5, "how": "test"}})
    assert "at best **1.28×** the official (measured 1.08×)" in line
