"""NLVR2's two-image serving graph on tiny random models, called in-process (no SavedModel: fast).

The pair signatures (uniter_tf/export/pair_signatures.py) must give the in-process Nlvr2TaskModel's
logits for every variant's layout, pad both images to one bucket without changing the numbers, answer
p_true / label consistently with the logits, and refuse an example whose right (or left) image has zero
regions with an error naming the input. The served path (SavedModel, gRPC, REST, `uniter query`) is
tests/test_nlvr2_serving.py.
"""

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.config import UniterConfig
from uniter_tf.export.pair_signatures import PairServingGraph, is_image_pair, pair_example_inputs
from uniter_tf.export.signatures import ExportOptions
from uniter_tf.export.task_heads import TaskHeadExport
from uniter_tf.models.nlvr2_task import NLVR2_LABELS, ImagePairOutputs, Nlvr2Task
from uniter_tf.tokenization import UniterPreprocessor

OPTIONS = ExportOptions(max_text_length=20, text_buckets=(8, 20), region_buckets=(4, 8, 12), top_k=2, warmup=False)
STATEMENTS = ["The left image has more shapes than the right image.", "two circles"]


def _graph(variant, seed=3, options=OPTIONS):
    import keras

    keras.utils.set_random_seed(seed)
    task = Nlvr2Task(variant=variant)
    config = UniterConfig.from_preset("tiny").replace(type_vocab_size=3)
    model = task.build_model(config)
    # Larger head weights than the initialiser's, so the two classes' probabilities differ visibly.
    rng = np.random.default_rng(seed)
    for variable in model.head.weights:
        variable.assign(rng.normal(0, 0.3, variable.shape).astype(np.float32))
    hook = TaskHeadExport.from_task(task, model.head, top_k=2)
    labels = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant([0, 1], tf.int64), tf.constant(list(NLVR2_LABELS))), default_value="")
    preprocessor = UniterPreprocessor(sequence_length=options.max_text_length,
                                      bucket_boundaries=list(options.text_buckets))
    graph = PairServingGraph(model.backbone, None, preprocessor, options, task=hook, label_table=labels)
    return model, graph, preprocessor


def _positions(boxes, height, width):
    scaled = boxes / np.array([width, height, width, height], np.float32)
    box_width, box_height = scaled[..., 2] - scaled[..., 0], scaled[..., 3] - scaled[..., 1]
    return np.concatenate([scaled, box_width[..., None], box_height[..., None], (box_width * box_height)[..., None]],
                          axis=-1).astype(np.float32)


def _request(dim, counts=((3, 5), (6, 2)), seed=0):
    """Two statements; image i of example b has counts[b][i] regions (padded to the batch's widest)."""
    rng = np.random.default_rng(seed)
    request = {"text": np.array([text.encode() for text in STATEMENTS], dtype=object)}
    for suffix, side in (("", 0), ("_2", 1)):
        width = max(pair[side] for pair in counts) + 1  # one padded slot more than any example needs
        features = rng.standard_normal((len(counts), width, dim)).astype(np.float32)
        corners = np.sort(rng.uniform(0, 1, (len(counts), width, 2, 2)), axis=2)
        boxes = np.stack([corners[..., 0, 0] * 640, corners[..., 0, 1] * 480, corners[..., 1, 0] * 640,
                          corners[..., 1, 1] * 480], axis=-1).astype(np.float32)
        request.update({f"region_features{suffix}": features, f"region_boxes{suffix}": boxes,
                        f"image_size{suffix}": np.tile(np.array([[480, 640]], np.float32), (len(counts), 1)),
                        f"num_regions{suffix}": np.array([pair[side] for pair in counts], np.int32)})
    return request


def _in_process_logits(model, preprocessor, request):
    """The Keras model on each example alone, its regions unpadded (no bucket, no batch padding)."""
    packed = preprocessor(tf.constant(request["text"]))
    rows = []
    for index in range(len(request["text"])):
        length = int(tf.reduce_sum(packed["text_mask"][index]))
        inputs = {"token_ids": packed["token_ids"][index:index + 1, :length],
                  "text_mask": packed["text_mask"][index:index + 1, :length]}
        for suffix in ("", "_2"):
            count = int(request[f"num_regions{suffix}"][index])
            inputs[f"region_features{suffix}"] = tf.constant(request[f"region_features{suffix}"][index:index + 1, :count])
            inputs[f"region_positions{suffix}"] = tf.constant(
                    _positions(request[f"region_boxes{suffix}"][index:index + 1, :count], 480, 640))
            inputs[f"region_mask{suffix}"] = tf.ones([1, count], tf.int32)
        rows.append(model(inputs, training=False).numpy()[0])
    return np.stack(rows)


