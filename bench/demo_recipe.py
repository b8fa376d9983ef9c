"""Measures recipes of the demo's training (issue 11): held-out ITM accuracy and VQA score over the baseline.

Run (from the repository root; first the data once, then any number of variants)::

    .venv/bin/python bench/demo_recipe.py prepare --num-images 200 [--presence-questions] \
        [--cache /tmp/demo_recipe_cache]
    .venv/bin/python bench/demo_recipe.py train --cache /tmp/demo_recipe_cache/n200 --name NAME \
        [--pretrain-steps N] [--finetune-steps N] [--pretrained EARLIER_NAME] [--vqa-examples DIR] \
        [--set pretrain.learning_rate=0.003] [--set finetune.task_config.itm_rehearsal_ratio=0] \
        [--set run.rehearsal=1.0] [--set model.hidden_size=96] ...

``prepare`` renders the sample data (``uniter_tf.data.sample_data``, as ``uniter sample-data``) and runs the
data part of the pipeline itself (``pipeline.definition.create_pipeline`` with
``TrainingConfig(enabled=False)``: ImageFolder, the SSD-MobileNet-v2 RegionFeatureExtractor over the
ground-truth boxes, both UniterExampleGens, the data contract) with LocalDagRunner, so the examples are
exactly the pipeline's; it prints the wall time. Run again on the same folder with other annotation
settings, it rewrites only the annotation files: the extraction comes from the pipeline's cache and the
ExampleGens write new artifacts (``train`` takes the newest, or ``--vqa-examples``).

``train`` runs the two Trainers' own run_fns (``pipeline.pretrain_module.run_fn`` then
``pipeline.finetune_module.run_fn``) on those examples with the custom_config the pipeline builds from
``pipeline/configs.py`` (changed by ``--set SECTION.KEY=JSON``, SECTION one of ``model``, ``pretrain``,
``finetune``, ``run``), then scores the exports with the evaluator's routine
(``uniter_tf.evaluation.evaluate``, what ``components/uniter_evaluator`` runs) on the eval split. It prints
per stage the updates, the wall time and the load average, the held-out ``itm_accuracy`` of the pretrained
and of the fine-tuned export, ``vqa_score``, ``vqa_baseline_score`` (question-only, same split), their
difference and the per-question-type scores of model and baseline, and appends one JSON line per variant
to ``<cache>/results.jsonl``. ``--pretrained NAME`` fine-tunes from an earlier variant's pretraining.

Region feature standardisation (``UniterConfig.region_feature_standardization``, on in the recipe) is a model
override like any other: ``--set model.region_feature_standardization=false`` measures the raw features. The
pretraining run_fn computes its statistics from the caption training split when it starts from scratch; the
fine-tuning restores them with the backbone, and the scores are the exported SavedModels', so the bench
measures exactly what is served.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import types
from typing import Any, Dict, List, Optional

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPOSITORY_ROOT not in sys.path:  # run as a script from the checkout
    sys.path.insert(0, REPOSITORY_ROOT)

PIPELINE_NAME = "demo-recipe"


def _load() -> str:
    return os.popen("uptime").read().strip().split("load average:")[-1].strip()


def prepare(args) -> None:
    """Renders the sample data and runs the pipeline's data components into ``<cache>/n<N>``."""
    from tfx import v1 as tfx

    from pipeline import configs
    from pipeline import definition as pipeline_lib
    from pipeline import local_runner
    from uniter_tf.data import sample_data

    root = os.path.join(args.cache, args.tag or f"n{args.num_images}")
    data_root = os.path.join(root, "data")
    started = time.time()
    config = sample_data.SampleDataConfig(num_images=args.num_images, seed=args.seed,
                                          presence_questions=args.presence_questions)
    image_dir = os.path.join(data_root, "images")
    if os.path.isdir(image_dir) and len(os.listdir(image_dir)) == args.num_images:
        # Same images: rewrite only the annotation files, so the pipeline's cache keeps the extraction (its
        # fingerprint is the image folder's listing) and only the ExampleGens of changed files run again.
        scratch = os.path.join(root, "regenerated")
        shutil.rmtree(scratch, ignore_errors=True)
        counts = sample_data.generate(scratch, config)
        for name in os.listdir(scratch):
            if name != "images":
                shutil.copyfile(os.path.join(scratch, name), os.path.join(data_root, name))
        shutil.rmtree(scratch)
    else:
        shutil.rmtree(image_dir, ignore_errors=True)
        counts = sample_data.generate(data_root, config)
    print(f"sample data: {counts} in {time.time() - started:.1f} s", flush=True)
    metadata_path = os.path.join(root, "metadata.sqlite")
    pipeline = pipeline_lib.create_pipeline(
            pipeline_name=PIPELINE_NAME, pipeline_root=os.path.join(root, "tfx"),
            data=configs.DataConfig(data_root=data_root, ground_truth_boxes=True),
            training=configs.TrainingConfig(enabled=False, model_overrides=dict(configs.MODEL_OVERRIDES)),
            serving_model_dir=os.path.join(root, "serving"), beam_pipeline_args=list(configs.BEAM_PIPELINE_ARGS),
            metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path))
    started = time.time()
    tfx.orchestration.LocalDagRunner().run(pipeline)
    print(f"data components: {time.time() - started:.1f} s (load {_load()})", flush=True)
    print(json.dumps(local_runner.node_states(metadata_path, PIPELINE_NAME)), flush=True)


