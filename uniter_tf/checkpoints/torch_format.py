"""PyTorch checkpoint files read (and written) without PyTorch and without running pickle code.

``torch.save`` files are a pickle whose tensors point at raw storages kept beside it. Two layouts exist:

* **zip** (``torch.save`` since PyTorch 1.6): ``<top>/data.pkl`` plus one member ``<top>/data/<key>`` per
  storage, stored uncompressed; ``<top>`` is the file's stem or ``archive`` depending on the writer, so
  it is found, not assumed. ``<top>/byteorder`` says ``little`` or ``big`` (absent: little).
* **legacy** (PyTorch ≤ 1.5, ``_use_new_zipfile_serialization=False``; the official UNITER 2019 image
  wrote these): five pickles back to back (magic number, protocol version 1001, sys info, the object,
  the list of storage keys), then every storage in that order as an int64 element count followed by its
  raw bytes.

:func:`load` unpickles with :class:`RestrictedUnpickler`, which resolves only :data:`ALLOWED_GLOBALS`
(the tensor-rebuild functions, the storage types, ``collections.OrderedDict``) and refuses every other
global with :class:`UnsafeCheckpointError` naming it, before anything is called; a pickle that would
run ``os.system`` stops at the lookup of ``posix.system``. Tensors become :class:`LazyTensor` objects
(storage, offset, shape, strides) whose bytes are read from the file only when asked for, so a
converter can hold one tensor at a time; ``lazy=False`` returns NumPy arrays instead.

Dtypes: float32/64, float16 and the integer and bool storages map to the NumPy dtype of the same width;
**bfloat16 stays bfloat16** as ``ml_dtypes.bfloat16`` (exact, half the memory of a float32 copy; casting to
float32 with ``np.asarray(x, np.float32)`` is exact too). Non-contiguous tensors (transposed views,
expanded dims with stride 0) are read as the span of the storage they cover, laid out with
``np.lib.stride_tricks.as_strided`` and copied. Tensors sharing a storage (tied weights) read the same
bytes; :meth:`LazyTensor.same_data` tells whether two tensors are the same view of one storage.

:func:`save_zip` writes the zip layout from NumPy arrays (tests and benchmarks craft files with it):
arrays that are views of one base array share one storage with their own offset and strides, as in a
live PyTorch model.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import weakref
import zipfile
import zlib
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import ml_dtypes
import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
ZIP_MAGIC = b"PK\x03\x04"
# Storages in the zip layout start on a multiple of this many bytes (torch's default; lets mmap readers work).
STORAGE_ALIGNMENT = 64

# Storage type name (module ``torch``) → element dtype, little-endian. bfloat16 is ml_dtypes' NumPy dtype.
STORAGE_DTYPES: Dict[str, np.dtype] = {
        "DoubleStorage": np.dtype("<f8"),
        "FloatStorage": np.dtype("<f4"),
        "HalfStorage": np.dtype("<f2"),
        "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
        "LongStorage": np.dtype("<i8"),
        "IntStorage": np.dtype("<i4"),
        "ShortStorage": np.dtype("<i2"),
        "CharStorage": np.dtype("i1"),
        "ByteStorage": np.dtype("u1"),
        "BoolStorage": np.dtype("?"),
}


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """The checkpoint's pickle asks for something outside the allow-list (a global or a persistent id).

    Also a ``ValueError``, the library's "bad input" error, so callers that report bad files report this.
    """


class TorchCheckpointError(ValueError):
    """The file is not a readable PyTorch checkpoint (corrupt, truncated or an unsupported layout)."""


# ------------------------------------------------------------------------------------------ storages
class _StorageType:
    """What ``torch.<X>Storage`` resolves to: a name and an element dtype, nothing callable."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage:
    """One storage of a checkpoint: ``numel`` elements of ``dtype`` starting at ``data_offset`` of ``path``.

    ``data_offset`` is ``None`` until known (the legacy layout places storages after the pickle). For a
    compressed zip member (never written by torch, possible after re-zipping) ``member`` names it and it
    is decompressed on read.
    """

    __slots__ = ("path", "key", "dtype", "numel", "data_offset", "member", "crc", "byteorder", "__weakref__")

    def __init__(self, path: str, key: str, dtype: np.dtype, numel: int, byteorder: str = "little"):
        self.path = path
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data_offset: Optional[int] = None
        self.member: Optional[str] = None
        self.crc: Optional[int] = None
        self.byteorder = byteorder

    def read(self, start: int, count: int) -> np.ndarray:
        """Elements ``[start, start + count)`` as a fresh 1-D array in native byte order.

        Raises:
            TorchCheckpointError: the range is outside the storage, the file is truncated, or a whole-
                storage read fails its CRC (zip layout).
        """
        if start < 0 or count < 0 or start + count > self.numel:
            raise TorchCheckpointError(f"{self.path}: storage {self.key!r} has {self.numel} elements; a tensor reads "
                                       f"elements [{start}, {start + count})")
        itemsize = self.dtype.itemsize
        out = np.empty(count, dtype=self.dtype)
        raw = out.view(np.uint8)
        if self.member is not None:
            with zipfile.ZipFile(self.path) as archive:  # zipfile checks the CRC of a compressed member
                data = archive.read(self.member)
            raw[:] = np.frombuffer(data, np.uint8, count * itemsize, start * itemsize)
        else:
            if self.data_offset is None:
                raise TorchCheckpointError(f"{self.path}: storage {self.key!r} has no data in the file")
            with open(self.path, "rb") as handle:
                handle.seek(self.data_offset + start * itemsize)
                got = handle.readinto(memoryview(raw))
            if got != raw.size:
                raise TorchCheckpointError(f"{self.path}: storage {self.key!r} is truncated (read {got} of "
                                           f"{raw.size} bytes)")
            if self.crc is not None and start == 0 and count == self.numel and zlib.crc32(raw) != self.crc:
                raise TorchCheckpointError(f"{self.path}: storage {self.key!r} fails its CRC check (corrupt file)")
        if self.byteorder == "big" and itemsize > 1:
            raw.view(f"u{itemsize}").byteswap(inplace=True)
        return out


