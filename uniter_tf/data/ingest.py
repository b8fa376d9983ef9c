"""``uniter ingest``: annotations + region features -> canonical TFRecords, as a Beam pipeline.

The pipeline (:func:`IngestExamples`, a ``ptransform_fn``):

1. reads the annotation files with a reader (:mod:`uniter_tf.data.readers`), checks the text (valid
   UTF-8, not empty), tokenises it in batches with :class:`uniter_tf.tokenization.UniterTokenizer` and
   applies the length rule (``max_text_tokens``; ``drop`` as UNITER pretraining, or ``truncate``).
   Text items that share an example id keep the first in file order (``duplicate_id`` for the others);
2. assigns each text item a split: from the annotations (``train``/``restval`` -> train,
   ``val``/``dev``/``minival`` -> eval, anything else excluded and counted) or by a hash of its image
   key (``eval_fraction``; all texts of an image land in the same split);
3. streams the feature records (:mod:`uniter_tf.data.importers`), rejects bad ones (NaN/inf, wrong
   ``feature_dim``, no regions, unreadable) and joins each good record with its text items, which are a
   side input keyed by image key (texts are small; the features are never grouped or held in memory).
   A keys-only first read of the feature ids (:func:`shared_image_keys`: LMDB keys, file names, TSV
   first columns) finds join keys that several records map to (``photo.png`` / ``photo.jpg``); those
   records are all rejected (``duplicate_image_id``) because a text's image would be ambiguous;
4. finds texts whose image never arrived (``unknown_image`` / ``image_rejected``) with a keys-only
   ``CoGroupByKey``.

Two-image items (NLVR2) become one pair record (``example_id`` = the identifier): the left image in the
one-image fields, the right image in the ``*_2`` fields (:data:`uniter_tf.data.schema.SECOND_IMAGE_FEATURE_KEYS`).
Each image is joined on its own, then the two halves meet by example id (:class:`MergePairs`). An item is
written only when both its images are good, which costs a first keys-only pass over the features.

Every rejected input becomes a :class:`~uniter_tf.data.dead_letter.DeadLetter` (JSON lines) and
increments the Beam counter named after its reason (namespace ``uniter_ingest``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from uniter_tf.data import boxes as boxes_lib
from uniter_tf.data import dead_letter
from uniter_tf.data import image_keys
from uniter_tf.data import readers as readers_lib
from uniter_tf.data.readers import _io as reader_io

#: The output splits.
TRAIN, EVAL = "train", "eval"
SPLITS = (TRAIN, EVAL)
_ANNOTATION_SPLITS = {"train": TRAIN, "restval": TRAIN, "val": EVAL, "valid": EVAL, "validation": EVAL,
                      "dev": EVAL, "minival": EVAL}
OVERLONG_POLICIES = ("drop", "truncate")
#: Dead-letter output: ``{output}/dead_letters/dead_letters-SSSSS-of-NNNNN.jsonl``.
DEAD_LETTER_DIR = "dead_letters"
SUMMARY_FILE = "ingest_summary.json"
ANSWER_VOCABULARY_FILE = "ans2label.json"


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Everything the ingest pipeline needs (the CLI flags and the TFX execution properties).

    Attributes:
        annotation_format: one of :data:`uniter_tf.data.readers.FORMATS`.
        annotations: annotation files.
        annotations2: second files (SBU urls, VQA annotations, RefCOCO instances.json).
        features: feature location(s): img_db dir, npz dir, TSV / TFRecord files or globs, comma-separated.
        feature_format: see :data:`uniter_tf.data.importers.FEATURE_FORMATS`.
        feature_dim: the dataset's region feature width D; records of another width are dead letters.
        max_text_tokens: WordPiece tokens allowed per text (without [CLS]/[SEP]); UNITER uses 60.
        overlong: ``drop`` (UNITER pretraining) or ``truncate`` texts over ``max_text_tokens``.
        eval_fraction: share of images whose texts go to eval (hash split).
        splits_from_annotations: take the split from the annotations instead of the hash.
        image_key_mode: ``name`` or ``numeric`` (see :mod:`uniter_tf.data.image_keys`).
        strip_feature_prefix: prefix removed from feature image ids before the join (``nlvr2_``).
        conf_threshold: box-selection threshold; None keeps every stored region.
        min_boxes: box-selection minimum.
        max_boxes: box-selection maximum.
        answer_vocabulary: path of an ``ans2label.json`` (VQA); None builds the top-K from the annotations.
        answer_top_k: K of the built VQA vocabulary.
        cc_image_id_scheme: Conceptual Captions image ids (``row_index`` or ``url_sha1``).
        vocabulary: WordPiece vocabulary file; None = the vendored bert-base-cased.
        lower_case: lower-case before WordPiece (uncased vocabularies).
        num_shards: output shards per split (0: let the runner decide).
        split_salt: salt of the hash split (change it to draw another split).
        images_dir: VCR only: ``vcr1images`` (images and metadata ``boxes``; see :mod:`uniter_tf.data.vcr_ingest`).
        detected_features: VCR only: detected-box features placed after the ground-truth regions ("": none).
    """

    annotation_format: str
    annotations: Tuple[str, ...]
    features: str
    annotations2: Tuple[str, ...] = ()
    feature_format: str = "auto"
    feature_dim: int = 2048
    max_text_tokens: int = 60
    overlong: str = "drop"
    eval_fraction: float = 0.1
    splits_from_annotations: bool = False
    image_key_mode: str = "name"
    strip_feature_prefix: str = ""
    conf_threshold: Optional[float] = 0.2
    min_boxes: int = 10
    max_boxes: int = 100
    answer_vocabulary: Optional[str] = None
    answer_top_k: int = 3129
    cc_image_id_scheme: str = "row_index"
    vocabulary: Optional[str] = None
    lower_case: bool = False
    num_shards: int = 0
    split_salt: str = ""
    images_dir: Optional[str] = None
    detected_features: str = ""

    def __post_init__(self):
        object.__setattr__(self, "annotations", tuple(self.annotations))
        object.__setattr__(self, "annotations2", tuple(self.annotations2 or ()))
        if self.annotation_format not in readers_lib.FORMATS:
            raise ValueError(f"annotation_format must be one of {readers_lib.FORMATS}, got {self.annotation_format!r}")
        if self.overlong not in OVERLONG_POLICIES:
            raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {self.overlong!r}")
        if self.max_text_tokens < 1:
            raise ValueError(f"max_text_tokens must be >= 1, got {self.max_text_tokens}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {self.feature_dim}")
        if self.image_key_mode not in image_keys.KEY_MODES:
            raise ValueError(f"image_key_mode must be one of {image_keys.KEY_MODES}, got {self.image_key_mode!r}")
        if self.num_shards < 0:
            raise ValueError(f"num_shards must be >= 0, got {self.num_shards}")
        readers_lib.annotation_tasks(self.annotation_format, self.annotations, self.annotations2)
        if self.annotation_format == "vcr" and not self.images_dir:
            raise ValueError("format 'vcr' needs images_dir (--images-dir: the vcr1images folder with the metadata)")
        if self.annotation_format != "vcr" and (self.images_dir or self.detected_features):
            raise ValueError("images_dir / detected_features (--images-dir, --detected-features) are for format 'vcr'")

    @property
    def box_selection(self) -> Optional[boxes_lib.BoxSelection]:
        """The box-selection rule, or None to keep every stored region."""
        if self.conf_threshold is None:
            return None
        return boxes_lib.BoxSelection(self.conf_threshold, self.min_boxes, self.max_boxes)

    def to_json(self) -> str:
        """JSON of every field (the TFX component passes the config as one execution property)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "IngestConfig":
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


def resolve_answer_vocabulary(config: IngestConfig) -> Optional[Dict[str, int]]:
    """The VQA answer vocabulary: the given ``ans2label.json``, else the top-K of the annotation files.

    Returns None for formats without answers.
    """
    if config.annotation_format != "vqa":
        return None
    from uniter_tf.data.readers import vqa

    if config.answer_vocabulary:
        return vqa.load_answer_vocabulary(config.answer_vocabulary)
    if not config.annotations2:
        return {}
    return vqa.answer_vocabulary_from_annotations(list(config.annotations2), config.answer_top_k)


def hash_split(split_key: str, eval_fraction: float, salt: str = "") -> str:
    """``eval`` for a deterministic ``eval_fraction`` share of keys, else ``train``."""
    digest = hashlib.sha256((salt + "\0" + split_key).encode("utf-8", errors="surrogateescape")).digest()
    position = int.from_bytes(digest[:8], "big") / float(1 << 64)
    return EVAL if position < eval_fraction else TRAIN


def output_split(item: readers_lib.TextItem, split_key: str, config: IngestConfig) -> Optional[str]:
    """The output split of an item, or None when its annotation split is excluded (e.g. ``test``)."""
    if config.splits_from_annotations:
        return _ANNOTATION_SPLITS.get(str(item.split).lower()) if item.split is not None else None
    return hash_split(split_key, config.eval_fraction, config.split_salt)


def text_problem(item: readers_lib.TextItem) -> Optional[dead_letter.DeadLetter]:
    """A dead letter for non-string, non-UTF-8 or empty text (or ids that are not UTF-8), else None."""
    if not isinstance(item.text, str):  # readers check types; this guards readers written later
        return dead_letter.DeadLetter(str(item.example_id), dead_letter.BAD_TYPE,
                                      f"text must be a string, got {dead_letter.describe_value(item.text)}",
                                      item.source)
    for field, value in [("example id", item.example_id)] + [("image id", image_id) for image_id in item.image_ids]:
        # Ids become Beam keys, which are encoded as UTF-8: a lone surrogate there would end the run.
        if not reader_io.is_valid_utf8(value):
            shown = dead_letter.safe_text(value.encode("utf-8", "surrogateescape"))
            record_id = item.example_id if reader_io.is_valid_utf8(item.example_id) else shown
            return dead_letter.DeadLetter(record_id, dead_letter.NON_UTF8_TEXT,
                                          f"{field} is not valid UTF-8: {shown}", item.source)
    if not reader_io.is_valid_utf8(item.text):
        return dead_letter.DeadLetter(item.example_id, dead_letter.NON_UTF8_TEXT,
                                      f"text is not valid UTF-8: {dead_letter.safe_text(item.text)}", item.source)
    if not item.text.strip():
        return dead_letter.DeadLetter(item.example_id, dead_letter.EMPTY_TEXT, "text is empty", item.source)
    return None


def build_example(record, item: readers_lib.TextItem, slot: int):
    """The canonical ``tf.train.Example`` of one text item (or one image of a multi-image item).

    When the feature source has no image size (the official img_db), the annotations' size is used; if
    they have none either, the boxes are left normalised and the size recorded as 1x1.

    Returns:
        ``(example, used_unit_size)``.
    """
    from uniter_tf.data import schema
    from uniter_tf.data.importers import feature_record

    height, width, region_boxes = record.image_height, record.image_width, record.boxes
    used_unit_size = False
    if region_boxes is None or not (height > 0 and width > 0):
        if item.image_size and slot == 0:
            height, width = item.image_size
        else:
            height, width = 1, 1
            used_unit_size = True
        region_boxes = feature_record.pixel_boxes_from_normalized(record.positions, height, width)
    # Two-image items: each image's half carries the item's id; MergePairs joins the halves into one record.
    example_id = item.example_id
    example = schema.make_example(
            image_id=item.image_ids[slot], region_features=record.features, region_boxes=region_boxes,
            region_positions=record.positions, image_height=height, image_width=width,
            soft_labels=record.soft_labels, example_id=example_id, text=item.text,
            token_ids=list(item.token_ids or ()), answers=item.answers,
            answer_labels=item.answer_labels, answer_scores=item.answer_scores, label=item.label,
            target_box=item.target_box, task=item.task)
    return example, used_unit_size


# --------------------------------------------------------------------------------------------- Beam parts


def _counter(name: str):
    return Metrics.counter(dead_letter.METRICS_NAMESPACE, name)


def _read_annotations(task, annotation_format: str, options: readers_lib.ReaderOptions):
    """Reader outputs; an unexpected failure mid-file becomes a file-level dead letter."""
    path = task[0]
    try:
        yield from readers_lib.read_task(annotation_format, task, options)
    except Exception as error:  # pylint: disable=broad-except
        # Readers turn bad records into dead letters; anything they did not foresee (a TypeError from an
        # unexpected JSON shape, a RecursionError) still costs only the rest of this file, never the run.
        yield dead_letter.DeadLetter(path, dead_letter.UNREADABLE_INPUT,
                                     f"reading stopped: {type(error).__name__}: {dead_letter.safe_text(error)}",
                                     path, kind="input")


class SortTextOutputs(beam.DoFn):
    """Items that pass the text checks go on; dead letters to the ``dead`` output."""

    def __init__(self):
        self._read = _counter(dead_letter.TEXT_ITEMS_READ)

    def process(self, element):
        if isinstance(element, dead_letter.DeadLetter):
            if element.kind != "input":
                self._read.inc()
            yield beam.pvalue.TaggedOutput("dead", element)
            return
        self._read.inc()
        problem = text_problem(element)
        if problem is not None:
            yield beam.pvalue.TaggedOutput("dead", problem)
        else:
            yield element

class TokenizeBatch(beam.DoFn):
    """Tokenises a batch of items and applies the length rule."""

    def __init__(self, config: IngestConfig):
        self._config = config
        self._tokenizer = None
        self._truncated = _counter(dead_letter.TRUNCATED_TEXT)

    def setup(self):
        from uniter_tf.tokenization import UniterTokenizer

        self._tokenizer = UniterTokenizer(vocabulary=self._config.vocabulary, lower_case=self._config.lower_case)

    def process(self, batch):
        token_lists = self._tokenizer.encode([item.text for item in batch])
        limit = self._config.max_text_tokens
        for item, token_ids in zip(batch, token_lists):
            if not token_ids:
                yield beam.pvalue.TaggedOutput("dead", dead_letter.DeadLetter(
                        item.example_id, dead_letter.EMPTY_TEXT, "text has no WordPiece tokens", item.source))
                continue
            if len(token_ids) > limit:
                if self._config.overlong == "drop":
                    yield beam.pvalue.TaggedOutput("dead", dead_letter.DeadLetter(
                            item.example_id, dead_letter.OVERLONG_TEXT,
                            f"{len(token_ids)} tokens > max_text_tokens={limit}", item.source))
                    continue
                token_ids = token_ids[:limit]
                self._truncated.inc()
            yield dataclasses.replace(item, token_ids=tuple(int(token) for token in token_ids))

class AssignSplit(beam.DoFn):
    """``(image_key, (item, slot, split))`` per image of each item; excluded splits are counted."""

    def __init__(self, config: IngestConfig):
        self._config = config
        self._excluded = _counter(dead_letter.EXCLUDED_SPLIT)

    def process(self, item):
        try:
            keys = [image_keys.image_key(image_id, self._config.image_key_mode) for image_id in item.image_ids]
        except ValueError as error:
            yield beam.pvalue.TaggedOutput("dead", dead_letter.DeadLetter(
                    item.example_id, dead_letter.UNKNOWN_IMAGE, str(error), item.source))
            return
        split = output_split(item, keys[0], self._config)
        if split is None:
            self._excluded.inc()
            return
        for slot, key in enumerate(keys):
            yield key, (item, slot, split)

class ReadFeatures(beam.DoFn):
    """Streams one feature shard; good records as ``(image_key, record)``, the rest to ``dead``/``rejected``.

    The side input ``shared_keys`` (join key -> number of records, from :func:`shared_image_keys`) names
    the keys that several records map to; those records are rejected as ``duplicate_image_id``.
    """

    def __init__(self, config: IngestConfig, emit_dead: bool = True):
        self._config = config
        self._emit_dead = emit_dead
        self._read = _counter(dead_letter.IMAGE_RECORDS_READ)

    def process(self, shard, shared_keys=None):
        from uniter_tf.data import importers

        config = self._config
        shared_keys = shared_keys or {}
        try:
            results = importers.iter_shard(shard, config.box_selection)
            for result in results:
                problem = result if isinstance(result, dead_letter.DeadLetter) else result.problem(config.feature_dim)
                key = None
                if problem is None:
                    try:
                        key = self._key(result.image_id)
                    except ValueError as error:
                        problem = dead_letter.DeadLetter(result.image_id, dead_letter.MISSING_FIELD, str(error),
                                                         result.source, kind="image")
                if problem is None and key in shared_keys:
                    problem = dead_letter.DeadLetter(
                            result.image_id, dead_letter.DUPLICATE_IMAGE_ID,
                            f"{shared_keys[key]} feature records have the join key {key!r} (e.g. photo.png and "
                            "photo.jpg): which image a text means is ambiguous, so all of them are rejected",
                            result.source, kind="image")
                if problem is None:
                    if self._emit_dead:
                        self._read.inc()
                    yield key, result
                    continue
                if self._emit_dead:
                    if problem.kind != "input":
                        self._read.inc()
                    yield beam.pvalue.TaggedOutput("dead", problem)
                if problem.kind == "image":
                    try:
                        yield beam.pvalue.TaggedOutput("rejected", (self._key(problem.record_id), problem.reason))
                    except ValueError:
                        pass  # an id without a usable key cannot match any text
        except Exception as error:  # a shard that fails part-way (I/O, corrupt container) is a dead letter
            if self._emit_dead:
                yield beam.pvalue.TaggedOutput("dead", dead_letter.DeadLetter(
                        ",".join(shard.paths)[:200], dead_letter.UNREADABLE_INPUT,
                        f"reading stopped: {dead_letter.safe_text(error)}", ",".join(shard.paths)[:200],
                        kind="input"))

    def _key(self, image_id):
        prefix = self._config.strip_feature_prefix
        return image_keys.image_key(image_id, self._config.image_key_mode, prefix)

def _natural_key(text: str):
    """Sort key that orders ``annotations[9]`` before ``annotations[10]`` (file order of the sources)."""
    parts = re.split(r"(\d+)", text)
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts))


class KeepFirstOfEachId(beam.DoFn):
    """``(example_id, items)`` -> the first item (in source order); the others are ``duplicate_id`` letters.

    Two text items with one example id (two COCO captions with ``"id": 101``) would be written as two
    records that downstream code cannot tell apart; the first in file order is kept.
    """

    def process(self, keyed):
        example_id, items = keyed
        items = sorted(items, key=lambda item: _natural_key(item.source))
        yield items[0]
        for item in items[1:]:
            yield beam.pvalue.TaggedOutput("dead", dead_letter.DeadLetter(
                    example_id, dead_letter.DUPLICATE_ID,
                    f"example id {example_id!r} is already used by {items[0].source}", item.source))


def _shard_image_keys(shard, config: IngestConfig):
    """Join keys of every record of a shard, from the cheap id-only read (the keys pass)."""
    from uniter_tf.data import importers

    try:
        for image_id in importers.iter_shard_image_ids(shard, config.box_selection):
            try:
                yield image_keys.image_key(image_id, config.image_key_mode, config.strip_feature_prefix)
            except ValueError:
                continue  # no usable key: it can collide with nothing (the full read dead-letters it)
    except Exception:  # pylint: disable=broad-except  (the full read reports an unreadable shard)
        return


def shared_image_keys(pipeline, shards: Sequence, config: IngestConfig, label: str = "ImageKeys"):
    """``(join key, count)`` for every key that several feature records map to (counted once each).

    Different images can map to one key (``photo.png`` / ``photo.jpg`` extracted to ``photo``; two
    ``coco_*2014_000000000009`` names in ``numeric`` mode). A text's image would then be ambiguous, so
    those records are rejected rather than each joined to the texts.
    """
    def count(key_count):
        _counter(dead_letter.DUPLICATE_IMAGE_IDS).inc()
        return key_count

    return (pipeline
            | f"{label}Shards" >> beam.Create(list(shards))
            | f"{label}Read" >> beam.FlatMap(_shard_image_keys, config)
            | f"{label}Count" >> beam.combiners.Count.PerElement()
            | f"{label}Shared" >> beam.Filter(lambda key_count: key_count[1] > 1)
            | f"{label}Counter" >> beam.Map(count))


class JoinWithTexts(beam.DoFn):
    """Builds the examples of one image from the side-input text index; reports the key as seen.

    The serialized examples leave as elements on the split outputs (``train`` / ``eval``) and Beam's file
    sink writes them (:func:`write_examples`). The DoFn never opens a file: a runner retries a failed
    bundle and keeps only the outputs of the attempt that succeeded, so a record is written exactly once,
    whereas files written (or renamed into place) by a DoFn survive the failed attempt and the retry
    writes them again. With ``num_shards=0`` the sink's writer is fused with this DoFn and streams each
    bundle into its own file, so memory stays flat in the dataset size.
    """

    def __init__(self, pair_halves: bool = False):
        # With pair_halves (NLVR2), each image's record goes to the "halves" output for MergePairs.
        self._pair_halves = pair_halves
        self._unit_size = _counter(dead_letter.UNKNOWN_IMAGE_SIZE)
        self._written = {split: _counter(dead_letter.EXAMPLES_WRITTEN_PREFIX + split) for split in SPLITS}

    def process(self, keyed_record, text_index):
        key, record = keyed_record
        yield beam.pvalue.TaggedOutput("seen", key)
        for item, slot, split in text_index[key]:
            try:
                example, used_unit_size = build_example(record, item, slot)
            except (ValueError, TypeError, OverflowError) as error:  # one record's problem, not the run's
                yield beam.pvalue.TaggedOutput("dead", dead_letter.DeadLetter(
                        item.example_id, dead_letter.UNREADABLE_INPUT,
                        f"cannot build the record: {dead_letter.safe_text(error)}", item.source))
                continue
            if used_unit_size:
                self._unit_size.inc()
            if self._pair_halves:
                yield beam.pvalue.TaggedOutput("halves", (item.example_id, (slot, split, example.SerializeToString())))
                continue
            self._written[split].inc()
            yield beam.pvalue.TaggedOutput(split, example.SerializeToString())


class MergePairs(beam.DoFn):
    """``(example_id, [(slot, split, half)])`` → one two-image record on its split output.

    Slot 0 (the left image) keeps the one-image fields, slot 1's image becomes the ``*_2`` fields. An item
    with a half missing had that half's problem reported as a dead letter already (JoinWithTexts), so it
    is dropped here without a second letter.
    """

    def __init__(self):
        self._written = {split: _counter(dead_letter.EXAMPLES_WRITTEN_PREFIX + split) for split in SPLITS}

    def process(self, keyed_halves):
        from uniter_tf.data import schema

        example_id, halves = keyed_halves
        by_slot = {slot: (split, half) for slot, split, half in halves}
        if set(by_slot) != {0, 1}:
            return
        split = by_slot[0][0]
        try:
            merged = schema.merge_second_image_features(by_slot[0][1], by_slot[1][1])
        except ValueError as error:
            yield beam.pvalue.TaggedOutput("dead", dead_letter.DeadLetter(
                    example_id, dead_letter.UNREADABLE_INPUT,
                    f"cannot build the pair record: {dead_letter.safe_text(error)}", ""))
            return
        self._written[split].inc()
        yield beam.pvalue.TaggedOutput(split, merged.SerializeToString())


def _missing_image_letters(grouped, multi_image: bool):
    """From ``(key, {'texts', 'seen', 'rejected'})``: dead letters for texts whose image is missing."""
    key, groups = grouped
    texts, seen, rejected = list(groups["texts"]), list(groups["seen"]), list(groups["rejected"])
    if seen:
        if not texts:
            _counter(dead_letter.IMAGES_WITHOUT_TEXT).inc()
        return
    reason = dead_letter.IMAGE_REJECTED if rejected else dead_letter.UNKNOWN_IMAGE
    detail = (f"image {key!r} was rejected ({rejected[0]})" if rejected
              else f"no feature record for image {key!r}")
    for example_id, source in texts:
        yield dead_letter.DeadLetter(example_id, reason, detail, source)


def _ingest_expand(pipeline, config: IngestConfig, answer_to_label: Optional[Dict[str, int]] = None,
                   shards: Optional[Sequence] = None, output_prefixes: Optional[Dict[str, str]] = None):
    from uniter_tf.data import importers

    if config.annotation_format == "vcr":  # one record per question, several texts, ground-truth regions first
        from uniter_tf.data.vcr_ingest import vcr_ingest_expand

        return vcr_ingest_expand(pipeline, config, shards, output_prefixes)
    options = readers_lib.ReaderOptions(answer_to_label=answer_to_label,
                                        cc_image_id_scheme=config.cc_image_id_scheme)
    tasks = readers_lib.annotation_tasks(config.annotation_format, config.annotations, config.annotations2)
    if shards is None:
        shards = importers.list_shards(config.features, config.feature_format)
    multi_image = config.annotation_format == "nlvr2"

    read = (pipeline
            | "AnnotationFiles" >> beam.Create(tasks)
            | "ReadAnnotations" >> beam.FlatMap(_read_annotations, config.annotation_format, options)
            | "CheckText" >> beam.ParDo(SortTextOutputs()).with_outputs("dead", main="items"))
    unique = (read.items
              | "ByExampleId" >> beam.Map(lambda item: (item.example_id, item))
              | "GroupByExampleId" >> beam.GroupByKey()
              | "OnePerExampleId" >> beam.ParDo(KeepFirstOfEachId()).with_outputs("dead", main="items"))
    tokenized = (unique.items
                 | "BatchTexts" >> beam.BatchElements(min_batch_size=16, max_batch_size=512)
                 | "Tokenize" >> beam.ParDo(TokenizeBatch(config)).with_outputs("dead", main="items"))
    keyed_texts = tokenized.items | "AssignSplit" >> beam.ParDo(AssignSplit(config)).with_outputs("dead", main="keyed")
    dead = [read.dead, unique.dead, tokenized.dead, keyed_texts.dead]
    text_index = keyed_texts.keyed

    shared_keys = beam.pvalue.AsDict(shared_image_keys(pipeline, shards, config))

    def read_features(label, emit_dead):
        return (pipeline
                | f"{label}Shards" >> beam.Create(list(shards))
                | f"{label}Read" >> beam.ParDo(ReadFeatures(config, emit_dead), shared_keys).with_outputs(
                        "dead", "rejected", main="records"))

    features = read_features("Features", emit_dead=True)
    dead.append(features.dead)
    text_keys = text_index | "TextKeys" >> beam.Map(lambda kv: (kv[0], (kv[1][0].example_id, kv[1][0].source)))
    if multi_image:
        # Keep only items whose every image is good (first, keys-only pass), then join on a second pass.
        good_keys = features.records | "GoodKeys" >> beam.Map(lambda kv: (kv[0], None))
        slot_status = (
                {"texts": text_index | "SlotKeys" >> beam.Map(lambda kv: (kv[0], (kv[1][0].example_id, kv[1][1]))),
                 "seen": good_keys}
                | "JoinSlotKeys" >> beam.CoGroupByKey()
                | "SlotStatus" >> beam.FlatMap(
                        lambda kv: [(example_id, (slot, bool(kv[1]["seen"]))) for example_id, slot in kv[1]["texts"]]))
        complete = (slot_status
                    | "GroupSlots" >> beam.GroupByKey()
                    | "CompleteItems" >> beam.FlatMap(
                            lambda kv: [(kv[0], None)] if all(ok for _, ok in kv[1]) else []))
        text_index = (
                {"index": text_index | "ByExample" >> beam.Map(lambda kv: (kv[1][0].example_id, kv)),
                 "complete": complete}
                | "JoinComplete" >> beam.CoGroupByKey()
                | "KeepComplete" >> beam.FlatMap(lambda kv: list(kv[1]["index"]) if kv[1]["complete"] else []))
        join_records = read_features("JoinFeatures", emit_dead=False).records
    else:
        join_records = features.records
    joined = join_records | "JoinWithTexts" >> beam.ParDo(
            JoinWithTexts(pair_halves=multi_image), beam.pvalue.AsMultiMap(text_index)).with_outputs(
                    "seen", "dead", "halves", *SPLITS)
    dead.append(joined.dead)
    split_outputs = joined
    if multi_image:
        split_outputs = (joined.halves
                         | "GroupPairHalves" >> beam.GroupByKey()
                         | "MergePairs" >> beam.ParDo(MergePairs()).with_outputs("dead", *SPLITS))
        dead.append(split_outputs.dead)
    seen = joined.seen if not multi_image else (features.records | "SeenKeys" >> beam.Map(lambda kv: kv[0]))
    missing = ({"texts": text_keys,
                "seen": seen | "SeenPairs" >> beam.Map(lambda key: (key, None)),
                "rejected": features.rejected}
               | "JoinImageKeys" >> beam.CoGroupByKey()
               | "MissingImages" >> beam.FlatMap(_missing_image_letters, multi_image))
    if multi_image:
        # One dead letter per item, not per image: drop the second image's letter of the same item.
        missing = (missing
                   | "ByItem" >> beam.Map(lambda letter: (letter.record_id, letter))
                   | "OnePerItem" >> beam.CombinePerKey(lambda letters: sorted(letters, key=lambda l: l.detail)[0])
                   | "ItemLetters" >> beam.Values())
    dead.append(missing)
    dead_letters = tuple(dead) | "AllDeadLetters" >> beam.Flatten()
    if output_prefixes:
        for split in SPLITS:
            write_examples(split_outputs[split], output_prefixes[split], config.num_shards,
                           label=f"Write{split.capitalize()}")
        outputs = {}
    else:
        outputs = {split: split_outputs[split] for split in SPLITS}
    outputs["dead_letters"] = dead_letters
    return outputs


def IngestExamples(config: IngestConfig, answer_to_label: Optional[Dict[str, int]] = None,
                   shards: Optional[Sequence] = None, output_prefixes: Optional[Dict[str, str]] = None):
    """The ingest ``PTransform`` (a ``ptransform_fn``): apply it to a ``Pipeline``.

    Args:
        config: the ingest configuration.
        answer_to_label: the VQA answer vocabulary (see :func:`resolve_answer_vocabulary`).
        shards: feature shards; default :func:`uniter_tf.data.importers.list_shards` of ``config.features``.
        output_prefixes: split -> file prefix: write the examples with Beam's file sink
            (:func:`write_examples`, ``config.num_shards`` shards; 0: one file per bundle, streamed, so
            memory stays flat; Beam's sink stages under a ``beam-temp-*`` folder next to each prefix and
            removes it when the write is finalised). None: return them as PCollections instead.

    Returns:
        A transform whose output is a dict: ``dead_letters`` (:class:`DeadLetter` objects, not yet counted
        or written; see :func:`WriteDeadLetters`) and, without ``output_prefixes``, ``train`` and ``eval``
        (serialized canonical examples, e.g. for :func:`write_examples`).
    """
    return beam.ptransform_fn(_ingest_expand)(config, answer_to_label, shards, output_prefixes)


def _write_dead_letters_expand(dead_letters, output_dir: str):

    def count_and_serialize(letter):
        _counter(letter.reason).inc()
        return letter.to_json()

    return (dead_letters
            | "CountDeadLetters" >> beam.Map(count_and_serialize)
            | "WriteDeadLetters" >> beam.io.WriteToText(
                    os.path.join(output_dir, "dead_letters"), file_name_suffix=".jsonl",
                    shard_name_template="-SSSSS-of-NNNNN"))


def WriteDeadLetters(output_dir: str):
    """A ``ptransform_fn``: counts each dead letter under its reason and writes them as JSON lines."""
    return beam.ptransform_fn(_write_dead_letters_expand)(output_dir)


def write_examples(examples, output_prefix: str, num_shards: int = 0, label: str = "WriteExamples"):
    """Writes serialized examples as sharded GZIP TFRecords ``{prefix}-SSSSS-of-NNNNN.tfrecord.gz``."""
    from apache_beam.io.filesystem import CompressionTypes

    return examples | label >> beam.io.WriteToTFRecord(
            output_prefix, file_name_suffix=".tfrecord.gz", compression_type=CompressionTypes.GZIP,
            num_shards=num_shards, shard_name_template="-SSSSS-of-NNNNN")



def ensure_split_files(split_dir: str, file_prefix: str) -> None:
    """Writes an empty GZIP TFRecord into a split folder that got no records (readers expect a file)."""
    import tensorflow as tf

    tf.io.gfile.makedirs(split_dir)
    if not tf.io.gfile.glob(os.path.join(split_dir, "*.gz")):
        with tf.io.TFRecordWriter(os.path.join(split_dir, f"{file_prefix}-empty.tfrecord.gz"),
                                  tf.io.TFRecordOptions(compression_type="GZIP")):
            pass


def clear_previous_outputs(prefixes: Dict[str, str], dead_letter_dir: str) -> List[str]:
    """Deletes what an earlier (crashed or differently sharded) run left under these output prefixes.

    Beam's sink removes its ``beam-temp-*`` folder only when the write is finalised, and names shards by
    the count of this run; a crashed run's temp folder, or ``data-00001-of-00002`` of an earlier run next to
    this run's ``data-00000-of-00001``, would otherwise be read back as records. Only names this module
    writes are touched (any TensorFlow filesystem).

    Returns:
        The deleted paths.
    """
    import tensorflow as tf

    patterns = []
    for prefix in prefixes.values():
        directory = os.path.dirname(prefix)
        patterns += [f"{prefix}-*.tfrecord.gz", os.path.join(directory, "beam-temp-*")]
    patterns += [os.path.join(dead_letter_dir, "dead_letters-*.jsonl"), os.path.join(dead_letter_dir, "beam-temp-*")]
    deleted = []
    for pattern in patterns:
        parent = os.path.dirname(pattern)
        if not tf.io.gfile.isdir(parent):
            continue
        for path in tf.io.gfile.glob(pattern):
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)
            deleted.append(path)
    return deleted



def write_answer_vocabulary(output_dir: str, answer_to_label: Dict[str, int]) -> str:
    """Writes ``{output_dir}/ans2label.json`` through ``tf.io.gfile`` (local, ``gs://``, ``ram://``); returns it."""
    import tensorflow as tf

    tf.io.gfile.makedirs(output_dir)
    path = os.path.join(output_dir, ANSWER_VOCABULARY_FILE)
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(answer_to_label, ensure_ascii=False, sort_keys=True))
    return path


