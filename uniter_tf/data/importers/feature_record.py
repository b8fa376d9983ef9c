"""The per-image feature record that every importer yields."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from uniter_tf.data import boxes as boxes_lib
from uniter_tf.data import dead_letter

#: Largest finite float16 (the canonical record stores features as float16).
FLOAT16_MAX = float(np.finfo(np.float16).max)
#: numpy dtype kinds accepted in feature sources: booleans, signed and unsigned integers, floats.
NUMERIC_KINDS = "biuf"


class RefusedValueError(ValueError):
    """A stored value that is refused before decoding (object arrays, non-numeric dtypes).

    Attributes:
        reason: the dead-letter reason (``unsafe_input`` or ``bad_type``).
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def check_numeric_dtype(dtype, field: str) -> np.dtype:
    """Returns ``dtype`` if it is a plain numeric dtype; raises :class:`RefusedValueError` otherwise.

    Object dtypes (and structured dtypes holding objects) are ``unsafe_input``: decoding them means
    unpickling. Every other non-numeric dtype (strings, complex, datetimes, structured) is ``bad_type``.
    """
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise RefusedValueError(dead_letter.UNSAFE_INPUT,
                                f"{field!r} is an object array (a pickled payload); refused, never unpickled")
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise RefusedValueError(dead_letter.BAD_TYPE, f"{field!r} has the non-numeric dtype {dtype.str!r}")
    return dtype