def _examples_uri(cache: str, node: str) -> str:
    uris = sorted(glob.glob(os.path.join(cache, "tfx", node, "examples", "*")), key=lambda path: int(
            os.path.basename(path)))
    if not uris:
        raise FileNotFoundError(f"no examples of {node} under {cache}: run `prepare` first")
    return uris[-1]


def _split_patterns(examples_uri: str, split: str) -> List[str]:
    return [os.path.join(examples_uri, f"Split-{split}", "*")]


def _apply_sets(settings: Dict[str, Dict[str, Any]], assignments: List[str]) -> None:
    """``SECTION.KEY.SUBKEY=JSON`` into ``settings[SECTION]`` (nested keys create dicts)."""
    for assignment in assignments:
        target, _, raw = assignment.partition("=")
        section, *keys = target.split(".")
        if section not in settings or not keys:
            raise SystemExit(f"--set {assignment!r}: expected SECTION.KEY=VALUE with SECTION in {sorted(settings)}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = settings[section]
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value


def score(model_dir: str, caption_uri: str, vqa_uri: Optional[str]) -> Dict[str, Any]:
    """The evaluator's metrics of ``model_dir`` on the eval split, plus per-question-type VQA scores."""
    import itertools

    import numpy as np

    from components.uniter_evaluator import executor as evaluator_executor
    from uniter_tf import evaluation as evaluation_lib
    from uniter_tf.evaluation import baseline as baseline_lib
    from uniter_tf.evaluation import evaluator as evaluator_lib
    from uniter_tf.evaluation import metrics as metrics_lib
    from uniter_tf.evaluation.records import iter_serialized_records, question_fields

    eval_files = _split_patterns(caption_uri, "eval") + (_split_patterns(vqa_uri, "eval") if vqa_uri else [])
    records = evaluation_lib.EvalRecords(iter_serialized_records(eval_files))
    train_questions = (evaluator_executor.read_question_records(iter_serialized_records(
            _split_patterns(vqa_uri, "train"))) if vqa_uri else None)
    scorer = evaluation_lib.saved_model_scorer(model_dir)
    metrics: Dict[str, Any] = evaluation_lib.evaluate(scorer, records, 32, 1000, train_questions=train_questions)
    if vqa_uri and "vqa_score" in metrics:
        prior = baseline_lib.question_prior_answers(train_questions)
        logits = evaluator_lib.score_pairs(scorer, records, zip(records.questions, records.question_image_ids),
                                           len(records.questions), evaluator_lib.VQA_LOGITS, 32)
        per_type: Dict[str, List[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
        for question, answer in zip(records.questions, np.argmax(logits, axis=-1)):
            text, labels, scores = question_fields(question)
            kind = baseline_lib.question_type(text)
            entry = per_type[kind]
            entry[0] += 1
            entry[1] += metrics_lib.vqa_soft_score(labels, scores, int(answer))
            entry[2] += metrics_lib.vqa_soft_score(labels, scores, prior.get(kind, prior[""]))
        metrics["per_type"] = {kind: {"n": int(n), "model": round(model / n, 3), "baseline": round(base / n, 3)}
                               for kind, (n, model, base) in sorted(per_type.items())}
    return metrics


def _fmt(metrics: Dict[str, Any], keys) -> str:
    return ", ".join(f"{key} {metrics[key]:.3f}" for key in keys if key in metrics)


def train(args) -> Dict[str, Any]:
    """Pretraining run_fn, fine-tuning run_fn, then the held-out scores (see the module docstring)."""
    from pipeline import configs
    from pipeline import definition as pipeline_lib
    from pipeline import finetune_module, pretrain_module

    caption_uri = _examples_uri(args.cache, pipeline_lib.CAPTION_EXAMPLE_GEN)
    vqa_uri = args.vqa_examples or _examples_uri(args.cache, pipeline_lib.VQA_EXAMPLE_GEN)
    overrides = dict(configs.MODEL_OVERRIDES)
    overrides.update(pipeline_lib.region_feature_dim(None, 91))
    settings: Dict[str, Dict[str, Any]] = {
            "model": overrides, "pretrain": dict(configs.PRETRAIN_CONFIG), "finetune": dict(configs.FINETUNE_CONFIG),
            "run": {"pretrain_steps": configs.PRETRAIN_TRAIN_STEPS, "finetune_steps": configs.FINETUNE_TRAIN_STEPS,
                    "batch_size": configs.BATCH_SIZE, "eval_steps": configs.EVAL_STEPS, "rehearsal": None}}
    _apply_sets(settings, args.set)
    run = settings["run"]
    if args.pretrain_steps is not None:
        run["pretrain_steps"] = args.pretrain_steps
    if args.finetune_steps is not None:
        run["finetune_steps"] = args.finetune_steps
    output = os.path.join(args.cache, "runs", args.name)
    shutil.rmtree(output, ignore_errors=True)
    model_settings = {"model_config": configs.MODEL_PRESET, "model_overrides": settings["model"]}
    result: Dict[str, Any] = {"name": args.name, "cache": args.cache, "vqa_examples": vqa_uri, "settings": settings,
                              "sets": args.set}
    base_model = None
    if args.pretrained:
        base_model = os.path.join(args.cache, "runs", args.pretrained, "pretrain", "serving")
        result["pretrained_from"] = args.pretrained
        print(f"[{args.name}] fine-tuning from the pretraining of {args.pretrained}", flush=True)
    elif run["pretrain_steps"] > 0:
        pretrain_args = types.SimpleNamespace(
                train_files=_split_patterns(caption_uri, "train"), eval_files=_split_patterns(caption_uri, "eval"),
                model_run_dir=os.path.join(output, "pretrain", "run"),
                serving_model_dir=os.path.join(output, "pretrain", "serving"),
                custom_config={**model_settings, "batch_size": run["batch_size"], **settings["pretrain"]},
                train_steps=run["pretrain_steps"], eval_steps=run["eval_steps"], schema_path=None)
        started = time.time()
        pretrain_module.run_fn(pretrain_args)
        result["pretrain_seconds"] = round(time.time() - started, 1)
        base_model = pretrain_args.serving_model_dir
        result["pretrained"] = score(base_model, caption_uri, None)
        print(f"[{args.name}] pretraining: {run['pretrain_steps']} updates in {result['pretrain_seconds']} s "
              f"(load {_load()}); held-out {_fmt(result['pretrained'], ['itm_accuracy', 'r_mean'])}", flush=True)
    steps = run["finetune_steps"]
    if steps <= 0:
        with open(os.path.join(args.cache, "results.jsonl"), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(result, sort_keys=True, default=str) + "\n")
        return result
    finetune_config = {"task": "vqa", **model_settings, "train_batch_size": run["batch_size"],
                       "eval_batch_size": run["batch_size"], "learning_rate": 5e-4,
                       "warmup_steps": max(1, steps // 10), "valid_steps": steps, "log_every": max(1, steps // 4)}
    finetune_config.update(settings["finetune"])
    finetune_config["valid_steps"] = max(1, steps // 6)
    finetune_config["log_every"] = max(1, steps // 6)
    task_config = dict(finetune_config.get("task_config") or {})
    if run["rehearsal"] is not None:
        task_config["itm_rehearsal_ratio"] = float(run["rehearsal"])
    if task_config.get("itm_rehearsal_ratio"):
        task_config["itm_rehearsal_files"] = _split_patterns(caption_uri, "train")
        task_config.setdefault("itm_rehearsal_inputs", dict(settings["pretrain"].get("inputs") or {}))
    finetune_config["task_config"] = task_config
    finetune_args = types.SimpleNamespace(
            train_files=_split_patterns(vqa_uri, "train"), eval_files=_split_patterns(vqa_uri, "eval"),
            model_run_dir=os.path.join(output, "finetune", "run"),
            serving_model_dir=os.path.join(output, "finetune", "serving"), custom_config=finetune_config,
            train_steps=steps, eval_steps=run["eval_steps"], base_model=base_model, schema_path=None)
    started = time.time()
    finetune_module.run_fn(finetune_args)
    result["finetune_seconds"] = round(time.time() - started, 1)
    result["exported"] = score(finetune_args.serving_model_dir, caption_uri, vqa_uri)
    exported = result["exported"]
    print(f"[{args.name}] fine-tuning: {steps} updates in {result['finetune_seconds']} s (load {_load()})", flush=True)
    print(f"[{args.name}] held-out export: "
          + _fmt(exported, ["itm_accuracy", "vqa_score", "vqa_baseline_score", "vqa_score_over_baseline"]),
          flush=True)
    for kind, entry in exported.get("per_type", {}).items():
        print(f"[{args.name}]   {kind!r}: n={entry['n']} model {entry['model']:.3f} baseline {entry['baseline']:.3f}",
              flush=True)
    with open(os.path.join(args.cache, "results.jsonl"), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(result, sort_keys=True, default=str) + "\n")
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="sample data + the pipeline's data components")
    prep.add_argument("--cache", default="/tmp/demo_recipe_cache")
    prep.add_argument("--num-images", type=int, default=200)
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--tag", default=None, help="folder name under --cache (default n<num images>)")
    prep.add_argument("--presence-questions", action="store_true", help="SampleDataConfig.presence_questions")
    train_parser = commands.add_parser("train", help="train a variant and score it on the eval split")
    train_parser.add_argument("--cache", required=True, help="a folder written by `prepare`")
    train_parser.add_argument("--name", required=True)
    train_parser.add_argument("--pretrain-steps", type=int, default=None)
    train_parser.add_argument("--finetune-steps", type=int, default=None)
    train_parser.add_argument("--pretrained", default=None,
                              help="fine-tune from the pretraining of this earlier variant (no pretraining run)")
    train_parser.add_argument("--vqa-examples", default=None,
                              help="a VqaExampleGen artifact folder (default: the newest of --cache)")
    train_parser.add_argument("--set", action="append", default=[],
                              help="SECTION.KEY=JSON with SECTION pretrain, finetune or model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.command == "prepare":
        prepare(args)
    else:
        train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
