"""The Python client and ``uniter query`` against ``uniter serve``-style serving of a real export."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tensorflow as tf

from serving.client import ServingRequestError, UniterClient  # noqa: E402
from serving.server import ModelServer, ServerConfig  # noqa: E402
from uniter_tf.data import boxes as boxes_lib  # noqa: E402
from uniter_tf.data import schema  # noqa: E402
from uniter_tf.export.tiny import tiny_export  # noqa: E402
from uniter_tf.extraction.detector import Detections, Detector  # noqa: E402
from uniter_tf.extraction.region_extractor import RegionFeatureExtractor  # noqa: E402
from uniter_tf.tokenization import UniterTokenizer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _GridDetector(Detector):
    """A stand-in detector with the model's feature width: fixed boxes, feature maps from the pixels."""

    def __init__(self, feature_dim):
        self._channels = [feature_dim]

    @property
    def num_classes(self):
        return 91

    @property
    def feature_map_channels(self):
        return self._channels

    def detect(self, image):
        pixels = tf.image.resize(tf.cast(image, tf.float32) / 255.0, [8, 8]).numpy()
        feature_map = np.tile(pixels, (1, 1, self._channels[0] // 3 + 1))[:, :, :self._channels[0]]
        boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.6, 0.9], [0.5, 0.5, 1.0, 1.0]], np.float32)
        return Detections(boxes=boxes, scores=np.array([0.9, 0.8, 0.7], np.float32),
                          classes=np.array([18, 1, 3], np.int32), feature_maps=[feature_map.astype(np.float32)])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = tiny_export(str(tmp_path_factory.getbasetemp() / "tiny_export"))
    server = ModelServer(ServerConfig(model_name="uniter", model_base_path=model.base_path, port=0,
                                      rest_api_port=0, poll_interval_s=0)).start()
    client = UniterClient(f"127.0.0.1:{server.grpc_port}")
    yield {"model": model, "server": server, "client": client}
    client.close()
    server.stop()


def _keras_outputs(model, caption, features, boxes, image_size):
    tokenizer = UniterTokenizer()
    ids = [tokenizer.cls_id] + tokenizer.encode(caption) + [tokenizer.sep_id]
    positions = boxes_lib.position_features(boxes, *image_size)
    encoded = model.backbone({"token_ids": np.array([ids], np.int32), "text_mask": np.ones((1, len(ids)), np.int32),
                              "region_features": features[None].astype(np.float32),
                              "region_positions": positions[None],
                              "region_mask": np.ones((1, len(features)), np.int32)}, training=False)
    score = tf.nn.softmax(model.itm_head(encoded["pooled_output"]))[0, 1].numpy()
    answers = tf.sigmoid(model.vqa_head(encoded))[0].numpy()
    return score, encoded["pooled_output"][0].numpy(), answers


def _image(seed, count, dim):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((count, dim)).astype(np.float32)
    corners = np.sort(rng.uniform(0, 400, (count, 2, 2)), axis=1)
    boxes = np.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], axis=1)
    return features, boxes.astype(np.float32), (480, 640)


