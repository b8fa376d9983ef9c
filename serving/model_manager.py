"""Loads, serves and unloads the numeric versions of SavedModels under a base path.

The layout is TF Serving's: ``BASE/<version>/saved_model.pb`` with integer version directories.
A poller scans the base path; the policy keeps the latest ``num_versions`` versions. A new version is
loaded (and warmed up) *before* the routing table is swapped, so at every moment some version
answers. Requests hold a reference to the version they run on (:meth:`ModelManager.acquire`); a
version that leaves the table is released only when its last request returns, so no request in
flight is dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from serving.errors import Code, ServingError, invalid_argument, not_found

_LOG = logging.getLogger(__name__)

# States as tensorflow.serving.ModelVersionStatus.State names them.
STATE_START = "START"
STATE_LOADING = "LOADING"
STATE_AVAILABLE = "AVAILABLE"
STATE_UNLOADING = "UNLOADING"
STATE_END = "END"

# TF Serving's convention for warm-up records shipped with a SavedModel.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a signature accepts for one input.

    Attributes:
        name: the input's key in the signature.
        dtype: the numpy dtype (``object`` for strings).
        tf_dtype_enum: the ``types_pb2.DataType`` value.
        shape: the static shape; ``None`` marks a dimension of any size. ``None`` for an unknown rank.
    """

    name: str
    dtype: np.dtype
    tf_dtype_enum: int
    shape: Optional[Tuple[Optional[int], ...]]

    def describe(self) -> str:
        """A short text such as ``float32[?,?,2048]`` for error messages."""
        dtype = "string" if self.dtype == np.dtype(object) else self.dtype.name
        if self.shape is None:
            return f"{dtype}[unknown rank]"
        dims = ",".join("?" if dim is None else str(dim) for dim in self.shape)
        return f"{dtype}[{dims}]"


@dataclasses.dataclass
class Signature:
    """A callable signature of a loaded version.

    Attributes:
        name: the signature key.
        function: the concrete function; takes the inputs as keyword tensors, returns a dict.
        inputs: the input specs by name.
        output_names: the names of the outputs, sorted.
        flat_order: the input names in the order of the concrete function's flat arguments, when it
            can be called with them directly (:func:`flat_argument_order`); ``None`` calls it with
            keyword arguments.
    """

    name: str
    function: Callable
    inputs: Dict[str, InputSpec]
    output_names: Tuple[str, ...]
    flat_order: Optional[Tuple[str, ...]] = None


