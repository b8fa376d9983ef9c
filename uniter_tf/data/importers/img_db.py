"""Importer for the official UNITER ``img_db`` (LMDB of msgpack / compressed npz per image; spec §4.2).

Layout (``scripts/convert_imgdir.py`` of the official code)::

    img_dir/
      nbb_th0.2_max100_min10.json        name -> number of boxes kept
      feat_th0.2_max100_min10/           LMDB: data.mdb, lock.mdb
        key  "coco_train2014_000000000009.npz" -> msgpack(msgpack_numpy) dict of arrays (fp16)
                                                  or bytes of np.savez_compressed (``*_compressed`` dbs)
        key  "__keys__"                          -> JSON list of every name

Records are read with one LMDB cursor, one value at a time: memory does not grow with the database.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Dict, Iterator, Optional, Union

import numpy as np

from uniter_tf.data import boxes as boxes_lib
from uniter_tf.data import dead_letter
from uniter_tf.data.importers import feature_record

#: The LMDB key that lists every image name.
KEYS_ENTRY = b"__keys__"

ImportResult = Union[feature_record.FeatureRecord, dead_letter.DeadLetter]


def is_img_db(path: str) -> bool:
    """True if ``path`` is an LMDB directory or an ``img_dir`` holding one."""
    return os.path.isdir(path) and (
            os.path.exists(os.path.join(path, "data.mdb")) or bool(_lmdb_subdirs(path)))


def _lmdb_subdirs(img_dir: str):
    return sorted(name for name in os.listdir(img_dir)
                  if os.path.exists(os.path.join(img_dir, name, "data.mdb")))


def resolve_lmdb_dir(path: str, selection: Optional[boxes_lib.BoxSelection]) -> str:
    """The LMDB directory for ``path`` (itself, or the ``img_dir`` subdirectory that matches ``selection``).

    The official names are ``feat_th{conf}_max{max}_min{min}``, ``feat_numbb{n}`` and ``all``; with
    several candidates the one matching ``selection`` wins, then ``all``.

    Raises:
        FileNotFoundError: ``path`` holds no LMDB.
    """
    if os.path.exists(os.path.join(path, "data.mdb")):
        return path
    candidates = _lmdb_subdirs(path) if os.path.isdir(path) else []
    if not candidates:
        raise FileNotFoundError(f"no LMDB (data.mdb) in {path!r} or its subdirectories")
    preferred = []
    if selection is not None:
        preferred.append(f"feat_th{selection.conf_threshold}_max{selection.max_boxes}_min{selection.min_boxes}")
        preferred.append(preferred[-1] + "_compressed")
    preferred += ["all", "all_compressed"]
    for name in preferred:
        if name in candidates:
            return os.path.join(path, name)
    if len(candidates) == 1:
        return os.path.join(path, candidates[0])
    raise FileNotFoundError(f"{path!r} holds several LMDBs {candidates}; pass the one to import")


def load_nbb(path: str, selection: Optional[boxes_lib.BoxSelection]) -> Optional[Dict[str, int]]:
    """Reads ``nbb_th{conf}_max{max}_min{min}.json`` next to (or above) the LMDB, if present."""
    if selection is None:
        return None
    name = f"nbb_th{selection.conf_threshold}_max{selection.max_boxes}_min{selection.min_boxes}.json"
    for directory in (path, os.path.dirname(os.path.abspath(path))):
        candidate = os.path.join(directory, name)
        if os.path.exists(candidate):
            try:
                with open(candidate, "r", encoding="utf-8") as handle:
                    counts = json.load(handle)
                return {str(key): int(value) for key, value in counts.items()}
            except (ValueError, TypeError, AttributeError, RecursionError) as error:
                raise ValueError(f"{candidate!r} is not a JSON object name -> number of boxes "
                                 f"({type(error).__name__}: {dead_letter.safe_text(error)})") from None
    return None


def decode_value(value: bytes) -> Dict[str, np.ndarray]:
    """Decodes one LMDB value: compressed npz bytes or a msgpack(msgpack_numpy) dict, numeric arrays only.

    Nothing is ever unpickled. ``msgpack_numpy.decode`` calls ``pickle.loads`` on object arrays
    (``kind: 'O'``), so a crafted img_db value would run code in ``uniter import-features`` /
    ``uniter ingest``; this decoder uses its own msgpack hook (:func:`_numeric_array_hook`) that rebuilds
    only arrays of numeric dtypes from their raw bytes and refuses everything else before touching the
    payload. Compressed npz values are checked the same way (:func:`feature_record.load_npz_arrays`).

    Raises:
        feature_record.RefusedValueError: an object array or pickled payload (``reason`` ``unsafe_input``),
            or a non-numeric array (``bad_type``).
        ValueError: the bytes are neither format, or an array's bytes do not match its shape.
    """
    if value[:2] == b"PK":  # zip magic: np.savez_compressed (the official --compress option)
        return feature_record.load_npz_arrays(io.BytesIO(value))
    import msgpack

    decoded = msgpack.unpackb(value, object_hook=_numeric_array_hook, raw=False)
    if not isinstance(decoded, dict):
        raise ValueError(f"msgpack value is a {type(decoded).__name__}, expected a dict of arrays")
    return {(key.decode("utf-8") if isinstance(key, bytes) else str(key)): value
            for key, value in decoded.items()}


def _field(obj: dict, name: str):
    """``obj[b'name']`` or ``obj['name']`` (msgpack-numpy writes bytes keys; accept str keys too)."""
    raw = name.encode("ascii")
    return obj[raw] if raw in obj else obj.get(name)


def _numeric_array_hook(obj: dict):
    """msgpack ``object_hook``: msgpack-numpy array / scalar maps -> numpy, numeric dtypes only.

    The msgpack-numpy layout is ``{nd: True, type: dtype.str, kind: b'', shape: [...], data: bytes}`` for
    arrays (``kind`` ``b'O'`` marks a pickled object array, ``b'V'`` a structured one with a list ``type``),
    ``{nd: False, type, data}`` for numpy scalars and ``{complex: True, data}`` for complex numbers. Only
    plain numeric arrays and scalars are rebuilt, with ``np.frombuffer`` after checking the byte count;
    any other map is returned unchanged.
    """
    nd = _field(obj, "nd")
    if nd is None:
        if _field(obj, "complex") is not None:
            raise feature_record.RefusedValueError(dead_letter.BAD_TYPE, "complex numbers are not region features")
        return obj
    kind = _field(obj, "kind")
    if kind in (b"O", "O"):
        raise feature_record.RefusedValueError(
                dead_letter.UNSAFE_INPUT, "msgpack-numpy object array (kind 'O': a pickled payload); refused, "
                                          "never unpickled: img_db values must hold numeric arrays")
    descr = _field(obj, "type")
    if not isinstance(descr, (bytes, str)) or kind not in (None, b"", "", b"b", b"i", b"u", b"f"):
        raise feature_record.RefusedValueError(
                dead_letter.BAD_TYPE, f"msgpack-numpy array of kind {kind!r} / type {dead_letter.describe_value(descr)}"
                                      " refused: only numeric arrays are read")
    if isinstance(descr, bytes):
        descr = descr.decode("ascii", errors="replace")
    try:
        dtype = np.dtype(descr)
    except TypeError:
        raise feature_record.RefusedValueError(dead_letter.BAD_TYPE, f"unknown dtype {descr[:40]!r}") from None
    dtype = feature_record.check_numeric_dtype(dtype, "msgpack-numpy array")
    data = _field(obj, "data")
    if not isinstance(data, bytes):
        raise ValueError(f"msgpack-numpy array data must be bytes, got {type(data).__name__}")
    if nd is not True:
        if len(data) != dtype.itemsize:
            raise ValueError(f"numpy scalar of {dtype.str} needs {dtype.itemsize} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dtype)[0]
    shape = _field(obj, "shape")
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape):
        raise ValueError(f"msgpack-numpy array shape must be a list of sizes, got {dead_letter.describe_value(shape)}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dtype.itemsize != len(data):
        raise ValueError(f"msgpack-numpy array of shape {list(shape)} and dtype {dtype.str} needs "
                         f"{count * dtype.itemsize} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def image_id_from_key(key: str) -> str:
    """The image id of an img_db key: the name without ``.npz`` (``coco_train2014_000000000009``)."""
    return key[:-4] if key.endswith(".npz") else key


def iter_img_db(path: str, selection: Optional[boxes_lib.BoxSelection] = boxes_lib.BoxSelection()
                ) -> Iterator[ImportResult]:
    """Streams the images of an official img_db.

    The number of regions follows the official reader: the ``nbb_*.json`` count when the file is there,
    else the box-selection rule on ``conf`` (rows are cut, never re-sorted); ``selection=None`` keeps
    every stored row.

    Args:
        path: the LMDB directory, or the ``img_dir`` that holds it and the ``nbb_*.json`` file.
        selection: the box-selection rule.

    Yields:
        :class:`FeatureRecord` per image; :class:`DeadLetter` for values that cannot be decoded.

    Raises:
        FileNotFoundError: ``path`` holds no LMDB.
    """
    import lmdb

    lmdb_dir = resolve_lmdb_dir(path, selection)
    name_to_nbb = load_nbb(lmdb_dir, selection)
    environment = lmdb.open(lmdb_dir, readonly=True, create=False, lock=False, readahead=False,
                            max_readers=1, subdir=True)
    try:
        with environment.begin(buffers=False) as transaction:
            for raw_key, value in transaction.cursor():
                if raw_key == KEYS_ENTRY:
                    continue
                key = raw_key.decode("utf-8", errors="backslashreplace")
                image_id = image_id_from_key(key)
                source = f"{lmdb_dir}:{key}"
                try:
                    arrays = decode_value(value)
                    record = feature_record.record_from_arrays(image_id, arrays, source)
                except feature_record.RefusedValueError as error:
                    yield dead_letter.DeadLetter(image_id, error.reason,
                                                 f"refused img_db value: {dead_letter.safe_text(error)}", source,
                                                 kind="image")
                    continue
                except Exception as error:  # any decoding failure of one value is that record's problem
                    yield dead_letter.DeadLetter(image_id, dead_letter.UNREADABLE_INPUT,
                                                 f"cannot decode img_db value: {dead_letter.safe_text(error)}",
                                                 source, kind="image")
                    continue
                if name_to_nbb is not None and key in name_to_nbb:
                    keep = name_to_nbb[key]
                    record = _cut(record, keep)
                else:
                    record = feature_record.select_boxes(record, selection)
                yield record
    finally:
        environment.close()


def iter_img_db_image_ids(path: str, selection: Optional[boxes_lib.BoxSelection] = boxes_lib.BoxSelection()
                          ) -> Iterator[str]:
    """The image id of every LMDB key (``__keys__`` aside), without reading any value (the keys pass).

    ``selection`` picks the LMDB exactly as :func:`iter_img_db` does.
    """
    import lmdb

    lmdb_dir = resolve_lmdb_dir(path, selection)
    environment = lmdb.open(lmdb_dir, readonly=True, create=False, lock=False, readahead=False,
                            max_readers=1, subdir=True)
    try:
        with environment.begin(buffers=False) as transaction:
            for raw_key in transaction.cursor().iternext(keys=True, values=False):
                if raw_key != KEYS_ENTRY:
                    yield image_id_from_key(raw_key.decode("utf-8", errors="backslashreplace"))
    finally:
        environment.close()


def _cut(record: feature_record.FeatureRecord, keep: int) -> feature_record.FeatureRecord:
    def cut(array):
        return None if array is None else array[:keep]

    return dataclasses.replace(record, features=record.features[:keep], positions=record.positions[:keep],
                               boxes=cut(record.boxes), conf=cut(record.conf), soft_labels=cut(record.soft_labels))


def write_img_db(path: str, images: Dict[str, Dict[str, np.ndarray]], compress: bool = False,
                 selection: Optional[boxes_lib.BoxSelection] = None) -> str:
    """Writes an img_db in the official format (for tests, benchmarks and users converting back).

    Args:
        path: the ``img_dir``; the LMDB goes to ``feat_th..`` (or ``all`` without ``selection``).
        images: name (``*.npz``) -> arrays; float32 arrays are stored as float16, as the official converter.
        compress: store ``np.savez_compressed`` bytes instead of msgpack.
        selection: writes the matching ``nbb_*.json`` and names the LMDB after it (rows are not cut).

    Returns:
        The LMDB directory.
    """
    import lmdb
    import msgpack
    import msgpack_numpy

    if selection is None:
        db_name = "all"
    else:
        db_name = f"feat_th{selection.conf_threshold}_max{selection.max_boxes}_min{selection.min_boxes}"
    if compress:
        db_name += "_compressed"
    lmdb_dir = os.path.join(path, db_name)
    os.makedirs(lmdb_dir, exist_ok=True)
    environment = lmdb.open(lmdb_dir, map_size=1 << 30)
    name_to_nbb = {}
    with environment.begin(write=True) as transaction:
        for name, arrays in images.items():
            stored = {key: (value.astype(np.float16) if value.dtype == np.float32 else value)
                      for key, value in arrays.items()}
            if compress:
                buffer = io.BytesIO()
                np.savez_compressed(buffer, **stored)
                value = buffer.getvalue()
            else:
                value = msgpack.packb(stored, default=msgpack_numpy.encode, use_bin_type=True)
            transaction.put(name.encode("utf-8"), value)
            if selection is not None and "conf" in arrays:
                name_to_nbb[name] = selection.num_boxes(arrays["conf"])
        transaction.put(KEYS_ENTRY, json.dumps(list(images)).encode("utf-8"))
    environment.close()
    if selection is not None:
        nbb_name = f"nbb_th{selection.conf_threshold}_max{selection.max_boxes}_min{selection.min_boxes}.json"
        with open(os.path.join(path, nbb_name), "w", encoding="utf-8") as handle:
            json.dump(name_to_nbb, handle)
    return lmdb_dir
