"""Benchmark of the UNITER model core on CPU.

Measures, on ``uniter-base`` (or ``--preset``):

* the training step (batch 8, 50 text tokens + 36 regions, ITM + WRA loss, forward + backward +
  AdamW) in float32 and under Keras ``mixed_bfloat16``, each with and without XLA (``jit_compile``);
* ITM inference examples/s at batch 32 (backbone + ITM head, eval mode);
* IPOT time (batch 32, 50 × 36, 50 iterations), eager-graph and XLA;
* the measured matmul peak (2048² float32 and bfloat16) and the model FLOP utilisation (MFU) of
  each training-step variant against the float32 / bfloat16 peak.

Usage::

    python bench/model_bench.py --quick            # a few minutes
    python bench/model_bench.py --steps 10 --json results.json

Prints a Markdown table (and writes JSON with ``--json``). Times are medians over the timed steps,
after warm-up steps (which include tracing and XLA compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _timed(function, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        _block(function())
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        _block(function())
        durations.append(time.perf_counter() - start)
    return {"median_s": statistics.median(durations), "min_s": min(durations), "runs": len(durations)}


def _block(result):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    for value in tf.nest.flatten(result):
        if hasattr(value, "numpy"):
            value.numpy()


def make_batch(config, batch_size: int, text_length: int, num_regions: int, seed: int = 0) -> dict:
    """A full-length ITM batch (all tokens and regions real)."""
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(config.first_word_id, config.vocab_size, size=(batch_size, text_length), dtype=np.int32)
    token_ids[:, 0], token_ids[:, -1] = config.cls_token_id, config.sep_token_id
    boxes = np.sort(rng.random((batch_size, num_regions, 4), dtype=np.float32), axis=-1)
    width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return {
            "token_ids": token_ids,
            "text_mask": np.ones((batch_size, text_length), np.int32),
            "region_features": rng.random((batch_size, num_regions, config.region_feature_dim), dtype=np.float32),
            "region_positions": np.concatenate([boxes, width[..., None], height[..., None],
                                                (width * height)[..., None]], axis=-1).astype(np.float32),
            "region_mask": np.ones((batch_size, num_regions), np.int32),
            "itm_labels": (np.arange(batch_size) % 2).astype(np.int32),
    }


def training_flops(config, batch_size: int, text_length: int, num_regions: int) -> float:
    """Matmul FLOPs of one training step (forward × 3), backbone + ITM head; embeddings lookups excluded."""
    hidden, intermediate = config.hidden_size, config.intermediate_size
    length = text_length + num_regions
    per_token_layer = 2 * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = 2 * 2 * length * length * hidden  # QK^T and PV, per example per layer
    forward = batch_size * (config.num_hidden_layers * (length * per_token_layer + attention)
                            + num_regions * 2 * (config.region_feature_dim + 7) * hidden
                            + 2 * hidden * hidden + 2 * hidden * 2)
    return 3.0 * forward


def matmul_peak(dtype_name: str, size: int, warmup: int, repeats: int) -> dict:
    """Measured GFLOP/s of a ``size × size`` matmul."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    dtype = tf.bfloat16 if dtype_name == "bfloat16" else tf.float32
    left = tf.cast(tf.random.normal([size, size]), dtype)
    right = tf.cast(tf.random.normal([size, size]), dtype)
    multiply = tf.function(lambda: tf.matmul(left, right))
    timing = _timed(multiply, warmup, repeats)
    timing["gflops"] = 2.0 * size ** 3 / timing["min_s"] / 1e9
    return timing


def bench_training(preset: str, precision: str, jit: bool, args) -> dict:
    """Median seconds per training step of one variant."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from uniter_tf.config import UniterConfig  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.backbone import UniterBackbone  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.pretraining_model import UniterPretrainingModel  # pylint: disable=import-outside-toplevel

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    try:
        config = UniterConfig.from_preset(preset)
        model = UniterPretrainingModel(UniterBackbone(config))
        optimizer = keras.optimizers.AdamW(learning_rate=5e-5, beta_1=0.9, beta_2=0.98, epsilon=1e-6,
                                           weight_decay=0.01)
        # ITM trains the backbone and the ITM head; the other heads get no gradient.
        variables = model.backbone.trainable_variables + model.itm_head.trainable_variables
        variables = [variable for variable in variables if "mask_embedding" not in variable.path]
        optimizer.build(variables)
        batch = {key: tf.constant(value) for key, value in
                 make_batch(config, args.train_batch, args.text_length, args.num_regions).items()}

        @tf.function(jit_compile=jit)
        def train_step(inputs):
            with tf.GradientTape() as tape:
                loss, _ = model.compute_task_loss("itm", inputs, training=True)
            gradients = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(gradients, variables))
            return loss

        start = time.perf_counter()
        _block(train_step(batch))
        first_call = time.perf_counter() - start
        timing = _timed(lambda: train_step(batch), args.warmup, args.steps)
        timing["first_call_s"] = first_call
        return timing
    finally:
        keras.mixed_precision.set_global_policy("float32")


def bench_inference(preset: str, precision: str, jit: bool, args) -> dict:
    """ITM inference examples/s at ``--infer-batch``."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from uniter_tf.config import UniterConfig  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.backbone import UniterBackbone  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.pretraining_heads import ItmHead  # pylint: disable=import-outside-toplevel

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bf16" else "float32")
    try:
        config = UniterConfig.from_preset(preset)
        backbone = UniterBackbone(config)
        head = ItmHead(config.hidden_size)
        head.build()
        batch = make_batch(config, args.infer_batch, args.text_length, args.num_regions)
        batch.pop("itm_labels")
        batch = {key: tf.constant(value) for key, value in batch.items()}

        @tf.function(jit_compile=jit)
        def score(inputs):
            return head(backbone(inputs, training=False)["pooled_output"])

        start = time.perf_counter()
        _block(score(batch))
        first_call = time.perf_counter() - start
        timing = _timed(lambda: score(batch), args.warmup, args.infer_steps)
        timing["first_call_s"] = first_call
        timing["examples_per_s"] = args.infer_batch / timing["median_s"]
        return timing
    finally:
        keras.mixed_precision.set_global_policy("float32")


