"""Image decoding for extraction: any JPEG/PNG (and what else PIL reads) to uint8 RGB."""

from __future__ import annotations

import io

import numpy as np


class ImageDecodeError(ValueError):
    """Raised when image bytes cannot be decoded; the message says why."""


#: PIL modes of 16-bit single-channel images.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _scale_16_bit_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """16-bit gray ``[H, W]`` (any integer dtype) -> uint8 RGB, rounding ``v * 255 / 65535``."""
    values = np.clip(pixels.astype(np.int64), 0, 65535)
    gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def decode_image(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decodes image bytes to a ``[H, W, 3]`` uint8 RGB array.

    Grayscale, palette, RGBA (alpha dropped) and CMYK inputs are converted to RGB. 16-bit grayscale
    (PIL modes ``I;16*``, and ``I`` from a PNG) is scaled to 8 bits, ``round(v * 255 / 65535)``: PIL's own
    conversion clips it at 255, which turns a full-range 16-bit image almost white. (16-bit RGB PNGs
    already decode to 8-bit RGB in PIL.) 32-bit integer and float images are refused. EXIF orientation
    is not applied: box annotations (COCO, the sample data) refer to the stored pixel grid.

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
            if image.mode in _SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
                array = _scale_16_bit_to_rgb(np.asarray(image))
            elif image.mode in ("I", "F"):
                # 32-bit integer or float pixels (TIFF) have no defined range: any scaling would be a guess.
                raise ImageDecodeError(f"{source}: {image.mode!r} ({'32-bit integer' if image.mode == 'I' else 'float'})"
                                       " pixels have no defined range; convert the image to 8 or 16 bits")
            else:
                array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise ImageDecodeError(f"{source}: cannot decode image: {type(error).__name__}: {error}") from error
    if array.ndim != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageDecodeError(f"{source}: decoded to an empty image of shape {array.shape}")
    return array
