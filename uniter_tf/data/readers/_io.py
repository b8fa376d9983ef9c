"""File helpers shared by the annotation readers: UTF-8-tolerant JSON and line reading.

Text is decoded with ``errors="surrogateescape"`` so that a record with invalid UTF-8 bytes does not
spoil its whole file: the bytes survive as lone surrogates, which :func:`is_valid_utf8` detects so the
ingest pipeline can dead-letter that one record (reason ``non_utf8_text``).
"""

from __future__ import annotations

import codecs
import gzip
import json
from typing import Any, Iterator, Optional, Tuple, Union

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
    except RecursionError:  # arrays/objects nested deeper than the interpreter's recursion limit
        raise UnreadableFileError(f"cannot read JSON {path!r}: nested too deeply to parse") from None


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
                except RecursionError:
                    raise UnreadableFileError(f"{path!r}: JSON nested too deeply to parse") from None
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
            except RecursionError:
                yield dead_letter.DeadLetter(source, dead_letter.UNREADABLE_INPUT,
                                             "JSON nested too deeply to parse", source)
                continue
            yield line_number, source, record
    except UnreadableFileError as error:
        yield dead_letter.DeadLetter(path, dead_letter.UNREADABLE_INPUT, str(error), path, kind="input")


# ------------------------------------------------------------------------------------- field type checks
# JSON gives any type anywhere. Readers check every field they use with these helpers, so a null caption,
# a numeric text or a list id becomes that record's dead letter instead of the text "None" or a
# TypeError that ends the run.

#: ``(reason, detail)`` of a field that cannot be used.
Problem = Tuple[str, str]


def text_problem(value: Any, field: str) -> Optional[Problem]:
    """None when ``value`` is a string; else ``missing_field`` (absent or null) or ``bad_type``."""
    if value is None:
        return dead_letter.MISSING_FIELD, f"{field!r} is missing or null"
    if not isinstance(value, str):
        return dead_letter.BAD_TYPE, f"{field!r} must be a string, got {dead_letter.describe_value(value)}"
    return None


def id_problem(value: Any, field: str) -> Optional[Problem]:
    """None when ``value`` is an integer or a string (JSON ids); else ``missing_field`` or ``bad_type``.

    Booleans are rejected although Python counts them as integers: ``true`` is no id.
    """
    if value is None:
        return dead_letter.MISSING_FIELD, f"{field!r} is missing or null"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return dead_letter.BAD_TYPE, (f"{field!r} must be an integer or a string, got "
                                      f"{dead_letter.describe_value(value)}")
    return None


def number_problem(value: Any, field: str) -> Optional[Problem]:
    """None when ``value`` is a finite JSON number (not a boolean); else ``missing_field`` or ``bad_type``."""
    if value is None:
        return dead_letter.MISSING_FIELD, f"{field!r} is missing or null"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (
            float("inf"), float("-inf")):
        return dead_letter.BAD_TYPE, f"{field!r} must be a finite number, got {dead_letter.describe_value(value)}"
    return None


def image_size(entry: dict) -> Tuple[Optional[Tuple[int, int]], Optional[Problem]]:
    """``((height, width) or None, problem or None)`` of an image entry's optional ``height``/``width``.

    Absent, null or zero sizes mean "unknown" (None, no problem); anything else must be a positive
    integer (an integral float such as ``480.0`` is accepted).
    """
    values = []
    for field in ("height", "width"):
        value = entry.get(field)
        if value is None or (not isinstance(value, bool) and value == 0 and isinstance(value, (int, float))):
            return None, None
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value
                or value in (float("inf"), float("-inf")) or value < 0 or int(value) != value):
            return None, (dead_letter.BAD_TYPE,
                          f"{field!r} must be a positive integer, got {dead_letter.describe_value(value)}")
        values.append(int(value))
    return (values[0], values[1]), None


def letter(record_id: str, problem: Problem, source: str, kind: str = "text") -> "dead_letter.DeadLetter":
    """The dead letter of a :data:`Problem`."""
    reason, detail = problem
    return dead_letter.DeadLetter(record_id, reason, detail, source, kind=kind)


def image_table(entries: Any, path: str, list_name: str = "images"):
    """Checks a COCO-style ``images`` list entry by entry.

    Each entry needs an integer or string ``id``, an optional string ``file_name`` and optional positive
    integer ``height``/``width``. A bad entry is rejected alone (one ``bad_type``/``missing_field`` letter
    of kind ``input``); two entries with one id but different contents make that id ambiguous and both
    are rejected. Texts that refer to a rejected id should become ``image_rejected`` letters.

    Args:
        entries: the ``images`` value (anything: a non-list gives no entries).
        path: the file, for the letters' source.
        list_name: the list's name in the file, for the letters' source.

    Returns:
        ``(table, rejected, letters)``: id -> ``(name, (height, width) or None)`` where the name is the
        ``file_name`` stem (or the id); rejected id -> the reason in words; the dead letters.
    """
    import os

    table, rejected, letters = {}, {}, []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        source = f"{path}#{list_name}[{index}]"
        if not isinstance(entry, dict):
            letters.append(letter(source, (dead_letter.BAD_TYPE, f"image entry must be an object, got "
                                                                 f"{dead_letter.describe_value(entry)}"),
                                  source, kind="input"))
            continue
        image_id = entry.get("id")
        problem = id_problem(image_id, "id")
        if problem is not None:
            letters.append(letter(source, problem, source, kind="input"))
            continue
        file_name = entry.get("file_name")
        problem = None if file_name is None else text_problem(file_name, "file_name")
        size, size_error = image_size(entry)
        problem = problem or size_error
        if problem is None:
            name = os.path.splitext(os.path.basename(file_name))[0] if file_name else str(image_id)
            if image_id in table and table[image_id] != (name, size):
                problem = (dead_letter.BAD_TYPE, f"image id {image_id!r} is given twice with different "
                                                 f"entries ({table[image_id][0]!r}, {name!r})")
            elif image_id not in rejected:
                table[image_id] = (name, size)
                continue
            else:
                problem = (dead_letter.BAD_TYPE, f"image id {image_id!r} was already rejected")
        letters.append(letter(str(image_id), problem, source, kind="input"))
        rejected.setdefault(image_id, f"images[{index}]: {problem[1]}")
        table.pop(image_id, None)
    return table, rejected, letters
