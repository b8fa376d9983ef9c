"""The pipeline's retrieval task (issue 13): ``finetune_task="retrieval"`` trains the retrieval task on the caption
examples, the gate scores the full eval gallery by the rank logit and gates on ``r_mean``, and the Trainer ships
the first stage's image index inside the exported model (docs/pipeline.md, "Retrieval").

The fast tests cover the task entry, the wiring, the gate's r_mean checks and the evaluator's retrieval figures on
real records; the slow one runs the pipeline twice with LocalDagRunner and SQLite ML Metadata."""

import glob
import json
import os

import numpy as np
import pytest

import tfx  # noqa: F401  (a broken install must fail, not skip)

from helpers.local_pipelines import run_pipeline_once

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_retrieval_entry_uses_the_caption_examples_and_the_local_itm_recipe():
    from pipeline import configs

    data = configs.finetune_task_data("retrieval")
    assert data.trains_on_captions and data.schema_file == configs.CAPTION_SCHEMA_FILE
    assert data.first_stage_steps > 0
    # The local hyper-parameters are those of configs/finetune_itm_tiny.json.
    with open(os.path.join(REPOSITORY_ROOT, "configs", "finetune_itm_tiny.json"), encoding="utf-8") as handle:
        recipe = json.load(handle)
    assert recipe["task"]["name"] == "retrieval"
    assert dict(data.task_config) == {key: recipe["task"][key] for key in data.task_config}
    assert set(data.task_config) == {"mode", "negative_size", "margin"}
    assert data.learning_rate == recipe["trainer"]["learning_rate"]
    gate = configs.gate_config_from_env("retrieval")
    assert gate.lower_bounds == {"r_mean": configs.RETRIEVAL_MIN_R_MEAN}
    assert gate.max_regression == {"r_mean": configs.RETRIEVAL_MAX_R_MEAN_DROP}
    assert configs.training_config_from_env(finetune_task="retrieval").finetune_config["learning_rate"] == 5e-4


def test_retrieval_pipeline_trains_on_captions_and_gates_on_r_mean(tmp_path):
    from pipeline import configs
    from pipeline import definition as pipeline_lib

    pipeline = pipeline_lib.create_pipeline(
            pipeline_name="uniter-test", pipeline_root=str(tmp_path / "root"),
            data=configs.DataConfig(data_root=str(tmp_path / "data")),
            training=configs.TrainingConfig(finetune_task="retrieval",
                                            finetune_config={"task_config": {"negative_size": 3}}),
            serving_model_dir=str(tmp_path / "serving"), gate=configs.gate_config_from_env("retrieval"))
    components = {component.id: component for component in pipeline.components}
    # No example set of its own: one ExampleGen, one contract, the caption set in both DataGate slots.
    assert [node for node in components if node.endswith("ExampleGen")] == ["CaptionExampleGen"]
    assert [node for node in components if node.endswith("StatisticsGen")] == ["StatisticsGen"]
    assert {node.id for node in components["DataGate"].upstream_nodes} == {"ExampleValidator", "SchemaGen"}
    finetune = components["FinetuneTrainer"]
    assert finetune.inputs["examples"].producer_component_id == "CaptionExampleGen"
    assert finetune.inputs["schema"].producer_component_id == "DataGate"
    custom = json.loads(finetune.exec_properties["custom_config"])
    assert custom["task"] == "retrieval"
    # The task's local arguments, under the caller's.
    assert custom["task_config"] == {"mode": "standard", "negative_size": 3, "margin": 0.2}
    assert custom["first_stage_steps"] == configs.RETRIEVAL_FIRST_STAGE_STEPS
    evaluator = components["UniterEvaluator"]
    assert evaluator.exec_properties["task"] == "retrieval"
    assert evaluator.inputs["examples"].producer_component_id == "CaptionExampleGen"
    assert "task_examples" not in evaluator.inputs or evaluator.inputs["task_examples"] is None
    assert json.loads(evaluator.exec_properties["lower_bounds"]) == {"r_mean": 0.3}
    assert json.loads(evaluator.exec_properties["max_regression"]) == {"r_mean": 0.05}
    # Another task still needs its examples.
    from components.uniter_evaluator.component import UniterEvaluator

    with pytest.raises(ValueError, match="task 've' needs task_examples"):
        UniterEvaluator(examples=None, model=None, task="ve")


