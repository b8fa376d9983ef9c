"""SBU Captioned Photo dataset: ``SBU_captioned_photo_dataset_captions.txt`` + ``..._urls.txt`` (line-aligned)."""

from __future__ import annotations

import itertools
import os
import re
from typing import Iterator

from uniter_tf.data import dead_letter
from uniter_tf.data.readers import _io
from uniter_tf.data.readers.text_item import TextItem

_FLICKR_PHOTO_ID = re.compile(r"/(\d+)_[0-9a-f]+(?:_[a-z])?\.\w+$")


def sbu_image_id(url: str) -> str:
    """The Flickr photo id in an SBU URL (``.../2723/4385058960_b0f291553e.jpg`` -> ``4385058960``).

    Falls back to the URL's file name stem when the URL is not a Flickr static URL.
    """
    match = _FLICKR_PHOTO_ID.search(url.strip())
    if match:
        return match.group(1)
    return os.path.splitext(os.path.basename(url.strip()))[0]


def read_sbu(captions_path: str, urls_path: str) -> Iterator:
    """Streams SBU captions paired with their URLs (line ``i`` of one file goes with line ``i`` of the other).

    ``example_id`` = ``sbu_{line}``; image id = the Flickr photo id of the URL.

    Yields:
        :class:`TextItem`; :class:`DeadLetter` when one file has more lines than the other.
    """
    try:
        with open(captions_path, "rb") as captions, open(urls_path, "rb") as urls:
            for line_number, (caption, url) in enumerate(itertools.zip_longest(captions, urls), start=1):
                source = f"{captions_path}:{line_number}"
                if caption is None or url is None:
                    yield dead_letter.DeadLetter(f"sbu_{line_number}", dead_letter.MISSING_FIELD,
                                                 "the captions and urls files have different line counts", source)
                    continue
                url_text = _io.decode_text(url).strip()
                if not url_text:
                    yield dead_letter.DeadLetter(f"sbu_{line_number}", dead_letter.MISSING_FIELD, "empty URL", source)
                    continue
                yield TextItem(example_id=f"sbu_{line_number}", image_ids=(sbu_image_id(url_text),),
                               text=_io.decode_text(caption).rstrip("\r\n"), source=source)
    except OSError as error:
        yield dead_letter.DeadLetter(captions_path, dead_letter.UNREADABLE_INPUT,
                                     f"cannot read SBU files: {error}", captions_path, kind="input")
