"""Serving benchmark: latency and throughput of ``uniter serve`` against the SavedModel in-process.

Steps (all on 127.0.0.1, the server in its own process):

1. export the ``tiny`` model (or use ``--model-base-path``);
2. one pair per call, interleaved call by call so that all three see the same load: the
   ``score_tensors`` signature called in-process, and the same request through the server over gRPC
   and REST (p50 / p99);
3. N concurrent gRPC clients for a bounded time, without and with server-side batching (QPS);
4. the same load (twice as long, and on until the new version answers) while a new version is pushed
   at 20 % of it; failed requests must be 0;
5. with ``--breakdown``: in one process, the signature alone vs the server's predict path without
   gRPC vs the same through gRPC (where the gRPC overhead goes).

``--overhead`` instead measures only the per-call overhead, before and after in one run: one pair per
call, interleaved call by call, against the signature called in-process (keywords, as a user would,
and flat, as the server does), the server's whole handler in this process without gRPC, and four
server processes: the server as it is, the same server calling its signatures with keyword arguments
(the path before the flat call), the server with one intra-op thread (its handler then no longer
wakes TensorFlow's idle intra-op pool), and a gRPC server that answers a cached response without
running anything (the Python gRPC framework's floor). ``--preset uniter-base`` measures the same on
a random-weight uniter-base instead of the tiny model.

Usage::

    python bench/serving_bench.py --duration 10 --concurrency 8 --output bench/serving_results.json
    python bench/serving_bench.py --overhead --latency-calls 300
    python bench/serving_bench.py --overhead --latency-calls 60 --preset uniter-base

Prints one JSON object; ``docs/performance.md`` holds the latest figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Sequence

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pair_inputs(feature_dim: int, num_tokens: int, num_regions: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1000, 5000, (1, num_tokens)).astype(np.int32)
    token_ids[0, 0], token_ids[0, -1] = 101, 102
    positions = np.sort(rng.uniform(0, 1, (1, num_regions, 7)).astype(np.float32), axis=-1)
    return {"token_ids": token_ids, "text_mask": np.ones_like(token_ids),
            "region_features": rng.standard_normal((1, num_regions, feature_dim)).astype(np.float32),
            "region_positions": positions, "region_mask": np.ones((1, num_regions), np.int32)}


def _percentiles(latencies):
    values = np.asarray(latencies) * 1e3
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p99_ms": round(float(np.percentile(values, 99)), 3),
            "calls": int(values.size)}


def _time_interleaved(calls, count: int, warmup: int = 20):
    """Times several callables in turn, call by call, so that all see the same load on shared cores."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    latencies = {name: [] for name in calls}
    for _ in range(count):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            latencies[name].append(time.perf_counter() - started)
    return latencies


class ServerProcess:
    """``uniter serve`` in a subprocess on free ports."""

    def __init__(self, base_path: str, batching: bool, poll_s: float = 0.5, variant: str = "",
                 extra_args: Sequence[str] = ()):
        self.grpc_port, self.rest_port = _free_port(), _free_port()
        command = [sys.executable, "-m", "uniter_tf.cli", "serve", "--model-base-path", base_path,
                   "--port", str(self.grpc_port), "--rest-api-port", str(self.rest_port),
                   "--file-system-poll-wait-seconds", str(poll_s), "--log-level", "WARNING"]
        if variant:
            command = [sys.executable, os.path.abspath(__file__), "--serve-variant", variant,
                       "--model-base-path", base_path, "--port", str(self.grpc_port)]
        command += list(extra_args)
        if batching:
            command += ["--enable-batching", "--max-batch-size", "16", "--batch-timeout-micros", "1000",
                        "--num-batch-threads", "2"]
        environment = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        env=environment)
        deadline = time.time() + 300
        while time.time() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("SERVING"):
                return
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _predict_request(inputs, signature: str = "score_tensors"):
    """A ``PredictRequest`` for the ``uniter`` model with ``inputs`` encoded as the server decodes them."""
    from tensorflow_serving.apis import predict_pb2

    from serving import tensor_codec

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "uniter"
    request.model_spec.signature_name = signature
    for name, array in inputs.items():
        tensor_codec.from_ndarray(array, request.inputs[name])
    return request