def test_gate_checks_name_r_mean_against_the_bound_and_the_last_blessed_model():
    from uniter_tf.evaluation import bless
    from uniter_tf.evaluation.metrics import gate_checks

    lower, regression = {"r_mean": 0.3}, {"r_mean": 0.05}
    blessed, reasons = bless({"r_mean": 0.29}, lower)
    assert not blessed and reasons == ["r_mean = 0.2900 < threshold 0.3000"]
    blessed, reasons = bless({"r_mean": 0.50}, lower, {"r_mean": 0.56}, regression)
    assert not blessed and reasons == ["r_mean = 0.5000 is more than 0.0500 below the last blessed model's 0.5600"]
    assert bless({"r_mean": 0.52}, lower, {"r_mean": 0.56}, regression) == (True, [])
    assert gate_checks({"r_mean": 0.52}, lower, {"r_mean": 0.56}, regression) == [
            (True, "r_mean = 0.5200 >= threshold 0.3000"),
            (True, "r_mean = 0.5200 is at most 0.0500 below the last blessed model's 0.5600")]
    # A model without the figure (e.g. evaluated without the retrieval task) is refused, not waved through.
    assert bless({"itm_accuracy": 0.9}, lower) == (False, ["r_mean: not computed for this model (threshold 0.3)"])


def _caption_records(num_images=4, captions_per_image=2):
    from uniter_tf.data import schema

    records = []
    for image in range(num_images):
        for caption in range(captions_per_image):
            records.append(schema.make_example(
                    image_id=f"img_{image}", region_features=np.full((2, 4), image, np.float32),
                    region_boxes=np.asarray([[0, 0, 5, 5], [2, 2, 9, 9]], np.float32), image_height=10,
                    image_width=10, example_id=f"cap_{image}_{caption}", text="a caption",
                    token_ids=[101, 1000 + image, 102], task=schema.TASK_CAPTION).SerializeToString())
    return records


class _RankScorer:
    """A retrieval export's outputs: the rank logit is high when the caption's word names the image, the ITM
    match logit is constant (ranks nothing)."""

    def __call__(self, serialized):
        from uniter_tf.data import schema

        rank = []
        for record in serialized:
            decoded = schema.decode_example(record)
            word = int(np.asarray(decoded[schema.TOKEN_IDS])[1]) - 1000
            image = int(np.asarray(decoded[schema.REGION_FEATURES])[0, 0])
            rank.append([5.0 if word == image else -float(abs(word - image))])
        return {"task_logits": np.asarray(rank, np.float32),
                "itm_logits": np.zeros((len(serialized), 2), np.float32)}


def test_evaluator_retrieval_figures_are_the_full_gallery_by_the_rank_logit(tmp_path):
    from components.uniter_evaluator import executor
    from uniter_tf.evaluation import EvalRecords, evaluate

    records = EvalRecords(_caption_records())
    scorer = _RankScorer()
    general = evaluate(scorer, records, batch_size=5)
    metrics = executor.retrieval_task_metrics(scorer, general, records, batch_size=5,
                                              gallery_output_prefix=str(tmp_path / "retrieval"))
    assert metrics["r_mean"] == 1.0 and metrics["img_r1"] == 1.0 and metrics["txt_r1"] == 1.0
    assert metrics["score_is_rank_logit"] == 1.0
    assert metrics["num_gallery_texts"] == 8.0 and metrics["num_gallery_images"] == 4.0
    # The general routine's figures (ITM match logit, constant here: ties count against) keep their prefix.
    assert metrics["itm_match_r_mean"] == general["r_mean"] < 1.0
    assert "itm_match_num_gallery_images" in metrics and metrics["itm_accuracy"] == general["itm_accuracy"]
    scores = np.load(str(tmp_path / "retrieval_scores.npy"))
    assert scores.dtype == np.float16 and scores.shape == (8, 4)
    with open(tmp_path / "retrieval_ids.json", encoding="utf-8") as handle:
        ids = json.load(handle)
    assert ids["image_ids"] == ["img_0", "img_1", "img_2", "img_3"] and ids["text_to_image"] == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.slow
