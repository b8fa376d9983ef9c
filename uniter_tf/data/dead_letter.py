"""Dead letters: bad input is set aside with its id and the reason, never silently lost.

Every reader, importer and the ingest pipeline yield :class:`DeadLetter` objects for input they cannot
use. The ingest pipeline writes them as JSON lines (one object per bad record) and counts them with one
Beam counter per reason, so that ``good + dead letters (+ excluded) == input`` can be checked after a run.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict

#: Beam metrics namespace of the ingest counters.
METRICS_NAMESPACE = "uniter_ingest"

# Reasons. Input-level problems.
UNREADABLE_INPUT = "unreadable_input"          # file or record that cannot be opened, decoded or parsed
MISSING_FIELD = "missing_field"                # a record lacks a field its format requires (or it is null)
BAD_TYPE = "bad_type"                          # a field of the wrong type (non-string text, list id, "tall" height)
BAD_LABEL = "bad_label"                        # a label outside the format's label set
BAD_REFERENCE = "bad_reference"                # a text's object reference to a region the image does not have (VCR)
BOX_OUTSIDE_IMAGE = "box_outside_image"        # a target box (RefCOCO) that is empty or leaves its image
UNSAFE_INPUT = "unsafe_input"                  # a value that only unpickling could decode (object array): refused
DUPLICATE_ID = "duplicate_id"                  # a text item whose example id an earlier item already has
# Image (feature record) problems.
NON_FINITE_FEATURES = "non_finite_features"    # NaN or inf in features, positions or soft labels
WRONG_FEATURE_DIM = "wrong_feature_dim"        # feature width differs from the dataset's feature_dim
NO_REGIONS = "no_regions"                      # zero regions after the box-selection rule
DUPLICATE_IMAGE_ID = "duplicate_image_id"      # feature records that share a join key with another record
# Text item problems.
EMPTY_TEXT = "empty_text"                      # empty or whitespace-only text, or no WordPiece tokens
OVERLONG_TEXT = "overlong_text"                # more tokens than max_text_tokens with overlong=drop
NON_UTF8_TEXT = "non_utf8_text"                # bytes that are not valid UTF-8
UNKNOWN_IMAGE = "unknown_image"                # the text's image has no feature record at all
IMAGE_REJECTED = "image_rejected"              # the text's image had a feature record that was dead-lettered

#: Every reason, in the order summaries print them.
ALL_REASONS = (
        UNREADABLE_INPUT, UNSAFE_INPUT, MISSING_FIELD, BAD_TYPE, BAD_LABEL, BAD_REFERENCE, BOX_OUTSIDE_IMAGE,
        NON_FINITE_FEATURES,
        WRONG_FEATURE_DIM, NO_REGIONS, DUPLICATE_IMAGE_ID, DUPLICATE_ID, EMPTY_TEXT, OVERLONG_TEXT, NON_UTF8_TEXT,
        UNKNOWN_IMAGE, IMAGE_REJECTED)

#: Reasons that concern an image (feature record) rather than a text item.
IMAGE_REASONS = frozenset({NON_FINITE_FEATURES, WRONG_FEATURE_DIM, NO_REGIONS, DUPLICATE_IMAGE_ID})

# Counters that are not dead letters (the records are kept or deliberately left out).
TRUNCATED_TEXT = "truncated_text"              # over-long text cut to max_text_tokens (overlong=truncate)
EXCLUDED_SPLIT = "excluded_split"              # text whose annotation split maps to no output split
IMAGES_WITHOUT_TEXT = "images_without_text"    # good feature records that no text item refers to
DUPLICATE_IMAGE_IDS = "duplicate_image_ids"    # join keys shared by several feature records (all are rejected)
UNKNOWN_IMAGE_SIZE = "unknown_image_size"      # records written with normalised boxes (image size recorded 1x1)
TEXT_ITEMS_READ = "text_items_read"            # text items read (good or bad), file-level failures excluded
IMAGE_RECORDS_READ = "image_records_read"      # feature records read (good or bad)
EXAMPLES_WRITTEN_PREFIX = "examples_written_"  # + split name


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """One rejected input record.

    Attributes:
        record_id: the id of the rejected record (example id, image id, or ``path:line`` when the
            record has no readable id).
        reason: one of :data:`ALL_REASONS`.
        detail: a human-readable explanation (which field, which value).
        source: the file (or file and key) the record came from.
        kind: ``"text"`` for text items, ``"image"`` for feature records, ``"input"`` for whole files
            or undecodable lines whose kind is unknown.
    """

    record_id: str
    reason: str
    detail: str = ""
    source: str = ""
    kind: str = "text"

    def __post_init__(self):
        if self.reason not in ALL_REASONS:
            raise ValueError(f"unknown dead-letter reason {self.reason!r}; expected one of {ALL_REASONS}")
        if self.kind not in ("text", "image", "input"):
            raise ValueError(f"dead-letter kind must be text, image or input, got {self.kind!r}")

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object written to the dead-letter file."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """One JSON line (ASCII-only: non-ASCII characters and undecodable bytes are \\u-escaped)."""
        return json.dumps(self.to_dict(), ensure_ascii=True, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "DeadLetter":
        """Parses a line written by :meth:`to_json`."""
        return cls(**json.loads(line))


def safe_text(value: Any, limit: int = 200) -> str:
    """A printable, UTF-8-safe excerpt of ``value`` for dead-letter details."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="backslashreplace")
    text = str(value).encode("utf-8", errors="backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


def describe_value(value: Any, limit: int = 80) -> str:
    """``"<type> <bounded repr>"`` of a JSON value for a dead-letter detail.

    ``reprlib`` bounds both the length and the nesting depth, so a value nested thousands deep (hostile
    JSON) is described without recursing through it.
    """
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxstring, shortener.maxother = 3, limit, limit
    shortener.maxlist = shortener.maxdict = shortener.maxtuple = 4
    return f"{type(value).__name__} {safe_text(shortener.repr(value), limit)}"


def format_summary(counts: Dict[str, int], title: str = "ingest summary") -> str:
    """Formats counter values as an aligned table, reasons in :data:`ALL_REASONS` order first.

    Args:
        counts: counter name -> value (dead-letter reasons and the other ingest counters).
        title: the first line.

    Returns:
        A multi-line string.
    """
    order = [name for name in ALL_REASONS if name in counts]
    order += sorted(name for name in counts if name not in ALL_REASONS)
    width = max([len(name) for name in order] + [10])
    lines = [title]
    for name in order:
        lines.append(f"  {name:<{width}}  {counts[name]}")
    return "\n".join(lines)


def read_dead_letters(paths) -> "list[DeadLetter]":
    """Reads dead-letter JSONL files (any TensorFlow filesystem) into :class:`DeadLetter` objects."""
    import tensorflow as tf

    letters = []
    for path in paths:
        with tf.io.gfile.GFile(path, "r") as handle:
            for line in handle:
                if line.strip():
                    letters.append(DeadLetter.from_json(line))
    return letters


__all__ = [
        "METRICS_NAMESPACE", "DeadLetter", "ALL_REASONS", "IMAGE_REASONS", "format_summary", "safe_text",
        "read_dead_letters", "describe_value", "UNREADABLE_INPUT", "UNSAFE_INPUT", "MISSING_FIELD", "BAD_TYPE",
        "BAD_LABEL", "BAD_REFERENCE", "BOX_OUTSIDE_IMAGE", "DUPLICATE_ID", "DUPLICATE_IMAGE_ID", "NON_FINITE_FEATURES",
        "WRONG_FEATURE_DIM", "NO_REGIONS", "EMPTY_TEXT", "OVERLONG_TEXT", "NON_UTF8_TEXT",
        "UNKNOWN_IMAGE", "IMAGE_REJECTED", "TRUNCATED_TEXT", "EXCLUDED_SPLIT", "IMAGES_WITHOUT_TEXT",
        "DUPLICATE_IMAGE_IDS", "UNKNOWN_IMAGE_SIZE", "TEXT_ITEMS_READ", "IMAGE_RECORDS_READ", "EXAMPLES_WRITTEN_PREFIX",
]