def _grpc_caller(port: int, inputs, signature: str = "score_tensors"):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = _predict_request(inputs, signature)

    def call(_index=0):
        return stub.Predict(request, timeout=30).model_spec.version.value

    return call, channel


def _rest_caller(port: int, inputs):
    import http.client

    body = json.dumps({"signature_name": "score_tensors",
                       "inputs": {name: array.tolist() for name, array in inputs.items()}}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.connect()
    # http.client sends headers and a large body in two writes; without TCP_NODELAY the body waits
    # for the server's delayed ACK (~40 ms), which would be measured as server latency.
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call():
        connection.request("POST", "/v1/models/uniter:predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(payload[:200])

    return call, connection


def _breakdown(base_path: str, inputs, count: int):
    """In one process: the signature alone, the server's predict path without gRPC, and through gRPC."""
    import tensorflow as tf

    from serving.server import ModelServer, ServerConfig

    server = ModelServer(ServerConfig("uniter", base_path, port=0, rest_api_port=None, poll_interval_s=0)).start()
    try:
        request = _predict_request(inputs)

        def signature_only():
            with server.managers["uniter"].acquire() as servable:
                function = servable.signatures["score_tensors"].function
                outputs = function(**{name: tf.constant(array) for name, array in inputs.items()})
                return {name: tensor.numpy() for name, tensor in outputs.items()}

        call, channel = _grpc_caller(server.grpc_port, inputs)
        latencies = _time_interleaved({"signature": signature_only,
                                       "predict_path_without_grpc": lambda: server.predictor.predict_proto(request),
                                       "through_grpc": call}, count)
        channel.close()
        return {name: _percentiles(values) for name, values in latencies.items()}
    finally:
        server.stop()


def _export_random_preset(preset: str, directory: str) -> str:
    """Exports ``preset`` with random weights (backbone + ITM head, the tiny model's buckets); returns the base path."""
    from uniter_tf.config import UniterConfig
    from uniter_tf.export.exporter import export_uniter
    from uniter_tf.export.tiny import TINY_OPTIONS
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.models.pretraining_heads import ItmHead

    config = UniterConfig.from_preset(preset)
    itm_head = ItmHead(config.hidden_size, name="itm_head")
    itm_head.build()
    base_path = os.path.join(directory, "uniter")
    export_uniter(base_path, UniterBackbone(config), itm_head, options=TINY_OPTIONS, version=1)
    return base_path


def _serve_variant(variant: str, base_path: str, port: int) -> int:
    """Runs a server variant for ``--overhead`` in this process (gRPC only) until terminated.

    ``keyword``: the real server, but its signatures are called with keyword arguments (``flat_order``
    cleared), as before the flat call. ``echo``: a gRPC server with the real server's options and
    thread pool whose Predict returns the real answer to the first request, cached, without decoding,
    validating or running anything: what the Python gRPC framework alone costs per call.
    """
    import concurrent.futures
    import dataclasses
    import threading

    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from serving.model_manager import ModelManager, load_saved_model
    from serving.server import ModelServer, ServerConfig

    def keyword_loader(name, version, path):
        servable = load_saved_model(name, version, path)
        servable.signatures = {key: dataclasses.replace(signature, flat_order=None)
                               for key, signature in servable.signatures.items()}
        return servable

    loader = keyword_loader if variant == "keyword" else None
    managers = {"uniter": ModelManager("uniter", base_path, poll_interval_s=0, loader=loader)}
    config = ServerConfig("uniter", base_path, port=port if variant != "echo" else 0, rest_api_port=None,
                          poll_interval_s=0)
    server = ModelServer(config, managers=managers).start()
    if variant == "echo":
        cached = {}
        predictor = server.predictor

        class Echo(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802
                if "response" not in cached:
                    cached["response"] = predictor.predict_proto(request)
                return cached["response"]

        echo = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=config.grpc_threads),
                           options=[("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Echo(), echo)
        echo.add_insecure_port(f"127.0.0.1:{port}")
        echo.start()
    print(f"SERVING {variant}", flush=True)
    threading.Event().wait()
    return 0


def _overhead(base_path: str, inputs, count: int):
    """The per-call overhead, before / after and the framework floor, interleaved call by call."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from serving.model_manager import ModelManager
    from serving.predictor import Predictor

    # One load of the newest version: its signature is called directly (in_process*) and through the
    # server's handler without gRPC (predict_path_in_process).
    manager = ModelManager("uniter", base_path, poll_interval_s=0)
    manager.start()
    with manager.acquire() as servable:
        signature = servable.signatures["score_tensors"]
    function = signature.function

    def in_process():
        outputs = function(**{name: tf.constant(array) for name, array in inputs.items()})
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def in_process_flat():
        outputs = function._call_flat([tf.constant(inputs[name]) for name in signature.flat_order],
                                      function.captured_inputs)
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    # The server's whole handler (parse, decode, validate, run, encode, serialise), in this process,
    # without gRPC: what the server path adds to the flat call before any transport or threading.
    predictor = Predictor({"uniter": manager})
    request_bytes = _predict_request(inputs).SerializeToString()

    def predict_path_in_process():
        return predictor.predict_proto(predict_pb2.PredictRequest.FromString(request_bytes)).SerializeToString()

    servers = {}
    calls = {"in_process": in_process, "in_process_flat_call": in_process_flat,
             "predict_path_in_process": predict_path_in_process}
    # grpc_intra_op_1: the same server with one intra-op thread: its handler no longer wakes the idle
    # intra-op pool on every call (what that costs a small model), at the price of one core per op.
    variants = (("grpc", "", ()), ("grpc_keyword_call", "keyword", ()),
                ("grpc_intra_op_1", "", ("--tensorflow-intra-op-parallelism", "1")),
                ("grpc_echo_no_model", "echo", ()))
    try:
        for label, variant, extra_args in variants:
            servers[label] = ServerProcess(base_path, batching=False, variant=variant, extra_args=extra_args)
            calls[label] = _grpc_caller(servers[label].grpc_port, inputs)[0]
        latencies = _time_interleaved(calls, count)
    finally:
        for server in servers.values():
            server.stop()
        manager.stop()
    results = {name: _percentiles(values) for name, values in latencies.items()}
    base = results["in_process"]["p50_ms"]
    for name in results:
        results[name]["over_in_process_p50"] = round(results[name]["p50_ms"] / base, 3)
    return results


def _push_copy(base_path: str, source_version: int, new_version: int) -> None:
    staging = os.path.join(base_path, f".push-{new_version}")
    shutil.copytree(os.path.join(base_path, str(source_version)), staging)
    os.replace(staging, os.path.join(base_path, str(new_version)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-base-path", help="Serve this base path instead of exporting the tiny model.")
    parser.add_argument("--preset", default="tiny",
                        help="Export this UniterConfig preset with random weights and an ITM head (e.g. uniter-base) "
                             "instead of the tiny model (default tiny).")
    parser.add_argument("--tokens", type=int, default=20, help="Tokens per text (default 20).")
    parser.add_argument("--regions", type=int, default=36, help="Regions per image (default 36).")
    parser.add_argument("--latency-calls", type=int, default=300, help="Calls per latency measurement.")
    parser.add_argument("--concurrency", type=int, default=8, help="Concurrent clients (default 8).")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per load run (default 10).")
    parser.add_argument("--output", help="Also write the JSON here.")
    parser.add_argument("--breakdown", action="store_true",
                        help="Also split one gRPC call into signature / server path / transport, in one process.")
    parser.add_argument("--overhead", action="store_true",
                        help="Measure only the per-call overhead: in-process vs the server, the server with "
                             "keyword calls (before) and a do-nothing gRPC server, interleaved.")
    parser.add_argument("--serve-variant", choices=("keyword", "echo"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow_text  # noqa: F401  (the SavedModel's WordPiece ops)
    import tensorflow as tf

    if args.serve_variant:
        return _serve_variant(args.serve_variant, args.model_base_path, args.port)

    from serving.loadgen import run_load

    work = tempfile.mkdtemp(prefix="serving-bench-")
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "command": " ".join([os.path.relpath(__file__, REPO_ROOT)] + (argv or sys.argv[1:])),
               "tokens": args.tokens, "regions": args.regions}
    try:
        if args.model_base_path:
            base_path = args.model_base_path
            version = max(int(name) for name in os.listdir(base_path) if name.isdigit())
        elif args.preset != "tiny":
            started = time.perf_counter()
            base_path, version = _export_random_preset(args.preset, work), 1
            results["preset"] = args.preset
            results["export_s"] = round(time.perf_counter() - started, 1)
        else:
            from uniter_tf.export.tiny import tiny_export

            started = time.perf_counter()
            model = tiny_export(work)
            base_path, version = model.base_path, 1
            results["export_s"] = round(time.perf_counter() - started, 1)
        loaded = tf.saved_model.load(os.path.join(base_path, str(version)))
        signature = loaded.signatures["score_tensors"]
        feature_dim = int(signature.structured_input_signature[1]["region_features"].shape[2])
        inputs = _pair_inputs(feature_dim, args.tokens, args.regions)

        def in_process():
            outputs = signature(**{name: tf.constant(array) for name, array in inputs.items()})
            return {name: tensor.numpy() for name, tensor in outputs.items()}

        if args.overhead:
            results["load_average_before"] = [round(value, 2) for value in os.getloadavg()]
            results["overhead"] = _overhead(base_path, inputs, args.latency_calls)
            results["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
            results["grpc_p50_over_in_process_p50"] = results["overhead"]["grpc"]["over_in_process_p50"]
        for batching in () if args.overhead else (False, True):
            label = "batched" if batching else "unbatched"
            server = ServerProcess(base_path, batching=batching)
            try:
                call, channel = _grpc_caller(server.grpc_port, inputs)
                if not batching:
                    rest_call, connection = _rest_caller(server.rest_port, inputs)
                    latencies = _time_interleaved({"in_process": in_process, "grpc_one_client": call,
                                                   "rest_one_client": rest_call}, args.latency_calls)
                    results.update({name: _percentiles(values) for name, values in latencies.items()})
                    connection.close()
                callers = [_grpc_caller(server.grpc_port, inputs) for _ in range(args.concurrency)]
                load = run_load(lambda index: callers[index][0](), args.concurrency, args.duration)
                results[f"grpc_{args.concurrency}_clients_{label}"] = load.summary()
                if batching:
                    pushed = max(int(name) for name in os.listdir(base_path) if name.isdigit()) + 1
                    # Loading and warming a version takes seconds on 2 busy cores: push early, run longer.
                    seen = set()

                    def tracked_call(index):
                        answered = callers[index][0]()
                        seen.add(answered)
                        return answered

                    swap = run_load(tracked_call, args.concurrency, 2 * args.duration,
                                    midpoint=lambda: _push_copy(base_path, version, pushed), midpoint_fraction=0.2,
                                    until=lambda: pushed in seen, max_duration_s=6 * args.duration)
                    results[f"grpc_{args.concurrency}_clients_{label}_push_v{pushed}"] = dict(
                            swap.summary(), new_version_answered=pushed in seen)
                for _, client_channel in callers:
                    client_channel.close()
                channel.close()
            finally:
                server.stop()
        if args.breakdown:
            results["breakdown_one_process"] = _breakdown(base_path, inputs, args.latency_calls)
        if not args.overhead:
            results["grpc_p50_over_in_process_p50"] = round(
                    results["grpc_one_client"]["p50_ms"] / results["in_process"]["p50_ms"], 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
