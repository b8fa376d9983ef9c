"""Image decoding for extraction: any JPEG/PNG (and what else PIL reads) to uint8 RGB."""

from __future__ import annotations

import io

import numpy as np


class ImageDecodeError(ValueError):
    """Raised when image bytes cannot be decoded; the message says why."""


def decode_image(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decodes image bytes to a ``[H, W, 3]`` uint8 RGB array.

    Grayscale, palette, RGBA (alpha dropped) and CMYK inputs are converted to RGB. EXIF orientation is
    not applied: box annotations (COCO, the sample data) refer to the stored pixel grid.

    Args:
        data: the file's bytes.
        source: the file name, for error messages.

    Raises:
        ImageDecodeError: empty, truncated, corrupt or unsupported data (PIL's reason in the message).
    """
    from PIL import Image

    if not data:
        raise ImageDecodeError(f"{source}: empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise ImageDecodeError(f"{source}: cannot decode image: {type(error).__name__}: {error}") from error
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageDecodeError(f"{source}: decoded to an empty image of shape {array.shape}")
    return array
