"""The pipeline's downstream-task selection: ``TrainingConfig.finetune_task`` / ``UNITER_FINETUNE_TASK`` picks
the fine-tuning task (``vqa``, ``ve``, ``nlvr2``, ``refcoco``); its ExampleGen, curated schema, Trainer task and
the gate's metric follow (docs/pipeline.md, "Downstream tasks")."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tfx  # noqa: F401  (a broken install must fail, not skip)

from helpers.local_pipelines import run_pipeline_once

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _create(tmp_path, task, data_changes=None, gate=None, **training_changes):
    from pipeline import configs
    from pipeline import definition as pipeline_lib

    return pipeline_lib.create_pipeline(
            pipeline_name="uniter-test", pipeline_root=str(tmp_path / "root"),
            data=configs.DataConfig(data_root=str(tmp_path / "data"), **(data_changes or {})),
            training=configs.TrainingConfig(finetune_task=task, **training_changes),
            serving_model_dir=str(tmp_path / "serving"), gate=gate)


def _by_id(pipeline):
    return {component.id: component for component in pipeline.components}


@pytest.mark.parametrize("task,prefix,annotation_format,annotations,annotations2,key_mode,metric", [
        ("ve", "Ve", "snli_ve", ["snli_ve_train.jsonl", "snli_ve_dev.jsonl"], [], "numeric", "ve_accuracy"),
        ("nlvr2", "Nlvr2", "nlvr2", ["train.json", "dev.json"], [], "name", "nlvr2_accuracy"),
        ("refcoco", "Refcoco", "refcoco", ["refs.json"], ["instances.json"], "numeric", "refcoco_accuracy"),
])
def test_task_selection_wires_the_tasks_example_gen_schema_trainer_and_gate(
        tmp_path, task, prefix, annotation_format, annotations, annotations2, key_mode, metric):
    from pipeline import configs

    gate = configs.gate_config_from_env(task)
    assert set(gate.lower_bounds) == {metric}
    components = _by_id(_create(tmp_path, task, gate=gate))
    # The task's data nodes replace VQA's; the caption side is unchanged.
    assert not {node for node in components if node.startswith("Vqa")}
    for suffix in ("ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator"):
        assert prefix + suffix in components
    example_gen = components[f"{prefix}ExampleGen"]
    properties = example_gen.exec_properties
    assert properties["annotation_format"] == annotation_format
    assert json.loads(properties["annotations"]) == annotations
    assert json.loads(properties["annotations2"]) == annotations2
    assert json.loads(properties["ingest_options"])["image_key_mode"] == key_mode
    caption_options = json.loads(components["CaptionExampleGen"].exec_properties["ingest_options"])
    assert caption_options["eval_fraction"] == json.loads(properties["ingest_options"])["eval_fraction"]
    schema_file = components[f"{prefix}SchemaGen"].exec_properties["schema_file"]
    assert schema_file == os.path.join(REPOSITORY_ROOT, "pipeline", f"{task}_schema.pbtxt")
    validator = components[f"{prefix}ExampleValidator"]
    assert {node.id for node in validator.upstream_nodes} == {f"{prefix}StatisticsGen", f"{prefix}SchemaGen"}
    assert {node.id for node in components["DataGate"].upstream_nodes} == {
            "ExampleValidator", "SchemaGen", f"{prefix}ExampleValidator", f"{prefix}SchemaGen"}
    finetune = components["FinetuneTrainer"]
    assert finetune.inputs["examples"].producer_component_id == f"{prefix}ExampleGen"
    assert json.loads(finetune.exec_properties["custom_config"])["task"] == task
    evaluator = components["UniterEvaluator"]
    assert evaluator.exec_properties["task"] == task
    assert evaluator.inputs["task_examples"].producer_component_id == f"{prefix}ExampleGen"
    assert json.loads(evaluator.exec_properties["lower_bounds"]) == gate.lower_bounds
    assert components["Pusher"].inputs["model_blessing"].producer_component_id == "UniterEvaluator"


def test_vqa_stays_the_default_with_its_nodes_and_no_task_parameter(tmp_path):
    from pipeline import configs

    assert configs.TrainingConfig().finetune_task == "vqa"
    components = _by_id(_create(tmp_path, "vqa"))
    assert {"VqaExampleGen", "VqaStatisticsGen", "VqaSchemaGen", "VqaExampleValidator"} <= set(components)
    assert components["VqaExampleGen"].exec_properties["annotation_format"] == "vqa"
    assert components["VqaSchemaGen"].exec_properties["schema_file"] == configs.VQA_SCHEMA_FILE
    # The evaluator's VQA configuration is as before the task selection existed (no task property).
    assert components["UniterEvaluator"].exec_properties.get("task") is None


def test_task_annotation_files_and_schema_can_be_given(tmp_path):
    components = _by_id(_create(tmp_path, "refcoco", data_changes={
            "task_annotations": ["refcoco+/refs.json"], "task_annotations2": ["coco/instances.json"],
            "task_schema_file": "/data/schema/my_refcoco.pbtxt"}))
    properties = components["RefcocoExampleGen"].exec_properties
    assert json.loads(properties["annotations"]) == ["refcoco+/refs.json"]
    assert json.loads(properties["annotations2"]) == ["coco/instances.json"]
    assert components["RefcocoSchemaGen"].exec_properties["schema_file"] == "/data/schema/my_refcoco.pbtxt"


def test_an_unknown_task_is_named_before_any_component_exists(tmp_path):
    from pipeline import configs
    from components.uniter_evaluator.component import UniterEvaluator

    with pytest.raises(ValueError,
                       match=r"unknown fine-tuning task 'vcr'.*\['nlvr2', 'refcoco', 'retrieval', 've', 'vqa'\]"):
        configs.TrainingConfig(finetune_task="vcr")
    with pytest.raises(ValueError, match="unknown fine-tuning task 'snli'"):
        configs.gate_config_from_env("snli")
    with pytest.raises(ValueError, match="UniterEvaluator: unknown task 'vqa2'"):
        UniterEvaluator(examples=None, model=None, task_examples=None, task="vqa2")


def test_environment_selects_the_task_its_gate_and_drops_the_vqa_recipe_task_config():
    code = ("import json; from pipeline import configs; t = configs.training_config_from_env(); "
            "g = configs.gate_config_from_env(); "
            "print(json.dumps([t.finetune_task, t.finetune_config.get('task_config'), g.lower_bounds, "
            "t.finetune_config['learning_rate']]))")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("UNITER_")}
    environment.update(UNITER_FINETUNE_TASK="refcoco", UNITER_FINETUNE_TASK_CONFIG='{"mlp": 2}')
    completed = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                               cwd=REPOSITORY_ROOT, timeout=120, check=True)
    task, task_config, lower_bounds, learning_rate = json.loads(completed.stdout.strip().splitlines()[-1])
    assert task == "refcoco" and task_config == {"mlp": 2} and lower_bounds == {"refcoco_accuracy": 0.5}
    from pipeline import configs

    # The VQA recipe's slow backbone rate (made for its x100 head) gives way to the task's own.
    assert learning_rate == configs.FINETUNE_TASKS["refcoco"].learning_rate == 1e-3
    # An unknown task in the environment is an error naming it.
    environment["UNITER_FINETUNE_TASK"] = "gqa"
    failed = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                            cwd=REPOSITORY_ROOT, timeout=120)
    assert failed.returncode != 0 and "unknown fine-tuning task 'gqa'" in failed.stderr


def test_checked_in_task_schemas_are_the_builder_and_require_the_tasks_fields():
    from components.uniter_example_gen import schema as schema_lib
    from pipeline import configs

    for name in ("ve", "nlvr2", "refcoco"):
        data = configs.FINETUNE_TASKS[name]
        with open(data.schema_file, encoding="utf-8") as handle:
            assert handle.read() == schema_lib.schema_text(schema_lib.build_schema(
                    kind=data.schema_kind, **configs.CURATED_SCHEMA_SETTINGS)), name
    features = {kind: {feature.name: feature for feature in schema_lib.build_schema(kind=kind).feature}
                for kind in ("captions", "ve", "nlvr2", "refcoco")}
    assert features["ve"]["label"].presence.min_fraction == 1.0 and features["ve"]["label"].int_domain.max == 2
    assert features["nlvr2"]["label"].int_domain.max == 1
    assert {"image_id_2", "num_regions_2", "region_features_2", "region_positions_2", "region_boxes_2"} <= set(
            features["nlvr2"])
    assert "image_id_2" not in features["refcoco"]
    assert features["refcoco"]["target_box"].presence.min_fraction == 1.0
    assert features["captions"]["target_box"].presence.min_fraction == 0.0


def test_kubeflow_compile_of_a_task_has_its_schema_parameter_and_no_local_path(tmp_path, monkeypatch):
    """The Kubeflow V2 compile with ``UNITER_FINETUNE_TASK=refcoco``: the task's schema is a runtime parameter
    under the data root, the evaluator gates on the task's metric."""
    from pipeline import configs
    from pipeline import kubeflow_v2_runner

    monkeypatch.setattr(configs, "FINETUNE_TASK", "refcoco")
    for name in ("UNITER_SAMPLE_DATA_DIR", "UNITER_SERVING_MODEL_DIR", "UNITER_KUBEFLOW_BEAM_PIPELINE_ARGS",
                 "UNITER_EVAL_LOWER_BOUNDS", "UNITER_EVAL_MAX_REGRESSION"):
        monkeypatch.delenv(name, raising=False)
    path = kubeflow_v2_runner.compile_pipeline(str(tmp_path / "p.json"), image="registry/uniter:1",
                                               pipeline_root="gs://bucket/root")
    text = open(path, encoding="utf-8").read()
    compiled = json.loads(text)
    defaults = compiled["runtimeConfig"]["parameterValues"]
    assert defaults["refcoco_schema_file"] == "gs://bucket/root/data/schema/refcoco_schema.pbtxt"
    assert "vqa_schema_file" not in defaults
    assert json.loads(defaults["eval_lower_bounds"]) == {"refcoco_accuracy": 0.5}
    assert "RefcocoExampleGen" in compiled["pipelineSpec"]["root"]["dag"]["tasks"]
    assert REPOSITORY_ROOT not in text and "/tmp/" not in text


