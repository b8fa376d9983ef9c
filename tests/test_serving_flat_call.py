"""The server calls loaded signatures with flat tensors (no keyword binding): same answers, same errors."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from serving.errors import Code, ServingError
from serving.model_manager import flat_argument_order, load_saved_model
from serving.predictor import run_signature
from serving.validation import validate_inputs


class _Scorer(tf.Module):
    def __init__(self):
        super().__init__()
        self.weight = tf.Variable([[1.0], [-2.0], [0.5]])

    # Inputs of different dtypes and shapes, so that any mix-up of the flat order shows (or fails).
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="count"),
                                  tf.TensorSpec([None, 3], tf.float32, name="features"),
                                  tf.TensorSpec([None], tf.string, name="label")])
    def score(self, count, features, label):
        scaled = features * tf.cast(count, tf.float32)[:, None]
        return {"score": tf.matmul(scaled, self.weight)[:, 0] + tf.cast(count, tf.float32),
                "label_length": tf.strings.length(label)}


@pytest.fixture(scope="module")
def servable(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("flat") / "1")
    module = _Scorer()
    tf.saved_model.save(module, path, signatures={"score": module.score.get_concrete_function()})
    return load_saved_model("m", 1, path)


def _inputs():
    return {"count": np.array([1, 3], np.int32),
            "features": np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], np.float32),
            "label": np.array([b"a", b"abcd"], dtype=object)}


def test_loaded_signature_gets_a_flat_order_naming_every_input(servable):
    signature = servable.signatures["score"]
    assert signature.flat_order is not None
    assert sorted(signature.flat_order) == ["count", "features", "label"]


def test_flat_call_answers_as_the_keyword_call(servable):
    signature = servable.signatures["score"]
    inputs = validate_inputs(signature, _inputs())
    flat = run_signature(signature, inputs)
    keyword = run_signature(dataclasses.replace(signature, flat_order=None), inputs)
    assert sorted(flat) == sorted(keyword) == ["label_length", "score"]
    for name in flat:
        np.testing.assert_array_equal(flat[name], keyword[name])
    # count * features @ w + count, by hand.
    np.testing.assert_allclose(flat["score"], [1 * (1 - 4 + 1.5) + 1, 3 * (0.5 + 2 + 2) + 3], rtol=1e-6)
    np.testing.assert_array_equal(flat["label_length"], [1, 4])


def test_flat_call_maps_a_graph_error_to_invalid_argument(servable):
    signature = servable.signatures["score"]
    inputs = _inputs()
    inputs["count"] = np.array([1, 3, 5], np.int32)  # batch sizes disagree inside the graph
    with pytest.raises(ServingError) as raised:
        run_signature(signature, inputs)
    assert raised.value.code == Code.INVALID_ARGUMENT


def test_no_flat_order_for_a_plain_callable():
    assert flat_argument_order(lambda **tensors: tensors, ["a"]) is None


def test_no_flat_order_when_the_names_differ(servable):
    function = servable.signatures["score"].function
    assert flat_argument_order(function, ["count", "features"]) is None
    assert flat_argument_order(function, ["count", "features", "other"]) is None
