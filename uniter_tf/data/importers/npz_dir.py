"""Importer for folders of per-image ``.npz`` files (the input of the official ``convert_imgdir.py``).

Each ``<image_id>.npz`` holds ``features [n, D]``, and either ``norm_bb [n, 4|6|7]`` (normalised) or
``boxes [n, 4]`` (pixels) with the image size as scalar arrays ``image_h``/``image_w`` (or
``image_height``/``image_width``), plus optional ``conf [n]`` and ``soft_labels [n, C]``. Files are opened
one at a time.
"""

from __future__ import annotations

import os
import zipfile
from typing import Iterable, Iterator, Optional, Union

from uniter_tf.data import boxes as boxes_lib
from uniter_tf.data import dead_letter
from uniter_tf.data.importers import feature_record

ImportResult = Union[feature_record.FeatureRecord, dead_letter.DeadLetter]


def image_id_from_path(path: str) -> str:
    """The image id of an npz file: its base name without ``.npz``."""
    name = os.path.basename(path)
    return name[:-4] if name.endswith(".npz") else name


def read_npz(path: str, selection: Optional[boxes_lib.BoxSelection] = boxes_lib.BoxSelection()) -> ImportResult:
    """Reads one npz file; returns its record, or a dead letter when it cannot be read.

    Object arrays are refused from their header (``unsafe_input``), never unpickled; other non-numeric
    arrays are ``bad_type``.
    """
    image_id = image_id_from_path(path)
    try:
        arrays = feature_record.load_npz_arrays(path)
        record = feature_record.record_from_arrays(image_id, arrays, path)
    except feature_record.RefusedValueError as error:
        return dead_letter.DeadLetter(image_id, error.reason, f"refused npz: {dead_letter.safe_text(error)}", path,
                                      kind="image")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        return dead_letter.DeadLetter(image_id, dead_letter.UNREADABLE_INPUT,
                                      f"cannot read npz: {dead_letter.safe_text(error)}", path, kind="image")
    return feature_record.select_boxes(record, selection)


def iter_npz_files(paths: Iterable[str], selection: Optional[boxes_lib.BoxSelection] = boxes_lib.BoxSelection()
                   ) -> Iterator[ImportResult]:
    """Streams records from npz files, one file at a time."""
    for path in paths:
        yield read_npz(path, selection)


def list_npz_dir(directory: str) -> list:
    """The ``.npz`` files of ``directory`` (sorted; not recursive)."""
    return sorted(os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(".npz"))
