"""Exported signatures, loaded in a fresh process (tensorflow_text first), against the Keras model.

Slow: exporting five signatures and starting a second interpreter take about a minute on 2 cores.
"""

import base64
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from uniter_tf.config import UniterConfig  # noqa: E402
from uniter_tf.data import boxes as boxes_lib  # noqa: E402
from uniter_tf.data import schema  # noqa: E402
from uniter_tf.export.exporter import EXPORT_METADATA_FILE, export_uniter, next_version  # noqa: E402
from uniter_tf.export.tiny import TINY_ANSWERS, TINY_OPTIONS, tiny_export  # noqa: E402
from uniter_tf.models.backbone import UniterBackbone  # noqa: E402
from uniter_tf.models.pretraining_heads import ItmHead  # noqa: E402
from uniter_tf.tokenization import UniterTokenizer  # noqa: E402

pytestmark = pytest.mark.slow

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSWERS = TINY_ANSWERS
CAPTIONS = ["A dog runs on the grass.", "two cats"]

# Runs every signature in a fresh interpreter; tensorflow_text must be imported before loading.
FRESH_PROCESS_SCRIPT = textwrap.dedent("""
    import base64, json, sys
    import numpy as np
    import tensorflow_text  # noqa: F401  (registers the WordPiece ops)
    import tensorflow as tf

    saved_model_dir, inputs_path, strings_path, output_path = sys.argv[1:5]
    loaded = tf.saved_model.load(saved_model_dir)
    arrays = dict(np.load(inputs_path, allow_pickle=False))
    strings = json.load(open(strings_path))
    requests = {
        "serving_default": {"text": strings["text"], "region_features": arrays["region_features"],
                            "region_boxes": arrays["region_boxes"], "image_size": arrays["image_size"],
                            "num_regions": arrays["num_regions"]},
        "score_positions": {"text": strings["text"], "region_features": arrays["region_features"],
                            "region_positions": arrays["region_positions"], "num_regions": arrays["num_regions"]},
        "score_tensors": {"token_ids": arrays["token_ids"], "text_mask": arrays["text_mask"],
                          "region_features": arrays["region_features"],
                          "region_positions": arrays["region_positions"], "region_mask": arrays["region_mask"]},
        "serve_examples": {"examples": [base64.b64decode(item) for item in strings["examples"]]},
        "tokenize": {"text": strings["text"]},
    }
    numeric, text_outputs = {}, {"signatures": {}}
    for name, inputs in requests.items():
        function = loaded.signatures[name]
        text_outputs["signatures"][name] = sorted(function.structured_input_signature[1])
        outputs = function(**{key: tf.constant(value) for key, value in inputs.items()})
        for key, value in outputs.items():
            value = value.numpy()
            if value.dtype == object:
                text_outputs[f"{name}/{key}"] = np.vectorize(lambda item: item.decode())(value).tolist()
            else:
                numeric[f"{name}/{key}"] = value
    too_many = dict(requests["serving_default"], num_regions=np.array([37, 1], np.int32),
                    region_features=np.zeros((2, 37, arrays["region_features"].shape[2]), np.float32),
                    region_boxes=np.zeros((2, 37, 4), np.float32))
    try:
        loaded.signatures["serving_default"](**{key: tf.constant(value) for key, value in too_many.items()})
        text_outputs["too_many_regions_error"] = ""
    except tf.errors.InvalidArgumentError as error:
        text_outputs["too_many_regions_error"] = error.message
    np.savez(output_path + ".npz", **numeric)
    json.dump(text_outputs, open(output_path + ".json", "w"))
""")


