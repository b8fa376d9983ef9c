"""TF Serving's REST API on the standard library's threaded HTTP server.

Routes (as TF Serving's ``http_rest_api_handler``):

* ``GET  /v1/models/NAME[/versions/V]``: model status;
* ``GET  /v1/models/NAME[/versions/V]/metadata``: the signature defs;
* ``POST /v1/models/NAME[/versions/V]:predict``: ``{"instances": [...]}`` (row) or
  ``{"inputs": ...}`` (columnar), with ``{"b64": ...}`` for bytes; answers ``{"predictions": ...}``
  or ``{"outputs": ...}``.

Errors answer ``{"error": message}`` with the HTTP status of the canonical code (400, 404, ...).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import json
import logging
import re
import socket
import sys
import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
from tornado import gen, httpserver, httputil, ioloop, iostream, netutil

from serving import tensor_codec

from serving.errors import Code, ServingError, http_status, invalid_argument, not_found
from serving.model_manager import InputSpec, Signature

_LOG = logging.getLogger(__name__)

_MODEL = r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
_GET_ROUTE = re.compile(_MODEL + r"(?P<metadata>/metadata)?/?$")
_POST_ROUTE = re.compile(_MODEL + r":(?P<method>[A-Za-z]+)$")


# JSON -> numpy ---------------------------------------------------------------------------------

# Integers longer than this are kept as text (int64 needs 19 digits): converting a 5,000-digit
# literal costs quadratic time, and Python refuses more than 4,300 digits with a ValueError.
_MAX_INT_DIGITS = 40


class _HugeInt:
    """A JSON integer literal too long for any tensor dtype (numpy puts it in an object array)."""

    def __init__(self, text: str):
        self.digits = len(text.lstrip("-"))


def _parse_json_int(text: str):
    return int(text) if len(text) <= _MAX_INT_DIGITS else _HugeInt(text)


def _preview(value: Any) -> str:
    if isinstance(value, _HugeInt):
        return f"an integer of {value.digits} digits"
    try:
        return json.dumps(value)[:80]
    except (TypeError, ValueError, RecursionError):
        return type(value).__name__


def _nesting_depth(value: Any) -> int:
    """The list depth along the first elements (iterative: a deep list costs no Python stack)."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        if not value:
            break
        value = value[0]
    return depth


def _check_depth(value: Any, spec: InputSpec) -> None:
    most = len(spec.shape) if spec.shape is not None else tensor_codec.MAX_RANK
    depth = _nesting_depth(value)
    if depth > most:
        raise invalid_argument(f"input '{spec.name}' nests lists {depth} deep; it takes {spec.describe()}, "
                               f"at most rank {most}")


def _string_leaves(value: Any, name: str, levels_left: int) -> Any:
    """Replaces JSON strings and ``{"b64": ...}`` objects by bytes, keeping the list nesting."""
    if isinstance(value, list):
        if levels_left <= 0:
            raise invalid_argument(f"input '{name}' nests lists deeper than its rank")
        return [_string_leaves(item, name, levels_left - 1) for item in value]
    if isinstance(value, _HugeInt):
        raise invalid_argument(f"input '{name}' expects strings, got {_preview(value)}")
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise invalid_argument(f"input '{name}': a JSON object in tensor data must be {{\"b64\": \"...\"}}, "
                                   f"got keys {sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid_argument(f"input '{name}': the \"b64\" value is not valid base64") from None
    raise invalid_argument(f"input '{name}' expects strings, got the JSON value {_preview(value)}")


