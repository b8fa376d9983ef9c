"""The enforced data contract in a real pipeline run: a broken span stops the run before any Trainer."""

import glob
import json
import os

import pytest

from test_pipeline_fingerprint import toy_data_config


@pytest.mark.slow
@pytest.mark.e2e
def test_a_span_with_a_broken_field_is_reported_and_stops_the_run_before_training(tmp_path):
    """Ground-truth boxes give each image as many regions as boxes.json lists; one image with 7 boxes breaks
    the contract's 1-5 regions (``num_regions`` out of range, ``region_positions`` / ``region_boxes`` too
    long). ExampleValidator reports it against the imported schema, the DataGate fails, no Trainer runs and
    nothing is pushed."""
    from tfx import v1 as tfx

    from pipeline import configs
    from pipeline import definition as pipeline_lib
    from pipeline import local_runner
    from uniter_tf.data import sample_data
    from uniter_tf.extraction import toy_detector

    data_root = str(tmp_path / "data")
    sample_data.generate(data_root, sample_data.SampleDataConfig(num_images=4, seed=0))
    boxes_path = os.path.join(data_root, "boxes.json")
    with open(boxes_path, encoding="utf-8") as handle:
        boxes = json.load(handle)
    broken_image = sorted(boxes)[0]
    first_box = boxes[broken_image]["boxes"][0]
    boxes[broken_image]["boxes"] = [[first_box[0] + shift, first_box[1], first_box[2] + shift, first_box[3]]
                                    for shift in range(7)]
    boxes[broken_image]["labels"] = ["blue triangle"] * 7
    with open(boxes_path, "w", encoding="utf-8") as handle:
        json.dump(boxes, handle)
    detector = toy_detector.write_toy_detector(str(tmp_path / "detector"))
    metadata_path = str(tmp_path / "metadata.sqlite")
    serving_dir = str(tmp_path / "serving")
    pipeline = pipeline_lib.create_pipeline(
            pipeline_name="uniter-contract", pipeline_root=str(tmp_path / "root"),
            data=toy_data_config(tmp_path, data_root, detector, ground_truth_boxes=True),
            training=configs.TrainingConfig(
                    model_overrides={**configs.MODEL_OVERRIDES, "region_feature_dim": toy_detector.FEATURE_DIM,
                                     "num_soft_labels": toy_detector.NUM_CLASSES},
                    pretrain_steps=2, finetune_steps=2, eval_steps=1, batch_size=4),
            serving_model_dir=serving_dir, gate=configs.GateConfig(lower_bounds={}, max_regression={}),
            beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"],
            metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path))
    with pytest.raises(Exception) as raised:
        tfx.orchestration.LocalDagRunner().run(pipeline)
    message = str(raised.value)
    print("the run stopped with:", message[:2000])
    assert "data contract is broken" in message and "feature 'num_regions'" in message, message[:2000]

    states = local_runner.node_states(metadata_path, "uniter-contract")
    assert states["ExampleValidator"] == ["COMPLETE"] and states["VqaExampleValidator"] == ["COMPLETE"]
    assert states["DataGate"] == ["FAILED"]
    for node in ("PretrainTrainer", "FinetuneTrainer", "UniterEvaluator", "Pusher"):
        assert not states.get(node), (node, states.get(node))
    assert not os.path.exists(serving_dir) or not os.listdir(serving_dir)

    # The validator's report names the broken features of the imported schema.
    from components.anomalies_gate import component as gate
    from tfx.types import artifact_utils, standard_artifacts

    (uri,) = glob.glob(str(tmp_path / "root" / "ExampleValidator" / "anomalies" / "*"))
    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = uri
    artifact.split_names = artifact_utils.encode_split_names(["train", "eval"])
    reported = {feature for proto in gate.read_anomalies(artifact).values() for feature in proto.anomaly_info}
    assert "num_regions" in reported and "region_positions" in reported, reported
