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

import base64
import binascii
import http.server
import json
import logging
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from serving.errors import Code, ServingError, http_status, invalid_argument, not_found
from serving.model_manager import InputSpec, Signature

_LOG = logging.getLogger(__name__)

_MODEL = r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
_GET_ROUTE = re.compile(_MODEL + r"(?P<metadata>/metadata)?/?$")
_POST_ROUTE = re.compile(_MODEL + r":(?P<method>[A-Za-z]+)$")


# JSON -> numpy ---------------------------------------------------------------------------------

def _string_leaves(value: Any, name: str) -> Any:
    """Replaces JSON strings and ``{"b64": ...}`` objects by bytes, keeping the list nesting."""
    if isinstance(value, list):
        return [_string_leaves(item, name) for item in value]
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
    raise invalid_argument(f"input '{name}' expects strings, got the JSON value {json.dumps(value)[:80]}")


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
        ServingError: INVALID_ARGUMENT for ragged lists, values of the wrong kind (strings for a
            number, fractions for an integer), or integers out of the dtype's range.
    """
    name = spec.name
    if spec.dtype == np.dtype(object):
        leaves = _string_leaves(value, name)
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
    except ValueError:
        raise invalid_argument(f"input '{name}' is a ragged list; every row must have the same length") from None
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

def make_rest_server(predictor, host: str, port: int, max_body_bytes: int) -> http.server.ThreadingHTTPServer:
    """Builds (binds, does not start) the REST server over ``predictor``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as load generators expect
        server_version = "uniter-tf-serving"
        # Headers and body leave in separate writes; without TCP_NODELAY, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every keep-alive response.
        disable_nagle_algorithm = True

        def log_message(self, format, *args):  # noqa: A002 (stdlib signature)
            _LOG.debug("%s - %s", self.address_string(), format % args)

        def _send(self, status: int, payload: Dict[str, Any]) -> None:
            body = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def _send_error(self, error: ServingError) -> None:
            self._send(http_status(error.code), {"error": error.message})

        def do_GET(self):  # noqa: N802
            try:
                match = _GET_ROUTE.match(self.path.split("?", 1)[0])
                if not match:
                    raise not_found(f"no REST route for GET {self.path}; use /v1/models/NAME[/versions/V][/metadata]")
                name, version, label = match.group("name", "version", "label")
                if match.group("metadata"):
                    used_version, signature_defs = predictor.metadata(name, version, label or "")
                    self._send(200, _metadata_json(name, used_version, signature_defs))
                else:
                    self._send(200, _status_json(predictor.status(name, version, label or "")))
            except ServingError as error:
                self._send_error(error)
            except Exception as error:  # keep serving
                _LOG.exception("REST GET %s failed", self.path)
                self._send_error(ServingError(Code.INTERNAL, f"{type(error).__name__}: {error}"))

        def do_POST(self):  # noqa: N802
            try:
                match = _POST_ROUTE.match(self.path.split("?", 1)[0])
                if not match:
                    self._discard_body()
                    raise not_found(f"no REST route for POST {self.path}; use /v1/models/NAME[/versions/V]:predict")
                body = self._read_json()
                method = match.group("method")
                if method != "predict":
                    raise ServingError(Code.UNIMPLEMENTED if method in ("classify", "regress") else Code.NOT_FOUND,
                                       f"method ':{method}' is not supported; this server implements ':predict'")
                signature_name = body.get("signature_name", "")
                if not isinstance(signature_name, str):
                    raise invalid_argument('"signature_name" must be a string')
                output_filter = body.get("output_filter") or []
                if not isinstance(output_filter, list):
                    raise invalid_argument('"output_filter" must be a list of output names')
                name, version, label = match.group("name", "version", "label")
                _, _, outputs = predictor.predict(
                        name, version, label or "", signature_name, output_filter=output_filter,
                        input_decoder=lambda signature: decode_predict_body(body, signature))
                self._send(200, encode_predict_response(outputs, row_format="instances" in body))
            except ServingError as error:
                self._send_error(error)
            except Exception as error:  # keep serving
                _LOG.exception("REST POST %s failed", self.path)
                self._send_error(ServingError(Code.INTERNAL, f"{type(error).__name__}: {error}"))

        def _content_length(self) -> int:
            try:
                return int(self.headers.get("Content-Length", ""))
            except ValueError:
                self.close_connection = True
                raise invalid_argument("the request needs a Content-Length header (chunked bodies are not "
                                       "supported)") from None

        def _discard_body(self) -> None:
            length = self._content_length() if self.headers.get("Content-Length") else 0
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 20))
                if not chunk:
                    break
                length -= len(chunk)

        def _read_json(self) -> Dict[str, Any]:
            length = self._content_length()
            if length > max_body_bytes:
                # Drain (and drop) the body in small chunks so that the client, still sending, reads
                # our 400 instead of a broken pipe; then close the connection.
                self.close_connection = True
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                raise invalid_argument(f"the request body has {length} bytes, more than the limit of "
                                       f"{max_body_bytes} (--rest-api-max-body-bytes)")
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise invalid_argument(f"the request body is not valid JSON: {error}") from None
            if not isinstance(body, dict):
                raise invalid_argument("the request body must be a JSON object")
            return body

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
