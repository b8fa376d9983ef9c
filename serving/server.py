"""A TF-Serving-protocol model server: gRPC PredictionService / ModelService plus the REST API.

The gRPC services are the official ones from ``tensorflow_serving.apis`` (``Predict``,
``GetModelMetadata``, ``GetModelStatus``), so any TF Serving client talks to this server unchanged.
Both front ends share one :class:`~serving.predictor.Predictor`, and one
:class:`~serving.model_manager.ModelManager` per model polls the model's base path.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
from typing import Dict, Optional

from serving.batching import BatchingOptions
from serving.errors import Code, ServingError
from serving.model_manager import ModelManager
from serving.predictor import Predictor
from serving.rest import RestLimits, RestServer

_LOG = logging.getLogger(__name__)

# TF Serving's own server accepts messages up to INT32_MAX; a finite default keeps one request from
# exhausting memory, and is still far above gRPC's 4 MiB default (5 images of 100 x 2048 float32).
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


@dataclasses.dataclass
class ServerConfig:
    """How to run the server.

    Attributes:
        model_name: the name clients use for the model.
        model_base_path: the directory with numeric version subdirectories.
        host: the address both front ends bind (127.0.0.1 unless told otherwise).
        port: the gRPC port (0 picks a free one).
        rest_api_port: the REST port (0 picks a free one; ``None`` disables REST).
        num_versions: how many of the newest versions stay loaded.
        poll_interval_s: how often the base path is scanned for new versions (0: never).
        max_receive_message_bytes: the largest gRPC request accepted.
        max_send_message_bytes: the largest gRPC response sent.
        rest_max_body_bytes: the largest REST request body accepted (413 beyond, unread).
        grpc_threads: gRPC worker threads (concurrent requests).
        batching: server-side batching parameters, or ``None`` for none.
        max_request_bytes: the most bytes one gRPC request's tensors may decode to, checked from
            their declared shapes before anything is allocated (``None``: the receive limit).
        rest_idle_timeout_s: REST connections idle, or sending headers, longer than this are closed.
        rest_body_timeout_s: the time a REST client has to send a request body.
        rest_max_connections: open REST connections at a time (more are answered 503).
        rest_threads: REST requests decoded and run at a time.
        rest_listen_backlog: the REST socket's listen queue.
    """

    model_name: str
    model_base_path: str
    host: str = "127.0.0.1"
    port: int = 8500
    rest_api_port: Optional[int] = 8501
    num_versions: int = 1
    poll_interval_s: float = 2.0
    max_receive_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_send_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    rest_max_body_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    grpc_threads: int = 16
    batching: Optional[BatchingOptions] = None
    max_request_bytes: Optional[int] = None
    rest_idle_timeout_s: float = RestLimits.idle_timeout_s
    rest_body_timeout_s: float = RestLimits.body_timeout_s
    rest_max_connections: int = RestLimits.max_connections
    rest_threads: int = RestLimits.worker_threads
    rest_listen_backlog: int = RestLimits.listen_backlog

    def rest_limits(self) -> RestLimits:
        """The :class:`~serving.rest.RestLimits` of this configuration."""
        return RestLimits(max_body_bytes=self.rest_max_body_bytes, idle_timeout_s=self.rest_idle_timeout_s,
                          body_timeout_s=self.rest_body_timeout_s, max_connections=self.rest_max_connections,
                          worker_threads=self.rest_threads, listen_backlog=self.rest_listen_backlog)


def _abort(context, error: ServingError):
    import grpc

    context.abort(grpc.StatusCode[error.code.name], error.message)


def _guarded(handler, context, request):
    """Runs a handler; turns a ServingError (or any surprise) into a gRPC status."""
    try:
        return handler(request)
    except ServingError as error:
        _abort(context, error)
    except Exception as error:  # keep serving; report it as INTERNAL
        _LOG.exception("Unexpected failure handling %s", type(request).__name__)
        _abort(context, ServingError(Code.INTERNAL, f"{type(error).__name__}: {error}"))


def _make_servicers(predictor: Predictor):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        """``tensorflow.serving.PredictionService``: Predict and GetModelMetadata."""

        def Predict(self, request, context):  # noqa: N802 (gRPC method name)
            return _guarded(predictor.predict_proto, context, request)

        def GetModelMetadata(self, request, context):  # noqa: N802
            return _guarded(predictor.metadata_proto, context, request)

    class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
        """``tensorflow.serving.ModelService``: GetModelStatus."""

        def GetModelStatus(self, request, context):  # noqa: N802
            return _guarded(predictor.status_proto, context, request)

    return PredictionServicer(), ModelServicer()


class ModelServer:
    """Runs the gRPC and REST front ends over one predictor.

    Args:
        config: the server configuration.
        managers: prebuilt model managers by name (tests); by default one manager is built from
            ``config.model_name`` / ``config.model_base_path``.
    """

    def __init__(self, config: ServerConfig, managers: Optional[Dict[str, ModelManager]] = None):
        self.config = config
        self.managers = managers
        self.predictor: Optional[Predictor] = None
        self.grpc_port: Optional[int] = None
        self.rest_port: Optional[int] = None
        self._grpc_server = None
        self._rest_server = None
        self._rest_thread: Optional[threading.Thread] = None
        self._stopped = threading.Event()

    def start(self) -> "ModelServer":
        """Loads the models, then binds and starts both front ends. Returns ``self``."""
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        config = self.config
        if self.managers is None:
            self.managers = {config.model_name: ModelManager(
                    config.model_name, config.model_base_path, num_versions=config.num_versions,
                    poll_interval_s=config.poll_interval_s)}
        max_request_bytes = (config.max_request_bytes if config.max_request_bytes is not None
                             else config.max_receive_message_bytes)
        self.predictor = Predictor(self.managers, config.batching, max_request_bytes=max_request_bytes)
        for manager in self.managers.values():
            if manager.warmup is None:
                manager.warmup = self.predictor.warmup
            manager.start()

        options = [("grpc.max_receive_message_length", config.max_receive_message_bytes),
                   ("grpc.max_send_message_length", config.max_send_message_bytes),
                   ("grpc.so_reuseport", 0)]
        self._grpc_server = grpc.server(
                concurrent.futures.ThreadPoolExecutor(max_workers=config.grpc_threads, thread_name_prefix="grpc"),
                options=options)
        prediction_servicer, model_servicer = _make_servicers(self.predictor)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction_servicer, self._grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(model_servicer, self._grpc_server)
        self.grpc_port = self._grpc_server.add_insecure_port(f"{_host_for_grpc(config.host)}:{config.port}")
        if self.grpc_port == 0:
            raise OSError(f"could not bind gRPC to {config.host}:{config.port}")
        self._grpc_server.start()

        if config.rest_api_port is not None:
            self._rest_server = RestServer(self.predictor, config.host, config.rest_api_port, config.rest_limits())
            self.rest_port = self._rest_server.server_address[1]
            self._rest_thread = threading.Thread(target=self._rest_server.serve_forever, name="rest", daemon=True)
            self._rest_thread.start()
        _LOG.info("Serving %s: gRPC on %s:%d, REST on %s", sorted(self.managers), config.host, self.grpc_port,
                  f"{config.host}:{self.rest_port}" if self.rest_port else "(disabled)")
        return self

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Blocks until :meth:`stop` (or ``timeout``); returns whether the server stopped."""
        return self._stopped.wait(timeout)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stops accepting requests, lets those in flight finish (up to ``grace_s``), unloads models."""
        if self._rest_server is not None:
            self._rest_server.shutdown()
            self._rest_server.server_close()
            self._rest_server = None
        if self._grpc_server is not None:
            self._grpc_server.stop(grace_s).wait()
            self._grpc_server = None
        if self.predictor is not None:
            self.predictor.close()
        for manager in (self.managers or {}).values():
            manager.stop()
        self._stopped.set()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _host_for_grpc(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
