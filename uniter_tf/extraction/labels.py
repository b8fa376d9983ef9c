"""The COCO class names of the default detector (asset ``uniter_tf/assets/coco_labels.json``)."""

from __future__ import annotations

import functools
import json
import os
from typing import List

_ASSET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "coco_labels.json")


@functools.lru_cache(maxsize=1)
def coco_labels() -> List[str]:
    """The 91 class names indexed by COCO category id (0 = background; see the asset's ``unused_ids``)."""
    with open(_ASSET, "r", encoding="utf-8") as handle:
        labels = json.load(handle)["labels"]
    if len(labels) != 91:
        raise ValueError(f"{_ASSET} must list 91 labels, found {len(labels)}")
    return list(labels)


def coco_unused_ids() -> List[int]:
    """COCO ids without annotations, which COCO-trained detectors never predict."""
    with open(_ASSET, "r", encoding="utf-8") as handle:
        return list(json.load(handle)["unused_ids"])