def numeric_array(value, field: str) -> np.ndarray:
    """``value`` as a numpy array of a numeric dtype (see :func:`check_numeric_dtype`)."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    check_numeric_dtype(array.dtype, field)
    return array


def load_npz_arrays(file) -> dict:
    """The arrays of an ``.npz`` (path or file object), numeric dtypes only; nothing is ever unpickled.

    Each member's ``.npy`` header is read first and object / non-numeric dtypes are refused with
    :class:`RefusedValueError` before any data is read; the arrays themselves are then loaded with
    ``allow_pickle=False`` as a second line of defence.
    """
    import zipfile

    from numpy.lib import format as npy_format

    with zipfile.ZipFile(file) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as handle:
                version = npy_format.read_magic(handle)
                if version == (1, 0):
                    _, _, dtype = npy_format.read_array_header_1_0(handle)
                elif version == (2, 0):
                    _, _, dtype = npy_format.read_array_header_2_0(handle)
                else:
                    continue  # np.load below checks it (and refuses object arrays without unpickling)
            check_numeric_dtype(dtype, member[:-4])
    if hasattr(file, "seek"):
        file.seek(0)
    with np.load(file, allow_pickle=False) as archive:
        return {name: numeric_array(archive[name], name) for name in archive.files}


@dataclasses.dataclass
class FeatureRecord:
    """Region features of one image, as read from any feature source.

    Attributes:
        image_id: the source's id of the image (an img_db key without ``.npz``, a BUTD ``image_id``, an
            npz file stem, ...). The ingest join normalises it (see :mod:`uniter_tf.data.image_keys`).
        features: ``[n, D]`` float16 or float32 region features.
        positions: ``[n, 7]`` float32 ``[x1, y1, x2, y2, w, h, w*h]`` normalised to ``[0, 1]``.
        boxes: ``[n, 4]`` float32 pixel ``x1, y1, x2, y2``, or None when the image size is unknown
            (the official img_db stores normalised boxes only).
        image_height: pixels, 0 when unknown.
        image_width: pixels, 0 when unknown.
        conf: ``[n]`` detection confidences, or None.
        soft_labels: ``[n, C]`` class distributions, or None.
        source: where the record came from (file, or file and key), for dead letters.
    """

    image_id: str
    features: np.ndarray
    positions: np.ndarray
    boxes: Optional[np.ndarray] = None
    image_height: int = 0
    image_width: int = 0
    conf: Optional[np.ndarray] = None
    soft_labels: Optional[np.ndarray] = None
    source: str = ""

    @property
    def num_regions(self) -> int:
        """n."""
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        """D."""
        return int(self.features.shape[1])

    def problem(self, expected_feature_dim: Optional[int] = None) -> Optional[dead_letter.DeadLetter]:
        """Checks the record; returns a dead letter describing the first problem, or None if it is usable.

        Finiteness is checked here, in Python, because the canonical record stores the features as
        float16 bytes that TFX statistics cannot inspect.

        Args:
            expected_feature_dim: the dataset's D; None accepts any width.
        """
        def letter(reason, detail):
            return dead_letter.DeadLetter(self.image_id, reason, detail, self.source, kind="image")

        if self.features.ndim != 2:
            return letter(dead_letter.UNREADABLE_INPUT,
                          f"features must be [n, D], got shape {list(self.features.shape)}")
        if self.num_regions == 0:
            return letter(dead_letter.NO_REGIONS, "the image has no regions")
        if expected_feature_dim is not None and self.feature_dim != expected_feature_dim:
            return letter(dead_letter.WRONG_FEATURE_DIM,
                          f"features have dim {self.feature_dim}, the dataset's feature_dim is "
                          f"{expected_feature_dim}")
        if self.positions.shape != (self.num_regions, boxes_lib.POSITION_DIM):
            return letter(dead_letter.UNREADABLE_INPUT,
                          f"positions must be [{self.num_regions}, 7], got {list(self.positions.shape)}")
        if self.boxes is not None and self.boxes.shape != (self.num_regions, 4):
            return letter(dead_letter.UNREADABLE_INPUT,
                          f"boxes must be [{self.num_regions}, 4], got {list(self.boxes.shape)}")
        if self.soft_labels is not None and (self.soft_labels.ndim != 2
                                             or self.soft_labels.shape[0] != self.num_regions):
            return letter(dead_letter.UNREADABLE_INPUT,
                          f"soft_labels must be [{self.num_regions}, C], got {list(self.soft_labels.shape)}")
        for name in ("features", "positions", "boxes", "soft_labels"):
            array = getattr(self, name)
            if array is not None and not np.all(np.isfinite(array)):
                bad_rows = np.unique(np.argwhere(~np.isfinite(array))[:, 0])[:5].tolist()
                return letter(dead_letter.NON_FINITE_FEATURES, f"{name} has NaN/inf in rows {bad_rows}")
        for name in ("features", "soft_labels"):  # stored as float16: larger values would become inf
            array = getattr(self, name)
            if array is not None and array.size and float(np.max(np.abs(array))) > FLOAT16_MAX:
                return letter(dead_letter.NON_FINITE_FEATURES, f"{name} exceed the float16 range (|x| > 65504)")
        return None


def select_boxes(record: FeatureRecord, selection: Optional[boxes_lib.BoxSelection]) -> FeatureRecord:
    """Keeps the first ``num_boxes`` rows, as the official ``convert_imgdir.py`` (spec §4.4).

    Applied only when the record has confidences and ``selection`` is given; rows are not re-sorted
    (the rule relies on the extractor's row order).
    """
    if selection is None or record.conf is None or record.features.ndim != 2:
        return record
    keep = selection.num_boxes(record.conf)
    if keep >= record.num_regions:
        return record

    def cut(array):
        return None if array is None else array[:keep]

    return dataclasses.replace(
            record, features=record.features[:keep], positions=record.positions[:keep], boxes=cut(record.boxes),
            conf=record.conf[:keep], soft_labels=cut(record.soft_labels))


def positions_from_normalized(norm_bb: np.ndarray) -> np.ndarray:
    """The 7-d position from the official 6-column ``norm_bb`` (x1, y1, x2, y2, w, h), spec §4.3."""
    norm_bb = np.asarray(norm_bb, dtype=np.float32)
    if norm_bb.ndim != 2 or norm_bb.shape[1] not in (4, 6, 7):
        raise ValueError(f"norm_bb must be [n, 4], [n, 6] or [n, 7], got {list(norm_bb.shape)}")
    if norm_bb.shape[1] == 7:
        return norm_bb
    if norm_bb.shape[1] == 4:
        width = norm_bb[:, 2] - norm_bb[:, 0]
        height = norm_bb[:, 3] - norm_bb[:, 1]
        norm_bb = np.concatenate([norm_bb, width[:, None], height[:, None]], axis=1)
    area = norm_bb[:, 4] * norm_bb[:, 5]
    return np.concatenate([norm_bb, area[:, None]], axis=1).astype(np.float32)


def pixel_boxes_from_normalized(positions: np.ndarray, image_height: int, image_width: int) -> Optional[np.ndarray]:
    """Pixel boxes from normalised positions, or None when the image size is unknown."""
    if not (image_height > 0 and image_width > 0):
        return None
    scale = np.array([image_width, image_height, image_width, image_height], dtype=np.float32)
    return (np.asarray(positions, dtype=np.float32)[:, :4] * scale).astype(np.float32)


_NUMERIC_FIELDS = ("features", "norm_bb", "boxes", "conf", "soft_labels", "image_h", "image_w", "image_height",
                   "image_width")


def record_from_arrays(image_id: str, arrays, source: str, image_height: int = 0,
                       image_width: int = 0) -> FeatureRecord:
    """Builds a record from a mapping of named arrays (official img_db / npz layout).

    Accepts ``features`` plus either ``norm_bb`` (normalised, 4/6/7 columns) or ``boxes`` (pixels,
    needs the image size, read from ``image_h``/``image_w`` / ``image_height``/``image_width`` arrays
    when present), and optional ``conf`` and ``soft_labels``.

    Raises:
        KeyError / ValueError: with the missing or malformed field named; :class:`RefusedValueError` (a
            ``ValueError``) for a field of a non-numeric dtype.
    """
    if "features" not in arrays:
        raise KeyError(f"no 'features' array (has {sorted(arrays)})")
    # Every array used must be numeric; strings or objects would otherwise be coerced (or fail) later.
    arrays = {name: (numeric_array(value, name) if name in _NUMERIC_FIELDS else value)
              for name, value in arrays.items()}
    features = arrays["features"]
    if features.dtype not in (np.float16, np.float32):
        features = features.astype(np.float32)
    for height_key, width_key in (("image_h", "image_w"), ("image_height", "image_width")):
        if height_key in arrays and width_key in arrays:
            image_height = int(np.asarray(arrays[height_key]).reshape(-1)[0])
            image_width = int(np.asarray(arrays[width_key]).reshape(-1)[0])
    if "norm_bb" in arrays:
        positions = positions_from_normalized(arrays["norm_bb"])
        boxes = pixel_boxes_from_normalized(positions, image_height, image_width)
    elif "boxes" in arrays:
        if not (image_height > 0 and image_width > 0):
            raise ValueError("pixel 'boxes' need the image size (image_h/image_w arrays), none given")
        boxes = np.asarray(arrays["boxes"], dtype=np.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"'boxes' must be [n, 4], got {list(boxes.shape)}")
        # Validate finiteness later (FeatureRecord.problem) rather than failing in the position math.
        if np.all(np.isfinite(boxes)):
            positions = boxes_lib.position_features(boxes, image_height, image_width)
        else:
            positions = np.full((boxes.shape[0], boxes_lib.POSITION_DIM), np.nan, dtype=np.float32)
    else:
        raise KeyError(f"neither 'norm_bb' nor 'boxes' array (has {sorted(arrays)})")
    conf = np.asarray(arrays["conf"], dtype=np.float32).reshape(-1) if "conf" in arrays else None
    soft_labels = np.asarray(arrays["soft_labels"]) if "soft_labels" in arrays else None
    return FeatureRecord(
            image_id=image_id, features=features, positions=positions, boxes=boxes, image_height=image_height,
            image_width=image_width, conf=conf, soft_labels=soft_labels, source=source)
