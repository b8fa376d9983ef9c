"""Retrieval served (issue 13): embedding signatures, the `retrieve` endpoint, and model + index swapped together.

One slow module: a retrieval run trains 2 updates on rendered sample records (`uniter train`; the numbers are
checked, not the learning), `uniter index --train-files` trains its first stage briefly and indexes the held-out
images, `export_model_dir(..., index=...)` exports it with `embed_text` / `embed_image` and the index + regions
in `assets.extra/retrieval`, and `uniter serve`'s server serves it on 127.0.0.1. Checked:

* the served embeddings equal FirstStage.embed_texts / embed_images within 1e-5;
* `retrieve` over gRPC and REST equals the in-process `uniter_tf.retrieval.rerank.retrieve` (ids, scores);
* bad input (empty text, k <= 0, k > gallery, rerank < k) is INVALID_ARGUMENT naming the input, and the server
  keeps answering;
* version 2 (the same model with its own index: a smaller gallery) pushed under retrieve traffic: 0 failed
  requests, every answer is version 1's or version 2's in-process answer for the version the response names;
  a version 3 whose index is of another first stage is refused at load and version 2 keeps serving.
"""

import json
import os
import shutil
import threading

import numpy as np
import pytest

from helpers.retrieval_runs import sample_caption_records, train_retrieval_run

pytestmark = pytest.mark.slow

K, RERANK = 3, 6


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from uniter_tf import cli
    from uniter_tf.export.model_dir import export_model_dir

    root = tmp_path_factory.mktemp("retrieval_serving")
    written = sample_caption_records(root, num_images=30, eval_every=3)
    run = root / "run"
    train_retrieval_run(run, written["train"])
    assert cli.main(["index", "--features", *written["eval"], "--run", str(run), "--output", str(root / "index"),
                     "--train-files", *written["train"], "--first-stage-steps", "4",
                     "--first-stage-batch-size", "8"]) == 0
    base = root / "export"
    export = export_model_dir(str(run), str(base), index=str(root / "index"), record_ops=False)
    return {"root": root, "run": run, "eval": written["eval"], "base": base, "export": export}


@pytest.fixture(scope="module")
def in_process(built):
    from uniter_tf.retrieval import first_stage, rerank
    from uniter_tf.retrieval.index import EmbeddingIndex

    gallery = first_stage.read_gallery(built["eval"])
    cross_encoder = rerank.CrossEncoder.from_run(str(built["run"]))
    stage = first_stage.load_first_stage(str(built["run"]))
    index = EmbeddingIndex.load(str(built["root"] / "index"), expected_model_version=stage.model_version())
    indexes = {1: index}

    def answer(version, text, k=K, rerank_count=RERANK):
        return rerank.retrieve(text, stage, indexes[version], k=k, rerank=rerank_count, cross_encoder=cross_encoder,
                               image_parts=gallery.image_parts)

    return {"gallery": gallery, "stage": stage, "indexes": indexes, "answer": answer}


@pytest.fixture(scope="module")
def served(built):
    from serving.server import ModelServer, ServerConfig

    server = ModelServer(ServerConfig(model_name="uniter", model_base_path=str(built["base"]), port=0,
                                      rest_api_port=0, poll_interval_s=0.2, grpc_threads=4)).start()
    yield {"server": server, "target": f"127.0.0.1:{server.grpc_port}", "rest": f"http://127.0.0.1:{server.rest_port}"}
    server.stop()


def _check_same(answers, expected):
    assert [item["image_id"] for item in answers] == [item.image_id for item in expected]
    np.testing.assert_allclose([item["score"] for item in answers], [item.score for item in expected], atol=1e-4)
    np.testing.assert_allclose([item["first_stage_score"] for item in answers],
                               [item.first_stage_score for item in expected], atol=1e-5)


