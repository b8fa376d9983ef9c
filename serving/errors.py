"""Canonical error codes shared by the gRPC and REST front ends.

Every failure the server reports is a :class:`ServingError` carrying one of the canonical codes
(the same numbering as ``grpc.StatusCode`` / ``tensorflow::error::Code``), so that both protocols
answer the same way: gRPC with the status code, REST with the HTTP status TF Serving uses for it and
an ``{"error": message}`` body.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """Canonical status codes (google.rpc.Code)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# HTTP statuses as TF Serving's REST front end maps them (model_servers/http_rest_api_handler).
_HTTP_STATUS = {
        Code.OK: 200,
        Code.CANCELLED: 499,
        Code.UNKNOWN: 500,
        Code.INVALID_ARGUMENT: 400,
        Code.DEADLINE_EXCEEDED: 504,
        Code.NOT_FOUND: 404,
        Code.ALREADY_EXISTS: 409,
        Code.PERMISSION_DENIED: 403,
        Code.RESOURCE_EXHAUSTED: 429,
        Code.FAILED_PRECONDITION: 400,
        Code.ABORTED: 409,
        Code.OUT_OF_RANGE: 400,
        Code.UNIMPLEMENTED: 501,
        Code.INTERNAL: 500,
        Code.UNAVAILABLE: 503,
        Code.DATA_LOSS: 500,
        Code.UNAUTHENTICATED: 401,
}


def http_status(code: Code) -> int:
    """Returns the HTTP status that the REST API answers for a canonical code."""
    return _HTTP_STATUS.get(Code(code), 500)


class ServingError(Exception):
    """A request failed; carries the canonical code and a message meant for the caller.

    Args:
        code: the canonical code (e.g. ``Code.INVALID_ARGUMENT``).
        message: what was wrong, naming the model, signature or input concerned.
    """

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = Code(code)
        self.message = message

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def invalid_argument(message: str) -> ServingError:
    """Shorthand for an INVALID_ARGUMENT error."""
    return ServingError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    """Shorthand for a NOT_FOUND error."""
    return ServingError(Code.NOT_FOUND, message)


def from_tf_error(error) -> ServingError:
    """Converts a ``tf.errors.OpError`` raised while running a signature.

    TensorFlow's error codes are the canonical ones, so an ``InvalidArgumentError`` raised by an
    assertion inside the graph (too many regions, a bad shape) reaches the caller as
    INVALID_ARGUMENT. The message keeps the assertion text (or else the first line) and drops the
    graph's node trace.
    """
    message = str(getattr(error, "message", error)).strip()
    # An in-graph assertion reads "... assertion failed: [the text the exporter wrote] [values]" and
    # then a node trace; keep the assertion, drop the trace.
    start = message.find("assertion failed:")
    if start >= 0:
        text = message[start:]
    else:
        text = _error_lines(message) or type(error).__name__
    text = text.split("\n\t [[", 1)[0].split("[[{{", 1)[0].strip()
    first_line = " ".join(text.split())[:2000]
    try:
        code = Code(int(getattr(error, "error_code", Code.INTERNAL)))
    except ValueError:
        code = Code.INTERNAL
    return ServingError(code, first_line)


# Lines TensorFlow wraps around the message of an op that failed inside a graph function (for
# example ParseExample inside the tf.map_fn of serve_examples): "Graph execution error:", then
# "Detected at node ... defined at (most recent call last):", a stack (indented, or "<stack traces
# unavailable>") and "Node: ...", then the op's own message, then the "\t [[node]]" trace.
_WRAPPER_PREFIXES = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "Node:")


def _error_lines(message: str) -> str:
    """The op's own message out of a TensorFlow error text (without the wrapper and the trace)."""
    body = message.split("\n\t [[", 1)[0]
    lines = [line for line in body.splitlines() if line.strip()]
    own = [line.strip() for line in lines
           if not line[:1].isspace() and not line.startswith(_WRAPPER_PREFIXES)]
    if own:
        return " ".join(own)
    return lines[0].strip() if lines else ""
