"""Pretraining throughput: the full loop (input pipeline included) vs the model step alone.

Measures, for one configuration per process (logical CPU devices must be set before TensorFlow starts):

* ``model_step``: the train update of the Pretrainer fed from an in-memory batch (``Dataset.from_tensors``
  repeated): model forward/backward, all-reduce, clipping, AdamW;
* ``full_loop``: the same update fed by the real input pipeline (GZIP TFRecords → decode → masking →
  bucketing), i.e. what ``uniter pretrain`` runs;
* ``pipeline``: the input pipeline alone, wall and CPU milliseconds per (per-replica) batch;
* ``optimizer``: our AdamW update alone (all trainable variables, random gradients), next to Keras 3's
  ``AdamW`` on the same variables for reference.

The batch mimics the official timing setup: 8 examples, 48 WordPiece tokens (+[CLS]/[SEP] = 50) and 36
regions of 2048-d features. Example::

    python bench/train_bench.py --model uniter-base --task mlm --precision float32 --steps 5
    python bench/train_bench.py --model uniter-base --task mlm --replicas 2 --steps 5
    python bench/train_bench.py --model uniter-base --modes optimizer --steps 8

``model_step`` and ``full_loop`` updates are interleaved (A B B A ...) so that the machine's drift between
minutes does not land on one of them. Prints one JSON line per run (seconds per update and examples/s,
medians over ``--steps`` updates after ``--warmup`` updates). Results and the commands that produced them: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import List

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))


def _write_records(prefix: str, model_config, num_records: int, tokens: int, regions: int) -> None:
    import numpy as np

    from uniter_tf.data import schema, tfrecord_io

    rng = np.random.default_rng(0)
    examples = []
    for index in range(num_records):
        x1 = rng.uniform(0, 300, size=regions)
        y1 = rng.uniform(0, 200, size=regions)
        boxes = np.stack([x1, y1, x1 + 50, y1 + 40], axis=1)
        examples.append(schema.make_example(
                image_id=f"img{index}", region_features=rng.uniform(0, 4, size=(regions, model_config.region_feature_dim)),
                region_boxes=boxes, image_height=480, image_width=640,
                soft_labels=rng.dirichlet(np.ones(model_config.num_soft_labels), size=regions),
                example_id=f"ex{index}", token_ids=rng.integers(1000, 20000, size=tokens)))
    tfrecord_io.write_sharded(examples, prefix, num_shards=2)


def step_times(function, warmup: int, steps: int) -> List[float]:
    """Wall seconds of each of ``steps`` calls of ``function`` after ``warmup`` untimed ones."""
    times = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        function()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _median_seconds(function, warmup: int, steps: int) -> float:
    return statistics.median(step_times(function, warmup, steps))


def _bench_pipeline(task: str, files, model_config, options, batches: int = 40) -> dict:
    """Wall and CPU milliseconds per batch of the task's input pipeline alone (after 10 batches of warm-up)."""
    from uniter_tf.data import pretraining_inputs

    iterator = iter(pretraining_inputs.build_task_dataset(task, files, model_config, options, seed=1))
    for _ in range(10):
        next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    return {"pipeline_wall_ms_per_batch": round(1000.0 * (time.perf_counter() - wall) / batches, 2),
            "pipeline_cpu_ms_per_batch": round(1000.0 * (time.process_time() - cpu) / batches, 2)}