@pytest.mark.parametrize("variant", ["paired", "triplet"])
def test_pair_signature_equals_the_in_process_model(variant):
    model, graph, preprocessor = _graph(variant)
    request = _request(model.backbone.config.region_feature_dim)
    outputs = graph.serving_default(**{name: tf.constant(value) for name, value in request.items()})
    expected = _in_process_logits(model, preprocessor, request)
    np.testing.assert_allclose(outputs["task_logits"].numpy(), expected, atol=2e-5)
    probabilities = np.exp(expected) / np.exp(expected).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(outputs["p_true"].numpy(), probabilities[:, 1], atol=2e-5)
    assert [value.decode() for value in outputs["label"].numpy()] == [NLVR2_LABELS[i] for i in expected.argmax(-1)]
    # Both labels, best first, with their probabilities.
    np.testing.assert_allclose(outputs["label_scores"].numpy(), np.sort(probabilities, axis=-1)[:, ::-1], atol=2e-5)
    assert "itm_score" not in outputs
    # The same pair given as 7-d positions gives the same answer.
    positions = graph.score_positions(
            tf.constant(request["text"]), request["region_features"],
            _positions(request["region_boxes"], 480, 640), request["num_regions"], request["region_features_2"],
            _positions(request["region_boxes_2"], 480, 640), request["num_regions_2"])
    np.testing.assert_allclose(positions["task_logits"].numpy(), expected, atol=2e-5)


def test_xla_compiled_pair_graph_pads_the_batch_and_keeps_the_numbers():
    import dataclasses

    model, graph, preprocessor = _graph("triplet", options=dataclasses.replace(OPTIONS, jit_compile=True))
    # Three examples: the compiled function sees the batch padded to 4 (all-padding rows, cut off again).
    request = _request(model.backbone.config.region_feature_dim, counts=((3, 5), (6, 2), (1, 1)))
    request["text"] = np.array([b"two circles", b"a red square", b"more shapes"], dtype=object)
    outputs = graph.serving_default(**{name: tf.constant(value) for name, value in request.items()})
    assert outputs["task_logits"].shape == (3, 2)
    np.testing.assert_allclose(outputs["task_logits"].numpy(), _in_process_logits(model, preprocessor, request),
                               atol=2e-5)


def test_paired_attention_variant_and_swapped_images_change_the_answer():
    model, graph, preprocessor = _graph("paired_attn")
    request = _request(model.backbone.config.region_feature_dim, counts=((2, 4), (4, 4)))
    outputs = graph.serving_default(**{name: tf.constant(value) for name, value in request.items()})
    np.testing.assert_allclose(outputs["task_logits"].numpy(), _in_process_logits(model, preprocessor, request),
                               atol=2e-5)
    swapped = dict(request)
    for key in ("region_features", "region_boxes", "image_size", "num_regions"):
        swapped[key], swapped[key + "_2"] = request[key + "_2"], request[key]
    swapped_outputs = graph.serving_default(**{name: tf.constant(value) for name, value in swapped.items()})
    # Left and right are different inputs to the model (type ids 1 and 2, the order of the pooled pair).
    assert np.abs(swapped_outputs["task_logits"].numpy() - outputs["task_logits"].numpy()).max() > 1e-4


def test_an_image_without_regions_is_refused_naming_the_input():
    model, graph, _ = _graph("paired")
    request = _request(model.backbone.config.region_feature_dim)
    request["num_regions_2"] = np.array([0, 2], np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_regions_2: an example has zero regions in the right"):
        graph.serving_default(**{name: tf.constant(value) for name, value in request.items()})
    request["num_regions_2"] = np.array([2, 2], np.int32)
    request["num_regions"] = np.array([2, 0], np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_regions: an example has zero regions in the left"):
        graph.serving_default(**{name: tf.constant(value) for name, value in request.items()})
    dim = model.backbone.config.region_feature_dim
    inputs = pair_example_inputs(dim)["score_tensors"]
    inputs["region_mask_2"] = np.zeros_like(inputs["region_mask_2"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="region_mask_2: an example has zero regions"):
        graph.score_tensors(**{name: tf.constant(value) for name, value in inputs.items()})


def test_pair_records_and_warmup_inputs_cover_every_pair_signature():
    model, graph, _ = _graph("triplet")
    dim = model.backbone.config.region_feature_dim
    requests = pair_example_inputs(dim)
    signatures = graph.input_signatures()
    assert sorted(requests) == sorted(signatures) == sorted(graph.functions())
    for name, inputs in requests.items():
        assert [spec.name for spec in signatures[name]] == list(inputs), name
    assert [spec.name for spec in signatures["serving_default"]] == [
            "text", "region_features", "region_boxes", "image_size", "num_regions", "region_features_2",
            "region_boxes_2", "image_size_2", "num_regions_2"]
    from_records = graph.serve_examples(tf.constant(requests["serve_examples"]["examples"]))
    from_positions = graph.score_positions(**{name: tf.constant(value)
                                              for name, value in requests["score_positions"].items()})
    # The record stores features as float16: the same pair up to that rounding.
    np.testing.assert_allclose(from_records["task_logits"].numpy(), from_positions["task_logits"].numpy(), atol=2e-2)
    assert from_records["example_id"].numpy().tolist() == [b"example-0"]


def test_the_declaration():
    task = Nlvr2Task(variant="triplet")
    declared = task.export_outputs()
    assert isinstance(declared, ImagePairOutputs) and declared.variant == "triplet"
    assert declared.labels[declared.positive_class] == "True"
    hook = TaskHeadExport.from_task(task, head=None)
    assert is_image_pair(hook) and not is_image_pair(None)