def _nested_shape(value: Any, name: str) -> Tuple[int, ...]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def json_to_array(value: Any, spec: InputSpec) -> np.ndarray:
    """Converts one input's JSON value to a numpy array of the signature's dtype.

    Raises:
        ServingError: INVALID_ARGUMENT for ragged lists, lists nested deeper than the input's rank,
            values of the wrong kind (strings for a number, fractions for an integer), or integers
            out of the dtype's range.
    """
    name = spec.name
    _check_depth(value, spec)
    if spec.dtype == np.dtype(object):
        most = len(spec.shape) if spec.shape is not None else tensor_codec.MAX_RANK
        leaves = _string_leaves(value, name, most)
        shape = _nested_shape(leaves, name)
        array = np.empty(shape, dtype=object)
        try:
            array[...] = leaves if shape else leaves
        except ValueError:
            raise invalid_argument(f"input '{name}' is a ragged list; every row must have the same length") from None
        if any(not isinstance(item, bytes) for item in array.reshape(-1)):
            raise invalid_argument(f"input '{name}' is a ragged list; every row must have the same length")
        return array
    if _contains_object(value):
        raise invalid_argument(f"input '{name}' expects {spec.describe()} numbers, got strings or objects")
    try:
        parsed = np.asarray(value)
    except (ValueError, RecursionError):
        raise invalid_argument(f"input '{name}' is a ragged list; every row must have the same length") from None
    if parsed.dtype == object and any(isinstance(item, _HugeInt) for item in parsed.reshape(-1)):
        raise invalid_argument(f"input '{name}': a value is out of the range of {spec.dtype.name} "
                               f"(an integer of more than {_MAX_INT_DIGITS} digits)")
    if parsed.dtype == object or parsed.dtype.kind not in "biuf":
        raise invalid_argument(f"input '{name}' expects {spec.describe()} numbers, got {parsed.dtype.name} values")
    kind = spec.dtype.kind
    if kind in "iu":
        if parsed.dtype.kind == "f":
            raise invalid_argument(f"input '{name}' expects integers ({spec.describe()}), got floating-point values")
        info = np.iinfo(spec.dtype)
        if parsed.size and (parsed.min() < info.min or parsed.max() > info.max):
            raise invalid_argument(f"input '{name}': a value is out of the range of {spec.dtype.name}")
    elif kind == "b" and parsed.dtype.kind != "b":
        raise invalid_argument(f"input '{name}' expects booleans ({spec.describe()}), got {parsed.dtype.name}")
    return parsed.astype(spec.dtype, copy=False)


def _contains_object(value: Any) -> bool:
    # Only the first leaf of each level is inspected: numpy rejects mixed lists itself.
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, (str, dict))


def decode_predict_body(body: Mapping[str, Any], signature: Signature) -> Dict[str, np.ndarray]:
    """Builds the input arrays of a predict request body for ``signature``.

    Raises:
        ServingError: INVALID_ARGUMENT when the body has neither or both of ``instances`` and
            ``inputs``, or a value does not convert.
    """
    has_rows, has_columns = "instances" in body, "inputs" in body
    if has_rows == has_columns:
        raise invalid_argument('the request body must have exactly one of "instances" (row format) or '
                               '"inputs" (columnar format)')
    specs = signature.inputs
    if has_rows:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise invalid_argument('"instances" must be a non-empty list')
        named = isinstance(instances[0], dict) and set(instances[0]) != {"b64"}
        if not named:
            if len(specs) != 1:
                raise invalid_argument(f"signature '{signature.name}' takes {len(specs)} inputs "
                                       f"{sorted(specs)}; each instance must be an object naming them")
            only = next(iter(specs))
            columns = {only: instances}
        else:
            columns = {}
            for index, instance in enumerate(instances):
                if not isinstance(instance, dict):
                    raise invalid_argument(f"instance {index} is not a JSON object like instance 0")
                if set(instance) != set(instances[0]):
                    raise invalid_argument(f"instance {index} names inputs {sorted(instance)}, instance 0 names "
                                           f"{sorted(instances[0])}; every instance must name the same inputs")
                for key, value in instance.items():
                    columns.setdefault(key, []).append(value)
    else:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and not (set(inputs) == {"b64"}):
            columns = inputs
        else:
            if len(specs) != 1:
                raise invalid_argument(f"signature '{signature.name}' takes {len(specs)} inputs {sorted(specs)}; "
                                       f"\"inputs\" must be an object naming them")
            columns = {next(iter(specs)): inputs}
    arrays = {}
    for key, value in columns.items():
        spec = specs.get(key)
        if spec is None:
            raise invalid_argument(f"signature '{signature.name}' has no input '{key}'; it takes {sorted(specs)}")
        array = json_to_array(value, spec)
        if has_rows and array.ndim == 0:
            raise invalid_argument(f"input '{key}' of the instances has no batch dimension")
        arrays[key] = array
    return arrays


