"""Importer for bottom-up-attention (BUTD) TSV feature files.

The BUTD ``generate_tsv.py`` writes one line per image, no header, tab-separated columns
``image_id, image_w, image_h, num_boxes, boxes, features`` where ``boxes`` (pixel ``x1, y1, x2, y2``) and
``features`` are base64 of float32 arrays. The LXMERT variant (``img_id, img_h, img_w, objects_id,
objects_conf, attrs_id, attrs_conf, num_boxes, boxes, features``) is read with ``fieldnames=LXMERT_FIELDS``;
its ``objects_conf`` drives the box-selection rule. Files are read line by line (``.gz`` too).
"""

from __future__ import annotations

import base64
import binascii
import gzip
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from uniter_tf.data import boxes as boxes_lib
from uniter_tf.data import dead_letter
from uniter_tf.data.importers import feature_record

#: Columns of the original bottom-up-attention ``generate_tsv.py``.
BUTD_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
#: Columns of the LXMERT release of the same features.
LXMERT_FIELDS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
                 "num_boxes", "boxes", "features")

ImportResult = Union[feature_record.FeatureRecord, dead_letter.DeadLetter]


def _decode_array(text: str, dtype, field: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"column {field!r} is not valid base64 ({error})") from None
    if len(raw) % np.dtype(dtype).itemsize:
        raise ValueError(f"column {field!r} has {len(raw)} bytes, not a multiple of {np.dtype(dtype).itemsize}")
    return np.frombuffer(raw, dtype=dtype)


def parse_line(line: str, fieldnames: Sequence[str], source: str) -> feature_record.FeatureRecord:
    """Parses one TSV line into a record (no box selection).

    Raises:
        ValueError: with the column named, when the line is malformed.
    """
    columns = line.rstrip("\r\n").split("\t")
    if len(columns) != len(fieldnames):
        raise ValueError(f"expected {len(fieldnames)} columns {list(fieldnames)}, got {len(columns)}")
    row = dict(zip(fieldnames, columns))
    image_id = row.get("image_id", row.get("img_id", ""))
    try:
        image_width = int(float(row.get("image_w", row.get("img_w"))))
        image_height = int(float(row.get("image_h", row.get("img_h"))))
        num_boxes = int(row["num_boxes"])
    except (TypeError, ValueError):
        raise ValueError("columns image_w / image_h / num_boxes must be integers") from None
    if num_boxes < 0 or image_width <= 0 or image_height <= 0:
        raise ValueError(f"bad sizes: num_boxes={num_boxes}, image {image_width}x{image_height}")
    boxes = _decode_array(row["boxes"], np.float32, "boxes")
    features = _decode_array(row["features"], np.float32, "features")
    if boxes.size != num_boxes * 4:
        raise ValueError(f"column 'boxes' has {boxes.size} values, expected num_boxes*4 = {num_boxes * 4}")
    if num_boxes and features.size % num_boxes:
        raise ValueError(f"column 'features' has {features.size} values, not a multiple of num_boxes={num_boxes}")
    features = features.reshape(num_boxes, -1) if num_boxes else features.reshape(0, max(features.size, 1))
    boxes = boxes.reshape(num_boxes, 4)
    conf = None
    if "objects_conf" in row:
        conf = _decode_array(row["objects_conf"], np.float32, "objects_conf")
        if conf.size != num_boxes:
            raise ValueError(f"column 'objects_conf' has {conf.size} values, expected {num_boxes}")
    if num_boxes and np.all(np.isfinite(boxes)):
        positions = boxes_lib.position_features(boxes, image_height, image_width)
    else:
        positions = np.full((num_boxes, boxes_lib.POSITION_DIM), np.nan if num_boxes else 0, np.float32)
    return feature_record.FeatureRecord(
            image_id=str(image_id), features=features, positions=positions, boxes=boxes,
            image_height=image_height, image_width=image_width, conf=conf, source=source)


def iter_butd_tsv(path: str, fieldnames: Sequence[str] = BUTD_FIELDS,
                  selection: Optional[boxes_lib.BoxSelection] = boxes_lib.BoxSelection()) -> Iterator[ImportResult]:
    """Streams the images of one BUTD TSV file (plain or ``.gz``).

    Args:
        path: the TSV file.
        fieldnames: the column names (:data:`BUTD_FIELDS` or :data:`LXMERT_FIELDS`).
        selection: the box-selection rule, applied when the file has confidences.

    Yields:
        :class:`FeatureRecord` per good line; :class:`DeadLetter` per malformed line (id = the first
        column when readable, else ``path:line``).
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            if not raw_line.strip():
                continue
            source = f"{path}:{line_number}"
            first_column = raw_line.split(b"\t", 1)[0].decode("utf-8", errors="backslashreplace")
            record_id = first_column or source
            try:
                line = raw_line.decode("ascii")
                record = parse_line(line, fieldnames, source)
            except (UnicodeDecodeError, ValueError, KeyError) as error:
                yield dead_letter.DeadLetter(record_id, dead_letter.UNREADABLE_INPUT,
                                             f"malformed BUTD TSV line: {dead_letter.safe_text(error)}",
                                             source, kind="image")
                continue
            yield feature_record.select_boxes(record, selection)


def iter_butd_tsv_image_ids(path: str) -> Iterator[str]:
    """The first column (the image id, in both column orders) of every non-blank line, nothing decoded."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        for raw_line in handle:
            if raw_line.strip():
                yield raw_line.split(b"\t", 1)[0].decode("utf-8", errors="backslashreplace")


def encode_line(image_id, image_width: int, image_height: int, boxes: np.ndarray, features: np.ndarray) -> str:
    """One line in the BUTD format (for tests and benchmarks)."""
    def encode(array):
        return base64.b64encode(np.ascontiguousarray(array, dtype=np.float32).tobytes()).decode("ascii")

    return "\t".join([str(image_id), str(image_width), str(image_height), str(len(boxes)),
                      encode(boxes), encode(features)]) + "\n"
