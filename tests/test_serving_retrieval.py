"""The server's `retrieve` signature (issue 13) over stand-in signatures: no model is exported here.

A version directory holds real retrieval assets (write_retrieval_assets over canonical region records) and an
export metadata file; its `embed_text` and `score_positions` are small TensorFlow functions with known answers
(a fixed query embedding; the cross score of an image = the sum of its regions' first feature), so the order,
the rerank, the input checks and the version swap of serving/retrieval.py are checked exactly and fast. The
real export served end to end is tests/test_retrieval_serving.py (slow).
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers.retrieval_records import write_region_records
from serving.batching import BatchingOptions
from serving.errors import Code, ServingError
from serving.model_manager import ModelManager, ServableVersion, Signature, _spec_from_tensor_spec, load_saved_model
from serving.predictor import Predictor
from serving.retrieval import RETRIEVE, attach_retrieval, check_retrieval_assets
from uniter_tf.retrieval.index import EmbeddingIndex, IndexVersionError
from uniter_tf.retrieval.serving_assets import read_retrieval_assets, write_retrieval_assets

IMAGES = [f"img{i}" for i in range(8)]
QUERY = np.asarray([1.0, 0.0, 0.0, 0.0], np.float32)


def _spec(name, dtype, shape):
    return _spec_from_tensor_spec(name, tf.TensorSpec(shape, dtype))


def stand_in_servable(model_name, version, path):
    """A version whose embed_text answers QUERY and whose score_positions sums each image's first feature."""

    def embed_text(text):
        return {"embeddings": tf.tile(tf.constant(QUERY)[None], [tf.shape(text)[0], 1])}

    def score_positions(text, region_features, region_positions, num_regions):
        mask = tf.sequence_mask(num_regions, tf.shape(region_features)[1], dtype=tf.float32)
        return {"task_logits": tf.reduce_sum(region_features[:, :, 0] * mask, axis=1, keepdims=True)}

    signatures = {
            "embed_text": Signature("embed_text", embed_text, {"text": _spec("text", tf.string, (None,))},
                                    ("embeddings",)),
            "score_positions": Signature("score_positions", score_positions, {
                    "text": _spec("text", tf.string, (None,)),
                    "region_features": _spec("region_features", tf.float32, (None, None, 8)),
                    "region_positions": _spec("region_positions", tf.float32, (None, None, 7)),
                    "num_regions": _spec("num_regions", tf.int32, (None,))}, ("task_logits",)),
    }
    servable = ServableVersion(model_name, version, path, signatures, {})
    attach_retrieval(servable)
    return servable


def write_version(base, number, embeddings, records, index_version="stage-a", stage_version="stage-a"):
    """A version directory: export metadata (first stage ``stage_version``) and retrieval assets."""
    path = base / str(number)
    (path / "assets.extra").mkdir(parents=True)
    (path / "assets.extra" / "uniter_export.json").write_text(json.dumps({
            "first_stage": {"model_version": stage_version}, "max_regions": 16,
            "task": {"name": "retrieval", "outputs": {"logits": "task_logits"}}}))
    (path / "saved_model.pb").write_bytes(b"")  # what the manager's scan looks for; the loader is the stand-in
    index_dir = base.parent / f"index{number}"
    EmbeddingIndex(IMAGES, embeddings, index_version, "image").save(str(index_dir))
    write_retrieval_assets(str(path), str(index_dir), [str(records)], expected_model_version=index_version)
    return str(path)