class _FakeScorer:
    """Returns fixed task logits per example id (what a SavedModel's ``serve_examples`` would)."""

    def __init__(self, logits_by_id):
        self.logits_by_id = logits_by_id
        self.batches = []

    def __call__(self, serialized):
        from uniter_tf.data import schema

        self.batches.append(len(serialized))
        ids = [schema.decode_example(record)[schema.EXAMPLE_ID].decode() for record in serialized]
        width = max(len(self.logits_by_id[key]) for key in ids)
        rows = [np.pad(np.asarray(self.logits_by_id[key], np.float32), (0, width - len(self.logits_by_id[key])),
                       constant_values=-1e4) for key in ids]
        return {"task_logits": np.stack(rows), "itm_logits": np.zeros((len(ids), 2), np.float32)}


def _record(example_id, task, boxes=((0, 0, 10, 10),), **fields):
    from uniter_tf.data import schema

    boxes = np.asarray(boxes, np.float32)
    return schema.make_example(image_id=f"img_{example_id}", region_features=np.ones((len(boxes), 4), np.float32),
                               region_boxes=boxes, image_height=100, image_width=100, example_id=example_id,
                               text="a text", token_ids=[1, 2], task=task, **fields).SerializeToString()


def test_task_metrics_ve_nlvr2_and_refcoco_with_the_official_definitions():
    from uniter_tf.data import schema
    from uniter_tf.evaluation import evaluate_task

    caption = _record("c0", schema.TASK_CAPTION)  # other tasks' records are skipped
    ve = [_record(f"v{i}", schema.TASK_SNLI_VE, label=label) for i, label in enumerate([0, 1, 2, 1])]
    scorer = _FakeScorer({"v0": [3, 0, 0], "v1": [0, 3, 0], "v2": [3, 0, 0], "v3": [0, 0, 3]})
    assert evaluate_task(scorer, "ve", [caption] + ve, batch_size=3) == {"ve_accuracy": 0.5, "num_ve_examples": 4.0}
    assert scorer.batches == [3, 1]

    # NLVR2: two sentences (identifier's third field blanked), one answered right on both pairs.
    ids = ["dev-1-0-0", "dev-1-1-0", "dev-2-0-1", "dev-2-1-1"]
    nlvr2 = [_record(key, schema.TASK_NLVR2, label=label) for key, label in zip(ids, [1, 0, 1, 1])]
    scorer = _FakeScorer({"dev-1-0-0": [0, 1], "dev-1-1-0": [1, 0], "dev-2-0-1": [0, 1], "dev-2-1-1": [1, 0]})
    assert evaluate_task(scorer, "nlvr2", nlvr2) == {
            "nlvr2_accuracy": 0.75, "nlvr2_consistency": 0.5, "num_nlvr2_examples": 4.0}

    # RefCOCO: the chosen region's box against the target, official inclusive IoU > 0.5; padded slots of
    # the scorer's bucket never win (only real regions are considered).
    boxes = ((0, 0, 10, 10), (50, 50, 70, 70))
    records = [_record("r0", schema.TASK_REFCOCO, boxes=boxes, target_box=[51, 51, 70, 70]),
               _record("r1", schema.TASK_REFCOCO, boxes=boxes, target_box=[0, 0, 10, 10]),
               _record("r2", schema.TASK_REFCOCO, boxes=boxes, target_box=[0, 0, 4, 10])]
    scorer = _FakeScorer({"r0": [0, 5, 9], "r1": [5, 0], "r2": [5, 0]})  # r0's third slot is padding
    metrics = evaluate_task(scorer, "refcoco", records)
    # r0: region 1 (IoU 0.9) right; r1: region 0 (IoU 1) right; r2: region 0 overlaps 4/10 wide: 0.4 wrong.
    assert metrics == {"refcoco_accuracy": pytest.approx(2 / 3), "num_refcoco_examples": 3.0}


