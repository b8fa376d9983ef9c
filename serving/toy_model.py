"""A tiny SavedModel with the exported UNITER signatures' tensor interface, for tests and benchmarks
of the server where a trained model is not needed.

``score_tensors`` (also ``serving_default``) takes the backbone inputs of docs/architecture.md and
answers ``itm_score [B]`` and ``pooled_output [B, H]`` from a fixed random projection; like the real
export it checks in-graph that no example has more than ``max_regions`` regions. ``echo_text``
takes strings ``text [B]`` and answers their lengths and upper-cased bytes (``text_bytes``), to
exercise string tensors. ``serve_examples`` parses canonical ``tf.Example`` records with
``uniter_tf.data.schema`` as the real signature does and answers their ``num_regions``. Each version scales its outputs by ``version``, so a test can tell which
version answered.
"""

from __future__ import annotations

import os

import numpy as np


def write_toy_model(base_path: str, version: int, feature_dim: int = 8, hidden_size: int = 4,
                    max_regions: int = 16, warmup: bool = False) -> str:
    """Writes ``base_path/<version>/`` and returns that path.

    Args:
        base_path: the model's base directory (created if missing).
        version: the version number (and the output scale).
        feature_dim: D of ``region_features``.
        hidden_size: H of ``pooled_output``.
        max_regions: the most regions the signature accepts.
        warmup: also write ``assets.extra/tf_serving_warmup_requests`` with one request.
    """
    import tensorflow as tf

    rng = np.random.default_rng(1234)
    projection = tf.constant(rng.standard_normal((feature_dim + 7, hidden_size)).astype(np.float32))
    scale = float(version)

    class ToyUniter(tf.Module):
        @tf.function(input_signature=[
                tf.TensorSpec([None, None], tf.int32, name="token_ids"),
                tf.TensorSpec([None, None], tf.int32, name="text_mask"),
                tf.TensorSpec([None, None, feature_dim], tf.float32, name="region_features"),
                tf.TensorSpec([None, None, 7], tf.float32, name="region_positions"),
                tf.TensorSpec([None, None], tf.int32, name="region_mask")])
        def score_tensors(self, token_ids, text_mask, region_features, region_positions, region_mask):
            region_counts = tf.reduce_sum(region_mask, axis=1)
            check = tf.debugging.assert_less_equal(
                    region_counts, tf.constant(max_regions, tf.int32),
                    message=f"region_mask: an example has more than {max_regions} regions")
            with tf.control_dependencies([check]):
                weights = tf.cast(region_mask, tf.float32)[:, :, None]
                regions = tf.concat([region_features, region_positions], axis=-1) * weights
                pooled_regions = tf.reduce_sum(regions, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
                text_signal = tf.cast(tf.reduce_sum(token_ids * text_mask, axis=1), tf.float32)[:, None] * 1e-3
                pooled = tf.tanh(tf.matmul(pooled_regions, projection) + text_signal)
                score = tf.sigmoid(tf.reduce_sum(pooled, axis=1)) * scale
                pooled = pooled * scale
            return {"itm_score": score, "pooled_output": pooled}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(self, examples):
            # Parses canonical records as the real export's serve_examples does (schema.parse_and_decode
            # inside tf.map_fn), so a record missing a required feature fails the same way.
            from uniter_tf.data import schema

            counts = tf.map_fn(lambda serialized: schema.parse_and_decode(serialized, feature_dim=feature_dim)[
                    schema.NUM_REGIONS], examples, fn_output_signature=tf.int32)
            return {"num_regions": counts * int(version)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def echo_text(self, text):
            return {"text_length": tf.strings.length(text) * int(version), "text_bytes": tf.strings.upper(text)}

    module = ToyUniter()
    path = os.path.join(base_path, str(version))
    signatures = {"serving_default": module.score_tensors, "score_tensors": module.score_tensors,
                  "echo_text": module.echo_text, "serve_examples": module.serve_examples}
    # Write next to the target, then rename: the poller must never see half a version.
    staging = os.path.join(base_path, f".staging-{version}")
    tf.saved_model.save(module, staging, signatures=signatures)
    if warmup:
        _write_warmup(staging, feature_dim)
    os.makedirs(base_path, exist_ok=True)
    os.replace(staging, path)
    return path


def toy_inputs(batch_size: int = 2, num_tokens: int = 5, num_regions: int = 3, feature_dim: int = 8,
               seed: int = 0) -> dict:
    """Random inputs for ``score_tensors`` of the toy model."""
    rng = np.random.default_rng(seed)
    return {
            "token_ids": rng.integers(1, 100, (batch_size, num_tokens)).astype(np.int32),
            "text_mask": np.ones((batch_size, num_tokens), np.int32),
            "region_features": rng.standard_normal((batch_size, num_regions, feature_dim)).astype(np.float32),
            "region_positions": rng.uniform(0, 1, (batch_size, num_regions, 7)).astype(np.float32),
            "region_mask": np.ones((batch_size, num_regions), np.int32),
    }


def _write_warmup(saved_model_dir: str, feature_dim: int) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from serving import tensor_codec

    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "score_tensors"
    for name, array in toy_inputs(batch_size=1, feature_dim=feature_dim).items():
        tensor_codec.from_ndarray(array, request.inputs[name])
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    directory = os.path.join(saved_model_dir, "assets.extra")
    os.makedirs(directory, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(directory, "tf_serving_warmup_requests")) as writer:
        writer.write(log.SerializeToString())
