"""The pipeline with LocalDagRunner on tiny data, twice: the second run reuses cached components.

Small on purpose: 8 rendered images, the toy SavedModel detector (8-dim features), the tiny preset and a
few fine-tuning updates. Checks the MLMD states of both runs, the gate's report and the pushed model.
The pretraining Trainer is left out (``include_pretraining=False``) to keep the run short on 2 cores;
fine-tuning from a pretraining checkpoint is covered by tests/test_vqa_finetune.py and the pipeline's
wiring of it by tests/test_pipeline_definition.py.
"""

import glob
import json
import os

import pytest

pytest.importorskip("tfx")

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DATA_NODES = ("ImageImporter", "RegionFeatureExtractor", "CaptionExampleGen", "VqaExampleGen", "StatisticsGen",
              "SchemaGen", "ExampleValidator")
TRAINER_NODES = ("FinetuneTrainer",)


def test_local_run_pushes_a_blessed_model_and_rerun_is_cached(tmp_path):
    from tfx import v1 as tfx

    from pipeline import local_runner
    from pipeline import pipeline as pipeline_lib
    from uniter_tf.data import sample_data
    from uniter_tf.extraction import toy_detector

    data_root = str(tmp_path / "data")
    sample_data.generate(data_root, sample_data.SampleDataConfig(num_images=8, seed=0))
    detector = toy_detector.write_toy_detector(str(tmp_path / "toy_detector"))
    metadata_path = str(tmp_path / "metadata.sqlite")
    serving_dir = str(tmp_path / "serving" / "uniter")

    def run():
        pipeline = pipeline_lib.create_pipeline(
                pipeline_name="uniter-e2e", pipeline_root=str(tmp_path / "root"), data_root=data_root,
                serving_model_dir=serving_dir,
                metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
                        metadata_path),
                beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"],
                detector_path=detector, num_detector_classes=toy_detector.NUM_CLASSES,
                model_overrides={"region_feature_dim": toy_detector.FEATURE_DIM,
                                 "num_soft_labels": toy_detector.NUM_CLASSES, "ot_iterations": 5},
                min_boxes=2, max_boxes=8, eval_fraction=0.4, finetune_steps=3, eval_steps=1, include_pretraining=False,
                batch_size=4, eval_lower_bounds={"itm_accuracy": 0.0, "vqa_score": 0.0},
                eval_max_regression={"itm_accuracy": 1.0})
        tfx.orchestration.LocalDagRunner().run(pipeline)
        return local_runner.node_states(metadata_path, "uniter-e2e")

    first = run()
    for node in DATA_NODES + TRAINER_NODES + ("UniterEvaluator", "Pusher"):
        assert first[node] == ["COMPLETE"], (node, first[node])

    reports = glob.glob(str(tmp_path / "root" / "UniterEvaluator" / "evaluation" / "*" / "metrics.json"))
    assert len(reports) == 1
    with open(reports[0], encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["blessed"] is True and report["baseline_metrics"] is None
    for key in ("itm_accuracy", "img_r1", "txt_r1", "r_mean", "vqa_score"):
        assert 0.0 <= report["metrics"][key] <= 1.0, key
    versions = os.listdir(serving_dir)
    assert len(versions) == 1 and os.path.exists(os.path.join(serving_dir, versions[0], "saved_model.pb"))

    second = run()
    for node in DATA_NODES + TRAINER_NODES:
        assert second[node] == ["COMPLETE", "CACHED"], (node, second[node])
    # The gate ran again: its baseline input is new (the model the first run blessed).
    assert second["UniterEvaluator"][-1] == "COMPLETE"