@pytest.mark.e2e
def test_retrieval_pipeline_gates_on_r_mean_and_pushes_model_and_index_together(tmp_path):
    """The whole pipeline with ``finetune_task="retrieval"`` (rendered scenes, toy detector over the ground-truth
    boxes, the tiny model fine-tuned briefly from scratch), run twice with LocalDagRunner and SQLite MLMD.

    First run: the gate's ``r_mean`` is the full gallery of the eval split scored by the rank logit (recomputed
    here from the pushed SavedModel: the same figure), the blessing names it, and the pushed version holds the
    embedding signatures and the eval gallery's image index of the same first stage. Second run (more
    fine-tuning updates, so a new model): the evaluator scores the first blessed model as the baseline and
    refuses the candidate on the ``r_mean`` change threshold; nothing more is pushed.

    Measured: 283 s at load average 7-9 on the shared 2-core machine (the two Trainer executions 61 s and
    108 s, most of it the export's signature tracing); see docs/pipeline.md."""
    from tensorflow.python.saved_model import loader_impl
    from components.uniter_example_gen import schema as schema_lib
    from pipeline import configs
    from uniter_tf.data import sample_data
    from uniter_tf.evaluation import EvalRecords
    from uniter_tf.extraction import toy_detector
    from uniter_tf.retrieval import gallery as gallery_lib
    from uniter_tf.retrieval import serving_assets

    data_root = str(tmp_path / "data")
    sample_data.generate(data_root, sample_data.SampleDataConfig(num_images=24, seed=0))
    detector = toy_detector.write_toy_detector(str(tmp_path / "detector"))
    settings = dict(feature_dim=toy_detector.FEATURE_DIM, num_soft_labels=toy_detector.NUM_CLASSES, min_regions=1,
                    max_regions=5)
    data = configs.DataConfig(
            data_root=data_root, ground_truth_boxes=True, detector_path=detector,
            num_detector_classes=toy_detector.NUM_CLASSES, min_boxes=1, max_boxes=5,
            caption_schema_file=schema_lib.write_schema(str(tmp_path / "captions.pbtxt"), kind="captions",
                                                        **settings))
    serving_dir = str(tmp_path / "serving")
    metadata_path = str(tmp_path / "metadata.sqlite")
    root = str(tmp_path / "root")

    def run(finetune_steps, gate, first_stage_steps):
        training = configs.TrainingConfig(
                finetune_task="retrieval", include_pretraining=False, finetune_steps=finetune_steps, eval_steps=1,
                batch_size=8,
                model_overrides={"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                                 "num_hidden_layers": 1, "hidden_dropout_prob": 0.0,
                                 "attention_probs_dropout_prob": 0.0, "ot_iterations": 5,
                                 "region_feature_dim": toy_detector.FEATURE_DIM,
                                 "num_soft_labels": toy_detector.NUM_CLASSES},
                finetune_config={"learning_rate": 5e-4, "warmup_steps": 1, "init": "scratch", "seed": 24,
                                 "valid_steps": finetune_steps, "log_every": finetune_steps,
                                 "first_stage_steps": first_stage_steps, "first_stage_batch_size": 4})
        return run_pipeline_once("uniter-retrieval", root, data, training, gate, serving_dir, metadata_path)

    states, report, report_path = run(6, configs.GateConfig(lower_bounds={"r_mean": 0.0}, max_regression={}), 4)
    assert states["FinetuneTrainer"] == ["COMPLETE"] and states["Pusher"] == ["COMPLETE"]
    metrics = report["metrics"]
    assert report["task"] == "retrieval" and report["blessed"], report["message"]
    assert report["passed_checks"] == [f"r_mean = {metrics['r_mean']:.4f} >= threshold 0.0000"]
    assert metrics["score_is_rank_logit"] == 1.0 and 0.0 <= metrics["r_mean"] <= 1.0
    assert "itm_match_r_mean" in metrics
    scores = np.load(os.path.join(os.path.dirname(report_path), "retrieval_scores.npy"))
    assert scores.shape == (metrics["num_gallery_texts"], metrics["num_gallery_images"])

    # The pushed version: the model, its embedding signatures and the eval gallery's index, one directory.
    versions = [entry for entry in os.listdir(serving_dir) if entry.isdigit()]
    assert len(versions) == 1
    version_dir = os.path.join(serving_dir, versions[0])
    assets = serving_assets.read_retrieval_assets(version_dir)  # checks the index against the version's stage
    examples_dir = glob.glob(os.path.join(root, "CaptionExampleGen", "examples", "*"))[0]
    eval_files = sorted(glob.glob(os.path.join(examples_dir, "Split-eval", "*")))
    records = EvalRecords.from_files(eval_files)
    assert sorted(assets.index.ids) == sorted({key.decode() for key in records.caption_image_ids})
    assert len(assets.index) == metrics["num_gallery_images"]
    signatures = loader_impl.parse_saved_model(version_dir).meta_graphs[0].signature_def
    assert {"serve_examples", "embed_text", "embed_image"} <= set(signatures)
    # The gate's figure is the pushed model's full gallery, recomputed independently from its files.
    recomputed = gallery_lib.evaluate_saved_model(version_dir, eval_files)
    assert recomputed["r_mean"] == pytest.approx(metrics["r_mean"], abs=1e-6)

    # A second run with a new model (no first stage this time: first_stage_steps 0 leaves it out, and the
    # export is faster): the first blessed model is the baseline, scored on the same gallery; a change threshold
    # it cannot meet (r_mean must beat the baseline by more than the whole range) refuses it.
    states, second, _ = run(8, configs.GateConfig(lower_bounds={"r_mean": 0.0}, max_regression={"r_mean": -1.01}),
                            0)
    assert states["FinetuneTrainer"][-1] == "COMPLETE" and states["UniterEvaluator"][-1] == "COMPLETE"
    assert second["baseline_metrics"]["r_mean"] == pytest.approx(metrics["r_mean"], abs=1e-6)
    assert not second["blessed"]
    assert second["failed_checks"] == [
            f"r_mean = {second['metrics']['r_mean']:.4f} is more than -1.0100 below the last blessed model's "
            f"{metrics['r_mean']:.4f}"]
    assert [entry for entry in os.listdir(serving_dir) if entry.isdigit()] == versions
    second_run_dir = sorted(glob.glob(os.path.join(root, "FinetuneTrainer", "model_run", "*")),
                            key=lambda path: int(os.path.basename(path)))[-1]
    assert not os.path.exists(os.path.join(second_run_dir, "first_stage"))


