"""Hot swap under load: a new version pushed in the middle of concurrent traffic fails no request."""

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import tensor_codec
from serving.batching import BatchingOptions
from serving.loadgen import run_load
from serving.server import ModelServer, ServerConfig
from serving.toy_model import toy_inputs, write_toy_model


@pytest.mark.e2e
@pytest.mark.parametrize("batching", [None, BatchingOptions(max_batch_size=8, batch_timeout_micros=1000)],
                         ids=["unbatched", "batched"])
def test_pushing_a_version_under_load_drops_no_request(tmp_path, batching):
    base_path = str(tmp_path / "uniter")
    write_toy_model(base_path, 1)
    server = ModelServer(ServerConfig(model_name="uniter", model_base_path=base_path, port=0, rest_api_port=None,
                                      poll_interval_s=0.2, batching=batching, grpc_threads=8)).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "uniter"
    request.model_spec.signature_name = "score_tensors"
    for name, array in toy_inputs(batch_size=1, num_regions=4).items():
        tensor_codec.from_ndarray(array, request.inputs[name])
    scores = {}

    def call(_client_index):
        response = stub.Predict(request, timeout=30)
        version = response.model_spec.version.value
        scores.setdefault(version, tensor_codec.to_ndarray(response.outputs["itm_score"]))
        return version

    try:
        # Writing and loading version 2 takes a few seconds on busy cores: keep the load on (up to
        # 60 s) until version 2 has answered.
        result = run_load(call, concurrency=4, duration_s=3.0, midpoint=lambda: write_toy_model(base_path, 2),
                          midpoint_fraction=0.3, until=lambda: 2 in scores, max_duration_s=60.0)
        statuses = {version: state for version, state, _, _ in server.managers["uniter"].status()}
    finally:
        channel.close()
        server.stop()
    assert result.errors == []
    assert set(result.versions) == {1, 2}, result.summary()
    assert result.versions[2] > 0 and result.requests > 20
    assert statuses == {1: "END", 2: "AVAILABLE"}
    # Each version answered with its own weights (the toy model scales its output by the version).
    np.testing.assert_allclose(scores[2], scores[1] * 2, rtol=1e-5)