def bench_ipot(jit: bool, args) -> dict:
    """IPOT (cost + plan + distance) time for batch 32, 50 × 36, 50 iterations."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from uniter_tf.layers.optimal_transport import optimal_transport_distance  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    text = tf.constant(rng.standard_normal((32, args.text_length, 768)).astype(np.float32))
    regions = tf.constant(rng.standard_normal((32, args.num_regions, 768)).astype(np.float32))
    text_padding = tf.constant(np.arange(args.text_length)[None] >= rng.integers(10, args.text_length + 1, 32)[:, None])
    region_padding = tf.constant(np.arange(args.num_regions)[None] >= rng.integers(10, args.num_regions + 1, 32)[:, None])
    ipot = tf.function(optimal_transport_distance, jit_compile=jit)
    return _timed(lambda: ipot(text, regions, text_padding, region_padding)[0], args.warmup, args.ipot_steps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="uniter-base")
    parser.add_argument("--quick", action="store_true",
                        help="2 timed steps per variant after the first (tracing/compiling) call.")
    parser.add_argument("--steps", type=int, default=10, help="Timed training steps per variant.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--infer-batch", type=int, default=32)
    parser.add_argument("--text-length", type=int, default=50)
    parser.add_argument("--num-regions", type=int, default=36)
    parser.add_argument("--variants", default="fp32,fp32-xla,bf16,bf16-xla",
                        help="Training/inference variants: comma list of fp32, fp32-xla, bf16, bf16-xla.")
    parser.add_argument("--skip", default="", help="Comma list of sections to skip: peak, train, infer, ipot.")
    parser.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 2, 0
    args.infer_steps = max(2, args.steps // 2)
    args.ipot_steps = 10 if args.quick else 20
    skip = set(filter(None, args.skip.split(",")))
    variants = [variant.strip() for variant in args.variants.split(",") if variant.strip()]

    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from uniter_tf.config import UniterConfig  # pylint: disable=import-outside-toplevel

    def save():
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(results, handle, indent=2)

    results = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "tensorflow": tf.__version__, "args": vars(args)}
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; preset {args.preset}", flush=True)
    if "peak" not in skip:
        results["matmul_peak"] = {dtype: matmul_peak(dtype, 2048, 2, 5) for dtype in ("float32", "bfloat16")}
        for dtype, timing in results["matmul_peak"].items():
            save()
            print(f"matmul 2048² {dtype}: {timing['gflops']:.1f} GFLOP/s", flush=True)
    config = UniterConfig.from_preset(args.preset)
    flops = training_flops(config, args.train_batch, args.text_length, args.num_regions)
    results["training_step_gflop"] = flops / 1e9
    if "train" not in skip:
        results["train"] = {}
        for variant in variants:
            precision, jit = variant.split("-")[0], variant.endswith("-xla")
            timing = bench_training(args.preset, precision, jit, args)
            peak = results.get("matmul_peak", {}).get("bfloat16" if precision == "bf16" else "float32")
            if peak:
                timing["mfu"] = flops / timing["median_s"] / (peak["gflops"] * 1e9)
            results["train"][variant] = timing
            save()
            print(f"train step {variant}: {timing['median_s']:.3f} s/step (first call {timing['first_call_s']:.1f} s)"
                  + (f", MFU {timing['mfu']:.1%}" if "mfu" in timing else ""), flush=True)
    if "infer" not in skip:
        results["infer"] = {}
        for variant in variants:
            precision, jit = variant.split("-")[0], variant.endswith("-xla")
            timing = bench_inference(args.preset, precision, jit, args)
            results["infer"][variant] = timing
            save()
            print(f"ITM inference {variant}: {timing['examples_per_s']:.1f} examples/s", flush=True)
    if "ipot" not in skip:
        results["ipot"] = {name: bench_ipot(jit, args) for name, jit in (("graph", False), ("xla", True))}
        for name, timing in results["ipot"].items():
            print(f"IPOT {name}: {timing['median_s'] * 1e3:.2f} ms", flush=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