def test_first_stage_settings_of_the_finetune_trainer_are_checked_and_not_experiment_keys(tmp_path):
    from types import SimpleNamespace

    from pipeline import finetune_module

    def fn_args(**custom):
        return SimpleNamespace(custom_config={"task": "retrieval", "model_config": "tiny", **custom},
                               train_files=[str(tmp_path / "train-*")], eval_files=[str(tmp_path / "eval-*")],
                               model_run_dir=str(tmp_path / "run"), base_model=None, train_steps=10, eval_steps=1)

    # The first-stage keys are the run_fn's, not unknown experiment keys.
    config = finetune_module.experiment_from_fn_args(fn_args(first_stage_steps=5, first_stage_batch_size=4))
    assert config.task_name == "retrieval" and "first_stage_steps" not in config.task
    # 0 (or unset) leaves the first stage and the index out; a bad value is named before any training.
    assert finetune_module.train_first_stage_and_index(fn_args(first_stage_steps=0), str(tmp_path), []) is None
    assert finetune_module.train_first_stage_and_index(fn_args(), str(tmp_path), []) is None
    with pytest.raises(ValueError, match="first_stage_steps must be a non-negative integer, got 'many'"):
        finetune_module.train_first_stage_and_index(fn_args(first_stage_steps="many"), str(tmp_path), [])
    with pytest.raises(ValueError, match="first_stage_batch_size must be a non-negative integer, got -1"):
        finetune_module.train_first_stage_and_index(fn_args(first_stage_steps=3, first_stage_batch_size=-1),
                                                    str(tmp_path), [])
    empty_eval = fn_args(first_stage_steps=3)
    empty_eval.eval_files = []
    with pytest.raises(ValueError, match="first_stage_steps needs an eval split to index"):
        finetune_module.train_first_stage_and_index(empty_eval, str(tmp_path), [])