class ServableVersion:
    """One loaded version of a model, reference-counted while requests use it.

    Args:
        model_name: the served model's name.
        version: the version number.
        path: the SavedModel directory.
        signatures: the callable signatures by name.
        signature_def_map: the ``SignatureDef`` protos by name (for GetModelMetadata).
        handle: the loaded object; kept so that its variables stay alive while the version is.
    """

    def __init__(self, model_name: str, version: int, path: str, signatures: Dict[str, Signature],
                 signature_def_map, handle=None):
        self.model_name = model_name
        self.version = version
        self.path = path
        self.signatures = signatures
        self.signature_def_map = signature_def_map
        self._handle = handle
        self._lock = threading.Lock()
        self._in_flight = 0
        self._retired = False
        self.released = threading.Event()

    @property
    def in_flight(self) -> int:
        """How many requests are running on this version now."""
        with self._lock:
            return self._in_flight

    def _acquire(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            drop = self._retired and self._in_flight == 0
        if drop:
            self._drop()

    def _retire(self) -> None:
        """Marks the version unloaded; frees it now or when its last request returns."""
        with self._lock:
            self._retired = True
            drop = self._in_flight == 0
        if drop:
            self._drop()

    def _drop(self) -> None:
        self._handle = None
        self.signatures = {}
        self.released.set()
        _LOG.info("Released %s version %d", self.model_name, self.version)

    def signature(self, name: str) -> Signature:
        """Returns the signature ``name`` (empty means ``serving_default``) or raises NOT_FOUND."""
        key = name or "serving_default"
        signature = self.signatures.get(key)
        if signature is None:
            raise not_found(
                    f"Serving signature name: \"{key}\" not found in signature def of model "
                    f"'{self.model_name}' version {self.version}; available: "
                    f"{sorted(self.signatures)}")
        return signature


# Version numbers are int64 in the protocol (ModelSpec.version); a longer number cannot be requested.
_MAX_VERSION = 2 ** 63 - 1


def parse_version_dir(name: str) -> Optional[int]:
    """The version a directory name stands for, or ``None`` when it is not one.

    Only ASCII digits count (``str.isdigit`` also accepts ``²`` or ``٣``, which ``int`` refuses or
    reads as another number), and the number must fit the protocol's int64.
    """
    if not name or not name.isascii() or not name.isdigit():
        return None
    number = int(name)
    return number if number <= _MAX_VERSION else None


def numeric_versions(base_path: str, skipped: Optional[set] = None) -> List[int]:
    """Returns the integer-named subdirectories of ``base_path`` that hold a SavedModel, sorted.

    Args:
        base_path: the model's base path.
        skipped: names already reported as not being versions; a name not in it is logged once
            (as a warning) and added, so that a stray directory is reported once, not every poll.
    """
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return []
    versions = []
    for name in names:
        number = parse_version_dir(name)
        directory = os.path.join(base_path, name)
        if number is None:
            if skipped is not None and name not in skipped and not name.startswith(".") and os.path.isdir(directory):
                skipped.add(name)
                _LOG.warning("Ignoring %r under %s: a version directory is named by ASCII digits only "
                             "(an int64)", name, base_path)
            continue
        if os.path.isfile(os.path.join(directory, "saved_model.pb")):
            versions.append(number)
    return sorted(versions)


def _spec_from_tensor_spec(name: str, tensor_spec) -> InputSpec:
    import tensorflow as tf

    dtype = np.dtype(object) if tensor_spec.dtype == tf.string else np.dtype(tensor_spec.dtype.as_numpy_dtype)
    shape = None if tensor_spec.shape.rank is None else tuple(tensor_spec.shape.as_list())
    return InputSpec(name=name, dtype=dtype, tf_dtype_enum=tensor_spec.dtype.as_datatype_enum, shape=shape)


def flat_argument_order(function, input_names) -> Optional[Tuple[str, ...]]:
    """The order in which a loaded signature's concrete function takes its inputs as flat tensors.

    Calling a signature with keyword arguments binds them through ``inspect`` and re-checks every
    tensor against its ``TensorSpec`` on each call: a quarter to a third of one call's time for the
    tiny model (docs/performance.md). The server validates every request against the same specs first
    (:func:`~serving.validation.validate_inputs`), so it may pass the tensors in flat order instead.
    That is only safe when each keyword parameter is exactly one tensor input, which is checked here.

    Args:
        function: the concrete function of a signature.
        input_names: the signature's input names.

    Returns:
        The input names in flat order, or ``None`` when the function has to be called with keywords
        (not a TensorFlow concrete function, nested inputs, or any other mismatch).
    """
    function_type = getattr(function, "function_type", None)
    if function_type is None or not callable(getattr(function, "_call_flat", None)):
        return None
    try:
        order = tuple(function_type.parameters)
        flat_inputs = function.inputs[:len(function.inputs) - len(function.captured_inputs)]
    except (AttributeError, TypeError):
        return None
    if set(order) != set(input_names) or len(order) != len(input_names) or len(flat_inputs) != len(order):
        return None
    return order


def load_saved_model(model_name: str, version: int, path: str) -> ServableVersion:
    """Loads one SavedModel version and describes its signatures.

    ``tensorflow_text`` is imported first so that its ops are registered before the graph loads.
    """
    import tensorflow as tf

    try:
        import tensorflow_text  # noqa: F401  (registers the TF-Text ops the tokeniser uses)
    except ImportError:
        _LOG.warning("tensorflow_text is not installed; models that tokenise in-graph will not load")
    from tensorflow.python.saved_model import loader_impl

    from serving.retrieval import attach_retrieval, check_retrieval_assets

    check_retrieval_assets(path)  # an index of another first stage: refused before the model is loaded
    saved_model_proto = loader_impl.parse_saved_model(path)
    signature_def_map = dict(saved_model_proto.meta_graphs[0].signature_def)
    handle = tf.saved_model.load(path)
    signatures = {}
    for name, function in handle.signatures.items():
        _, keyword_specs = function.structured_input_signature
        inputs = {key: _spec_from_tensor_spec(key, spec) for key, spec in keyword_specs.items()}
        outputs = function.structured_outputs
        output_names = tuple(sorted(outputs)) if isinstance(outputs, dict) else ("output_0",)
        signatures[name] = Signature(name=name, function=function, inputs=inputs, output_names=output_names,
                                     flat_order=flat_argument_order(function, inputs))
    servable = ServableVersion(model_name, version, path, signatures, signature_def_map, handle=handle)
    # A version exported with an index also answers `retrieve` from that index (loaded and swapped with it).
    attach_retrieval(servable)
    return servable


class ModelManager:
    """Keeps the latest versions of one model loaded and routes requests to them.

    Args:
        model_name: the name clients use.
        base_path: the directory holding numeric version subdirectories.
        num_versions: how many of the newest versions to keep loaded.
        poll_interval_s: how often the base path is scanned; 0 disables the background poller.
        loader: ``(model_name, version, path) -> ServableVersion``; defaults to loading a SavedModel.
        warmup: ``(ServableVersion) -> None`` run after loading and before the version is routed to
            (also settable later through the ``warmup`` attribute, before :meth:`start`).
        retry_backoff_s: after a version fails to load, it is retried once its files change (any
            name, size or modification time), but no sooner than this; each further failure doubles
            the wait.
        max_retry_backoff_s: the longest wait between two attempts at one version.
    """

    def __init__(self, model_name: str, base_path: str, num_versions: int = 1, poll_interval_s: float = 2.0,
                 loader: Optional[Callable[[str, int, str], ServableVersion]] = None,
                 warmup: Optional[Callable[[ServableVersion], None]] = None,
                 retry_backoff_s: float = 1.0, max_retry_backoff_s: float = 30.0):
        if num_versions < 1:
            raise ValueError(f"num_versions must be >= 1, got {num_versions}")
        if retry_backoff_s < 0 or max_retry_backoff_s < retry_backoff_s:
            raise ValueError(f"need 0 <= retry_backoff_s <= max_retry_backoff_s, got {retry_backoff_s} and "
                             f"{max_retry_backoff_s}")
        self.model_name = model_name
        self.base_path = os.path.abspath(base_path)
        self.num_versions = num_versions
        self.poll_interval_s = poll_interval_s
        self._loader = loader or load_saved_model
        self.warmup = warmup
        self._table_lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._versions: Dict[int, ServableVersion] = {}  # replaced as a whole, never mutated
        self._states: Dict[int, Tuple[str, Code, str]] = {}
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_backoff_s = max_retry_backoff_s
        self._failures: Dict[int, _Failure] = {}
        self._skipped_names: set = set()  # non-version directory names already logged
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # Routing ---------------------------------------------------------------------------------

    def available_versions(self) -> List[int]:
        """The versions that answer requests now, ascending."""
        with self._table_lock:
            return sorted(self._versions)

    @contextlib.contextmanager
    def acquire(self, version: Optional[int] = None) -> Iterator[ServableVersion]:
        """Yields a version to run a request on, holding it loaded until the block exits.

        Args:
            version: a specific version, or ``None`` for the newest available one.

        Raises:
            ServingError: NOT_FOUND when the version (or any version) is not available.
        """
        with self._table_lock:
            versions = self._versions
            if not versions:
                raise ServingError(Code.UNAVAILABLE if self._loading_any() else Code.NOT_FOUND,
                                   f"Servable not found for request: Latest({self.model_name}); "
                                   f"no version of model '{self.model_name}' is loaded from {self.base_path}")
            if version is None:
                servable = versions[max(versions)]
            else:
                servable = versions.get(int(version))
                if servable is None:
                    raise not_found(
                            f"Servable not found for request: Specific({self.model_name}, {version}); "
                            f"available versions: {sorted(versions)}")
            servable._acquire()
        try:
            yield servable
        finally:
            servable._release()

    def _loading_any(self) -> bool:
        return any(state == STATE_LOADING for state, _, _ in self._states.values())

    # Status ----------------------------------------------------------------------------------

    def status(self, version: Optional[int] = None) -> List[Tuple[int, str, Code, str]]:
        """Returns ``(version, state, error_code, error_message)`` rows, newest first.

        Raises:
            ServingError: NOT_FOUND when ``version`` was never seen.
        """
        with self._table_lock:
            states = dict(self._states)
        if version is not None:
            if int(version) not in states:
                raise not_found(f"Could not find version {version} of model '{self.model_name}'; "
                                f"known versions: {sorted(states)}")
            states = {int(version): states[int(version)]}
        if not states:
            raise not_found(f"Could not find any versions of model '{self.model_name}' under {self.base_path}")
        return [(number, *states[number]) for number in sorted(states, reverse=True)]

    def _set_state(self, version: int, state: str, code: Code = Code.OK, message: str = "") -> None:
        with self._table_lock:
            self._states[version] = (state, code, message)

    # Polling ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Loads what the base path holds now, then starts the background poller."""
        self.poll_once()
        if self.poll_interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._poll_loop, name=f"poll-{self.model_name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stops the poller and unloads every version (after their requests finish)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._table_lock:
            retired = list(self._versions.values())
            self._versions = {}
        for servable in retired:
            self._set_state(servable.version, STATE_END)
            servable._retire()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.poll_once()
            except Exception:  # keep polling whatever one scan hit
                _LOG.exception("Polling %s failed", self.base_path)

    def poll_once(self) -> None:
        """Scans the base path once: loads new versions of the policy, then unloads the rest."""
        with self._poll_lock:
            on_disk = numeric_versions(self.base_path, self._skipped_names)
            for version in set(self._failures) - set(on_disk):
                del self._failures[version]  # removed: a copy under that number starts afresh
            wanted = on_disk[-self.num_versions:]
            with self._table_lock:
                loaded = dict(self._versions)
            newly_loaded = {}
            for version in wanted:
                if version in loaded:
                    continue
                servable = self._load(version)
                if servable is not None:
                    newly_loaded[version] = servable
            keep = {version: loaded[version] for version in wanted if version in loaded}
            keep.update(newly_loaded)
            # Never leave the model without a version because a new one failed to load.
            if not keep and loaded:
                newest = max(loaded)
                keep = {newest: loaded[newest]}
            retired = [servable for version, servable in loaded.items() if version not in keep]
            with self._table_lock:
                self._versions = keep
            for servable in retired:
                self._set_state(servable.version, STATE_UNLOADING)
                servable._retire()
                self._set_state(servable.version, STATE_END)
                _LOG.info("Unloaded %s version %d", self.model_name, servable.version)

    def _load(self, version: int) -> Optional[ServableVersion]:
        path = os.path.join(self.base_path, str(version))
        mark = _directory_mark(path)  # taken before loading: a change during the load is seen next time
        failure = self._failures.get(version)
        if failure is not None and (failure.mark == mark or time.monotonic() < failure.retry_at):
            return None  # failed before, and unchanged since (or changed, but still backing off)
        self._set_state(version, STATE_LOADING)
        started = time.perf_counter()
        try:
            servable = self._loader(self.model_name, version, path)
            if self.warmup is not None:
                self.warmup(servable)
        except Exception as error:  # a broken version must not take the server down
            attempts = failure.attempts + 1 if failure is not None else 1
            delay = min(self.retry_backoff_s * 2 ** (attempts - 1), self.max_retry_backoff_s)
            _LOG.exception("Loading %s version %d from %s failed (attempt %d); retrying when its files change, "
                           "in %.1f s at the earliest", self.model_name, version, path, attempts, delay)
            self._failures[version] = _Failure(mark, attempts, time.monotonic() + delay)
            self._set_state(version, STATE_END, Code.UNKNOWN, f"Failed to load version {version}: {error}")
            return None
        self._failures.pop(version, None)
        self._set_state(version, STATE_AVAILABLE)
        _LOG.info("Loaded %s version %d in %.2f s", self.model_name, version, time.perf_counter() - started)
        return servable


@dataclasses.dataclass(frozen=True)
class _Failure:
    """A failed load: the files it saw, how many attempts failed in a row, and the earliest retry."""

    mark: frozenset
    attempts: int
    retry_at: float


def _directory_mark(path: str) -> frozenset:
    """What is under a version directory: every entry's relative path, size and modification time.

    A copy that preserves modification times (``cp -a``, ``rsync -a``, ``gsutil cp -P``) can add
    files older than those already there, so the newest time alone does not reveal it; any added,
    removed, grown or rewritten entry changes this set.
    """
    entries = []
    for root, directories, files in os.walk(path):
        for name in directories + files:
            full = os.path.join(root, name)
            try:
                info = os.stat(full)
            except OSError:
                continue  # removed while walking: the next scan sees the settled state
            is_file = name in files
            entries.append((os.path.relpath(full, path), info.st_size if is_file else -1,
                            info.st_mtime_ns if is_file else 0))
    return frozenset(entries)


def parse_version(value, what: str = "version") -> Optional[int]:
    """Parses a version from a request (int, numeric string, or empty for latest).

    Raises:
        ServingError: INVALID_ARGUMENT for anything else.
    """
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise invalid_argument(f"{what} must be an integer, got {value!r}") from None
    if number < 0:
        raise invalid_argument(f"{what} must be non-negative, got {number}")
    return number


def require_models(managers: Dict[str, "ModelManager"], name: str) -> "ModelManager":
    """Returns the manager of model ``name`` or raises NOT_FOUND listing the served models."""
    if not name:
        raise invalid_argument("model_spec.name is required")
    manager = managers.get(name)
    if manager is None:
        raise not_found(f"Servable not found for request: Latest({name}); this server serves "
                        f"{sorted(managers)}")
    return manager


def warm_from_records(servable: ServableVersion, run: Callable[[ServableVersion, object], None],
                      max_records: int = 100) -> int:
    """Replays the TF-Serving warm-up records shipped in ``assets.extra`` of a version.

    Args:
        servable: the freshly loaded version.
        run: ``(servable, predict_request) -> None`` that executes one request.
        max_records: replay at most this many records.

    Returns:
        The number of records replayed (0 when the version ships none).
    """
    path = os.path.join(servable.path, WARMUP_FILE)
    if not os.path.exists(path):
        return 0
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    replayed = 0
    for record in tf.data.TFRecordDataset(path).take(max_records):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if log.WhichOneof("log_type") != "predict_log":
            continue
        run(servable, log.predict_log.request)
        replayed += 1
    return replayed