def test_numpy_inclusive_iou_equals_the_task_models():
    from uniter_tf.evaluation.task_metrics import inclusive_iou
    from uniter_tf.models.refcoco_task import inclusive_iou as tf_inclusive_iou

    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, size=(64, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).astype(np.float32)
    target = boxes[0]
    expected = tf_inclusive_iou(boxes, target[None]).numpy()
    np.testing.assert_allclose(inclusive_iou(boxes, target), expected, atol=1e-6)
    assert inclusive_iou(boxes[:1], target)[0] == pytest.approx(1.0)


def test_task_metrics_name_a_record_without_its_target_and_an_empty_split():
    from uniter_tf.data import schema
    from uniter_tf.evaluation import evaluate_task

    scorer = _FakeScorer({"v0": [1, 0, 0], "r0": [1]})
    with pytest.raises(ValueError, match="ve eval record 'v0' has no 'label'"):
        evaluate_task(scorer, "ve", [_record("v0", schema.TASK_SNLI_VE)])
    with pytest.raises(ValueError, match="refcoco eval record 'r0' needs a 4-value 'target_box'"):
        evaluate_task(scorer, "refcoco", [_record("r0", schema.TASK_REFCOCO)])
    with pytest.raises(ValueError, match="holds no refcoco record"):
        evaluate_task(scorer, "refcoco", [_record("v0", schema.TASK_SNLI_VE, label=1)])
    with pytest.raises(ValueError, match="no task metric for 'vcr'"):
        evaluate_task(scorer, "vcr", [])