def _inputs(config, tokenizer):
    rng = np.random.default_rng(11)
    dim = config.region_feature_dim
    num_regions = np.array([5, 3], np.int32)
    # float16-exact features, so that the float16 canonical record carries the same numbers.
    features = rng.standard_normal((2, 5, dim)).astype(np.float16).astype(np.float32)
    features[1, 3:] = 1e4  # padding rows must be ignored whatever they hold
    image_size = np.array([[480, 640], [300, 200]], np.float32)
    boxes = np.zeros((2, 5, 4), np.float32)
    positions = np.zeros((2, 5, 7), np.float32)
    for index in range(2):
        height, width = image_size[index]
        corners = np.sort(rng.uniform(-10, max(height, width) + 10, (5, 2, 2)), axis=1)
        boxes[index] = np.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], axis=1)
        positions[index] = boxes_lib.position_features(boxes[index], height, width)
    word_ids = tokenizer.encode(CAPTIONS)
    token_ids = np.zeros((2, 24), np.int32)  # wider than any bucket: the graph must cut it
    text_mask = np.zeros((2, 24), np.int32)
    for index, ids in enumerate(word_ids):
        row = [tokenizer.cls_id] + ids + [tokenizer.sep_id]
        token_ids[index, :len(row)] = row
        text_mask[index, :len(row)] = 1
    region_mask = (np.arange(5)[None, :] < num_regions[:, None]).astype(np.int32)
    examples = [schema.make_example(
            image_id=f"img{index}", example_id=f"ex{index}", text=CAPTIONS[index],
            token_ids=word_ids[index] if index == 0 else None,  # the second record carries raw text only
            region_features=features[index, :num_regions[index]], region_boxes=boxes[index, :num_regions[index]],
            region_positions=positions[index, :num_regions[index]],
            image_height=int(image_size[index, 0]), image_width=int(image_size[index, 1])).SerializeToString()
                for index in range(2)]
    return {"region_features": features, "region_boxes": boxes, "image_size": image_size,
            "num_regions": num_regions, "region_positions": positions, "token_ids": token_ids,
            "text_mask": text_mask, "region_mask": region_mask}, examples


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    work = tmp_path_factory.mktemp("export")
    model = tiny_export(str(tmp_path_factory.getbasetemp() / "tiny_export"))
    config, backbone, itm_head, vqa_head = model.config, model.backbone, model.itm_head, model.vqa_head
    tokenizer = UniterTokenizer()
    path = model.version_path
    arrays, examples = _inputs(config, tokenizer)
    np.savez(work / "inputs.npz", **arrays)
    with open(work / "strings.json", "w") as handle:
        json.dump({"text": CAPTIONS, "examples": [base64.b64encode(item).decode() for item in examples]}, handle)
    script = work / "run_signatures.py"
    script.write_text(FRESH_PROCESS_SCRIPT)
    environment = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, str(script), path, str(work / "inputs.npz"), str(work / "strings.json"),
                             str(work / "outputs")], capture_output=True, text=True, timeout=400, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    numeric = dict(np.load(str(work / "outputs.npz"), allow_pickle=False))
    with open(work / "outputs.json") as handle:
        strings = json.load(handle)

    # The Keras reference, unpadded per example.
    reference = {"itm_score": [], "pooled_output": [], "task_logits": []}
    for index in range(2):
        text_length = int(arrays["text_mask"][index].sum())
        count = int(arrays["num_regions"][index])
        encoded = backbone({"token_ids": arrays["token_ids"][index:index + 1, :text_length],
                            "text_mask": arrays["text_mask"][index:index + 1, :text_length],
                            "region_features": arrays["region_features"][index:index + 1, :count],
                            "region_positions": arrays["region_positions"][index:index + 1, :count],
                            "region_mask": np.ones((1, count), np.int32)}, training=False)
        logits = itm_head(encoded["pooled_output"])
        reference["itm_score"].append(tf.nn.softmax(logits)[0, 1].numpy())
        reference["pooled_output"].append(encoded["pooled_output"][0].numpy())
        reference["task_logits"].append(vqa_head(encoded)[0].numpy())
    reference = {key: np.stack(values) for key, values in reference.items()}
    return {"path": path, "base": model.base_path, "numeric": numeric, "strings": strings,
            "reference": reference}


SCORING = ["serving_default", "score_positions", "score_tensors", "serve_examples"]


