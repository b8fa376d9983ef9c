"""VCR from a fine-tuned run to served answers (issue 14): fine-tune briefly, export, serve on 127.0.0.1.

One slow module: the tiny VCR model of configs/finetune_vcr_tiny.json is fine-tuned for a few updates on
the rendered VCR sample (fewer scenes and steps: the numbers are checked, not the learning; that is
tests/test_vcr_learning.py), exported with export_model_dir and served by `uniter serve`'s server. The
served per-choice scores over gRPC (UniterClient.vcr), REST (raw JSON) and `uniter query --task vcr`
must equal the in-process Keras model's scores of the task's own 20 evaluation rows (every answer, then
every answer × rationale) within 2e-5, the chosen indices their argmax; a request with 3 answers is
INVALID_ARGUMENT / HTTP 400 naming ``answers``.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers.sample_experiments import sample_experiment

pytestmark = pytest.mark.slow

NUM_IMAGES = 16
STEPS = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from uniter_tf.data import sample_data, sample_vcr_records
    from uniter_tf.training.finetune import FinetuneRun

    root = tmp_path_factory.mktemp("vcr_serving")
    sample_data.generate(str(root / "sample"), sample_vcr_records.sample_scene_config(NUM_IMAGES))
    sample_vcr_records.write_sample_vcr_annotations(str(root / "sample"), str(root / "vcr"))
    experiment = sample_experiment(root, "finetune_vcr_tiny.json", trainer__num_train_steps=STEPS,
                                   trainer__warmup_steps=1, trainer__eval_every=STEPS,
                                   trainer__checkpoint_every=STEPS, trainer__log_every=STEPS)
    written = sample_vcr_records.write_sample_vcr_records(str(root / "vcr"), str(root / "records"),
                                                          experiment.build_task().model_config())
    assert not written["dead_letters"]
    run = FinetuneRun(experiment.to_finetune_config())
    run.train()
    return {"root": root, "run": run, "eval_files": written["eval"]}


@pytest.fixture(scope="module")
def served(trained):
    from serving.server import ModelServer, ServerConfig
    from uniter_tf.export.model_dir import export_model_dir

    base_path = str(trained["root"] / "export")
    export = export_model_dir(trained["run"].config.output_dir, base_path, record_ops=False)
    server = ModelServer(ServerConfig(model_name="uniter", model_base_path=base_path, port=0, rest_api_port=0,
                                      poll_interval_s=0)).start()
    yield {"export": export, "target": f"127.0.0.1:{server.grpc_port}", "rest": f"http://127.0.0.1:{server.rest_port}"}
    server.stop()


def _questions(trained, count=5):
    """Held-out questions: strings, regions and the in-process model's 20 row scores (the task's eval rows)."""
    from uniter_tf.data import schema
    from uniter_tf.models import vcr_task

    run = trained["run"]
    dataset = vcr_task.build_vcr_dataset(trained["eval_files"], run.task.model_config(), count,
                                         max_text_length=run.task.run_param("max_text_length"), training=False,
                                         num_rows=vcr_task.ALL_ROWS)
    inputs, _ = next(iter(dataset))
    ids = [value.decode() for value in inputs.pop(vcr_task.EXAMPLE_ID_KEY).numpy()]
    scores = vcr_task.question_scores(run.model(inputs, training=False), len(ids)).numpy()
    questions = {}
    for raw in tf.data.TFRecordDataset(trained["eval_files"], compression_type="GZIP"):
        example = tf.train.Example.FromString(raw.numpy())
        feature = example.features.feature
        example_id = feature[schema.EXAMPLE_ID].bytes_list.value[0].decode()
        if example_id in ids:
            record = schema.decode_example(raw.numpy())
            questions[example_id] = {
                    "question": record["text"].decode(),
                    "answers": [text.decode() for text in feature[vcr_task.VCR_ANSWERS].bytes_list.value],
                    "rationales": [text.decode() for text in feature[vcr_task.VCR_RATIONALES].bytes_list.value],
                    "region_features": record["region_features"], "region_boxes": record["region_boxes"],
                    "image_size": (record["image_height"], record["image_width"])}
    return [dict(questions[example_id], scores=scores[index]) for index, example_id in enumerate(ids)]


def test_served_choices_match_the_in_process_model(trained, served, tmp_path, capsys):
    from serving.client import ServingRequestError, UniterClient
    from uniter_tf import cli

    questions = _questions(trained)
    assert served["export"].metadata["task"]["name"] == "vcr"
    assert served["export"].metadata["task"]["multiple_choice"] is True
    with UniterClient(served["target"]) as client:
        rows = client.vcr([q["question"] for q in questions], [q["answers"] for q in questions],
                          [q["region_features"] for q in questions], [q["region_boxes"] for q in questions],
                          [q["image_size"] for q in questions], rationales=[q["rationales"] for q in questions])
        only_answers = client.vcr(questions[0]["question"], questions[0]["answers"], questions[0]["region_features"],
                                  questions[0]["region_boxes"], questions[0]["image_size"])
    for row, question in zip(rows, questions):
        scores = question["scores"]
        np.testing.assert_allclose(row["answer_scores"], scores[:4], atol=2e-5)
        chosen = int(np.argmax(scores[:4]))
        assert row["chosen_answer"] == chosen
        conditioned = scores[4 + 4 * chosen:8 + 4 * chosen]  # rows 4 + 4·a + j: rationale j with answer a
        np.testing.assert_allclose(row["rationale_scores"], conditioned, atol=2e-5)
        assert row["chosen_rationale"] == int(np.argmax(conditioned))
    np.testing.assert_allclose(only_answers[0]["answer_scores"], questions[0]["scores"][:4], atol=2e-5)
    assert "rationale_scores" not in only_answers[0]

    # REST: the same choices; 3 answers are refused naming the input.
    question = questions[0]
    count = len(question["region_features"])
    body = {"signature_name": "serving_default", "inputs": {
            "question": [question["question"]], "answers": [question["answers"]],
            "rationales": [question["rationales"]], "region_features": [question["region_features"].tolist()],
            "region_boxes": [question["region_boxes"].tolist()], "image_size": [list(map(float, question["image_size"]))],
            "num_regions": [count]}}
    status, response = _http(served["rest"] + "/v1/models/uniter:predict", body)
    assert status == 200, response
    assert response["outputs"]["chosen_answer"] == [rows[0]["chosen_answer"]]
    np.testing.assert_allclose(response["outputs"]["answer_scores"][0], rows[0]["answer_scores"], atol=2e-5)
    body["inputs"]["answers"] = [question["answers"][:3]]
    status, response = _http(served["rest"] + "/v1/models/uniter:predict", body)
    assert status == 400 and "answers" in response["error"], response
    with UniterClient(served["target"]) as client:
        with pytest.raises(ServingRequestError) as error:
            client.vcr(question["question"], question["answers"][:3], question["region_features"],
                       question["region_boxes"], question["image_size"], rationales=question["rationales"])
    assert error.value.code == "INVALID_ARGUMENT" and "answers" in error.value.message

    # `uniter query --task vcr` with a regions file.
    regions = tmp_path / "regions.npz"
    np.savez(regions, region_features=question["region_features"], region_boxes=question["region_boxes"],
             image_size=np.array(question["image_size"]))
    capsys.readouterr()
    arguments = ["query", "--target", served["target"], "--regions", str(regions), "--task", "vcr",
                 "--text", question["question"]]
    for answer in question["answers"]:
        arguments += ["--answer", answer]
    for rationale in question["rationales"]:
        arguments += ["--rationale", rationale]
    assert cli.main(arguments) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["chosen_answer"] == rows[0]["chosen_answer"]
    assert result["chosen_rationale"] == rows[0]["chosen_rationale"]
    np.testing.assert_allclose(result["rationale_scores"], rows[0]["rationale_scores"], atol=2e-5)


def _http(url, body):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