def _bench_optimizer(trainer, warmup: int, steps: int) -> dict:
    """Seconds per AdamW update of every trainable variable: ours, and Keras 3's AdamW for reference."""
    import keras
    import tensorflow as tf

    variables = trainer.variables
    gradients = [tf.random.normal(variable.shape, stddev=1e-3, seed=index) for index, variable in enumerate(variables)]
    learning_rate = tf.constant(1e-4)

    @tf.function
    def ours():
        trainer.optimizer.apply_gradients(gradients, variables, learning_rate, apply_update=tf.constant(True))

    with trainer.strategy.scope():
        reference = keras.optimizers.AdamW(learning_rate=1e-4, beta_1=0.9, beta_2=0.98, epsilon=1e-6,
                                           weight_decay=0.01)
        reference.build(variables)

    @tf.function
    def keras_adamw():
        reference.apply_gradients(zip(gradients, variables))

    return {"parameters": int(sum(variable.shape.num_elements() for variable in variables)),
            "optimizer_seconds_per_update": round(_median_seconds(ours, warmup, steps), 4),
            "keras_adamw_seconds_per_update": round(_median_seconds(keras_adamw, warmup, steps), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="uniter-base")
    parser.add_argument("--task", default="mlm", choices=("mlm", "mrfr", "mrckl", "itm"))
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16", "mixed_float16"))
    parser.add_argument("--replicas", type=int, default=1, help="2: MirroredStrategy over 2 logical CPUs")
    parser.add_argument("--batch-size", type=int, default=8, help="per replica")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--modes", default="pipeline,model_step,full_loop",
                        help="comma-separated: pipeline, optimizer, model_step, full_loop")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from uniter_tf.training.strategy import configure_logical_cpus

    if args.replicas > 1:
        configure_logical_cpus(args.replicas)
    from uniter_tf.config import UniterConfig
    from uniter_tf.data import pretraining_inputs
    from uniter_tf.training.pretrain_config import PretrainConfig
    from uniter_tf.training.pretrainer import Pretrainer

    model_config = UniterConfig.resolve(args.model)
    workdir = tempfile.mkdtemp(prefix="train-bench-")
    _write_records(os.path.join(workdir, "train"), model_config,
                   num_records=max(64, 4 * args.batch_size * args.replicas), tokens=args.tokens,
                   regions=args.regions)
    text_bucket = args.tokens + 2
    options = {"batch_size": args.batch_size, "max_text_length": args.tokens, "text_bucket_boundaries": [text_bucket],
               "region_bucket_boundaries": [args.regions], "shuffle_buffer": 64, "itm_negative_pool_size": 16}
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.replicas)]) if args.replicas > 1 \
        else tf.distribute.get_strategy()
    config = PretrainConfig(model=args.model, train_files=[os.path.join(workdir, "train*")],
                            output_dir=os.path.join(workdir, "run"), inputs=options, task_ratios={args.task: 1},
                            num_train_steps=10_000, warmup_steps=10, precision=args.precision,
                            jit_compile=args.jit_compile, progress_bar=False)
    trainer = Pretrainer(config, strategy=strategy, log=lambda message: None)
    results = {"model": args.model, "task": args.task, "precision": args.precision, "replicas": args.replicas,
               "per_replica_batch": args.batch_size, "tokens": text_bucket, "regions": args.regions,
               "jit_compile": args.jit_compile}
    modes = args.modes.split(",")
    unknown = set(modes) - {"optimizer", "pipeline", "model_step", "full_loop"}
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")
    if "optimizer" in modes:
        results.update(_bench_optimizer(trainer, args.warmup, args.steps))
    if "pipeline" in modes:
        results.update(_bench_pipeline(args.task, config.train_files, model_config,
                                       pretraining_inputs.PretrainingInputConfig(**options)))
    iterators = {}
    if "model_step" in modes:
        batch = next(iter(pretraining_inputs.build_task_dataset(
                args.task, config.train_files, model_config,
                pretraining_inputs.PretrainingInputConfig(**{**options, "batch_size": args.batch_size * args.replicas}),
                seed=1)))
        dataset = tf.data.Dataset.from_tensors(batch).repeat()
        iterators["model_step"] = iter(strategy.experimental_distribute_dataset(dataset))
    if "full_loop" in modes:
        iterators["full_loop"] = trainer._iterator(args.task)  # the real per-replica pipeline
    # Interleaved A B B A ...: the machine's speed drifts by several percent between minutes, which
    # would otherwise land on whichever mode ran second.
    times = {mode: [] for mode in iterators}
    order = list(iterators)
    for index in range(args.warmup + args.steps):
        for mode in (order if index % 2 == 0 else order[::-1]):
            trainer._iterators[args.task] = iterators[mode]
            start = time.perf_counter()
            trainer.train_update(args.task)
            if index >= args.warmup:
                times[mode].append(time.perf_counter() - start)
    for mode, measured in times.items():
        seconds = statistics.median(measured)
        results[f"{mode}_seconds_per_update"] = round(seconds, 4)
        results[f"{mode}_examples_per_second"] = round(args.batch_size * args.replicas / seconds, 2)
    if len(times) == 2:
        results["input_pipeline_overhead_percent"] = round(
                100.0 * (results["full_loop_seconds_per_update"] / results["model_step_seconds_per_update"] - 1.0), 1)
    if "pipeline_cpu_ms_per_batch" in results and "model_step_seconds_per_update" in results:
        results["pipeline_cpu_percent_of_model_step"] = round(
                0.1 * results["pipeline_cpu_ms_per_batch"] * args.replicas / results["model_step_seconds_per_update"], 2)
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