@pytest.mark.parametrize("signature", SCORING)
def test_each_scoring_signature_matches_the_keras_model(exported, signature):
    numeric, reference = exported["numeric"], exported["reference"]
    for output in ("itm_score", "pooled_output", "task_logits"):
        np.testing.assert_allclose(numeric[f"{signature}/{output}"], reference[output], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{signature}/{output}")
    assert numeric[f"{signature}/itm_logits"].shape == (2, 2)


@pytest.mark.parametrize("signature", SCORING)
def test_task_head_answers_are_the_top_k_labels(exported, signature):
    probabilities = 1 / (1 + np.exp(-exported["reference"]["task_logits"]))
    expected_order = np.argsort(-probabilities, axis=1)[:, :3]
    assert exported["strings"][f"{signature}/answers"] == [[ANSWERS[index] for index in row]
                                                          for row in expected_order]
    np.testing.assert_allclose(exported["numeric"][f"{signature}/answer_scores"],
                               np.take_along_axis(probabilities, expected_order, axis=1), rtol=1e-4)


def test_signature_inputs_and_passthrough(exported):
    assert exported["strings"]["signatures"] == {
            "serving_default": ["image_size", "num_regions", "region_boxes", "region_features", "text"],
            "score_positions": ["num_regions", "region_features", "region_positions", "text"],
            "score_tensors": ["region_features", "region_mask", "region_positions", "text_mask", "token_ids"],
            "serve_examples": ["examples"],
            "tokenize": ["text"],
    }
    assert exported["strings"]["serve_examples/example_id"] == ["ex0", "ex1"]


def test_tokenize_signature_shows_the_wordpieces(exported):
    tokens = exported["strings"]["tokenize/tokens"]
    assert [token for token in tokens[1] if token] == ["[CLS]", "two", "cats", "[SEP]"]
    assert tokens[0][:3] == ["[CLS]", "A", "dog"]
    # Padded to the first text bucket (8) that holds the longest row (9 tokens -> 20).
    assert exported["numeric"]["tokenize/token_ids"].shape == (2, 20)


def test_too_many_regions_fail_with_a_clear_message(exported):
    assert "more than 36 regions" in exported["strings"]["too_many_regions_error"]


def test_assets_and_metadata_are_written(exported):
    path = exported["path"]
    with open(os.path.join(path, "assets", "answers.txt")) as handle:
        assert handle.read().splitlines() == ANSWERS
    with open(os.path.join(path, "assets", "vocab.txt")) as handle:
        assert len(handle.read().splitlines()) == 28996
    with open(os.path.join(path, "assets.extra", EXPORT_METADATA_FILE)) as handle:
        metadata = json.load(handle)
    assert metadata["max_regions"] == 36 and metadata["region_feature_dim"] == 64
    assert metadata["task"] == {"name": "vqa", "num_labels": 6, "top_k": 3, "activation": "sigmoid",
                                "outputs": {"logits": "task_logits", "labels": "answers", "scores": "answer_scores"},
                                "region_choice": False, "image_pair": False, "multiple_choice": False}
    assert os.path.getsize(os.path.join(path, "assets.extra", "tf_serving_warmup_requests")) > 0
    assert next_version(exported["base"]) == 2
    assert [name for name in os.listdir(exported["base"]) if not name.isdigit()] == []  # no staging leftovers


def test_exporting_an_existing_version_is_refused(exported):
    config = UniterConfig.from_preset("tiny")
    with pytest.raises(FileExistsError, match="version 1 already exists"):
        export_uniter(exported["base"], UniterBackbone(config), ItmHead(config.hidden_size), version=1,
                      options=TINY_OPTIONS)


def test_every_op_outside_core_tensorflow_comes_from_tensorflow_text(exported):
    import tensorflow_text  # noqa: F401  (registers its ops in this process)
    from tensorflow.python.framework import op_def_registry

    from uniter_tf.export.op_inventory import non_core_ops

    ops = non_core_ops(exported["path"])
    assert ops, "the in-graph tokenizer should need TF-Text ops"
    assert all(op_def_registry.get(op) is not None for op in ops), ops
