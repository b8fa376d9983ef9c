"""How annotation image ids and feature-record image ids are matched (the ingest join key).

Different sources name the same image differently: COCO annotations say ``9`` or
``COCO_train2014_000000000009.jpg``, the official img_db ``coco_train2014_000000000009.npz``, BUTD TSVs ``9``.
Both sides are mapped through :func:`image_key` with the same mode:

* ``name`` (default): the base name without extension, lower-cased
  (``COCO_train2014_000000000009.jpg`` -> ``coco_train2014_000000000009``);
* ``numeric``: the last run of digits as an integer (``coco_train2014_000000000009`` -> ``9``,
  ``flickr30k_1000092795`` -> ``1000092795``); use it to join numeric ids with file names.

``strip_prefix`` removes a fixed prefix first (e.g. ``nlvr2_`` for the official NLVR2 img_db names).
"""

from __future__ import annotations

import os
import re

#: Join-key modes.
KEY_MODES = ("name", "numeric")

_EXTENSIONS = (".npz", ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tfrecord")
_DIGITS = re.compile(r"(\d+)(?!.*\d)")


def image_key(image_id: str, mode: str = "name", strip_prefix: str = "") -> str:
    """The join key of an image id.

    Raises:
        ValueError: unknown mode, or ``numeric`` mode and the id has no digits.
    """
    if mode not in KEY_MODES:
        raise ValueError(f"image key mode must be one of {KEY_MODES}, got {mode!r}")
    name = os.path.basename(str(image_id).strip())
    if strip_prefix and name.startswith(strip_prefix):
        name = name[len(strip_prefix):]
    lowered = name.lower()
    for extension in _EXTENSIONS:
        if lowered.endswith(extension):
            name = name[:-len(extension)]
            break
    if mode == "name":
        return name.lower()
    match = _DIGITS.search(name)
    if not match:
        raise ValueError(f"image id {image_id!r} has no digits for the numeric join key")
    return str(int(match.group(1)))
