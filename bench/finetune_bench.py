"""Fine-tuning and evaluation-gate throughput on synthetic VQA records.

    python bench/finetune_bench.py [--preset tiny] [--steps 30] [--batch-size 16] [--skip-export]

Measures, after warm-up (tracing excluded):

* VQA fine-tuning updates per second and examples per second (the full update: forward, BCE loss, joint
  gradient clip, two AdamW steps);
* validation examples per second;
* the export's ``serve_examples`` scoring rate in pairs per second (what the evaluation gate calls for
  ITM negatives and the retrieval gallery), unless ``--skip-export``.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-answers", type=int, default=16)
    parser.add_argument("--skip-export", action="store_true")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from uniter_tf.config import UniterConfig
    from uniter_tf.testing import synthetic_vqa
    from uniter_tf.training import finetune

    workdir = tempfile.mkdtemp(prefix="finetune-bench-")
    model_config = UniterConfig.from_preset(args.preset)
    train = synthetic_vqa.write_synthetic_vqa_records(os.path.join(workdir, "train"), model_config, num_images=64,
                                                      num_answers=args.num_answers, num_regions=36)
    evaluation = synthetic_vqa.write_synthetic_vqa_records(os.path.join(workdir, "eval"), model_config,
                                                           num_images=16, num_answers=args.num_answers,
                                                           num_regions=36, split_seed=1, captions_per_image=1)
    config = finetune.FinetuneConfig(task="vqa", task_config={"num_answers": args.num_answers},
                                     model_config=args.preset, train_files=train, eval_files=evaluation,
                                     output_dir=os.path.join(workdir, "run"), train_batch_size=args.batch_size,
                                     eval_batch_size=args.batch_size, warmup_steps=1,
                                     num_train_steps=args.steps + 5)
    run = finetune.FinetuneRun(config)
    train_dataset, eval_dataset = run.datasets()
    batches = list(train_dataset.take(args.steps + 5))
    for inputs, labels in batches[:5]:  # tracing of the shapes seen
        run._train_step(inputs, labels)  # pylint: disable=protected-access
    started = time.perf_counter()
    for inputs, labels in batches[5:]:
        loss, _, _ = run._train_step(inputs, labels)  # pylint: disable=protected-access
    float(loss)
    train_seconds = time.perf_counter() - started
    run.evaluate(eval_dataset)
    started = time.perf_counter()
    eval_metrics = run.evaluate(eval_dataset)
    eval_seconds = time.perf_counter() - started
    result = {
            "preset": args.preset,
            "batch_size": args.batch_size,
            "regions_per_image": 36,
            "train_updates_per_s": args.steps / train_seconds,
            "train_examples_per_s": args.steps * args.batch_size / train_seconds,
            "eval_examples_per_s": eval_metrics["num_examples"] / eval_seconds,
    }
    if not args.skip_export:
        from components.uniter_evaluator import evaluation as gate
        from components.uniter_evaluator import executor

        export_started = time.perf_counter()
        from uniter_tf.export.model_dir import export_model_dir

        run.save_checkpoint()
        model_dir = export_model_dir(run.config.output_dir, os.path.join(workdir, "serving"), flat=True,
                                     record_ops=False).path
        result["export_s"] = time.perf_counter() - export_started
        scorer = executor.load_scorer(model_dir)
        records = [record.numpy() for record in tf.data.TFRecordDataset(evaluation, compression_type="GZIP")]
        eval_records = gate.EvalRecords(records)
        gate.evaluate(scorer, eval_records, batch_size=32, max_gallery_texts=4)  # warm-up / tracing
        started = time.perf_counter()
        metrics = gate.evaluate(scorer, eval_records, batch_size=32)
        gate_seconds = time.perf_counter() - started
        captions = len(eval_records.captions)
        pairs = 2 * captions + captions * int(metrics.get("num_gallery_images", 0)) + len(eval_records.questions)
        result.update({"gate_pairs": pairs, "gate_s": gate_seconds, "gate_pairs_per_s": pairs / gate_seconds})
    print(json.dumps({key: (round(value, 3) if isinstance(value, float) else value) for key, value in result.items()},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