def test_served_embeddings_and_retrieve_equal_the_in_process_first_stage_and_rerank(built, in_process, served,
                                                                                    capsys):
    from serving.client import UniterClient, UniterRestClient
    from uniter_tf import cli
    from uniter_tf.retrieval import first_stage

    metadata = built["export"].metadata
    stage = in_process["stage"]
    assert {"embed_text", "embed_image", "score_positions"} <= set(metadata["signatures"])
    assert metadata["first_stage"]["model_version"] == stage.model_version()
    gallery = in_process["gallery"]
    texts = gallery.texts[:4]
    with UniterClient(served["target"]) as client:
        served_text = client.predict({"text": np.asarray([t.encode() for t in texts], object)}, "embed_text")
        np.testing.assert_allclose(served_text["embeddings"], stage.embed_texts(texts), atol=1e-5)
        features, positions = gallery.region_features[:3], gallery.region_positions[:3]
        padded, padded_positions, mask = first_stage.pack_images(features, positions,
                                                                 max(len(rows) for rows in features))
        served_image = client.predict({"region_features": padded, "region_positions": padded_positions,
                                       "num_regions": mask.sum(axis=1).astype(np.int32)}, "embed_image")
        np.testing.assert_allclose(served_image["embeddings"], stage.embed_images(features, positions), atol=1e-5)
        assert "retrieve" in client.signature_defs()

        for text in texts[:2]:
            expected = in_process["answer"](1, text)
            _check_same(client.retrieve(text, k=K, rerank=RERANK), expected)
            assert client.last_version == 1
            _check_same(UniterRestClient(served["rest"]).retrieve(text, k=K, rerank=RERANK), expected)
        # The first stage alone (rerank 0).
        _check_same(client.retrieve(texts[0], k=K), in_process["answer"](1, texts[0], rerank_count=0))
    capsys.readouterr()
    assert cli.main(["query", "--target", served["target"], "--task", "retrieval", "--text", texts[0],
                     "--k", str(K), "--rerank", str(RERANK)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == 1
    _check_same(printed["results"], in_process["answer"](1, texts[0]))


def test_bad_retrieve_input_is_invalid_argument_naming_it_and_the_server_keeps_serving(built, in_process, served):
    from serving.client import ServingRequestError, UniterClient, UniterRestClient

    size = len(in_process["indexes"][1])
    cases = [(dict(text="   ", k=2, rerank=0), "'text' is empty"), (dict(text="a red circle", k=0, rerank=0), "'k'"),
             (dict(text="a red circle", k=size + 1, rerank=0), "'k'"),
             (dict(text="a red circle", k=3, rerank=2), "'rerank' \\(2\\) must be at least 'k'"),
             (dict(text="a red circle", k=3, rerank=size + 1), "'rerank'")]
    with UniterClient(served["target"]) as client:
        for kwargs, message in cases:
            for front_end in (client, UniterRestClient(served["rest"])):
                with pytest.raises(ServingRequestError, match=message) as raised:
                    front_end.retrieve(**kwargs)
                assert raised.value.code == "INVALID_ARGUMENT"
        with pytest.raises(ServingRequestError, match="'text'") as raised:  # the input, as a batch: wrong rank
            client.predict({"text": np.asarray([b"a", b"b"], object), "k": np.asarray(1, np.int32),
                            "rerank": np.asarray(0, np.int32)}, "retrieve")
        assert raised.value.code == "INVALID_ARGUMENT"
        with pytest.raises(ServingRequestError, match="text: a text is empty") as raised:  # the in-graph check
            client.predict({"text": np.asarray([b"a red circle", b"  "], object)}, "embed_text")
        assert raised.value.code == "INVALID_ARGUMENT"
        assert len(client.retrieve(in_process["gallery"].texts[0], k=2, rerank=3)) == 2  # still serving


def test_version_2_with_its_own_index_swaps_in_under_load_and_a_mismatched_index_is_refused(built, in_process, served):
    from serving.client import UniterClient
    from serving.loadgen import run_load
    from uniter_tf.retrieval.index import EmbeddingIndex
    from uniter_tf.retrieval.serving_assets import RETRIEVAL_ASSETS_SUBDIR, write_retrieval_assets

    # Version 2: the same SavedModel with its own gallery, version 1's without the query's best image, so
    # an answer tells the versions apart. Staged beside the base path, moved in under load (one rename).
    text = in_process["gallery"].texts[1]
    index = in_process["indexes"][1]
    dropped = in_process["answer"](1, text)[0].image_id
    kept = [row for row, image_id in enumerate(index.ids) if image_id != dropped]
    smaller = EmbeddingIndex([index.ids[row] for row in kept], index.embeddings[kept], index.model_version, "image",
                             index.metadata)
    smaller.save(str(built["root"] / "index2"))
    in_process["indexes"][2] = smaller
    staged = built["root"] / ".staged2"
    shutil.copytree(built["export"].path, staged, ignore=shutil.ignore_patterns("retrieval"))
    write_retrieval_assets(str(staged), str(built["root"] / "index2"))
    expected = {version: in_process["answer"](version, text) for version in (1, 2)}
    assert expected[1][0].image_id == dropped and dropped not in [item.image_id for item in expected[2]]

    clients = [UniterClient(served["target"]) for _ in range(2)]
    mismatches, lock, seen = [], threading.Lock(), set()

    def call(client_index):
        client = clients[client_index]
        answers = client.retrieve(text, k=K, rerank=RERANK)
        version = client.last_version
        try:
            _check_same(answers, expected[version])
        except AssertionError as error:
            with lock:
                mismatches.append((version, str(error)))
        seen.add(version)
        return version

    base = built["base"]
    try:
        result = run_load(call, concurrency=2, duration_s=2.0, midpoint=lambda: os.rename(staged, base / "2"),
                          midpoint_fraction=0.3, until=lambda: 2 in seen, max_duration_s=60.0)
    finally:
        for client in clients:
            client.close()
    assert result.errors == [], result.errors[:3]
    assert mismatches == []
    assert set(result.versions) == {1, 2} and result.versions[2] > 0, result.summary()

    # Version 3: version 2 with an index of another first stage: refused at load, version 2 serves on.
    staging = built["root"] / ".staged3"
    shutil.copytree(base / "2", staging)
    foreign = EmbeddingIndex(smaller.ids, smaller.embeddings, "another-first-stage", "image")
    shutil.rmtree(staging / RETRIEVAL_ASSETS_SUBDIR / "index")
    foreign.save(str(staging / RETRIEVAL_ASSETS_SUBDIR / "index"))
    os.rename(staging, base / "3")
    manager = served["server"].managers["uniter"]
    manager.poll_once()
    states = {version: (state, message) for version, state, _, message in manager.status()}
    assert states[3][0] == "END" and "first-stage model version another-first-stage" in states[3][1], states[3]
    assert manager.available_versions() == [2]
    with UniterClient(served["target"]) as client:
        _check_same(client.retrieve(text, k=K, rerank=RERANK), expected[2])
        assert client.last_version == 2