def write_summary(output_dir: str, config: IngestConfig, counts: Dict[str, int]) -> str:
    """Writes ``{output_dir}/ingest_summary.json`` (config + counters) through ``tf.io.gfile``; returns it."""
    import tensorflow as tf

    path = os.path.join(output_dir, SUMMARY_FILE)
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps({"config": dataclasses.asdict(config), "counts": counts}, indent=2,
                                sort_keys=True))
    return path


def query_counters(result) -> Dict[str, int]:
    """The ``uniter_ingest`` counters of a finished pipeline, summed over steps."""
    from apache_beam.metrics.metric import MetricsFilter

    counts: Dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(dead_letter.METRICS_NAMESPACE))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counts[counter.key.metric.name] = counts.get(counter.key.metric.name, 0) + int(value or 0)
    return counts


@dataclasses.dataclass
class IngestResult:
    """What :func:`run_ingest` produced.

    Attributes:
        counts: the counters (dead-letter reasons and the other ``uniter_ingest`` counters).
        split_dirs: split name -> directory of its TFRecord shards.
        dead_letter_dir: directory of the dead-letter JSONL files.
        summary_path: the JSON summary file.
    """

    counts: Dict[str, int]
    split_dirs: Dict[str, str]
    dead_letter_dir: str
    summary_path: str

    @property
    def num_dead_letters(self) -> int:
        """Dead letters of every reason."""
        return sum(self.counts.get(reason, 0) for reason in dead_letter.ALL_REASONS)


