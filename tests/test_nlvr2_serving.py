"""NLVR2 from a trained run to served answers (issue 12): fine-tune briefly, export, serve on 127.0.0.1.

One slow module: a tiny paired-attention NLVR2 model is fine-tuned for a few updates on rendered pairs
(configs/finetune_nlvr2_tiny.json, fewer sets and steps: the numbers are checked, not the learning; that
is tests/test_nlvr2_learning.py), exported with export_model_dir and served by `uniter serve`'s server.
The served answers over gRPC (UniterClient.nlvr2), REST (UniterRestClient.nlvr2 and raw JSON) and
`uniter query --task nlvr2` must equal the in-process Keras model's within 2e-5; a request with one
image (the *_2 inputs missing, or zero regions) is INVALID_ARGUMENT / HTTP 400 naming the input; and
`uniter evaluate --task nlvr2` reproduces the run's own evaluation and predictions CSV.
"""

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from helpers import ingest_test_data as data

pytestmark = pytest.mark.slow

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
STEPS = 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from uniter_tf.config import UniterConfig
    from uniter_tf.data import sample_nlvr2
    from uniter_tf.training.experiment import load_experiment, prepare_experiment

    root = tmp_path_factory.mktemp("nlvr2_serving")
    experiment = load_experiment(str(REPO_ROOT / "configs" / "finetune_nlvr2_tiny.json"), [
            f"runtime.output_dir={root / 'run'}",
            f'task.train_files=["{root / "sample" / "records" / "train-*.tfrecord.gz"}"]',
            f'task.eval_files=["{root / "sample" / "records" / "eval-*.tfrecord.gz"}"]',
            "task.variant=paired_attn", "task.train_batch_size=16", f"trainer.num_train_steps={STEPS}",
            "trainer.warmup_steps=4", f"trainer.eval_every={STEPS}", f"trainer.checkpoint_every={STEPS}",
            "trainer.log_every=20"])
    written = sample_nlvr2.write_sample_nlvr2(str(root / "sample"),
                                              sample_nlvr2.SampleNlvr2Config(train_sets=12, eval_sets=4),
                                              UniterConfig.resolve(experiment.task["model"]))
    assert not written["dead_letters"]
    trainer = prepare_experiment(experiment, log=lambda *_: None)
    summary = trainer.train()
    return {"root": root, "summary": summary, "trainer": trainer, "run_dir": str(root / "run"),
            "records": data.read_tfrecords(str(root / "sample" / "records"), "eval-*.tfrecord.gz")}


@pytest.fixture(scope="module")
def served(trained):
    from serving.server import ModelServer, ServerConfig
    from uniter_tf.export.model_dir import export_model_dir

    base_path = str(trained["root"] / "export")
    export = export_model_dir(trained["run_dir"], base_path, record_ops=False)
    server = ModelServer(ServerConfig(model_name="uniter", model_base_path=base_path, port=0, rest_api_port=0,
                                      poll_interval_s=0)).start()
    yield {"export": export, "target": f"127.0.0.1:{server.grpc_port}", "rest": f"http://127.0.0.1:{server.rest_port}"}
    server.stop()


def _in_process_logits(trained, record):
    """The fine-tuned Keras model's logits for one pair record (its own token ids, regions and positions)."""
    config = trained["trainer"].task.model_config()
    token_ids = np.concatenate([[config.cls_token_id], record["token_ids"], [config.sep_token_id]]).astype(np.int32)
    inputs = {"token_ids": token_ids[None], "text_mask": np.ones([1, len(token_ids)], np.int32)}
    for suffix in ("", "_2"):
        count = len(record[f"region_features{suffix}"])
        inputs[f"region_features{suffix}"] = record[f"region_features{suffix}"][None].astype(np.float32)
        inputs[f"region_positions{suffix}"] = record[f"region_positions{suffix}"][None].astype(np.float32)
        inputs[f"region_mask{suffix}"] = np.ones([1, count], np.int32)
    model = trained["trainer"].model
    return model({name: tf.constant(value) for name, value in inputs.items()}, training=False).numpy()[0]


def _image(records, suffix):
    return {"region_features": [record[f"region_features{suffix}"] for record in records],
            "region_boxes": [record[f"region_boxes{suffix}"] for record in records],
            "image_size": [(record[f"image_height{suffix}"], record[f"image_width{suffix}"]) for record in records]}


def _check_rows(rows, records, expected):
    for row, record, logits in zip(rows, records, expected):
        assert row["statement"] == record["text"].decode("utf-8")
        np.testing.assert_allclose(row["logits"], logits, atol=2e-5)
        probabilities = np.exp(logits - logits.max()) / np.sum(np.exp(logits - logits.max()))
        assert row["p_true"] == pytest.approx(probabilities[1], abs=2e-5)
        assert row["label"] == ("True" if logits[1] > logits[0] else "False")


