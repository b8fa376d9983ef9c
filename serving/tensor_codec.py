"""Conversion between ``TensorProto`` and numpy without TensorFlow's per-element Python loops.

Only plain data is decoded (numbers from ``tensor_content`` or the typed value fields, strings from
``string_val``); nothing is ever unpickled.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import invalid_argument

# DataType enum -> (numpy dtype, name of the TensorProto repeated field that holds it).
_NUMERIC = {
        types_pb2.DT_FLOAT: (np.float32, "float_val"),
        types_pb2.DT_DOUBLE: (np.float64, "double_val"),
        types_pb2.DT_INT32: (np.int32, "int_val"),
        types_pb2.DT_INT16: (np.int16, "int_val"),
        types_pb2.DT_INT8: (np.int8, "int_val"),
        types_pb2.DT_UINT8: (np.uint8, "int_val"),
        types_pb2.DT_UINT16: (np.uint16, "int_val"),
        types_pb2.DT_INT64: (np.int64, "int64_val"),
        types_pb2.DT_UINT32: (np.uint32, "uint32_val"),
        types_pb2.DT_UINT64: (np.uint64, "uint64_val"),
        types_pb2.DT_BOOL: (np.bool_, "bool_val"),
        types_pb2.DT_HALF: (np.float16, "half_val"),
}

_ENUM_BY_DTYPE = {np.dtype(dtype): enum for enum, (dtype, _) in _NUMERIC.items()}


def dtype_name(enum: int) -> str:
    """``DT_FLOAT`` -> ``float32`` style names for messages."""
    if enum == types_pb2.DT_STRING:
        return "string"
    if enum in _NUMERIC:
        return np.dtype(_NUMERIC[enum][0]).name
    return types_pb2.DataType.Name(enum) if enum in types_pb2.DataType.values() else f"dtype {enum}"


# numpy cannot hold more dimensions than this (NPY_MAXDIMS of numpy 1.x); a TensorProto may declare
# any number, so a larger rank is refused before numpy sees it.
MAX_RANK = 32

# Each string element costs a Python/numpy object reference besides its bytes.
_STRING_OVERHEAD_BYTES = 8


def proto_shape(proto: tensor_pb2.TensorProto) -> tuple:
    """The shape a ``TensorProto`` declares."""
    return tuple(dim.size for dim in proto.tensor_shape.dim)


def proto_dtype(proto: tensor_pb2.TensorProto) -> np.dtype:
    """The numpy dtype a ``TensorProto`` declares (``object`` for strings).

    Raises:
        ServingError: INVALID_ARGUMENT for a dtype the server does not decode.
    """
    if proto.dtype == types_pb2.DT_STRING:
        return np.dtype(object)
    if proto.dtype not in _NUMERIC:
        raise invalid_argument(f"unsupported dtype {dtype_name(proto.dtype)}")
    return np.dtype(_NUMERIC[proto.dtype][0])


def declared_shape(proto: tensor_pb2.TensorProto, name: str = "tensor") -> Tuple[int, ...]:
    """The shape a ``TensorProto`` declares, checked to be one numpy can hold.

    Raises:
        ServingError: INVALID_ARGUMENT for an unknown rank, a negative dimension, or more than
            :data:`MAX_RANK` dimensions.
    """
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"input '{name}' has an unknown rank in tensor_shape")
    rank = len(proto.tensor_shape.dim)
    if rank > MAX_RANK:
        raise invalid_argument(f"input '{name}' declares rank {rank} in tensor_shape; at most {MAX_RANK} "
                               f"dimensions are supported")
    shape = proto_shape(proto)
    if any(size < 0 for size in shape):
        raise invalid_argument(f"input '{name}' has a negative dimension in tensor_shape {list(shape)}")
    return shape


def declared_bytes(proto: tensor_pb2.TensorProto, name: str = "tensor") -> int:
    """How many bytes decoding ``proto`` would allocate, computed from what it declares.

    A single value broadcasts to the whole declared shape (TensorFlow's rule), so a few bytes on the
    wire can declare gigabytes; this is computed with Python integers (no overflow) and without
    allocating anything.

    Raises:
        ServingError: INVALID_ARGUMENT for a shape that :func:`declared_shape` refuses.
    """
    count = math.prod(declared_shape(proto, name))
    if proto.dtype == types_pb2.DT_STRING:
        values = proto.string_val
        if len(values) == 1:
            return count * (len(values[0]) + _STRING_OVERHEAD_BYTES)
        return sum(len(value) for value in values) + count * _STRING_OVERHEAD_BYTES
    return count * proto_dtype(proto).itemsize


def check_request_size(protos: Mapping[str, tensor_pb2.TensorProto], max_bytes: int) -> int:
    """Refuses a request whose tensors would decode to more than ``max_bytes`` in all.

    Returns:
        The declared total, in bytes.

    Raises:
        ServingError: INVALID_ARGUMENT naming the largest input when the total is over the limit.
    """
    sizes = {name: declared_bytes(proto, name) for name, proto in protos.items()}
    total = sum(sizes.values())
    if total > max_bytes:
        name = max(sizes, key=sizes.get)
        proto = protos[name]
        raise invalid_argument(
                f"input '{name}': tensor_shape {_shape_text(proto_shape(proto))} of {dtype_name(proto.dtype)} "
                f"declares {sizes[name]} bytes (the request {total}), more than the server's limit of "
                f"{max_bytes} bytes per request")
    return total


def _shape_text(shape: Sequence[int]) -> str:
    return str(list(shape)) if len(shape) <= 8 else f"[{', '.join(map(str, shape[:8]))}, ...] (rank {len(shape)})"


def to_ndarray(proto: tensor_pb2.TensorProto, name: str = "tensor", max_bytes: Optional[int] = None) -> np.ndarray:
    """Decodes a ``TensorProto`` into a numpy array.

    Args:
        proto: the tensor.
        name: the input's name, used in error messages.
        max_bytes: refuse (before allocating) a tensor that would decode to more bytes than this.

    Raises:
        ServingError: INVALID_ARGUMENT for an unsupported dtype, an impossible shape, a tensor over
            ``max_bytes``, or a value count that does not match the declared shape.
    """
    shape = declared_shape(proto, name)
    if max_bytes is not None:
        check_request_size({name: proto}, max_bytes)
    count = math.prod(shape)
    if proto.dtype == types_pb2.DT_STRING:
        values = proto.string_val
        if len(values) not in (1, count):
            raise invalid_argument(f"input '{name}': tensor_shape {_shape_text(shape)} needs {count} strings, "
                                   f"string_val holds {len(values)}")
        array = np.empty(count, dtype=object)
        if len(values) == 1:
            array[:] = values[0]  # TF's broadcast of a single value (one bytes object, shared)
        else:
            array[:] = list(values)
        return array.reshape(shape)
    if proto.dtype not in _NUMERIC:
        raise invalid_argument(f"input '{name}' has unsupported dtype {dtype_name(proto.dtype)}")
    dtype, field = _NUMERIC[proto.dtype]
    if proto.tensor_content:
        itemsize = np.dtype(dtype).itemsize
        if len(proto.tensor_content) != count * itemsize:
            raise invalid_argument(
                    f"input '{name}': tensor_content holds {len(proto.tensor_content)} bytes, tensor_shape "
                    f"{_shape_text(shape)} of {np.dtype(dtype).name} needs {count * itemsize}")
        return np.frombuffer(proto.tensor_content, dtype=np.dtype(dtype).newbyteorder("<")).astype(
                dtype, copy=False).reshape(shape)
    values = getattr(proto, field)
    if len(values) not in (0, 1, count):
        raise invalid_argument(f"input '{name}': tensor_shape {_shape_text(shape)} needs {count} values, {field} "
                               f"holds {len(values)}")
    if proto.dtype == types_pb2.DT_HALF:
        array = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        array = np.asarray(values, dtype=dtype)
    if array.size == count:
        return array.reshape(shape)
    if array.size == 1:
        return np.full(shape, array[0], dtype=dtype)  # TF's broadcast of a single value
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    raise invalid_argument(f"input '{name}': tensor_shape {_shape_text(shape)} needs {count} values, {field} holds "
                           f"{array.size}")


def from_ndarray(array: np.ndarray, proto: Optional[tensor_pb2.TensorProto] = None) -> tensor_pb2.TensorProto:
    """Encodes a numpy array (numbers, bools, or bytes/str objects) as a ``TensorProto``."""
    array = np.asarray(array)
    proto = proto if proto is not None else tensor_pb2.TensorProto()
    # Cleared and filled in place: no temporary TensorShapeProto / Dim messages to build and copy.
    proto.tensor_shape.Clear()
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add(size=int(size))
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(item.encode("utf-8") if isinstance(item, str) else bytes(item)
                                for item in array.reshape(-1).tolist())
        return proto
    enum = _ENUM_BY_DTYPE.get(array.dtype)
    if enum is None:
        raise ValueError(f"cannot encode numpy dtype {array.dtype}")
    proto.dtype = enum
    proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return proto
