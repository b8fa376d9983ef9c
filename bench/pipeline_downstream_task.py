"""Runs the whole pipeline for one downstream task on rendered sample scenes and prints the gate's verdict.

Run (from the repository root)::

    .venv/bin/python bench/pipeline_downstream_task.py --task ve --output /tmp/pipeline_ve \
        [--num-images 80] [--steps 300] [--learning-rate 5e-4] [--threshold 0.5] [--pretrain-steps 0]

It renders ``--num-images`` scenes (``uniter_tf.data.sample_data``, as ``uniter sample-data``; they hold the
SNLI-VE hypotheses, and for ``--task refcoco`` their RefCOCO ``refs.json`` / ``instances.json`` are written
with ``uniter_tf.data.sample_refcoco_records.write_annotations``; for ``--task nlvr2`` the local runner's
NLVR2 image pairs and ``train.json`` / ``dev.json`` are added beside them,
``pipeline.local_runner.ensure_task_annotations``), writes the toy detector, and runs
``pipeline.definition.create_pipeline`` with ``TrainingConfig(finetune_task=TASK, include_pretraining=False)``
(the tiny model at the demo's size, fine-tuned from scratch; features pooled over the ground-truth boxes)
with LocalDagRunner and SQLite MLMD under ``--output``, the gate at ``{<the task's gate metric>: THRESHOLD}``
(``<task>_accuracy``; ``r_mean`` for ``retrieval``). ``--pretrain-steps N`` adds the pretraining Trainer (N
updates on the captions) and fine-tunes from it (retrieval's rank head then starts from its ITM head).
It prints the wall time, every node's state, the gate's message and task metrics, and the pushed versions.
The slow tests tests/test_pipeline_downstream_tasks.py (RefCOCO) and tests/test_pipeline_retrieval.py
(retrieval) run these cases with assertions.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

#: The demo's model size (pipeline/configs.py MODEL_OVERRIDES at the time of writing), spelled out so the
#: figures do not move with the demo recipe.
MODEL_OVERRIDES = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128, "initializer_range": 0.05,
                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "ot_iterations": 10}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--task", required=True, choices=("ve", "nlvr2", "refcoco", "retrieval"))
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-images", type=int, default=80)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the task's (pipeline/configs.py)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--pretrain-steps", type=int, default=0, help="0: no pretraining, fine-tune from scratch")
    args = parser.parse_args(argv)

    from tfx import v1 as tfx

    from components.uniter_example_gen import schema as schema_lib
    from pipeline import configs, local_runner
    from pipeline import definition as pipeline_lib
    from uniter_tf.data import sample_data
    from uniter_tf.extraction import toy_detector

    output = os.path.abspath(args.output)
    data_root = os.path.join(output, "data")
    if not os.path.exists(os.path.join(data_root, "captions.json")):
        sample_data.generate(data_root, sample_data.SampleDataConfig(num_images=args.num_images, seed=0))
    local_runner.ensure_task_annotations(data_root, args.task)
    detector = toy_detector.write_toy_detector(os.path.join(output, "detector"))
    settings = dict(feature_dim=toy_detector.FEATURE_DIM, num_soft_labels=toy_detector.NUM_CLASSES, min_regions=1,
                    max_regions=5)
    os.makedirs(os.path.join(output, "schema"), exist_ok=True)
    data = configs.DataConfig(
            data_root=data_root, ground_truth_boxes=True, detector_path=detector,
            num_detector_classes=toy_detector.NUM_CLASSES, min_boxes=1, max_boxes=5,
            caption_schema_file=schema_lib.write_schema(os.path.join(output, "schema", "captions.pbtxt"),
                                                        kind="captions", **settings),
            task_schema_file=schema_lib.write_schema(os.path.join(output, "schema", f"{args.task}.pbtxt"),
                                                     kind=configs.FINETUNE_TASKS[args.task].schema_kind, **settings))
    learning_rate = args.learning_rate or configs.FINETUNE_TASKS[args.task].learning_rate
    metric = sorted(configs.FINETUNE_TASKS[args.task].lower_bounds)[0]
    training = configs.TrainingConfig(
            finetune_task=args.task, include_pretraining=args.pretrain_steps > 0,
            pretrain_steps=max(1, args.pretrain_steps), finetune_steps=args.steps, eval_steps=2,
            batch_size=32, model_overrides={**MODEL_OVERRIDES, "region_feature_dim": toy_detector.FEATURE_DIM,
                                            "num_soft_labels": toy_detector.NUM_CLASSES},
            finetune_config={"learning_rate": learning_rate, "warmup_steps": 20, "dropout": 0.0, "seed": 24,
                             "valid_steps": args.steps, "log_every": 50,
                             # Without pretraining, from scratch; with it, from its checkpoint (the default).
                             **({} if args.pretrain_steps > 0 else {"init": "scratch"})})
    metadata_path = os.path.join(output, "metadata.sqlite")
    serving_dir = os.path.join(output, "serving")
    pipeline = pipeline_lib.create_pipeline(
            pipeline_name=f"uniter-{args.task}", pipeline_root=os.path.join(output, "root"), data=data,
            training=training, serving_model_dir=serving_dir,
            gate=configs.GateConfig(lower_bounds={metric: args.threshold}, max_regression={}),
            beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"],
            metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path))
    start = time.time()
    tfx.orchestration.LocalDagRunner().run(pipeline)
    print(f"wall time {time.time() - start:.0f} s, load average {os.getloadavg()}")
    print(json.dumps(local_runner.node_states(metadata_path, f"uniter-{args.task}"), sort_keys=True))
    reports = sorted(glob.glob(os.path.join(output, "root", "UniterEvaluator", "evaluation", "*", "metrics.json")),
                     key=lambda path: int(path.split(os.sep)[-2]))
    with open(reports[-1], encoding="utf-8") as handle:
        report = json.load(handle)
    print(report["message"])
    print(json.dumps({key: value for key, value in report["metrics"].items()
                      if key.startswith(("num_" + args.task, args.task, "itm_", "num_gallery", "img_r", "txt_r",
                                         metric))}, sort_keys=True))
    print("pushed versions:", sorted(os.listdir(serving_dir)) if os.path.isdir(serving_dir) else [])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