def test_served_answers_equal_the_in_process_model(trained, served, tmp_path, capsys):
    from serving.client import UniterClient, UniterRestClient
    from uniter_tf import cli

    records = trained["records"][:6]
    texts = [record["text"].decode("utf-8") for record in records]
    expected = [_in_process_logits(trained, record) for record in records]
    with UniterClient(served["target"]) as client:
        grpc_rows = client.nlvr2(texts, _image(records, ""), _image(records, "_2"))
    _check_rows(grpc_rows, records, expected)
    rest_rows = UniterRestClient(served["rest"]).nlvr2(texts, _image(records, ""), _image(records, "_2"))
    _check_rows(rest_rows, records, expected)
    print("served NLVR2 answers:", [(row["statement"][:40], row["label"], round(row["p_true"], 3)) for row in grpc_rows])
    metadata = served["export"].metadata
    assert metadata["task"]["name"] == "nlvr2" and metadata["task"]["image_pair"] is True
    assert metadata["signatures"]["serving_default"][-4:] == ["region_features_2", "region_boxes_2", "image_size_2",
                                                              "num_regions_2"]

    # `uniter query --task nlvr2` with the two images as region files.
    record = records[0]
    paths = []
    for suffix in ("", "_2"):
        path = tmp_path / f"image{suffix or '_1'}.npz"
        np.savez(path, region_features=record[f"region_features{suffix}"], region_boxes=record[f"region_boxes{suffix}"],
                 image_size=np.array([record[f"image_height{suffix}"], record[f"image_width{suffix}"]]))
        paths.append(str(path))
    capsys.readouterr()
    assert cli.main(["query", "--target", served["target"], "--regions", paths[0], "--regions-2", paths[1],
                     "--task", "nlvr2", "--text", texts[0]]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["label"] == grpc_rows[0]["label"]
    assert result["p_true"] == pytest.approx(grpc_rows[0]["p_true"], abs=2e-5)
    assert cli.main(["query", "--target", served["target"], "--regions", paths[0], "--task", "nlvr2",
                     "--text", texts[0]]) == 2
    assert "--regions-2" in capsys.readouterr().err

    # `uniter query --examples` with the pair records themselves (serve_examples: ids from the records).
    from uniter_tf.data import schema

    records_path = tmp_path / "pairs.tfrecord"
    with tf.io.TFRecordWriter(str(records_path)) as writer:
        for record in records:
            writer.write(schema.make_example(
                    image_id=record["image_id"], region_features=record["region_features"],
                    region_boxes=record["region_boxes"], image_height=record["image_height"],
                    image_width=record["image_width"], example_id=record["example_id"], text=record["text"],
                    token_ids=record["token_ids"], label=int(record["label"]), task=schema.TASK_NLVR2,
                    second_image=dict(image_id=record["image_id_2"], region_features=record["region_features_2"],
                                      region_boxes=record["region_boxes_2"], image_height=record["image_height_2"],
                                      image_width=record["image_width_2"])).SerializeToString())
    capsys.readouterr()
    assert cli.main(["query", "--target", served["target"], "--examples", str(records_path)]) == 0
    answers = json.loads(capsys.readouterr().out)["results"]
    assert [row["example_id"] for row in answers] == [record["example_id"].decode("utf-8") for record in records]
    for row, logits in zip(answers, expected):
        probabilities = np.exp(logits - logits.max()) / np.sum(np.exp(logits - logits.max()))
        assert row["p_true"] == pytest.approx(probabilities[1], abs=2e-5)
        assert row["label"] == ("True" if logits[1] > logits[0] else "False")


def test_a_request_with_one_image_is_refused_naming_the_input(trained, served):
    from serving.client import ServingRequestError, UniterClient, UniterRestClient

    records = trained["records"][:2]
    texts = [record["text"].decode("utf-8") for record in records]
    with UniterClient(served["target"]) as client:
        signature, inputs = client._pair_inputs(texts, _image(records, ""), _image(records, "_2"))
        one_image = {name: value for name, value in inputs.items() if not name.endswith("_2")}
        for transport in (client, UniterRestClient(served["rest"])):
            with pytest.raises(ServingRequestError) as error:
                transport.predict(one_image, signature)
            assert error.value.code == "INVALID_ARGUMENT", error.value
            assert "missing input 'image_size_2', 'num_regions_2', 'region_boxes_2', 'region_features_2'" in \
                error.value.message
            zero = dict(inputs, num_regions_2=np.array([0, len(records[1]["region_features_2"])], np.int32))
            with pytest.raises(ServingRequestError) as error:
                transport.predict(zero, signature)
            assert error.value.code == "INVALID_ARGUMENT"
            assert "num_regions_2: an example has zero regions in the right image" in error.value.message
        # A one-image model's client call against the pair model names what it lacks too.
        with pytest.raises(ServingRequestError, match="region_features_2"):
            client.entail(texts, **{key: value for key, value in _image(records, "").items()})


def test_uniter_evaluate_task_nlvr2_reproduces_the_run(trained, served, tmp_path, capsys):
    from uniter_tf import cli

    output = tmp_path / "metrics.json"
    capsys.readouterr()
    eval_files = str(trained["root"] / "sample" / "records" / "eval-*.tfrecord.gz")
    assert cli.main(["evaluate", "--run", trained["run_dir"], "--task", "nlvr2", "--files", eval_files,
                     "--output", str(output)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    evaluation = trained["summary"]["evaluation"]
    assert metrics["task"] == "nlvr2" and metrics["num_examples"] == evaluation["num_examples"] == len(trained["records"])
    assert metrics["accuracy"] == pytest.approx(evaluation["accuracy"])
    assert metrics["consistency"] == pytest.approx(evaluation["consistency"])
    assert (tmp_path / "metrics_predictions.csv").read_text() == \
        (pathlib.Path(trained["run_dir"]) / "results" / f"results_{STEPS}.csv").read_text()
    assert cli.main(["evaluate", "--run", trained["run_dir"], "--task", "ve", "--files", eval_files]) == 2
    assert "is a run of task 'nlvr2', not 've'" in capsys.readouterr().err
    # The export itself has no one-image signatures: the ITM / VQA evaluation names the command to use.
    assert cli.main(["evaluate", "--run", str(trained["root"] / "export"), "--files", eval_files]) == 2
    assert "is a two-image export (task 'nlvr2')" in capsys.readouterr().err
