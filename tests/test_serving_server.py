"""gRPC and REST round trips and the malformed-request set against a real server on 127.0.0.1."""

import base64
import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from serving import tensor_codec
from serving.server import ModelServer, ServerConfig
from serving.toy_model import toy_inputs, write_toy_model

MESSAGE_LIMIT = 1 << 20  # small, so that the oversized-message case is cheap to build


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base_path = str(tmp_path_factory.mktemp("models") / "uniter")
    write_toy_model(base_path, 1, warmup=True)
    config = ServerConfig(model_name="uniter", model_base_path=base_path, port=0, rest_api_port=0,
                          poll_interval_s=0, max_receive_message_bytes=MESSAGE_LIMIT,
                          rest_max_body_bytes=MESSAGE_LIMIT, grpc_threads=4)
    server = ModelServer(config).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield {"server": server, "base_path": base_path,
           "stub": prediction_service_pb2_grpc.PredictionServiceStub(channel),
           "model_stub": model_service_pb2_grpc.ModelServiceStub(channel),
           "rest": f"http://127.0.0.1:{server.rest_port}"}
    channel.close()
    server.stop()


def _request(inputs, signature="score_tensors", model="uniter", version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for name, array in inputs.items():
        tensor_codec.from_ndarray(array, request.inputs[name])
    return request


def _http(url, body=None, method=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _in_process(base_path, inputs, version=1, signature="score_tensors"):
    loaded = tf.saved_model.load(f"{base_path}/{version}")
    outputs = loaded.signatures[signature](**{name: tf.constant(array) for name, array in inputs.items()})
    return {name: tensor.numpy() for name, tensor in outputs.items()}


def test_grpc_predict_matches_the_savedmodel_in_process(served):
    inputs = toy_inputs(batch_size=3, num_regions=5)
    response = served["stub"].Predict(_request(inputs), timeout=30)
    assert response.model_spec.name == "uniter"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "score_tensors"
    expected = _in_process(served["base_path"], inputs)
    assert set(response.outputs) == set(expected)
    for name, array in expected.items():
        np.testing.assert_allclose(tensor_codec.to_ndarray(response.outputs[name]), array, rtol=1e-6)


def test_grpc_default_signature_and_output_filter(served):
    request = _request(toy_inputs(), signature="")
    request.output_filter.append("itm_score")
    response = served["stub"].Predict(request, timeout=30)
    assert response.model_spec.signature_name == "serving_default"
    assert list(response.outputs) == ["itm_score"]


def test_grpc_string_tensors(served):
    response = served["stub"].Predict(
            _request({"text": np.array([b"a dog", "caf\u00e9".encode()], dtype=object)}, signature="echo_text"),
            timeout=30)
    assert tensor_codec.to_ndarray(response.outputs["text_bytes"]).tolist() == [b"A DOG", "CAF\u00e9".encode()]
    assert tensor_codec.to_ndarray(response.outputs["text_length"]).tolist() == [5, 5]


def test_grpc_metadata_and_status(served):
    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata_request.model_spec.name = "uniter"
    metadata_request.metadata_field.append("signature_def")
    response = served["stub"].GetModelMetadata(metadata_request, timeout=30)
    assert response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    score = signature_map.signature_def["score_tensors"]
    assert set(score.inputs) == {"token_ids", "text_mask", "region_features", "region_positions", "region_mask"}
    assert score.inputs["region_features"].tensor_shape.dim[2].size == 8
    assert set(score.outputs) == {"itm_score", "pooled_output"}

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "uniter"
    status = served["model_stub"].GetModelStatus(status_request, timeout=30)
    assert [(entry.version, entry.state) for entry in status.model_version_status] == [
            (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def test_rest_status_and_metadata(served):
    status, body = _http(served["rest"] + "/v1/models/uniter")
    assert status == 200
    assert body == {"model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    status, body = _http(served["rest"] + "/v1/models/uniter/versions/1/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "uniter", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["score_tensors"]
    assert signature["inputs"]["token_ids"]["dtype"] == "DT_INT32"
    assert signature["method_name"] == "tensorflow/serving/predict"


def test_rest_predict_row_and_columnar_formats_match_grpc(served):
    inputs = toy_inputs(batch_size=2, num_regions=4)
    expected = _in_process(served["base_path"], inputs)
    columns = {name: array.tolist() for name, array in inputs.items()}
    status, body = _http(served["rest"] + "/v1/models/uniter:predict",
                         {"signature_name": "score_tensors", "inputs": columns})
    assert status == 200, body
    np.testing.assert_allclose(body["outputs"]["itm_score"], expected["itm_score"], rtol=1e-6)
    np.testing.assert_allclose(body["outputs"]["pooled_output"], expected["pooled_output"], rtol=1e-6)

    rows = [{name: column[index] for name, column in columns.items()} for index in range(2)]
    status, body = _http(served["rest"] + "/v1/models/uniter/versions/1:predict",
                         {"signature_name": "score_tensors", "instances": rows})
    assert status == 200, body
    assert len(body["predictions"]) == 2
    for index, prediction in enumerate(body["predictions"]):
        assert set(prediction) == {"itm_score", "pooled_output"}
        np.testing.assert_allclose(prediction["itm_score"], expected["itm_score"][index], rtol=1e-6)
        np.testing.assert_allclose(prediction["pooled_output"], expected["pooled_output"][index], rtol=1e-6)


def test_rest_b64_bytes_in_and_out(served):
    status, body = _http(served["rest"] + "/v1/models/uniter:predict",
                         {"signature_name": "echo_text",
                          "instances": ["a cat", {"b64": base64.b64encode(b"two dogs").decode()}]})
    assert status == 200, body
    # Outputs whose name ends in "_bytes" come back base64-encoded, as in TF Serving.
    assert [base64.b64decode(row["text_bytes"]["b64"]) for row in body["predictions"]] == [b"A CAT", b"TWO DOGS"]
    assert [row["text_length"] for row in body["predictions"]] == [5, 8]
    status, body = _http(served["rest"] + "/v1/models/uniter:predict",
                         {"signature_name": "echo_text", "inputs": {"text": ["x"]}, "output_filter": ["text_length"]})
    assert (status, body) == (200, {"outputs": [1]})


# The malformed-request set: each must fail with a clear message, and the server must keep serving.

def _grpc_bad_requests():
    good = toy_inputs()
    cases = {}
    missing = dict(good)
    missing.pop("region_mask")
    cases["missing input"] = (_request(missing), "INVALID_ARGUMENT", "missing input 'region_mask'")
    cases["unknown input"] = (_request({**good, "image_size": np.zeros((2, 2), np.float32)}),
                              "INVALID_ARGUMENT", "has no input 'image_size'")
    cases["wrong dtype"] = (_request({**good, "token_ids": good["token_ids"].astype(np.float32)}),
                            "INVALID_ARGUMENT", "input 'token_ids' expects int32[?,?], got dtype float32")
    cases["wrong rank"] = (_request({**good, "region_features": good["region_features"][0]}),
                           "INVALID_ARGUMENT", "input 'region_features' expects rank 3")
    cases["feature dim"] = (_request({**good, "region_features": np.zeros((2, 3, 2048), np.float32)}),
                            "INVALID_ARGUMENT", "expects size 8 in dimension 2")
    cases["batch mismatch"] = (_request({**good, "region_mask": np.ones((3, 3), np.int32)}),
                               "INVALID_ARGUMENT", "disagree on the batch size")
    cases["too many regions"] = (_request(toy_inputs(num_regions=17)), "INVALID_ARGUMENT",
                                 "more than 16 regions")
    cases["unknown model"] = (_request(good, model="bert"), "NOT_FOUND", "Latest(bert)")
    cases["unknown version"] = (_request(good, version=7), "NOT_FOUND", "Specific(uniter, 7)")
    cases["unknown signature"] = (_request(good, signature="classify"), "NOT_FOUND", '"classify" not found')
    bad_filter = _request(good)
    bad_filter.output_filter.append("logits")
    cases["unknown output"] = (bad_filter, "INVALID_ARGUMENT", "output_filter names 'logits'")
    short_content = _request(good)
    short_content.inputs["region_features"].tensor_content = b"\0" * 12
    cases["truncated tensor_content"] = (short_content, "INVALID_ARGUMENT", "tensor_content holds 12 bytes")
    cases["oversized message"] = (
            _request(toy_inputs(num_regions=MESSAGE_LIMIT // 32 + 1)), "RESOURCE_EXHAUSTED", "larger than max")
    return cases


@pytest.mark.parametrize("case", sorted(_grpc_bad_requests()))
def test_grpc_rejects_malformed_requests_and_keeps_serving(served, case):
    request, code, message = _grpc_bad_requests()[case]
    with pytest.raises(grpc.RpcError) as raised:
        served["stub"].Predict(request, timeout=30)
    assert raised.value.code() == getattr(grpc.StatusCode, code), raised.value.details()
    assert message in raised.value.details()
    assert served["stub"].Predict(_request(toy_inputs()), timeout=30).outputs["itm_score"].tensor_shape.dim[0].size == 2


def _rest_bad_requests():
    columns = {name: array.tolist() for name, array in toy_inputs().items()}
    missing = dict(columns)
    missing.pop("text_mask")
    predict = "/v1/models/uniter:predict"
    return {
            "missing input": (predict, {"signature_name": "score_tensors", "inputs": missing}, 400,
                              "missing input 'text_mask'"),
            "wrong dtype": (predict, {"signature_name": "score_tensors",
                                      "inputs": {**columns, "token_ids": [[0.5] * 5] * 2}}, 400,
                            "expects integers"),
            "strings for numbers": (predict, {"signature_name": "score_tensors",
                                              "inputs": {**columns, "region_mask": [["a"] * 3] * 2}}, 400,
                                    "got strings or objects"),
            "wrong rank": (predict, {"signature_name": "score_tensors",
                                     "inputs": {**columns, "region_mask": [1, 1]}}, 400, "expects rank 2"),
            "feature dim": (predict, {"signature_name": "score_tensors",
                                      "inputs": {**columns, "region_features": [[[0.0] * 5] * 3] * 2}}, 400,
                            "expects size 8 in dimension 2"),
            "ragged": (predict, {"signature_name": "score_tensors",
                                 "inputs": {**columns, "token_ids": [[1, 2, 3, 4, 5], [1, 2]]}}, 400, "ragged"),
            "too many regions": (predict, {"signature_name": "score_tensors",
                                           "inputs": {name: array.tolist() for name, array in
                                                      toy_inputs(num_regions=20).items()}}, 400,
                                 "more than 16 regions"),
            "bad b64": (predict, {"signature_name": "echo_text", "instances": [{"b64": "***"}]}, 400,
                        "not valid base64"),
            "both formats": (predict, {"instances": [1], "inputs": [1]}, 400, 'exactly one of "instances"'),
            "not json": (predict, b"{not json", 400, "not valid JSON"),
            "unknown model": ("/v1/models/bert:predict", {"inputs": columns}, 404, "Latest(bert)"),
            "unknown version": ("/v1/models/uniter/versions/9:predict", {"inputs": columns}, 404,
                                "Specific(uniter, 9)"),
            "bad version": ("/v1/models/uniter/versions/latest:predict", {"inputs": columns}, 400,
                            "must be an integer"),
            "unknown signature": (predict, {"signature_name": "nope", "inputs": columns}, 404,
                                  '"nope" not found'),
            "unknown method": ("/v1/models/uniter:explain", {"inputs": columns}, 404, "':explain' is not supported"),
            "oversized body": (predict, {"signature_name": "score_tensors",
                                         "inputs": {"text": ["x" * MESSAGE_LIMIT]}}, 413,
                               "more than the limit"),
    }


@pytest.mark.parametrize("case", sorted(_rest_bad_requests()))
def test_rest_rejects_malformed_requests_and_keeps_serving(served, case):
    path, body, status, message = _rest_bad_requests()[case]
    got_status, got_body = _http(served["rest"] + path, body)
    assert got_status == status, got_body
    assert set(got_body) == {"error"}
    assert message in got_body["error"]
    good = {"signature_name": "score_tensors",
            "inputs": {name: array.tolist() for name, array in toy_inputs().items()}}
    assert _http(served["rest"] + "/v1/models/uniter:predict", good)[0] == 200


def test_rest_status_of_unknown_model_and_version(served):
    assert _http(served["rest"] + "/v1/models/bert")[0] == 404
    status, body = _http(served["rest"] + "/v1/models/uniter/versions/3")
    assert status == 404 and "version 3" in body["error"]
    assert _http(served["rest"] + "/v2/whatever")[0] == 404