class LazyTensor:
    """A tensor of a checkpoint whose values stay in the file until :meth:`numpy` (or ``np.asarray``).

    Attributes:
        shape: the tensor's shape.
        stride: its strides, in elements (PyTorch convention).
        storage_offset: its first element's index in the storage.
    """

    __slots__ = ("_storage", "storage_offset", "shape", "stride")

    def __init__(self, storage: _Storage, storage_offset: int, shape: Tuple[int, ...], stride: Tuple[int, ...]):
        self._storage = storage
        self.storage_offset = storage_offset
        self.shape = shape
        self.stride = stride

    @property
    def dtype(self) -> np.dtype:
        """The element dtype (``ml_dtypes.bfloat16`` for bfloat16 storages)."""
        return self._storage.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's values (not of its storage)."""
        return self.size * self.dtype.itemsize

    @property
    def storage_key(self) -> str:
        """The key of the storage this tensor views (equal keys = shared storage)."""
        return self._storage.key

    def is_contiguous(self) -> bool:
        """Whether the strides are the row-major ones of the shape (size-1 dims ignored)."""
        expected = 1
        for dim, stride in zip(reversed(self.shape), reversed(self.stride)):
            if dim != 1 and stride != expected:
                return False
            expected *= dim
        return True

    def _span(self) -> int:
        """Elements of the storage covered from ``storage_offset`` (0 for an empty tensor)."""
        if self.size == 0:
            return 0
        return 1 + sum((dim - 1) * stride for dim, stride in zip(self.shape, self.stride))

    def same_data(self, other: Any) -> bool:
        """Whether ``other`` is the same view (storage, offset, shape, strides) of the same storage."""
        return (isinstance(other, LazyTensor) and other._storage is self._storage
                and (other.storage_offset, other.shape, other.stride) == (self.storage_offset, self.shape, self.stride))

    def numpy(self, storage_array: Optional[np.ndarray] = None) -> np.ndarray:
        """Reads the values into a C-contiguous array.

        Args:
            storage_array: the whole storage, already read (shared storages are then read once);
                ``None`` reads just the span this tensor covers from the file.
        """
        span = self._span()
        if storage_array is None:
            buffer = self._storage.read(self.storage_offset, span)
            offset = 0
        else:
            buffer, offset = storage_array, self.storage_offset
            if offset + span > buffer.size:
                raise TorchCheckpointError(f"{self._storage.path}: storage {self._storage.key!r} has {buffer.size} "
                                           f"elements; a tensor reads elements [{offset}, {offset + span})")
        if span == 0:
            return np.empty(self.shape, dtype=self.dtype)
        if self.is_contiguous():
            return buffer[offset:offset + self.size].reshape(self.shape)
        itemsize = self.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(buffer[offset:offset + span], shape=self.shape,
                                               strides=tuple(stride * itemsize for stride in self.stride),
                                               writeable=False)
        return np.array(view, order="C")

    def __array__(self, dtype=None, copy=None):  # pylint: disable=unused-argument
        array = self.numpy()
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return (f"LazyTensor(shape={self.shape}, dtype={self.dtype}, storage={self._storage.key!r}, "
                f"offset={self.storage_offset}, stride={self.stride})")