def run_ingest(config: IngestConfig, output_dir: str, pipeline_args: Optional[List[str]] = None,
               split_dir_names: Optional[Dict[str, str]] = None, file_prefix: str = "data") -> IngestResult:
    """Runs the ingest pipeline (DirectRunner unless ``pipeline_args`` say otherwise) and waits for it.

    Writes ``{output_dir}/{train,eval}/data-SSSSS-of-NNNNN.tfrecord.gz`` (``num_shards`` files, or one per
    Beam bundle with ``num_shards=0``), the dead letters under ``{output_dir}/dead_letters/`` (both through
    Beam's file sinks, so a retried bundle never doubles a record), then ``ingest_summary.json`` and, for
    VQA, ``ans2label.json`` through ``tf.io.gfile``. Shards, sink temp folders and dead letters of an
    earlier run into the same folders are deleted first (:func:`clear_previous_outputs`), so re-running a
    crashed ingest neither doubles nor mixes records. ``output_dir`` may be on any filesystem that both Beam
    and TensorFlow know (local, ``gs://``).

    Args:
        config: the ingest configuration.
        output_dir: output directory (created).
        pipeline_args: Beam pipeline options (``--runner``, ``--direct_num_workers``, ...).
        split_dir_names: split -> folder name (default: the split name; TFX uses ``Split-<name>``).
        file_prefix: the shard file name prefix.

    Raises:
        ValueError: Beam has no filesystem for ``output_dir`` (e.g. TensorFlow's ``ram://``).
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    import tensorflow as tf
    from apache_beam.io.filesystems import FileSystems

    try:  # fail before any work: the records and dead letters go through Beam's file sinks
        FileSystems.get_filesystem(output_dir)
    except ValueError as error:
        raise ValueError(f"ingest output {output_dir!r}: Beam's file sinks cannot write there ({error}); use a "
                         "local path or a filesystem Beam knows (gs://, s3://, hdfs://)") from error
    split_dir_names = split_dir_names or {split: split for split in SPLITS}
    tf.io.gfile.makedirs(output_dir)
    answer_to_label = resolve_answer_vocabulary(config)
    if answer_to_label is not None:
        write_answer_vocabulary(output_dir, answer_to_label)
    split_dirs = {split: os.path.join(output_dir, split_dir_names[split]) for split in SPLITS}
    dead_letter_dir = os.path.join(output_dir, DEAD_LETTER_DIR)
    options = PipelineOptions(pipeline_args or [])
    pipeline = beam.Pipeline(options=options)
    prefixes = {split: os.path.join(split_dirs[split], file_prefix) for split in SPLITS}
    clear_previous_outputs(prefixes, dead_letter_dir)
    outputs = pipeline | "Ingest" >> IngestExamples(config, answer_to_label, output_prefixes=prefixes)
    _ = outputs["dead_letters"] | "DeadLetters" >> WriteDeadLetters(dead_letter_dir)
    result = pipeline.run()
    result.wait_until_finish()
    for split in SPLITS:
        ensure_split_files(split_dirs[split], file_prefix)
    counts = query_counters(result)
    summary_path = write_summary(output_dir, config, counts)
    return IngestResult(counts=counts, split_dirs=split_dirs, dead_letter_dir=dead_letter_dir,
                        summary_path=summary_path)
