"""Conversion between ``TensorProto`` and numpy without TensorFlow's per-element Python loops.

Only plain data is decoded (numbers from ``tensor_content`` or the typed value fields, strings from
``string_val``); nothing is ever unpickled.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

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


def proto_shape(proto: tensor_pb2.TensorProto) -> tuple:
    """The shape a ``TensorProto`` declares."""
    return tuple(dim.size for dim in proto.tensor_shape.dim)


def to_ndarray(proto: tensor_pb2.TensorProto, name: str = "tensor") -> np.ndarray:
    """Decodes a ``TensorProto`` into a numpy array.

    Args:
        proto: the tensor.
        name: the input's name, used in error messages.

    Raises:
        ServingError: INVALID_ARGUMENT for an unsupported dtype or a value count that does not
            match the declared shape.
    """
    shape = proto_shape(proto)
    if any(size < 0 for size in shape) or proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"input '{name}' has an unknown or negative dimension in tensor_shape {shape}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if proto.dtype == types_pb2.DT_STRING:
        values = list(proto.string_val)
        if len(values) == 1 and count != 1:
            values = values * count  # TF's broadcast of a single value
        if len(values) != count:
            raise invalid_argument(f"input '{name}': tensor_shape {list(shape)} needs {count} strings, "
                                   f"string_val holds {len(values)}")
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    if proto.dtype not in _NUMERIC:
        raise invalid_argument(f"input '{name}' has unsupported dtype {dtype_name(proto.dtype)}")
    dtype, field = _NUMERIC[proto.dtype]
    if proto.tensor_content:
        itemsize = np.dtype(dtype).itemsize
        if len(proto.tensor_content) != count * itemsize:
            raise invalid_argument(
                    f"input '{name}': tensor_content holds {len(proto.tensor_content)} bytes, tensor_shape "
                    f"{list(shape)} of {np.dtype(dtype).name} needs {count * itemsize}")
        return np.frombuffer(proto.tensor_content, dtype=np.dtype(dtype).newbyteorder("<")).astype(
                dtype, copy=False).reshape(shape)
    values = getattr(proto, field)
    if proto.dtype == types_pb2.DT_HALF:
        array = np.asarray(values, dtype=np.uint16).view(np.float16)
    else:
        array = np.asarray(values, dtype=dtype)
    if array.size == count:
        return array.reshape(shape)
    if array.size == 1:
        return np.full(shape, array[0], dtype=dtype)  # TF's broadcast of a single value
    if array.size == 0 and count == 0:
        return np.zeros(shape, dtype=dtype)
    raise invalid_argument(f"input '{name}': tensor_shape {list(shape)} needs {count} values, {field} holds "
                           f"{array.size}")


def from_ndarray(array: np.ndarray, proto: Optional[tensor_pb2.TensorProto] = None) -> tensor_pb2.TensorProto:
    """Encodes a numpy array (numbers, bools, or bytes/str objects) as a ``TensorProto``."""
    array = np.asarray(array)
    proto = proto if proto is not None else tensor_pb2.TensorProto()
    proto.tensor_shape.CopyFrom(
            tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(size))
                                                   for size in array.shape]))
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
