"""``tf.data`` inputs of the retrieval task: a positive caption-image pair and its sampled negatives.

Every element is a **group**: small pools of texts and images plus two index lists that say which text
and which image make each of the group's ``S`` pairs, the positive first (the official
``ItmRankDataset`` / ``ItmRankDatasetHardNegFrom{Text,Image}`` items, spec §5.4). Pools instead of the
``S`` pairs themselves keep one copy of each image: a hard-negative image query pairs the same image with
400 captions. :func:`gather_pairs` expands a batch of groups into backbone inputs (on the device).

* ``standard`` (``train_itm.py``): the caption with its image, with ``negative_size`` other images, and
  ``negative_size`` captions of other images with its image: ``S = 1 + 2N``.
* ``text_query`` (hard negatives from a text query): the caption with its image and ``N`` other images.
* ``image_query`` (hard negatives from an image query): the image with its caption and ``N`` captions
  that do not describe it.

Sampling. Negative **images** come from an endless stream of the shard's distinct images, each once per
image epoch, shuffled (the pretraining ITM sampler,
:func:`uniter_tf.data.pretraining_inputs._distinct_images`): every group takes ``N + 2`` consecutive
images of that stream and keeps the first ``N`` that are not its own image (a window of at most one
image epoch boundary holds the own image at most twice, so ``N`` always remain; galleries smaller than
``N + 2`` images are refused). Negative **captions** are drawn from an in-memory table of the training
captions' word ids (text only: ~60 bytes a caption), uniformly among the captions of the other images
(the table is sorted by image, so "not describing the image" is an index shift, no rejection loop). They
are drawn with replacement (official: ``random.sample``, without): for ``N = 399`` and Flickr30K's 145k
captions a query repeats a negative with probability ~0.4 %, for ``N = 1`` the two are the same.

Training texts longer than ``max_text_length`` WordPieces are dropped (spec §7.14), as queries and as
negatives. Every draw is a stateless function of ``(seed, position in the stream)``, so a resumed run that
replays the pipeline sees the same groups.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from uniter_tf.data import pretraining_inputs, schema
from uniter_tf.data.finetune_inputs import _record_dataset, list_record_files

TOKEN_IDS = "token_ids"
TEXT_MASK = "text_mask"
REGION_FEATURES = "region_features"
REGION_POSITIONS = "region_positions"
REGION_MASK = "region_mask"
#: Per group, the pool row of each pair's text / image (``[S]``, the positive first).
TEXT_INDEX = "text_index"
IMAGE_INDEX = "image_index"
#: The model input keys of a pair (the backbone contract of docs/architecture.md).
MODEL_KEYS = (TOKEN_IDS, TEXT_MASK, REGION_FEATURES, REGION_POSITIONS, REGION_MASK)
GROUP_KINDS = ("standard", "text_query", "image_query")
#: Caption records are ``task = caption`` (or older records without a task field).
_CAPTION_TASKS = (b"", schema.TASK_CAPTION.encode())


def is_caption(task_value: tf.Tensor, token_ids: tf.Tensor) -> tf.Tensor:
    """Whether a parsed record is a caption with text (what retrieval trains and evaluates on)."""
    task_ok = tf.reduce_any(tf.equal(task_value, tf.constant(_CAPTION_TASKS)))
    return tf.logical_and(task_ok, tf.size(token_ids) > 0)


@dataclasses.dataclass
class CaptionTable:
    """The training captions' word ids, sorted by image (the pool of negative captions).

    Attributes:
        word_ids: ``RaggedTensor [n_captions, None]`` int32 word ids (no ``[CLS]`` / ``[SEP]``).
        image_ids: the image id of each caption (bytes, sorted).
        image_start: image id → its first row; image_count: image id → its number of captions.
    """

    word_ids: tf.RaggedTensor
    image_ids: List[bytes]
    image_start: Dict[bytes, int]
    image_count: Dict[bytes, int]

    @property
    def num_captions(self) -> int:
        return len(self.image_ids)

    @property
    def num_images(self) -> int:
        return len(self.image_start)


def read_caption_table(files: Sequence[str], max_text_length: int) -> CaptionTable:
    """Reads the caption records' word ids and image ids (region features are not decoded).

    Raises:
        ValueError: the files hold no caption of at most ``max_text_length`` WordPieces.
    """
    spec = schema.feature_spec()
    keys = (schema.TOKEN_IDS, schema.IMAGE_ID, schema.TASK)
    dataset = _record_dataset(list(files)).map(
            lambda serialized: tf.io.parse_single_example(serialized, {key: spec[key] for key in keys}),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    rows = []
    for parsed in dataset.padded_batch(1024).as_numpy_iterator():
        for token_ids, image, task in zip(_unbatch_tokens(parsed), parsed[schema.IMAGE_ID], parsed[schema.TASK]):
            if task in _CAPTION_TASKS and 0 < len(token_ids) <= max_text_length:
                rows.append((image, token_ids))
    if not rows:
        raise ValueError(f"the retrieval training files {list(files)} hold no caption record of at most "
                         f"{max_text_length} WordPieces")
    rows.sort(key=lambda row: row[0])
    image_ids = [row[0] for row in rows]
    starts: Dict[bytes, int] = {}
    counts: Dict[bytes, int] = {}
    for position, image in enumerate(image_ids):
        starts.setdefault(image, position)
        counts[image] = counts.get(image, 0) + 1
    lengths = np.asarray([len(row[1]) for row in rows], np.int64)
    flat = np.concatenate([row[1] for row in rows]).astype(np.int32)
    return CaptionTable(tf.RaggedTensor.from_row_lengths(flat, lengths), image_ids, starts, counts)


def _unbatch_tokens(parsed) -> list:
    # A batch of FixedLenSequenceFeature values is padded with 0 to the longest; word id 0 is [PAD], never
    # a real word, so the trailing zeros are the padding.
    tokens = parsed[schema.TOKEN_IDS]
    result = []
    for row in tokens:
        nonzero = np.nonzero(row)[0]
        result.append(row[:nonzero[-1] + 1] if nonzero.size else row[:0])
    return result


class NegativeCaptions:
    """Draws word ids of captions that do not describe a given image, from a :class:`CaptionTable`."""

    def __init__(self, table: CaptionTable):
        if table.num_images < 2:
            raise ValueError(f"retrieval needs captions of at least 2 images for negatives, the training files "
                             f"have {table.num_images}")
        self.table = table
        images = sorted(table.image_start)
        self._lookup = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(images), tf.range(len(images), dtype=tf.int64)), -1)
        self._starts = tf.constant([table.image_start[image] for image in images], tf.int64)
        self._counts = tf.constant([table.image_count[image] for image in images], tf.int64)
        self._num_captions = tf.constant(table.num_captions, tf.int64)

    def sample(self, image_id: tf.Tensor, seed: tf.Tensor, count: int) -> tf.RaggedTensor:
        """``count`` word-id rows of captions of other images than ``image_id`` (uniform, with replacement).

        Raises:
            tf.errors.InvalidArgumentError: ``image_id`` has no caption in the table.
        """
        row = self._lookup.lookup(image_id)
        check = tf.debugging.Assert(row >= 0, ["retrieval: the image of a training caption is not in the "
                                               "caption table:", image_id])
        with tf.control_dependencies([check]):
            row = tf.identity(row)
        start, own = tf.gather(self._starts, row), tf.gather(self._counts, row)
        others = self._num_captions - own
        draws = tf.random.stateless_uniform([count], seed, dtype=tf.float64)
        shifted = tf.minimum(tf.cast(tf.floor(draws * tf.cast(others, tf.float64)), tf.int64), others - 1)
        # Rows [start, start + own) are the image's own captions: skip over them.
        rows = shifted + tf.where(shifted >= start, own, tf.zeros_like(own))
        return tf.gather(self.table.word_ids, rows)


def _compression(files: Sequence[str]) -> str:
    gzip = [path.endswith(".gz") for path in files]
    if all(gzip):
        return "GZIP"
    if not any(gzip):
        return ""
    raise ValueError(f"retrieval training files mix GZIP (.gz) and plain TFRecords: {list(files)}")


def _image_windows(files, seed: int, input_context, window: int, feature_dim: int) -> tf.data.Dataset:
    """Endless windows of ``window`` consecutive images of the distinct-image stream (padded)."""
    options = pretraining_inputs.PretrainingInputConfig(compression=_compression(files))
    images = pretraining_inputs._distinct_images(  # pylint: disable=protected-access
            list(files), seed, options, input_context, tf.data.AUTOTUNE, feature_dim)
    return images.padded_batch(window, padded_shapes={
            "image_id": [], "num_regions": [], "region_features": [None, feature_dim],
            "region_positions": [None, 7]}, drop_remainder=True)


def _positive_captions(files, seed: int, input_context, max_text_length: int, feature_dim: int,
                       shuffle_buffer: int) -> tf.data.Dataset:
    """Endless, shuffled caption records (word ids, image id, regions) of at most ``max_text_length``."""
    dataset = _record_dataset(list(files))
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.map(lambda serialized: schema.parse_and_decode(serialized, feature_dim),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.filter(lambda parsed: tf.logical_and(is_caption(parsed[schema.TASK], parsed[schema.TOKEN_IDS]),
                                                           tf.size(parsed[schema.TOKEN_IDS]) <= max_text_length))
    return dataset.map(lambda parsed: {
            "word_ids": parsed[schema.TOKEN_IDS], "image_id": parsed[schema.IMAGE_ID],
            "num_regions": parsed[schema.NUM_REGIONS], "region_features": parsed[schema.REGION_FEATURES],
            "region_positions": parsed[schema.REGION_POSITIONS]},
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _other_images(own_id, window, count: int):
    """The first ``count`` images of ``window`` that are not ``own_id``."""
    is_own = tf.cast(tf.equal(window["image_id"], own_id), tf.int32)
    check = tf.debugging.assert_greater_equal(
            tf.size(is_own) - tf.reduce_sum(is_own), count,
            message="retrieval: an image window holds fewer other images than negative_size")
    with tf.control_dependencies([check]):
        order = tf.argsort(is_own, stable=True)[:count]
    return {key: tf.gather(value, order) for key, value in window.items()}


def _text_pool(word_ids: tf.RaggedTensor, cls_id: int, sep_id: int) -> Dict[str, tf.Tensor]:
    """``[n, L]`` token ids with ``[CLS]`` / ``[SEP]`` and their mask, 0-padded."""
    rows = word_ids.nrows()
    cls = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], tf.constant(cls_id, tf.int32)))
    sep = tf.RaggedTensor.from_tensor(tf.fill([rows, 1], tf.constant(sep_id, tf.int32)))
    tokens = tf.concat([cls, tf.cast(word_ids, tf.int32), sep], axis=1)
    return {TOKEN_IDS: tokens.to_tensor(0), TEXT_MASK: tf.ones_like(tokens).to_tensor(0)}


def _image_pool(own: Dict[str, tf.Tensor], others: Optional[Dict[str, tf.Tensor]]) -> Dict[str, tf.Tensor]:
    """``[1 + n, R, ...]`` region features / positions / mask: the own image first, then ``others``."""
    own_count = tf.shape(own["region_features"])[0]
    if others is None:
        return {REGION_FEATURES: own["region_features"][None], REGION_POSITIONS: own["region_positions"][None],
                REGION_MASK: tf.ones([1, own_count], tf.int32)}
    other_width = tf.shape(others["region_features"])[1]
    width = tf.maximum(own_count, other_width)

    def padded(values, rows_axis):
        # Zero rows after the regions along ``rows_axis`` up to ``width`` (the mask marks them padding).
        amount = width - tf.shape(values)[rows_axis]
        paddings = tf.tensor_scatter_nd_update(tf.zeros([len(values.shape), 2], tf.int32), [[rows_axis, 1]],
                                               [amount])
        return tf.pad(values, paddings)

    features = tf.concat([padded(own["region_features"], 0)[None], padded(others["region_features"], 1)], axis=0)
    positions = tf.concat([padded(own["region_positions"], 0)[None], padded(others["region_positions"], 1)], axis=0)
    counts = tf.concat([[own_count], tf.cast(others["num_regions"], tf.int32)], axis=0)
    return {REGION_FEATURES: features, REGION_POSITIONS: positions,
            REGION_MASK: tf.sequence_mask(counts, width, dtype=tf.int32)}


def group_indices(kind: str, negative_size: int):
    """``(text_index, image_index)`` of a group's pairs, the positive first (see the module docstring)."""
    n = int(negative_size)
    if kind == "standard":
        return [0] * (1 + n) + list(range(1, n + 1)), [0] + list(range(1, n + 1)) + [0] * n
    if kind == "text_query":
        return [0] * (1 + n), list(range(1 + n))
    if kind == "image_query":
        return list(range(1 + n)), [0] * (1 + n)
    raise ValueError(f"unknown retrieval group kind {kind!r}; known: {GROUP_KINDS}")