def test_score_embed_and_answer_match_the_keras_model(served):
    model, client = served["model"], served["client"]
    dim = model.config.region_feature_dim
    first, second = _image(1, 5, dim), _image(2, 9, dim)
    captions = ["a dog on a sofa", "Two red cars parked outside."]
    scores = client.score(captions, [first[0], second[0]], region_boxes=[first[1], second[1]],
                          image_size=[first[2], second[2]])
    embeddings = client.embed(captions, [first[0], second[0]], region_boxes=[first[1], second[1]],
                              image_size=[first[2], second[2]])
    answers = client.answer(captions, [first[0], second[0]], region_boxes=[first[1], second[1]],
                            image_size=[first[2], second[2]])
    assert client.last_version == 1
    for index, (features, boxes, size) in enumerate((first, second)):
        score, pooled, probabilities = _keras_outputs(model, captions[index], features, boxes, size)
        np.testing.assert_allclose(scores[index], score, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(embeddings[index], pooled, rtol=1e-4, atol=1e-5)
        best = np.argsort(-probabilities)[:3]
        assert [answer for answer, _ in answers[index]] == [model.answers[label] for label in best]
        np.testing.assert_allclose([value for _, value in answers[index]], probabilities[best], rtol=1e-4)


def test_one_image_is_scored_against_several_captions(served):
    model, client = served["model"], served["client"]
    features, boxes, size = _image(3, 4, model.config.region_feature_dim)
    positions = boxes_lib.position_features(boxes, *size)
    captions = ["a cat", "a plane in the sky", "people"]
    by_boxes = client.score(captions, features, region_boxes=boxes, image_size=size)
    by_positions = client.score(captions, features, region_positions=positions)
    assert by_boxes.shape == (3,)
    np.testing.assert_allclose(by_boxes, by_positions, rtol=1e-5)
    for index, caption in enumerate(captions):
        np.testing.assert_allclose(by_boxes[index], _keras_outputs(model, caption, features, boxes, size)[0],
                                   rtol=1e-4, atol=1e-6)


def test_score_examples_and_server_side_errors(served):
    model, client = served["model"], served["client"]
    features, boxes, size = _image(4, 3, model.config.region_feature_dim)
    record = schema.make_example(image_id="i", example_id="e1", text="a dog", region_features=features,
                                 region_boxes=boxes, image_height=size[0], image_width=size[1])
    outputs = client.score_examples([record.SerializeToString()])
    assert outputs["example_id"].tolist() == [b"e1"]
    with pytest.raises(ServingRequestError) as raised:
        client.score(["x"], np.zeros((40, model.config.region_feature_dim), np.float32),
                     region_boxes=np.zeros((40, 4), np.float32), image_size=size)
    assert raised.value.code == "INVALID_ARGUMENT" and "more than 36 regions" in raised.value.message
    with pytest.raises(ServingRequestError) as raised:
        client.score_examples([b"not a record"])
    assert raised.value.code == "INVALID_ARGUMENT"
    with pytest.raises(ValueError, match="must have shape"):
        client.score(["x"], [np.zeros((3, 5), np.float32)], region_boxes=[boxes], image_size=size)


def test_image_to_regions_to_score(served):
    from PIL import Image

    model, client = served["model"], served["client"]
    extractor = RegionFeatureExtractor(_GridDetector(model.config.region_feature_dim))
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(buffer, "PNG")
    scores = client.score_image(buffer.getvalue(), ["a dog", "a cat"], extractor=extractor)
    regions = client.extract_regions(buffer.getvalue(), extractor)
    assert scores.shape == (2,)
    np.testing.assert_allclose(
            scores[0], _keras_outputs(model, "a dog", regions.region_features, regions.region_boxes, (60, 80))[0],
            rtol=1e-4, atol=1e-6)

    class _WrongWidth(_GridDetector):
        pass

    with pytest.raises(ValueError, match="expects 64-d"):
        client.score_image(buffer.getvalue(), ["a dog"], extractor=RegionFeatureExtractor(_WrongWidth(32)))


def test_query_command_prints_scores(served, tmp_path):
    model = served["model"]
    features, boxes, size = _image(5, 6, model.config.region_feature_dim)
    np.savez(tmp_path / "regions.npz", region_features=features, region_boxes=boxes, image_size=np.array(size))
    command = [sys.executable, "-m", "uniter_tf.cli", "query", "--target", f"127.0.0.1:{served['server'].grpc_port}",
               "--regions", str(tmp_path / "regions.npz"), "--text", "a dog", "--text", "a cat", "--mode", "answer"]
    environment = dict(os.environ, PYTHONPATH=REPO_ROOT)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout)
    assert printed["version"] == 1
    assert [row["question"] for row in printed["results"]] == ["a dog", "a cat"]
    assert all(len(row["answers"]) == 3 for row in printed["results"])