def _read_records(pattern):
    from uniter_tf.evaluation import iter_serialized_records

    return list(iter_serialized_records(sorted(glob.glob(pattern))))


@pytest.mark.slow
@pytest.mark.e2e
def test_refcoco_pipeline_trains_gates_on_its_accuracy_and_pushes_only_when_blessed(tmp_path):
    """The whole pipeline with ``finetune_task="refcoco"`` (rendered scenes, their RefCOCO annotations in the
    official refs / instances form, the toy detector pooled over the ground-truth boxes, the tiny model
    fine-tuned from scratch), run twice: a gate of ``refcoco_accuracy >= 0.5`` (random region ~0.37) blesses
    and pushes; the same model against an impossible 1.01 is refused and nothing more is pushed. The gate's
    accuracy equals the one recomputed from the pushed SavedModel's own ``chosen_region`` with the task
    model's IoU."""
    from components.uniter_example_gen import schema as schema_lib
    from pipeline import configs
    from uniter_tf.data import sample_data, schema
    from uniter_tf.data.sample_refcoco_records import write_annotations
    from uniter_tf.extraction import toy_detector
    from uniter_tf.models.refcoco_task import inclusive_iou

    data_root = str(tmp_path / "data")
    sample_data.generate(data_root, sample_data.SampleDataConfig(num_images=80, seed=0))
    annotations = write_annotations(data_root, data_root)  # refs.json + instances.json beside the images
    with open(annotations["refs"], encoding="utf-8") as handle:
        num_sentences = sum(len(ref["sentences"]) for ref in json.load(handle))
    detector = toy_detector.write_toy_detector(str(tmp_path / "detector"))
    settings = dict(feature_dim=toy_detector.FEATURE_DIM, num_soft_labels=toy_detector.NUM_CLASSES, min_regions=1,
                    max_regions=5)
    schema_dir = tmp_path / "schema"
    schema_dir.mkdir()
    data = configs.DataConfig(
            data_root=data_root, ground_truth_boxes=True, detector_path=detector,
            num_detector_classes=toy_detector.NUM_CLASSES, min_boxes=1, max_boxes=5,
            caption_schema_file=schema_lib.write_schema(str(schema_dir / "captions.pbtxt"), kind="captions",
                                                        **settings),
            task_schema_file=schema_lib.write_schema(str(schema_dir / "refcoco.pbtxt"), kind="refcoco", **settings))
    training = configs.TrainingConfig(
            finetune_task="refcoco", include_pretraining=False, finetune_steps=120, eval_steps=2, batch_size=32,
            # The demo's model size, spelled out: the test does not follow the demo recipe's other changes.
            model_overrides={"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
                             "initializer_range": 0.05, "hidden_dropout_prob": 0.0,
                             "attention_probs_dropout_prob": 0.0, "ot_iterations": 10,
                             "region_feature_dim": toy_detector.FEATURE_DIM,
                             "num_soft_labels": toy_detector.NUM_CLASSES},
            finetune_config={"learning_rate": 1e-3, "warmup_steps": 20, "dropout": 0.0, "init": "scratch",
                             "seed": 24, "valid_steps": 120, "log_every": 40})
    serving_dir = str(tmp_path / "serving")
    metadata_path = str(tmp_path / "metadata.sqlite")
    root = str(tmp_path / "root")

    def run(lower_bound):
        states, report, _ = run_pipeline_once(
                "uniter-refcoco", root, data, training,
                configs.GateConfig(lower_bounds={"refcoco_accuracy": lower_bound}, max_regression={}), serving_dir,
                metadata_path)
        return states, report

    states, report = run(0.5)
    assert states["RefcocoExampleGen"] == ["COMPLETE"] and "VqaExampleGen" not in states
    # Every expression of the annotations arrives (no dead letter), split by image as the captions.
    examples_dir = glob.glob(os.path.join(root, "RefcocoExampleGen", "examples", "*"))[0]
    train = _read_records(os.path.join(examples_dir, "Split-train", "*"))
    held_out = _read_records(os.path.join(examples_dir, "Split-eval", "*"))
    assert len(train) + len(held_out) == num_sentences and len(held_out) >= 40
    # Random-region baseline of the held-out expressions: the share of an image's regions that match.
    random_region = float(np.mean([np.mean(inclusive_iou(
            schema.decode_example(record)[schema.REGION_BOXES],
            schema.decode_example(record)[schema.TARGET_BOX][None]).numpy() > 0.5) for record in held_out]))
    assert not glob.glob(os.path.join(examples_dir, "dead_letters", "*.jsonl")) or all(
            os.path.getsize(path) == 0 for path in glob.glob(os.path.join(examples_dir, "dead_letters", "*.jsonl")))
    metrics = report["metrics"]
    print("refcoco gate metrics:", {key: metrics[key] for key in sorted(metrics) if "refcoco" in key},
          "random region:", random_region)
    assert report["task"] == "refcoco" and report["blessed"], report["message"]
    assert metrics["num_refcoco_examples"] == len(held_out)
    assert metrics["refcoco_accuracy"] >= max(0.5, random_region + 0.2)
    versions = [entry for entry in os.listdir(serving_dir) if entry.isdigit()]
    assert len(versions) == 1

    # The gate's figure, recomputed from the pushed model's own choice and the task model's IoU.
    loaded = __import__("tensorflow").saved_model.load(os.path.join(serving_dir, versions[0]))
    outputs = loaded.signatures["serve_examples"](examples=__import__("tensorflow").constant(held_out))
    chosen = outputs["chosen_region"].numpy()
    correct = []
    for record, region in zip(held_out, chosen):
        decoded = schema.decode_example(record)
        assert region < decoded[schema.NUM_REGIONS]
        iou = inclusive_iou(decoded[schema.REGION_BOXES][region][None], decoded[schema.TARGET_BOX][None]).numpy()[0]
        correct.append(iou > 0.5)
    assert float(np.mean(correct)) == pytest.approx(metrics["refcoco_accuracy"], abs=1e-9)

    # An impossible threshold: the cached model is evaluated again, refused, and nothing more is pushed.
    states, report = run(1.01)
    assert states["FinetuneTrainer"][-1] == "CACHED" and states["UniterEvaluator"][-1] == "COMPLETE"
    assert not report["blessed"] and any("refcoco_accuracy" in check for check in report["failed_checks"])
    assert report["metrics"]["refcoco_accuracy"] == pytest.approx(metrics["refcoco_accuracy"])
    assert [entry for entry in os.listdir(serving_dir) if entry.isdigit()] == versions