def build_group_dataset(kind: str, files: Sequence[str], model_config, *, negative_size: int, batch_size: int,
                        max_text_length: int, seed: int = 42, input_context=None, shuffle_buffer: int = 1024,
                        caption_table: Optional[CaptionTable] = None) -> tf.data.Dataset:
    """The endless batched groups of one kind (``[B, pool, ...]`` pools and ``[B, S]`` index lists).

    Args:
        kind: ``standard``, ``text_query`` or ``image_query``.
        files: training record patterns (caption records with their images).
        model_config: the model's :class:`~uniter_tf.config.UniterConfig` (feature dim, special ids).
        negative_size: N, negatives of each side (standard) or of the query (hard negatives).
        batch_size: groups per (per-replica) batch.
        max_text_length: longest training caption in WordPieces (longer ones are dropped).
        seed: the run seed (shuffles and draws).
        input_context: ``tf.distribute`` input context (the positives and the image stream are sharded).
        shuffle_buffer: records in the positives' shuffle buffer.
        caption_table: the negative-caption pool (read from ``files`` when not given).

    Raises:
        ValueError: an unknown kind, no file, too few images for ``negative_size``, or no caption.
    """
    if kind not in GROUP_KINDS:
        raise ValueError(f"unknown retrieval group kind {kind!r}; known: {GROUP_KINDS}")
    if isinstance(negative_size, bool) or not isinstance(negative_size, int) or negative_size < 1:
        raise ValueError(f"negative_size must be a positive integer, got {negative_size!r}")
    files = list_record_files(files)
    table = caption_table or read_caption_table(files, max_text_length)
    needs_images = kind in ("standard", "text_query")
    if needs_images and table.num_images < negative_size + 2:
        raise ValueError(f"retrieval {kind}: negative_size {negative_size} needs at least {negative_size + 2} "
                         f"images in the training files, they have {table.num_images}")
    negatives = NegativeCaptions(table) if kind in ("standard", "image_query") else None
    feature_dim = int(model_config.region_feature_dim)
    cls_id, sep_id = int(model_config.cls_token_id), int(model_config.sep_token_id)
    text_index, image_index = group_indices(kind, negative_size)
    positives = _positive_captions(files, seed, input_context, max_text_length, feature_dim, shuffle_buffer)
    streams = [positives.enumerate()]
    if needs_images:
        streams.append(_image_windows(files, seed + 1, input_context, negative_size + 2, feature_dim))

    def make_group(indexed, window=None):
        position, example = indexed
        draw_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(position, tf.int64)])
        own_words = tf.RaggedTensor.from_tensor(example["word_ids"][None])
        if negatives is not None:
            words = tf.concat([own_words, negatives.sample(example["image_id"], draw_seed, negative_size)], axis=0)
        else:
            words = own_words
        others = _other_images(example["image_id"], window, negative_size) if window is not None else None
        group = {**_text_pool(words, cls_id, sep_id), **_image_pool(example, others)}
        group[TEXT_INDEX] = tf.constant(text_index, tf.int32)
        group[IMAGE_INDEX] = tf.constant(image_index, tf.int32)
        return group

    if len(streams) > 1:
        dataset = tf.data.Dataset.zip(tuple(streams)).map(make_group, num_parallel_calls=tf.data.AUTOTUNE,
                                                           deterministic=True)
    else:  # an enumerated dataset maps over (position, example) as two arguments
        dataset = streams[0].map(lambda position, example: make_group((position, example)),
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.padded_batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def gather_pairs(group_batch: Dict[str, tf.Tensor], text_index: Optional[tf.Tensor] = None,
                 image_index: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
    """Backbone inputs ``[B * S, ...]`` of a batch of groups (group-major, the positive first in each).

    Args:
        group_batch: a batch of :func:`build_group_dataset`.
        text_index, image_index: ``[B, S]`` pool rows to use instead of the batch's own index lists (the
            hard batch after mining).
    """
    text_index = group_batch[TEXT_INDEX] if text_index is None else text_index
    image_index = group_batch[IMAGE_INDEX] if image_index is None else image_index
    groups = tf.shape(text_index)[0]
    texts_per_group = tf.shape(group_batch[TOKEN_IDS])[1]
    images_per_group = tf.shape(group_batch[REGION_FEATURES])[1]
    offsets = tf.range(groups, dtype=tf.int32)[:, None]
    text_rows = tf.reshape(text_index + offsets * texts_per_group, [-1])
    image_rows = tf.reshape(image_index + offsets * images_per_group, [-1])

    def flat(values):
        shape = tf.shape(values)
        static_tail = values.shape[3:]
        flattened = tf.reshape(values, tf.concat([[-1], shape[2:]], axis=0))
        return tf.ensure_shape(flattened, [None, None] + list(static_tail))

    return {
            TOKEN_IDS: tf.gather(flat(group_batch[TOKEN_IDS]), text_rows),
            TEXT_MASK: tf.gather(flat(group_batch[TEXT_MASK]), text_rows),
            REGION_FEATURES: tf.gather(flat(group_batch[REGION_FEATURES]), image_rows),
            REGION_POSITIONS: tf.gather(flat(group_batch[REGION_POSITIONS]), image_rows),
            REGION_MASK: tf.gather(flat(group_batch[REGION_MASK]), image_rows),
    }


__all__ = ["CaptionTable", "NegativeCaptions", "read_caption_table", "build_group_dataset", "gather_pairs",
           "group_indices", "is_caption", "GROUP_KINDS", "TEXT_INDEX", "IMAGE_INDEX", "MODEL_KEYS"]
