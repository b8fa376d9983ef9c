"""Conceptual Captions TSV (``Train_GCC-training.tsv``: ``caption \\t url``, no header).

The release has no image ids. The image id is the 0-based row index, zero-padded to 9 digits
(``000000123``): the file name that ``img2dataset`` and most downloaders give row 123 of the TSV, so
features extracted from the downloaded files join by name; with ``image_id_scheme="url_sha1"`` it is
``cc_`` + the first 16 hex digits of the SHA-1 of the URL (stable when rows are re-ordered).
"""

from __future__ import annotations

import hashlib
from typing import Iterator

from uniter_tf.data import dead_letter
from uniter_tf.data.readers import _io
from uniter_tf.data.readers.text_item import TextItem

IMAGE_ID_SCHEMES = ("row_index", "url_sha1")


def conceptual_captions_image_id(row_index: int, url: str, scheme: str = "row_index") -> str:
    """The documented image id of a Conceptual Captions row (see the module docstring)."""
    if scheme == "row_index":
        return f"{row_index:09d}"
    if scheme == "url_sha1":
        return "cc_" + hashlib.sha1(url.encode("utf-8", errors="surrogateescape")).hexdigest()[:16]
    raise ValueError(f"image_id_scheme must be one of {IMAGE_ID_SCHEMES}, got {scheme!r}")


def read_conceptual_captions(path: str, image_id_scheme: str = "row_index") -> Iterator:
    """Streams a Conceptual Captions TSV line by line.

    ``example_id`` = ``cc_{row_index}``. The row index counts every non-blank line, good or bad, so ids
    do not shift when a line is dead-lettered.

    Yields:
        :class:`TextItem`, or :class:`DeadLetter` for lines without exactly two columns.
    """
    if image_id_scheme not in IMAGE_ID_SCHEMES:
        raise ValueError(f"image_id_scheme must be one of {IMAGE_ID_SCHEMES}, got {image_id_scheme!r}")
    try:
        lines = _io.iter_lines(path)
        for row_index, (line_number, line) in enumerate(lines):
            source = f"{path}:{line_number}"
            columns = line.split("\t")
            if len(columns) != 2:
                yield dead_letter.DeadLetter(f"cc_{row_index}", dead_letter.MISSING_FIELD,
                                             f"expected 'caption<TAB>url', got {len(columns)} columns", source)
                continue
            caption, url = columns
            yield TextItem(example_id=f"cc_{row_index}",
                           image_ids=(conceptual_captions_image_id(row_index, url.strip(), image_id_scheme),),
                           text=caption, source=source)
    except _io.UnreadableFileError as error:
        yield dead_letter.DeadLetter(path, dead_letter.UNREADABLE_INPUT, str(error), path, kind="input")