# ------------------------------------------------------------------------------------- the unpickler
def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TorchCheckpointError(f"{what} must be a non-negative int, got {value!r}")
    return value


def _int_tuple(value: Any, what: str) -> Tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise TorchCheckpointError(f"{what} must be a tuple of ints, got {value!r}")
    return tuple(_int(item, what) for item in value)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> LazyTensor:
    """``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2``: a view of a storage.

    The extra arguments of v2 (``requires_grad``, ``backward_hooks``, ``metadata``) carry no values.
    """
    if not isinstance(storage, _Storage):
        raise TorchCheckpointError(f"a tensor must be built on a storage, got {type(storage).__name__}")
    shape = _int_tuple(size, "tensor size")
    strides = _int_tuple(stride, "tensor stride")
    if len(shape) != len(strides):
        raise TorchCheckpointError(f"tensor on storage {storage.key!r}: size {shape} and stride {strides} differ in "
                                   "length")
    tensor = LazyTensor(storage, _int(storage_offset, "storage offset"), shape, strides)
    if tensor.storage_offset + tensor._span() > storage.numel:  # pylint: disable=protected-access
        raise TorchCheckpointError(f"tensor on storage {storage.key!r} (offset {tensor.storage_offset}, size {shape}, "
                                   f"stride {strides}) reaches past the storage's {storage.numel} elements")
    return tensor


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> LazyTensor:  # pylint: disable=unused-argument
    """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is its data tensor here."""
    if not isinstance(data, LazyTensor):
        raise TorchCheckpointError(f"a parameter must wrap a tensor, got {type(data).__name__}")
    return data