# numpy -> JSON ---------------------------------------------------------------------------------

def _json_strings(array: np.ndarray, force_b64: bool) -> Any:
    def encode(item: bytes):
        if not force_b64:
            try:
                return item.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(item).decode("ascii")}

    flat = [encode(item if isinstance(item, bytes) else str(item).encode("utf-8")) for item in array.reshape(-1)]
    if array.ndim == 0:
        return flat[0]
    return np.asarray(flat, dtype=object).reshape(array.shape).tolist()


def array_to_json(name: str, array: np.ndarray) -> Any:
    """Converts one output to JSON values (bytes as text, or ``{"b64"}`` when the name ends in
    ``_bytes`` or the bytes are not UTF-8, as TF Serving does)."""
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind == "S":
        return _json_strings(array, force_b64=name.endswith("_bytes"))
    return array.tolist()


def encode_predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> Dict[str, Any]:
    """Shapes the outputs as TF Serving does: ``predictions`` (rows) or ``outputs`` (columns).

    Raises:
        ServingError: INVALID_ARGUMENT when row format is asked for outputs of different batch sizes.
    """
    if not row_format:
        if len(outputs) == 1:
            name, array = next(iter(outputs.items()))
            return {"outputs": array_to_json(name, array)}
        return {"outputs": {name: array_to_json(name, array) for name, array in outputs.items()}}
    sizes = {name: (np.shape(array)[0] if np.ndim(array) else None) for name, array in outputs.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise invalid_argument(f"the outputs do not share a batch dimension ({sizes}); use the columnar "
                               f"\"inputs\" format instead of \"instances\"")
    columns = {name: array_to_json(name, array) for name, array in outputs.items()}
    rows = next(iter(sizes.values()))
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{name: column[index] for name, column in columns.items()} for index in range(rows)]}


def _status_json(rows) -> Dict[str, Any]:
    return {"model_version_status": [
            {"version": str(version), "state": state,
             "status": {"error_code": code.name if code != Code.OK else "OK", "error_message": message}}
            for version, state, code, message in rows]}


def _metadata_json(name: str, version: int, signature_defs) -> Dict[str, Any]:
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature_def)
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": json_format.MessageToDict(signature_map,
                                                                    preserving_proto_field_name=True)}}


# HTTP ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RestLimits:
    """What one client may hold of the REST front end.

    Attributes:
        max_body_bytes: the largest request body; a larger ``Content-Length`` is answered 413 at
            once, without reading the body.
        idle_timeout_s: how long a connection may stay open without a complete request: it covers
            both an idle keep-alive connection and the time to send one request's headers (so a
            client that trickles a header byte at a time is closed too).
        body_timeout_s: how long a client may take to send one request's body.
        max_connections: open connections at a time; one more is answered 503 and closed.
        worker_threads: requests decoded and run at a time; the others wait for a worker (idle
            connections hold none).
        listen_backlog: the listen queue of the socket (the kernel caps it at
            ``net.core.somaxconn``); a short queue drops the SYNs of a burst of new connections,
            which then wait for TCP's 1 s retransmission.
        max_header_bytes: the largest request line plus headers.
        linger_s: after answering a request whose body is not read (too large, or a bad length),
            the connection is half-closed and what the client still sends is discarded (never
            kept) until it pauses for this long (at most 5 times this in all), so that the client
            reads the answer instead of a reset.
    """

    max_body_bytes: int = 256 * 1024 * 1024
    idle_timeout_s: float = 30.0
    body_timeout_s: float = 60.0
    max_connections: int = 512
    worker_threads: int = 16
    listen_backlog: int = 1024
    max_header_bytes: int = 64 * 1024
    linger_s: float = 2.0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"RestLimits.{field.name} must be positive, got {getattr(self, field.name)}")


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable", 504: "Gateway Timeout"}
_DIGITS = re.compile(r"[0-9]{1,20}")


