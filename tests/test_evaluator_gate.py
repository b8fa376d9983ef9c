"""The evaluation gate end to end: a real exported model, the executor, and TFX's own Pusher.

A model below threshold gets ``blessed = 0`` and the Pusher does not push it; a model that meets the
thresholds gets ``blessed = 1`` and lands in TF Serving's layout ``<base>/<version>/saved_model.pb``.
"""

import json
import os

import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tfx")

from tfx.components.pusher import executor as pusher_executor  # noqa: E402
from tfx.proto import pusher_pb2  # noqa: E402
from tfx.types import artifact_utils, standard_artifacts  # noqa: E402
from google.protobuf import json_format  # noqa: E402

from components.uniter_evaluator import executor as evaluator_executor  # noqa: E402
from components.uniter_evaluator import spec as spec_lib  # noqa: E402
from uniter_tf.config import UniterConfig  # noqa: E402
from uniter_tf.export.model_dir import export_model_dir  # noqa: E402
from uniter_tf.testing import synthetic_vqa  # noqa: E402
from uniter_tf.training import finetune  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

NUM_ANSWERS = 4


def _artifact(artifact_class, uri, artifact_id):
    artifact = artifact_class()
    artifact.uri = str(uri)
    artifact.id = artifact_id
    os.makedirs(artifact.uri, exist_ok=True)
    return artifact


def _evaluate(examples, model, tmp_path, name, lower_bounds, baseline=None):
    blessing = _artifact(standard_artifacts.ModelBlessing, tmp_path / name / "blessing", 100)
    evaluation = _artifact(standard_artifacts.ModelEvaluation, tmp_path / name / "evaluation", 101)
    baseline_inputs = {spec_lib.BASELINE_MODEL_KEY: [baseline]} if baseline is not None else {}
    evaluator_executor.Executor().Do(
            {spec_lib.EXAMPLES_KEY: [examples], spec_lib.MODEL_KEY: [model], **baseline_inputs},
            {spec_lib.BLESSING_KEY: [blessing], spec_lib.EVALUATION_KEY: [evaluation]},
            {spec_lib.EVAL_SPLIT_KEY: "eval", spec_lib.LOWER_BOUNDS_KEY: json.dumps(lower_bounds),
             spec_lib.MAX_REGRESSION_KEY: "{}", spec_lib.BATCH_SIZE_KEY: 32, spec_lib.MAX_GALLERY_TEXTS_KEY: 100})
    return blessing, evaluation


def _push(model, blessing, tmp_path, name, serving_dir):
    pushed = _artifact(standard_artifacts.PushedModel, tmp_path / name / "pushed", 102)
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(
            base_directory=str(serving_dir)))
    pusher_executor.Executor().Do(
            {"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
            {"push_destination": json_format.MessageToJson(destination), "custom_config": "null"})
    return pushed


def test_model_below_threshold_is_not_pushed_and_blessed_model_is(tmp_path):
    model_config = UniterConfig.from_preset("tiny")
    examples = _artifact(standard_artifacts.Examples, tmp_path / "examples", 1)
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    eval_dir = os.path.join(artifact_utils.get_split_uri([examples], "eval"))
    synthetic_vqa.write_synthetic_vqa_records(os.path.join(eval_dir, "data_tfrecord"), model_config, num_images=4,
                                              num_answers=NUM_ANSWERS, captions_per_image=1,
                                              questions_per_image=1)
    model = _artifact(standard_artifacts.Model, tmp_path / "model", 7)
    run = finetune.FinetuneRun(finetune.FinetuneConfig(
            task="vqa", task_config={"num_answers": NUM_ANSWERS}, model_config="tiny",
            train_files=[os.path.join(eval_dir, "*")], output_dir=str(tmp_path / "run"), num_train_steps=2,
            warmup_steps=0))
    run.save_checkpoint()  # the untrained model, exported by the one exporter as the run_fn does
    export_model_dir(run.config.output_dir, os.path.join(model.uri, "Format-Serving"), flat=True, record_ops=False)
    serving_dir = tmp_path / "serving" / "uniter"

    # ITM accuracy can never exceed 1: this model fails the gate.
    blessing, evaluation = _evaluate(examples, model, tmp_path, "strict", {"itm_accuracy": 1.01})
    assert blessing.get_int_custom_property("blessed") == 0
    assert blessing.get_int_custom_property("current_model_id") == 7
    assert os.path.exists(os.path.join(blessing.uri, "NOT_BLESSED"))
    with open(os.path.join(evaluation.uri, "metrics.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["blessed"] is False and "itm_accuracy" in report["failed_checks"][0]
    for key in ("itm_accuracy", "img_r1", "txt_r10", "r_mean", "vqa_score"):
        assert 0.0 <= report["metrics"][key] <= 1.0
    pushed = _push(model, blessing, tmp_path, "strict", serving_dir)
    assert pushed.get_int_custom_property("pushed") == 0
    assert not serving_dir.exists() or not any(serving_dir.iterdir())

    # Reachable thresholds: blessed and pushed in TF Serving's layout.
    blessing, evaluation = _evaluate(examples, model, tmp_path, "lenient", {"itm_accuracy": 0.0, "vqa_score": 0.0})
    assert blessing.get_int_custom_property("blessed") == 1
    with open(os.path.join(evaluation.uri, "metrics.json"), encoding="utf-8") as handle:
        assert json.load(handle)["message"] == "blessed: thresholds met (no blessed baseline yet)"
    pushed = _push(model, blessing, tmp_path, "lenient", serving_dir)
    assert pushed.get_int_custom_property("pushed") == 1
    versions = [entry.name for entry in serving_dir.iterdir()]
    assert len(versions) == 1 and versions[0].isdigit()
    assert (serving_dir / versions[0] / "saved_model.pb").exists()

    # A cached Trainer hands the evaluator the last blessed model itself as the candidate: not compared with
    # itself, and the report says so instead of claiming there is no baseline.
    _, evaluation = _evaluate(examples, model, tmp_path, "rerun", {"itm_accuracy": 0.0}, baseline=model)
    with open(os.path.join(evaluation.uri, "metrics.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["blessed"] is True and report["baseline_metrics"] is None and report["baseline_model_id"] == 7
    assert report["message"] == "blessed: thresholds met (the candidate is the last blessed model)"