@pytest.fixture
def served(tmp_path):
    records = tmp_path / "regions.tfrecord"
    write_region_records(records, IMAGES)
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((len(IMAGES), 4)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    base = tmp_path / "models"
    base.mkdir()
    path = write_version(base, 1, embeddings, records)
    manager = ModelManager("m", str(base), poll_interval_s=0, loader=stand_in_servable)
    manager.start()
    yield {"base": base, "records": records, "embeddings": embeddings, "manager": manager, "path": path,
           "predictor": Predictor({"m": manager})}
    manager.stop()


def retrieve(predictor, text="a red circle", k=3, rerank=5):
    return predictor.predict("m", signature_name=RETRIEVE, inputs={
            "text": np.asarray(text.encode() if isinstance(text, str) else text, object),
            "k": np.asarray(k, np.int32), "rerank": np.asarray(rerank, np.int32)})


def expected_answer(path, embeddings, k, rerank):
    first = embeddings @ QUERY
    order = np.lexsort((np.arange(len(first)), -first))
    if not rerank:
        return [IMAGES[row] for row in order[:k]], first[order[:k]]
    gallery = read_retrieval_assets(path).gallery
    candidates = order[:rerank]
    cross = np.asarray([gallery.regions(row)[0][:, 0].sum() for row in candidates])
    best = candidates[np.argsort(-cross, kind="stable")[:k]]
    return [IMAGES[row] for row in best], np.sort(cross)[::-1][:k]


def test_retrieve_reranks_the_first_stages_candidates_by_the_versions_score_signature(served):
    version, signature, outputs = retrieve(served["predictor"], k=3, rerank=5)
    assert (version, signature) == (1, RETRIEVE)
    ids, scores = expected_answer(served["path"], served["embeddings"], 3, 5)
    assert [value.decode() for value in outputs["image_ids"]] == ids
    np.testing.assert_allclose(outputs["scores"], scores, rtol=1e-5)
    first = dict(zip(IMAGES, served["embeddings"] @ QUERY))
    np.testing.assert_allclose(outputs["first_stage_scores"], [first[image] for image in ids], rtol=1e-5)
    # rerank 0: the first stage alone; its scores are the first stage's.
    _, _, alone = retrieve(served["predictor"], k=4, rerank=0)
    ids, scores = expected_answer(served["path"], served["embeddings"], 4, 0)
    assert [value.decode() for value in alone["image_ids"]] == ids
    np.testing.assert_allclose(alone["scores"], scores, rtol=1e-6)
    np.testing.assert_array_equal(alone["scores"], alone["first_stage_scores"])
    # Scalars are never merged by the batcher: the same answer with batching on.
    batched = Predictor({"m": served["manager"]}, BatchingOptions(max_batch_size=4, batch_timeout_micros=1000))
    try:
        np.testing.assert_array_equal(retrieve(batched, k=3, rerank=5)[2]["image_ids"], outputs["image_ids"])
    finally:
        batched.close()


@pytest.mark.parametrize("inputs, message", [
        (dict(text="  "), "input 'text' is empty"),
        (dict(text=b"\xff\xfe"), "input 'text' is not UTF-8"),
        (dict(k=0), "input 'k' must be >= 1, got 0"),
        (dict(k=9, rerank=0), "input 'k'=9 is larger than the gallery \\(8 entries\\)"),
        (dict(k=3, rerank=2), "input 'rerank' \\(2\\) must be at least 'k' \\(3\\)"),
        (dict(k=3, rerank=-1), "input 'rerank' must be >= 1, got -1"),
        (dict(k=3, rerank=9), "input 'rerank'=9 is larger than the gallery"),
])
def test_bad_input_is_invalid_argument_naming_the_input(served, inputs, message):
    with pytest.raises(ServingError, match=message) as raised:
        retrieve(served["predictor"], **inputs)
    assert raised.value.code == Code.INVALID_ARGUMENT
    assert len(retrieve(served["predictor"])[2]["image_ids"]) == 3  # still serving


def test_a_batch_of_texts_is_refused_by_the_signatures_declared_scalar_shape(served):
    with pytest.raises(ServingError, match="input 'text' expects rank 0") as raised:
        served["predictor"].predict("m", signature_name=RETRIEVE, inputs={
                "text": np.asarray([b"a", b"b"], object), "k": np.asarray(1, np.int32),
                "rerank": np.asarray(0, np.int32)})
    assert raised.value.code == Code.INVALID_ARGUMENT


def test_a_version_with_a_foreign_index_is_refused_and_a_good_one_swaps_in_with_its_index(served):
    base, manager = served["base"], served["manager"]
    # Version 2: its index was built by another first stage than its embed_text: refused at load.
    write_version(base, 2, served["embeddings"], served["records"], index_version="stage-b", stage_version="stage-a")
    manager.poll_once()
    states = {version: (state, message) for version, state, _, message in manager.status()}
    assert states[2][0] == "END" and "first-stage model version stage-b" in states[2][1]
    # The real loader refuses it from the JSON files, before parsing the SavedModel (an empty file here).
    with pytest.raises(IndexVersionError, match="stage-b.*stage-a"):
        load_saved_model("m", 2, str(base / "2"))
    check_retrieval_assets(served["path"])  # version 1's index is its first stage's
    assert manager.available_versions() == [1] and retrieve(served["predictor"])[0] == 1

    # Version 3: another first stage with its own index (the gallery's embeddings reversed): swapped in whole.
    reversed_embeddings = served["embeddings"][::-1].copy()
    path = write_version(base, 3, reversed_embeddings, served["records"], index_version="stage-c",
                         stage_version="stage-c")
    manager.poll_once()
    assert manager.available_versions() == [3]
    version, _, outputs = retrieve(served["predictor"], k=3, rerank=5)
    ids, _ = expected_answer(path, reversed_embeddings, 3, 5)
    assert version == 3 and [value.decode() for value in outputs["image_ids"]] == ids


def test_a_version_without_retrieval_assets_has_no_retrieve_signature(served, tmp_path):
    (tmp_path / "plain").mkdir()
    servable = stand_in_servable("m", 1, str(tmp_path / "plain"))
    assert RETRIEVE not in servable.signatures
    # Retrieval assets without the embedding signature are a broken export.
    servable = ServableVersion("m", 1, served["path"], {}, {})
    with pytest.raises(ValueError, match="embed_text"):
        attach_retrieval(servable)