def _json_bytes(payload: Any) -> bytes:
    # NaN and +-Infinity leave as the bare tokens NaN / Infinity / -Infinity, as TF Serving's REST API
    # documents ("JSON conformance"); Python's json module reads them back.
    return json.dumps(payload).encode("utf-8")


def handle_request(predictor, method: str, target: str, body: bytes) -> Tuple[int, bytes]:
    """Answers one REST request; returns ``(HTTP status, JSON body)``. Never raises."""
    path = target.split("?", 1)[0]
    try:
        if method == "GET":
            match = _GET_ROUTE.match(path)
            if not match:
                raise not_found(f"no REST route for GET {target}; use /v1/models/NAME[/versions/V][/metadata]")
            name, version, label = match.group("name", "version", "label")
            if match.group("metadata"):
                used_version, signature_defs = predictor.metadata(name, version, label or "")
                return 200, _json_bytes(_metadata_json(name, used_version, signature_defs))
            return 200, _json_bytes(_status_json(predictor.status(name, version, label or "")))
        if method != "POST":
            return 405, _json_bytes({"error": f"method {method} is not allowed; use GET or POST"})
        match = _POST_ROUTE.match(path)
        if not match:
            raise not_found(f"no REST route for POST {target}; use /v1/models/NAME[/versions/V]:predict")
        request = parse_json_body(body)
        method_name = match.group("method")
        if method_name != "predict":
            raise ServingError(Code.UNIMPLEMENTED if method_name in ("classify", "regress") else Code.NOT_FOUND,
                               f"method ':{method_name}' is not supported; this server implements ':predict'")
        signature_name = request.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise invalid_argument('"signature_name" must be a string')
        output_filter = request.get("output_filter") or []
        if not isinstance(output_filter, list):
            raise invalid_argument('"output_filter" must be a list of output names')
        name, version, label = match.group("name", "version", "label")
        _, _, outputs = predictor.predict(
                name, version, label or "", signature_name, output_filter=output_filter,
                input_decoder=lambda signature: decode_predict_body(request, signature))
        return 200, _json_bytes(encode_predict_response(outputs, row_format="instances" in request))
    except ServingError as error:
        return http_status(error.code), _json_bytes({"error": error.message})
    except Exception as error:  # keep serving
        _LOG.exception("REST %s %s failed", method, target)
        return 500, _json_bytes({"error": f"{type(error).__name__}: {error}"})


