"""File helpers shared by the annotation readers: UTF-8-tolerant JSON and line reading.

Text is decoded with ``errors="surrogateescape"`` so that a record with invalid UTF-8 bytes does not
spoil its whole file: the bytes survive as lone surrogates, which :func:`is_valid_utf8` detects so the
ingest pipeline can dead-letter that one record (reason ``non_utf8_text``).
"""

from __future__ import annotations

import codecs
import gzip
import json
from typing import Any, Iterator, Tuple, Union

from uniter_tf.data import dead_letter


class UnreadableFileError(ValueError):
    """A whole annotation file cannot be read or parsed."""


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def decode_text(raw: bytes) -> str:
    """Decodes bytes as UTF-8, keeping invalid bytes as lone surrogates (see module docstring)."""
    return raw.decode("utf-8", errors="surrogateescape")


def is_valid_utf8(text: str) -> bool:
    """False if ``text`` holds lone surrogates (invalid UTF-8 input bytes or bad ``\\ud8xx`` escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_json(path: str) -> Any:
    """Loads a whole JSON file (annotation files with a top-level object; see :func:`iter_json_array`).

    Raises:
        UnreadableFileError: the file is missing or is not JSON.
    """
    try:
        with _open_binary(path) as handle:
            return json.loads(decode_text(handle.read()))
    except (OSError, ValueError) as error:
        raise UnreadableFileError(f"cannot read JSON {path!r}: {error}") from None


def load_json_with_list(path: str, key: str, file_kind: str = "") -> dict:
    """Loads a JSON file whose top-level object must hold a list under ``key``.

    Args:
        path: the file.
        key: the field that must be a list (``"annotations"``, ``"images"``, ...).
        file_kind: what the file should be, for the error (``"a COCO captions file"``); optional.

    Raises:
        UnreadableFileError: the file is missing, is not JSON, or lacks the list.
    """
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        suffix = f" (not {file_kind})" if file_kind else ""
        raise UnreadableFileError(f"{path!r} has no {key!r} list{suffix}")
    return data


def iter_json_array(path: str, chunk_size: int = 1 << 20) -> Iterator[Any]:
    """Streams the elements of a top-level JSON array without loading the file (e.g. Visual Genome).

    Raises:
        UnreadableFileError: the file is not a JSON array or is truncated / malformed.
    """
    decoder = json.JSONDecoder()
    try:
        handle = _open_binary(path)
    except OSError as error:
        raise UnreadableFileError(f"cannot open {path!r}: {error}") from None
    incremental = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    with handle:
        buffer = ""
        position = 0
        started = False
        finished = False
        while True:
            chunk = handle.read(chunk_size)
            buffer = buffer[position:] + incremental.decode(chunk, final=not chunk)
            position = 0
            while True:
                while position < len(buffer) and buffer[position] in " \t\r\n,":
                    if buffer[position] == "," and not started:
                        raise UnreadableFileError(f"{path!r} is not a JSON array")
                    position += 1
                if position >= len(buffer):
                    break
                if not started:
                    if buffer[position] != "[":
                        raise UnreadableFileError(f"{path!r} is not a JSON array")
                    started = True
                    position += 1
                    continue
                if buffer[position] == "]":
                    finished = True
                    position += 1
                    break
                try:
                    element, end = decoder.raw_decode(buffer, position)
                except json.JSONDecodeError:
                    if not chunk:
                        raise UnreadableFileError(f"{path!r}: malformed or truncated JSON array") from None
                    break  # need more data
                if end >= len(buffer) and chunk and not isinstance(element, (dict, list)):
                    break  # a bare number may continue in the next chunk
                position = end
                yield element
            if finished:
                return
            if not chunk:
                raise UnreadableFileError(f"{path!r}: JSON array is not closed (truncated file?)")


def iter_lines(path: str) -> Iterator[Tuple[int, str]]:
    """Streams ``(line_number, text)`` of a text file (``.gz`` too), line ends stripped, blank lines skipped.

    Raises:
        UnreadableFileError: the file cannot be opened.
    """
    try:
        handle = _open_binary(path)
    except OSError as error:
        raise UnreadableFileError(f"cannot open {path!r}: {error}") from None
    with handle:
        for line_number, raw in enumerate(handle, start=1):
            line = decode_text(raw).rstrip("\r\n")
            if line.strip():
                yield line_number, line


def iter_json_lines(path: str) -> Iterator[Union[Tuple[int, str, Any], "dead_letter.DeadLetter"]]:
    """Streams the records of a JSON-lines file as ``(line_number, source, record)``.

    ``source`` is ``"{path}:{line_number}"``. A line that is not JSON, or a file that cannot be opened,
    comes out as a :class:`~uniter_tf.data.dead_letter.DeadLetter` instead, so a reader passes it on and
    goes on with the next line.
    """
    try:
        for line_number, line in iter_lines(path):
            source = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except ValueError as error:
                yield dead_letter.DeadLetter(source, dead_letter.UNREADABLE_INPUT, f"not JSON: {error}", source)
                continue
            yield line_number, source, record
    except UnreadableFileError as error:
        yield dead_letter.DeadLetter(path, dead_letter.UNREADABLE_INPUT, str(error), path, kind="input")