# Every global a state-dict checkpoint needs, and why; anything else is refused.
ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = {
        # The state dict itself (``model.state_dict()`` is an OrderedDict) and v2's empty backward_hooks.
        ("collections", "OrderedDict"): OrderedDict,
        # How every tensor is pickled since PyTorch 0.4 (zip and legacy layouts).
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        # How PyTorch 0.3 pickled tensors; still readable by the legacy loader.
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        # ``torch.save`` of parameters (``state_dict(keep_vars=True)``, parameter lists) pickles nn.Parameter
        # as this call around the tensor.
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
# The storage types name the element dtype of a storage (inside persistent ids).
ALLOWED_GLOBALS.update({("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a ``torch.save`` pickle resolving only :data:`ALLOWED_GLOBALS`.

    Args:
        file: the binary stream positioned at the pickle.
        storage_for: maps a ``('storage', ...)`` persistent id to a :class:`_Storage`; ``None`` refuses
            persistent ids (the legacy layout's header pickles carry none).
        source: the file name, for messages.
    """

    def __init__(self, file, storage_for: Optional[Callable[[tuple], _Storage]], source: str):
        super().__init__(file, encoding="utf-8")
        self._storage_for = storage_for
        self._source = source

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                    f"{self._source}: refused to load the global {module}.{name}: it is not in the allow-list of "
                    "tensor data (tensor rebuilds, storage types, OrderedDict); the pickle may run code, and it was "
                    "not run") from None

    def persistent_load(self, pid):
        kind = pid[0] if isinstance(pid, tuple) and pid else pid
        if isinstance(kind, bytes):
            kind = kind.decode("ascii", "replace")
        if kind != "storage" or self._storage_for is None:
            raise UnsafeCheckpointError(f"{self._source}: refused the persistent id {kind!r} (only tensor storages are "
                                        "read; 'module' ids save whole nn.Modules as code)")
        return self._storage_for(pid)


def _check_result(value: Any, source: str, path: str = "") -> None:
    """Refuses anything but plain containers, scalars, strings and tensors in the loaded object."""
    if isinstance(value, LazyTensor) or value is None or isinstance(value, (bool, int, float, str, bytes)):
        return
    if isinstance(value, dict):  # OrderedDict included
        for key, item in value.items():
            _check_result(key, source, path)
            _check_result(item, source, f"{path}/{key}")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_result(item, source, f"{path}[{index}]")
        return
    raise TorchCheckpointError(f"{source}: entry {path or '<root>'} is a {type(value).__name__}, not tensor data")


def _storage_args(pid: tuple, source: str) -> Tuple[_StorageType, str, int]:
    if len(pid) < 5:
        raise TorchCheckpointError(f"{source}: malformed storage id {pid!r}")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
        raise TorchCheckpointError(f"{source}: storage id names {storage_type!r}, not a storage type")
    if isinstance(key, bytes):
        key = key.decode("ascii")
    if not isinstance(key, str):
        raise TorchCheckpointError(f"{source}: storage key {key!r} is not a string")
    return storage_type, key, _int(numel, f"{source}: element count of storage {key!r}")


# ------------------------------------------------------------------------------------------- reading
def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        pickles = [name for name in infos if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            if any(name.endswith(("/constants.pkl", "/code/")) or "/code/" in name for name in infos):
                raise TorchCheckpointError(f"{path}: a TorchScript archive (torch.jit.save), not a torch.save state dict")
            raise TorchCheckpointError(f"{path}: a zip file without exactly one '<top>/data.pkl' (found "
                                       f"{pickles or 'none'}); not a torch.save checkpoint")
        top = pickles[0][:-len("data.pkl")]
        byteorder = "little"
        if top + "byteorder" in infos:
            byteorder = archive.read(top + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise TorchCheckpointError(f"{path}: unknown byteorder {byteorder!r}")
        pickle_bytes = archive.read(pickles[0])

    storages: Dict[str, _Storage] = {}

    def storage_for(pid: tuple) -> _Storage:
        storage_type, key, numel = _storage_args(pid, path)
        if key in storages:
            return storages[key]
        member = f"{top}data/{key}"
        info = infos.get(member)
        if info is None:
            raise TorchCheckpointError(f"{path}: storage {key!r} has no member {member!r}")
        if info.file_size != numel * storage_type.dtype.itemsize:
            raise TorchCheckpointError(f"{path}: member {member!r} holds {info.file_size} bytes; storage {key!r} needs "
                                       f"{numel} × {storage_type.dtype.itemsize}")
        storage = _Storage(path, key, storage_type.dtype, numel, byteorder)
        if info.compress_type == zipfile.ZIP_STORED:
            storage.data_offset = _zip_data_offset(path, info)
            storage.crc = info.CRC
        else:
            storage.member = member
        storages[key] = storage
        return storage

    return _unpickle(RestrictedUnpickler(io.BytesIO(pickle_bytes), storage_for, path), path, "data.pkl")


def _unpickle(unpickler: RestrictedUnpickler, path: str, what: str) -> Any:
    """Runs ``unpickler``; a malformed pickle (bad opcodes, wrong arguments to an allowed call) becomes a
    :class:`TorchCheckpointError` naming the file, refusals and our own errors pass unchanged."""
    try:
        return unpickler.load()
    except (UnsafeCheckpointError, TorchCheckpointError):
        raise
    except Exception as error:  # pylint: disable=broad-except
        raise TorchCheckpointError(f"{path}: corrupt {what} ({type(error).__name__}: {error})") from None


def _zip_data_offset(path: str, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header, whose extra field differs from the
    central directory's (torch pads it for alignment)."""
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
    if len(header) != 30 or header[:4] != ZIP_MAGIC:
        raise TorchCheckpointError(f"{path}: bad local header for member {info.filename!r}")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as handle:
        def header_pickle(what: str):
            try:
                return RestrictedUnpickler(handle, None, path).load()
            except UnsafeCheckpointError:
                raise
            except Exception as error:  # pylint: disable=broad-except
                raise TorchCheckpointError(f"{path}: not a PyTorch checkpoint (neither zip nor legacy layout; reading "
                                           f"its {what} failed: {error})") from None

        magic = header_pickle("magic number")
        if magic != MAGIC_NUMBER:
            raise TorchCheckpointError(f"{path}: not a PyTorch checkpoint (neither zip nor the legacy magic number)")
        protocol = header_pickle("protocol version")
        if protocol != PROTOCOL_VERSION:
            raise TorchCheckpointError(f"{path}: legacy protocol version {protocol!r}, expected {PROTOCOL_VERSION}")
        sys_info = header_pickle("sys info")
        little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
        byteorder = "little" if little else "big"

        storages: Dict[str, _Storage] = {}
        views: Dict[str, _Storage] = {}

        def storage_for(pid: tuple) -> _Storage:
            storage_type, key, numel = _storage_args(pid, path)
            view = pid[5] if len(pid) > 5 else None
            root = storages.get(key)
            if root is None:
                root = storages[key] = _Storage(path, key, storage_type.dtype, numel, byteorder)
            if view is None:
                return root
            # (view_key, offset, view_size): a storage that is a slice of the root (PyTorch < 1.0 wrote these).
            view_key, offset, view_size = view
            view_key = view_key.decode("ascii") if isinstance(view_key, bytes) else str(view_key)
            offset = _int(offset, f"{path}: offset of storage view {view_key!r}")
            view_size = _int(view_size, f"{path}: size of storage view {view_key!r}")
            if offset + view_size > root.numel:
                raise TorchCheckpointError(f"{path}: storage view {view_key!r} [{offset}, {offset + view_size}) exceeds "
                                           f"its root {key!r} of {root.numel} elements")
            if view_key not in views:  # one object per view, so tensors on it are recognised as sharing it
                views[view_key] = _StorageView(root, view_key, offset, view_size)
            return views[view_key]

        result = _unpickle(RestrictedUnpickler(handle, storage_for, path), path, "object pickle")
        keys = _unpickle(RestrictedUnpickler(handle, None, path), path, "storage key list")
        if not isinstance(keys, list):
            raise TorchCheckpointError(f"{path}: the storage key list is a {type(keys).__name__}")
        file_size = os.fstat(handle.fileno()).st_size
        offset = handle.tell()
        for key in keys:
            key = key.decode("ascii") if isinstance(key, bytes) else str(key)
            storage = storages.get(key)
            if storage is None:
                raise TorchCheckpointError(f"{path}: storage {key!r} is listed but no tensor uses it")
            handle.seek(offset)
            count_bytes = handle.read(8)
            if len(count_bytes) != 8:
                raise TorchCheckpointError(f"{path}: truncated before storage {key!r}")
            (count,) = struct.unpack("<q" if little else ">q", count_bytes)
            if count != storage.numel:
                raise TorchCheckpointError(f"{path}: storage {key!r} holds {count} elements, its tensors expect "
                                           f"{storage.numel}")
            storage.data_offset = offset + 8
            offset = storage.data_offset + count * storage.dtype.itemsize
            if offset > file_size:
                raise TorchCheckpointError(f"{path}: truncated inside storage {key!r}")
        missing = sorted(key for key, storage in storages.items() if storage.data_offset is None)
        if missing:
            raise TorchCheckpointError(f"{path}: storages {missing} are used but not in the file")
    return result


class _StorageView(_Storage):
    """A legacy storage that is a slice ``[offset, offset + numel)`` of a root storage."""

    __slots__ = ("root", "offset")

    def __init__(self, root: _Storage, key: str, offset: int, numel: int):
        super().__init__(root.path, key, root.dtype, numel, root.byteorder)
        self.root = root
        self.offset = offset

    def read(self, start: int, count: int) -> np.ndarray:
        if start + count > self.numel:
            raise TorchCheckpointError(f"{self.path}: storage view {self.key!r} has {self.numel} elements; a tensor "
                                       f"reads elements [{start}, {start + count})")
        return self.root.read(self.offset + start, count)


def is_torch_zip(path: str) -> bool:
    """Whether ``path`` starts like a zip file (the layout of ``torch.save`` since PyTorch 1.6)."""
    with open(path, "rb") as handle:
        return handle.read(4) == ZIP_MAGIC


def load(path: Union[str, os.PathLike], lazy: bool = True) -> Any:
    """Loads a ``torch.save`` file (zip or legacy layout) without torch and without running its pickle code.

    Args:
        path: the file.
        lazy: return tensors as :class:`LazyTensor` (values read on demand); ``False`` reads them into
            NumPy arrays (tensors sharing a storage read it once; contiguous ones are views of it).

    Returns:
        The saved object (usually an ``OrderedDict`` state dict, or a dict wrapping one), tensors replaced.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle names a global outside :data:`ALLOWED_GLOBALS` (nothing is run).
        TorchCheckpointError: not a PyTorch checkpoint, an unsupported layout (TorchScript, the tar layout
            of PyTorch < 0.4), or a corrupt or truncated file; the message names the file and the storage.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if is_torch_zip(path):
        try:
            result = _load_zip(path)
        except zipfile.BadZipFile as error:
            raise TorchCheckpointError(f"{path}: corrupt zip file ({error})") from None
    elif _is_tar(path):
        raise TorchCheckpointError(f"{path}: the tar layout of PyTorch < 0.4 is not supported; re-save it with a newer "
                                   "PyTorch")
    else:
        result = _load_legacy(path)
    _check_result(result, path)
    return result if lazy else materialize(result)


def _is_tar(path: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(257)
        return handle.read(5) == b"ustar"


def materialize(value: Any, _cache: Optional[Dict[int, np.ndarray]] = None) -> Any:
    """Replaces every :class:`LazyTensor` inside ``value`` (dicts, lists, tuples) by a NumPy array; each
    storage is read once, tensors sharing it become views of it (copies where non-contiguous)."""
    cache = {} if _cache is None else _cache
    if isinstance(value, LazyTensor):
        storage = value._storage  # pylint: disable=protected-access
        if id(storage) not in cache:
            cache[id(storage)] = (storage.read(0, storage.numel), storage)  # keep storage alive: ids stay unique
        return value.numpy(cache[id(storage)][0])
    if isinstance(value, OrderedDict):
        return OrderedDict((key, materialize(item, cache)) for key, item in value.items())
    if isinstance(value, dict):
        return {key: materialize(item, cache) for key, item in value.items()}
    if isinstance(value, list):
        return [materialize(item, cache) for item in value]
    if isinstance(value, tuple):
        return tuple(materialize(item, cache) for item in value)
    return value


# ------------------------------------------------------------------------------------------- writing
_STORAGE_NAMES = {dtype: name for name, dtype in STORAGE_DTYPES.items()}


class _PickleWriter:
    """Emits the protocol-2 pickle ``torch.save`` writes for a dict of tensors (no Python objects needed)."""

    def __init__(self):
        self.out = io.BytesIO()
        self.out.write(pickle.PROTO + bytes([2]))

    def global_(self, module: str, name: str):
        self.out.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))

    def string(self, text: str):
        data = text.encode("utf-8")
        self.out.write(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)

    def integer(self, value: int):
        if 0 <= value < 2 ** 31:
            self.out.write(pickle.BININT + struct.pack("<i", value))
        else:
            data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out.write(pickle.LONG1 + bytes([len(data)]) + data)

    def int_tuple(self, values: Tuple[int, ...]):
        self.out.write(pickle.MARK)
        for value in values:
            self.integer(value)
        self.out.write(pickle.TUPLE)

    def empty_ordered_dict(self):
        self.global_("collections", "OrderedDict")
        self.out.write(pickle.EMPTY_TUPLE + pickle.REDUCE)

    def tensor(self, storage_name: str, storage_key: str, numel: int, offset: int, shape, stride):
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out.write(pickle.MARK)
        self.out.write(pickle.MARK)  # persistent id ('storage', type, key, location, numel)
        self.string("storage")
        self.global_("torch", storage_name)
        self.string(storage_key)
        self.string("cpu")
        self.integer(numel)
        self.out.write(pickle.TUPLE + pickle.BINPERSID)
        self.integer(offset)
        self.int_tuple(tuple(shape))
        self.int_tuple(tuple(stride))
        self.out.write(pickle.NEWFALSE)  # requires_grad
        self.empty_ordered_dict()  # backward_hooks
        self.out.write(pickle.TUPLE + pickle.REDUCE)


def _root_array(array: np.ndarray) -> np.ndarray:
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root


def _layout_in_root(array: np.ndarray, root: np.ndarray) -> Optional[Tuple[int, Tuple[int, ...]]]:
    """``(offset, strides)`` in elements of ``array`` inside the C-contiguous ``root``, or ``None`` when it
    cannot be expressed as a torch view (other dtype, negative or fractional strides)."""
    if root is array or not root.flags.c_contiguous or root.dtype != array.dtype:
        return None
    itemsize = array.dtype.itemsize
    delta = array.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    if delta < 0 or delta % itemsize or any(stride < 0 or stride % itemsize for stride in array.strides):
        return None
    offset, strides = delta // itemsize, tuple(stride // itemsize for stride in array.strides)
    span = 1 + sum((dim - 1) * stride for dim, stride in zip(array.shape, strides)) if array.size else 0
    return (offset, strides) if offset + span <= root.size else None


def _contiguous_strides(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


def save_zip(path: Union[str, os.PathLike], tensors: Union[Mapping[str, np.ndarray], Iterable[Tuple[str, np.ndarray]]],
             archive_name: Optional[str] = None) -> None:
    """Writes NumPy arrays as a ``torch.save`` state dict in the zip layout (what PyTorch ≥ 1.6 writes).

    Arrays that are views of one C-contiguous base array (``w`` and ``w.T``, a tied weight passed twice,
    slices) share one storage with their own offsets and strides. Values are consumed one at a time, so an
    iterable of ``(key, array)`` pairs produced on the fly keeps memory at one array.

    Args:
        path: the output file.
        tensors: an ordered mapping or iterable of ``(key, array)``; dtypes float64/32/16,
            ``ml_dtypes.bfloat16``, int64/32/16/8, uint8 and bool.
        archive_name: the top folder inside the zip (torch uses the file's stem; default the same).

    Raises:
        ValueError: a value that is not an array, or of a dtype PyTorch storages do not have (naming the key).
    """
    path = os.fspath(path)
    top = archive_name or os.path.splitext(os.path.basename(path))[0] or "archive"
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    writer = _PickleWriter()
    writer.empty_ordered_dict()
    writer.out.write(pickle.MARK)
    # id(root) → (weak reference, storage key, numel): a root that died cannot be viewed again, so a reused id
    # is recognised by its dead reference.
    roots: Dict[int, Tuple[Any, str, int]] = {}
    storage_count = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in items:
            if not isinstance(array, np.ndarray):
                raise ValueError(f"save_zip: {key!r} is a {type(array).__name__}, not a numpy array")
            dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
            if dtype != array.dtype:
                array = array.astype(dtype)
            storage_name = _STORAGE_NAMES.get(np.dtype(dtype))
            if storage_name is None:
                raise ValueError(f"save_zip: {key!r} has dtype {array.dtype}, which no PyTorch storage holds")
            root = _root_array(array)
            layout = _layout_in_root(array, root)
            if layout is None:  # the array is its own storage (a C-ordered copy when it is not C-contiguous)
                root = array if array.flags.c_contiguous else np.ascontiguousarray(array)
                layout = (0, _contiguous_strides(array.shape))
            entry = roots.get(id(root))
            if entry is None or entry[0]() is not root:
                storage_key = str(storage_count)
                storage_count += 1
                _write_aligned(archive, f"{top}/data/{storage_key}", root)
                entry = (weakref.ref(root), storage_key, int(root.size))
                roots[id(root)] = entry
            offset, strides = layout
            writer.string(str(key))
            writer.tensor(storage_name, entry[1], entry[2], offset, array.shape, strides)
        writer.out.write(pickle.SETITEMS + pickle.STOP)
        archive.writestr(f"{top}/data.pkl", writer.out.getvalue())
        archive.writestr(f"{top}/byteorder", "little")
        archive.writestr(f"{top}/version", "3\n")


def _write_aligned(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    """Writes a C-contiguous array as a stored member whose data starts on a :data:`STORAGE_ALIGNMENT` boundary
    (torch pads the local header's extra field the same way)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = array.nbytes
    position = archive.fp.tell()
    header = 30 + len(name.encode("utf-8"))
    if info.file_size * 1.05 > zipfile.ZIP64_LIMIT:
        header += 20  # zipfile adds a zip64 extra field after ours for members this large
    padding = -(position + header + 4) % STORAGE_ALIGNMENT  # 4 = the extra field's own id + length
    info.extra = struct.pack("<HH", 0x4246, padding) + b"Z" * padding  # 0x4246 ("FB"): torch's padding id
    with archive.open(info, "w") as member:
        member.write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