def parse_json_body(raw: bytes) -> Dict[str, Any]:
    """Parses a request body into a JSON object.

    Raises:
        ServingError: INVALID_ARGUMENT for invalid JSON, JSON nested deeper than the parser's limit
            (about 1,000 levels; a body of 100,000 ``[`` used to crash the request), or a top level
            that is not an object.
    """
    try:
        body = json.loads(raw, parse_int=_parse_json_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise invalid_argument(f"the request body is not valid JSON: {error}") from None
    except RecursionError:
        # The parser gives no position; the key that opens a run of brackets deeper than any tensor
        # rank is almost always the culprit, and naming it is what a client needs.
        found = _DEEP_KEY.search(raw)
        where = f" at input '{found.group(1).decode('utf-8', 'replace')}'" if found else ""
        raise invalid_argument(f"the request body nests JSON arrays/objects deeper than {sys.getrecursionlimit()} "
                               f"levels{where}; a tensor has at most {tensor_codec.MAX_RANK} dimensions") from None
    if not isinstance(body, dict):
        raise invalid_argument("the request body must be a JSON object")
    return body


_DEEP_KEY = re.compile(rb'"([^"\\]{1,200})"\s*:\s*(?:\[\s*){%d}' % (tensor_codec.MAX_RANK + 1))


class _JsonConnection(httputil.HTTPMessageDelegate):
    """One request on a connection: checks the headers, buffers the body, answers from a worker."""

    def __init__(self, front_end: "RestServer", connection):
        self._front_end = front_end
        self._connection = connection
        self._start_line = None
        self._chunks: List[bytes] = []

    def headers_received(self, start_line, headers):
        self._start_line = start_line
        refusal = self._front_end.check_length(headers)
        if refusal is not None:
            return self._refuse(*refusal)
        return None

    def data_received(self, chunk: bytes):
        self._chunks.append(chunk)

    def finish(self) -> None:
        self._front_end.spawn(self._answer())

    def on_connection_close(self) -> None:
        self._chunks = []

    async def _answer(self) -> None:
        try:
            await self._respond()
        except Exception:  # noqa: BLE001 (a task's error would otherwise go unreported)
            _LOG.exception("REST: answering %s failed", self._start_line)
            self._connection.close()  # never leave the client waiting on an answer that will not come

    async def _respond(self) -> None:
        body, self._chunks = b"".join(self._chunks), []
        loop = asyncio.get_running_loop()
        status, payload = await loop.run_in_executor(
                self._front_end.workers, handle_request, self._front_end.predictor, self._start_line.method,
                self._start_line.path, body)
        headers = httputil.HTTPHeaders({"Content-Type": "application/json", "Content-Length": str(len(payload)),
                                        "Server": "uniter-tf-serving"})
        try:
            self._connection.write_headers(httputil.ResponseStartLine("HTTP/1.1", status, _REASONS.get(status, "")),
                                           headers, None if self._start_line.method == "HEAD" else payload)
            self._connection.finish()
        except iostream.StreamClosedError:
            pass  # the client left before its answer

    async def _refuse(self, status: int, message: str) -> None:
        """Answers without reading the body, half-closes, and drains briefly (see RestLimits.linger_s)."""
        payload = _json_bytes({"error": message})
        headers = httputil.HTTPHeaders({"Content-Type": "application/json", "Content-Length": str(len(payload)),
                                        "Connection": "close", "Server": "uniter-tf-serving"})
        try:
            await self._connection.write_headers(
                    httputil.ResponseStartLine("HTTP/1.1", status, _REASONS.get(status, "")), headers, payload)
        except iostream.StreamClosedError:
            pass
        # Taking the stream away ends tornado's processing of this connection: it reads no body.
        stream = self._connection.detach()
        await _linger_and_close(stream, self._front_end.limits.linger_s)


async def _linger_and_close(stream, linger_s: float) -> None:
    """Half-closes ``stream`` and discards what the client still sends, then closes it.

    Closing a socket with unread data makes the kernel send a reset, and a client still sending
    its body may then lose the answer already written. So the connection lingers: each read waits
    at most ``linger_s``, and the whole linger lasts at most ``_LINGER_ROUNDS * linger_s``. Nothing
    read is kept.
    """
    if stream.closed():
        return
    try:
        stream.socket.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    loop = ioloop.IOLoop.current()  # gen.with_timeout takes deadlines on this clock (not asyncio's)
    give_up = loop.time() + _LINGER_ROUNDS * linger_s
    try:
        while loop.time() < give_up:  # ends early when the client closes its side (StreamClosedError)
            await gen.with_timeout(min(loop.time() + linger_s, give_up), stream.read_bytes(1 << 16, partial=True),
                                   quiet_exceptions=(iostream.StreamClosedError,))
    except (gen.TimeoutError, iostream.StreamClosedError) as error:
        _LOG.debug("Lingering connection ends: %r", error)
    finally:
        stream.close()


# See _linger_and_close: the longest linger is this many times RestLimits.linger_s.
_LINGER_ROUNDS = 5


class RestServer:
    """TF Serving's REST API on tornado's HTTP/1.1 server.

    tornado (``tornado==6.5.10``, already in the lock) replaces the standard library's
    ``ThreadingHTTPServer``, which held one thread per connection with no timeout and listened
    with a backlog of 5: here idle connections cost no thread, header and body reads have
    deadlines, a request runs on a fixed pool of worker threads, and connections are capped (see
    :class:`RestLimits`).

    The interface follows ``socketserver``: the socket is bound by the constructor
    (``server_address`` holds the port), :meth:`serve_forever` runs the event loop in the calling
    thread until :meth:`shutdown`, and :meth:`server_close` releases the socket and the workers.

    Args:
        predictor: the shared :class:`~serving.predictor.Predictor`.
        host: the address to bind.
        port: the port (0 picks a free one).
        limits: the :class:`RestLimits`.
    """

    def __init__(self, predictor, host: str, port: int, limits: RestLimits):
        self.predictor = predictor
        self.limits = limits
        self._sockets = netutil.bind_sockets(port, host, backlog=limits.listen_backlog)
        self.server_address = self._sockets[0].getsockname()[:2]
        self.workers = concurrent.futures.ThreadPoolExecutor(max_workers=limits.worker_threads,
                                                             thread_name_prefix="rest")
        self.rejected_connections = 0
        self._tasks: set = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._http = None
        self._stopped = threading.Event()
        self._started = threading.Event()

    def spawn(self, coroutine) -> None:
        """Runs ``coroutine`` as a task on the event loop, holding a reference until it ends (asyncio
        keeps only weak references to tasks)."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def check_length(self, headers) -> Optional[Tuple[int, str]]:
        """``(status, message)`` for a ``Content-Length`` that must not be read, else ``None``."""
        values = headers.get_list("Content-Length")
        if not values:
            return None
        if len(set(values)) > 1 or not _DIGITS.fullmatch(values[0].strip()):
            shown = ", ".join(repr(value[:40]) for value in values)
            return 400, (f"the Content-Length header must be one non-negative decimal integer, got {shown}; "
                         f"the body was not read")
        length = int(values[0])
        if length > self.limits.max_body_bytes:
            return 413, (f"the request body has {length} bytes, more than the limit of {self.limits.max_body_bytes} "
                         f"(--rest-api-max-body-bytes); the body was not read")
        return None

    def serve_forever(self) -> None:
        """Runs the event loop in this thread until :meth:`shutdown`."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        front_end = self

        class Delegate(httputil.HTTPServerConnectionDelegate):
            def start_request(self, server_conn, request_conn):
                return _JsonConnection(front_end, request_conn)

        class CappedHTTPServer(httpserver.HTTPServer):
            def handle_stream(self, stream, address):
                if len(self._connections) >= front_end.limits.max_connections:
                    front_end.rejected_connections += 1
                    front_end.spawn(_refuse_connection(stream, front_end.limits))
                    return
                super().handle_stream(stream, address)

        limits = self.limits
        self._http = CappedHTTPServer(
                Delegate(), idle_connection_timeout=limits.idle_timeout_s, body_timeout=limits.body_timeout_s,
                max_body_size=limits.max_body_bytes, max_header_size=limits.max_header_bytes,
                decompress_request=False)
        self._http.add_sockets(self._sockets)
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._stopped.set()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stops accepting, closes the open connections, and ends :meth:`serve_forever`."""
        loop = self._loop
        if loop is None or not self._started.is_set():
            return

        async def stop():
            self._http.stop()
            try:
                await asyncio.wait_for(self._http.close_all_connections(), timeout_s)
            except asyncio.TimeoutError:
                _LOG.warning("REST connections still open after %.0f s at shutdown", timeout_s)
            loop.stop()

        loop.call_soon_threadsafe(lambda: self.spawn(stop()))
        self._stopped.wait(timeout_s + 5)

    def server_close(self) -> None:
        """Closes the listening socket (if :meth:`serve_forever` never ran) and the worker pool."""
        for sock in self._sockets:
            sock.close()
        self.workers.shutdown(wait=False)

    @property
    def open_connections(self) -> int:
        """How many client connections are open now."""
        return len(self._http._connections) if self._http is not None else 0


async def _refuse_connection(stream, limits: RestLimits) -> None:
    payload = _json_bytes({"error": f"the server has {limits.max_connections} open REST connections, its limit; "
                                    f"retry later"})
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}"
            f"\r\nConnection: close\r\n\r\n").encode("ascii")
    try:
        await stream.write(head + payload)
    except iostream.StreamClosedError:
        return
    await _linger_and_close(stream, min(limits.linger_s, 1.0))


def make_rest_server(predictor, host: str, port: int, max_body_bytes: Optional[int] = None,
                     limits: Optional[RestLimits] = None) -> RestServer:
    """Builds (binds, does not start) the REST server over ``predictor``."""
    limits = limits or RestLimits()
    if max_body_bytes is not None:
        limits = dataclasses.replace(limits, max_body_bytes=max_body_bytes)
    return RestServer(predictor, host, port, limits)