def test_task_schemas_accept_the_sample_tasks_records_and_refuse_other_tasks(tmp_path):
    """The records each task's reader writes (SNLI-VE hypotheses, RefCOCO expressions, NLVR2 pair records with
    the right image in the ``*_2`` fields) pass the Trainer's record check against their task's contract; a
    record of another task does not (the message names the missing field)."""
    from components.uniter_example_gen import schema as schema_lib
    from pipeline import data_contract
    from uniter_tf.config import UniterConfig
    from uniter_tf.data import sample_data
    from uniter_tf.data.sample_nlvr2 import SampleNlvr2Config, write_sample_nlvr2
    from uniter_tf.data.sample_refcoco_records import write_sample_refcoco_records
    from uniter_tf.data.sample_ve_records import write_sample_ve_records

    model_config = UniterConfig.from_preset("tiny")
    scenes = str(tmp_path / "scenes")
    sample_data.generate(scenes, sample_data.SampleDataConfig(num_images=6, seed=0))
    records = {"ve": write_sample_ve_records(scenes, str(tmp_path / "ve"), model_config)["train"],
               "refcoco": write_sample_refcoco_records(scenes, str(tmp_path / "re"), model_config)["train"],
               "nlvr2": write_sample_nlvr2(str(tmp_path / "nlvr2"), SampleNlvr2Config(train_sets=2, eval_sets=1),
                                           model_config)["train"]}
    schemas = {kind: schema_lib.write_schema(str(tmp_path / f"{kind}.pbtxt"), kind=kind,
                                             feature_dim=model_config.region_feature_dim, min_regions=1,
                                             max_regions=16)
               for kind in records}
    for kind, files in records.items():
        assert data_contract.check_records(schemas[kind], files) > 0, kind
    with pytest.raises(data_contract.SchemaMismatchError, match="target_box"):
        data_contract.check_records(schemas["refcoco"], records["ve"])
    with pytest.raises(data_contract.SchemaMismatchError, match="image_id_2|region_features_2|num_regions_2"):
        data_contract.check_records(schemas["nlvr2"], records["ve"])
    with pytest.raises(data_contract.SchemaMismatchError, match="label"):
        data_contract.check_records(schemas["ve"], records["refcoco"])
