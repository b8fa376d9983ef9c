"""``tf.data`` input pipelines for UNITER pretraining: one per task (spec §3.2-3.7, §4.6).

From the canonical TFRecords (docs/architecture.md) each task builds an endless stream of padded batches:

* ``mlm``: text masked with the 80/10/10 rule (:func:`uniter_tf.data.masking.mask_tokens`), image intact;
  target ``mlm_labels [B, T]`` (-1 where not a target, on [CLS]/[SEP] and padding).
* ``mrfr`` / ``mrckl`` (and ``mrc``): 15% of the regions masked, their features zeroed and
  ``masked_regions [B, N]`` passed so the model adds its mask embedding; targets ``region_feature_targets [B, N, D]``
  (the unmasked features) or ``soft_labels [B, N, C]`` (the detector's soft labels).
* ``itm``: with probability 0.5 the image is replaced by a different image; target ``itm_labels [B]``
  (1 = matched). The OT inputs of the official ``itm_ot_collate`` (scatter index, text/image padding) are
  functions of ``text_mask`` and ``region_mask`` in our compact layout, so the batch carries those two
  masks and the model derives the rest.

ITM negatives follow the official ``ItmDataset`` (spec §3.6): a negative's image is drawn uniformly from
the **distinct images** of the same dataset (this input pipeline's shard of it, as the official per-rank
``all_imgs``), never the caption's own. Records are denormalised (each carries its image's features), so
there is no random access by image id; instead a second, independent pass over the same files yields each
distinct image once per *image epoch* (a ``MutableHashTable`` remembers the last image epoch that emitted
an id: O(distinct ids) memory, no features kept), shuffled with a buffer of ``itm_negative_pool_size``
images. Every ITM example is zipped with the next two images of that stream and a negative takes a random one
of them, the other one when that is its own image. An image is therefore drawn with the same probability whatever its
number of captions (the caption-weighted window the first version used favoured images with many
captions, and a window holding one image forced positives). When the shard holds a single image the
example stays a positive.

Masks and negatives are redrawn every epoch: every random op is stateless and seeded with
``(seed, task, epoch, position in the epoch)``, nothing is cached. The stream is therefore a pure function
of the seed, which makes a run reproducible and lets a resumed run replay the input position exactly.

Batching is padding-efficient: examples are grouped by ``(text bucket, region bucket)``; each batch is
padded to its bucket's boundaries (few distinct shapes for XLA/TPU), and with ``max_tokens`` the batch
size of a bucket follows a token budget like the official ``TokenBucketSampler``.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import tensorflow as tf

from uniter_tf.data import masking
from uniter_tf.data import schema

#: Task names (official ``train_datasets[*].tasks``); ``mrc`` is the hard-label variant of ``mrckl``.
TASKS = ("itm", "mlm", "mrfr", "mrckl", "mrc")
REGION_TASKS = ("mrfr", "mrckl", "mrc")

# Batch keys (the backbone inputs of docs/architecture.md plus the targets).
TOKEN_IDS = "token_ids"
TEXT_MASK = "text_mask"
REGION_FEATURES = "region_features"
REGION_POSITIONS = "region_positions"
REGION_MASK = "region_mask"
MASKED_REGIONS = "masked_regions"
MLM_LABELS = "mlm_labels"
MRFR_TARGETS = "region_feature_targets"
MRC_TARGETS = "soft_labels"
ITM_LABELS = "itm_labels"

#: Batch keys padded along the text axis (all others with a leading axis are per region).
TEXT_KEYS = (TOKEN_IDS, TEXT_MASK, MLM_LABELS)

FilePatterns = Union[str, Sequence[str]]


@dataclasses.dataclass(frozen=True)
class PretrainingInputConfig:
    """Options of the pretraining input pipelines.

    Attributes:
        batch_size: examples per replica and per micro-batch when ``max_tokens`` is 0.
        max_tokens: token budget per replica batch (text + regions, padding included), as the official
            ``train_batch_size``; 0 uses the fixed ``batch_size``.
        batch_size_multiple: with ``max_tokens``, batch sizes are rounded down to a multiple of this
            (official: 8); never below one multiple.
        max_text_length: longest text in WordPiece tokens without [CLS]/[SEP]; longer texts are dropped,
            as the official ``max_txt_len`` filter (60).
        text_bucket_boundaries: padded text lengths (with [CLS]/[SEP]); the last must be
            ``>= max_text_length + 2``.
        region_bucket_boundaries: padded region counts; the last must cover the largest region count.
        shuffle_buffer: records in the per-epoch shuffle buffer (0: no shuffle, for evaluation).
        itm_negative_pool_size: shuffle buffer (in distinct images) of the image stream that ITM negatives
            are drawn from; the draw is uniform over the shard's distinct images whatever its size, the
            buffer only decorrelates consecutive draws.
        mlm_probability: MLM selection probability.
        mrm_probability: MRM selection probability.
        itm_negative_probability: probability that an ITM example gets a different image.
        compression: ``"GZIP"`` (canonical shards), ``"ZLIB"`` or ``""``.
        num_parallel_calls: parallelism of the decode/mask maps (``-1`` = AUTOTUNE).
    """

    batch_size: int = 8
    max_tokens: int = 0
    batch_size_multiple: int = 8
    max_text_length: int = 60
    text_bucket_boundaries: Tuple[int, ...] = (16, 24, 32, 48, 64)
    region_bucket_boundaries: Tuple[int, ...] = (16, 36, 64, 100)
    shuffle_buffer: int = 1024
    itm_negative_pool_size: int = 64
    mlm_probability: float = 0.15
    mrm_probability: float = 0.15
    itm_negative_probability: float = 0.5
    compression: str = "GZIP"
    num_parallel_calls: int = -1

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_tokens < 0 or self.batch_size_multiple < 1:
            raise ValueError("max_tokens must be >= 0 and batch_size_multiple >= 1")
        for name in ("text_bucket_boundaries", "region_bucket_boundaries"):
            boundaries = tuple(int(b) for b in getattr(self, name))
            if not boundaries or list(boundaries) != sorted(set(boundaries)) or boundaries[0] < 1:
                raise ValueError(f"{name} must be strictly increasing positive ints, got {boundaries}")
            object.__setattr__(self, name, boundaries)
        if self.text_bucket_boundaries[-1] < self.max_text_length + 2:
            raise ValueError(f"the last text bucket ({self.text_bucket_boundaries[-1]}) must hold "
                             f"max_text_length + 2 = {self.max_text_length + 2} tokens")
        for name in ("mlm_probability", "mrm_probability", "itm_negative_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.itm_negative_pool_size < 2:
            raise ValueError(f"itm_negative_pool_size must be >= 2, got {self.itm_negative_pool_size}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PretrainingInputConfig":
        """Builds the options from a dict; unknown keys raise ``ValueError`` naming them."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown input options: {unknown}; known: {sorted(names)}")
        values = dict(values)
        for key in ("text_bucket_boundaries", "region_bucket_boundaries"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def batch_size_for(self, text_length: int, num_regions: int) -> int:
        """The per-replica batch size of the bucket padded to ``(text_length, num_regions)``."""
        if not self.max_tokens:
            return self.batch_size
        fitting = self.max_tokens // (text_length + num_regions)
        return max(self.batch_size_multiple, fitting - fitting % self.batch_size_multiple)


def _task_seed(seed: int, task: str) -> int:
    # A stable per-task offset (crc32, not hash(): Python salts str hashes per process).
    return (int(seed) * 1_000_003 + zlib.crc32(task.encode("utf-8"))) % (2 ** 62)


def list_files(file_patterns: FilePatterns) -> list:
    """Expands glob patterns to a sorted list of files; raises ``ValueError`` when nothing matches."""
    patterns = [file_patterns] if isinstance(file_patterns, (str, bytes)) else list(file_patterns)
    files = []
    for pattern in patterns:
        matches = tf.io.gfile.glob(pattern)
        if not matches:
            raise ValueError(f"no TFRecord file matches {pattern!r}")
        files.extend(matches)
    return sorted(set(files))


def _decode_for_pretraining(serialized, feature_dim: int, num_soft_labels: Optional[int]):
    decoded = schema.parse_and_decode(serialized, feature_dim=feature_dim, num_soft_labels=num_soft_labels)
    record_ids = [decoded[schema.EXAMPLE_ID], decoded[schema.IMAGE_ID]]
    check = tf.debugging.Assert(
            tf.size(decoded[schema.TOKEN_IDS]) > 0,
            ["pretraining needs text records: token_ids is empty in record (example_id, image_id):"]
            + record_ids)
    with tf.control_dependencies([check]):
        token_ids = tf.identity(decoded[schema.TOKEN_IDS])
    return {
            "example_id": decoded[schema.EXAMPLE_ID],
            "image_id": decoded[schema.IMAGE_ID],
            "token_ids": token_ids,
            "num_regions": decoded[schema.NUM_REGIONS],
            "region_features": decoded[schema.REGION_FEATURES],
            "region_positions": decoded[schema.REGION_POSITIONS],
            "soft_labels": decoded[schema.SOFT_LABELS],
    }


#: TF's graph-level seed when no global seed is set (``random_seed.DEFAULT_GRAPH_SEED``).
_DEFAULT_GRAPH_SEED = 87654321
_MAX_INT32 = 2 ** 31 - 1


def _shuffle(dataset: tf.data.Dataset, buffer_size, seed: tf.Tensor) -> tf.data.Dataset:
    """``dataset.shuffle(buffer_size, seed=seed)`` with a per-epoch *tensor* seed, under any global seed.

    ``Dataset.shuffle`` pairs the op seed with the graph-level seed in ``random_seed.get_seed``, which then
    checks the pair against ``(0, 0)`` in Python. With a global seed of 0 (``keras.utils.set_random_seed(0)``,
    what the Trainer does for ``trainer.seed = 0``) that check evaluates ``tensor == 0`` as a Python bool and
    tracing fails ("Using a symbolic tf.Tensor as a Python bool"). Only in that case the traced function's
    graph-level seed is TF's default one for the duration of the call (as if no global seed were set); every
    other global seed keeps its pair, so the streams of all other seeds are unchanged.
    """
    graph = tf.compat.v1.get_default_graph()
    if tf.executing_eagerly() or graph.seed is None or graph.seed % _MAX_INT32 != 0:
        return dataset.shuffle(buffer_size, seed=seed)
    saved = graph.seed
    graph.seed = _DEFAULT_GRAPH_SEED
    try:
        return dataset.shuffle(buffer_size, seed=seed)
    finally:
        graph.seed = saved


def _records_of_epoch(files, epoch, seed: int, options: PretrainingInputConfig, input_context):
    """Decoded, length-filtered and (per-epoch seeded) shuffled examples of one epoch of this shard."""
    file_dataset = tf.data.Dataset.from_tensor_slices(files)
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    shard_files = len(files) >= num_pipelines and num_pipelines > 1
    if shard_files:
        file_dataset = file_dataset.shard(num_pipelines, pipeline_id)
    epoch_seed = tf.cast(epoch, tf.int64) * 7919 + seed
    if options.shuffle_buffer:
        file_dataset = _shuffle(file_dataset, len(files), epoch_seed)
    records = file_dataset.interleave(
            lambda path: tf.data.TFRecordDataset(path, compression_type=options.compression),
            cycle_length=min(4, len(files)), block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True)
    if num_pipelines > 1 and not shard_files:
        records = records.shard(num_pipelines, pipeline_id)
    if options.shuffle_buffer:
        records = _shuffle(records, options.shuffle_buffer, epoch_seed + 1)
    return records


def build_task_dataset(
        task: str,
        file_patterns: FilePatterns,
        model_config,
        options: PretrainingInputConfig = PretrainingInputConfig(),
        *,
        seed: int = 42,
        num_epochs: Optional[int] = None,
        input_context: Optional[tf.distribute.InputContext] = None,
) -> tf.data.Dataset:
    """The batched input stream of one pretraining task.

    Args:
        task: one of :data:`TASKS`.
        file_patterns: glob pattern(s) of canonical TFRecord shards.
        model_config: a :class:`uniter_tf.config.UniterConfig` (special ids, D, C, vocabulary).
        options: batching, masking and shuffling options.
        seed: run seed; masks, negatives and shuffles are functions of it.
        num_epochs: ``None`` repeats forever (training); ``1`` for evaluation.
        input_context: from ``tf.distribute`` (``distribute_datasets_from_function``): shards the input
            per input pipeline (files when there are enough, else records); batches are per replica.

    Returns:
        A dataset of dicts with the backbone inputs (``token_ids``, ``text_mask``, ``region_features``,
        ``region_positions``, ``region_mask``, plus ``masked_regions`` for region tasks) and the task's
        target (``mlm_labels``, ``region_feature_targets``, ``soft_labels`` or ``itm_labels``).

    Raises:
        ValueError: unknown task, no matching file, or a region task without soft labels.
    """
    if task not in TASKS:
        raise ValueError(f"unknown pretraining task {task!r}; known: {TASKS}")
    files = list_files(file_patterns)
    task_seed = _task_seed(seed, task)
    feature_dim = int(model_config.region_feature_dim)
    needs_soft_labels = task in ("mrckl", "mrc")
    num_soft_labels = int(model_config.num_soft_labels) if needs_soft_labels else None
    parallel = options.num_parallel_calls if options.num_parallel_calls > 0 else tf.data.AUTOTUNE
    max_regions = options.region_bucket_boundaries[-1]

    def check_regions(example):
        check = tf.debugging.Assert(
                example["num_regions"] <= max_regions,
                ["num_regions", example["num_regions"], f"exceeds the last region bucket ({max_regions}) in "
                 "record (example_id, image_id):", example["example_id"], example["image_id"]])
        with tf.control_dependencies([check]):
            example["num_regions"] = tf.identity(example["num_regions"])
        return example

    def epoch_dataset(epoch):
        records = _records_of_epoch(files, epoch, task_seed, options, input_context)
        examples = records.map(
                lambda serialized: _decode_for_pretraining(serialized, feature_dim, num_soft_labels),
                num_parallel_calls=parallel, deterministic=True)
        examples = examples.filter(lambda example: tf.size(example["token_ids"]) <= options.max_text_length)
        examples = examples.map(check_regions, num_parallel_calls=parallel, deterministic=True)
        if task == "itm":
            examples = _with_itm_negatives(examples, files, epoch, task_seed, options, input_context, parallel,
                                           feature_dim)
        examples = examples.enumerate()
        return examples.map(
                lambda index, example: _mask_example(task, example, masking.example_seed(task_seed, epoch, index),
                                                     model_config, options),
                num_parallel_calls=parallel, deterministic=True)

    epochs = tf.data.Dataset.range(num_epochs) if num_epochs is not None else tf.data.Dataset.counter()
    examples = epochs.flat_map(epoch_dataset)
    return _bucket_and_batch(examples, options).prefetch(tf.data.AUTOTUNE)


def _image_id_only(serialized):
    return tf.io.parse_single_example(serialized, {schema.IMAGE_ID: tf.io.FixedLenFeature([], tf.string)})[
            schema.IMAGE_ID]


def _distinct_images(files, seed: int, options: PretrainingInputConfig, input_context, parallel,
                     feature_dim: int) -> tf.data.Dataset:
    """An endless stream of this shard's distinct images: each exactly once per image epoch, shuffled.

    The filter is sequential (``Dataset.filter`` runs in order), so the table's read-then-write is
    deterministic, and a replayed (resumed) pipeline rebuilds the same table.
    """
    last_epoch = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, default_value=-1)

    def image_epoch(epoch):
        records = _records_of_epoch(files, epoch, seed, options, input_context)

        def first_in_epoch(serialized):
            image_id = _image_id_only(serialized)
            previous = last_epoch.lookup(image_id)
            with tf.control_dependencies([previous]):
                update = last_epoch.insert(image_id, tf.cast(epoch, tf.int64))
            with tf.control_dependencies([update]):
                return tf.not_equal(previous, tf.cast(epoch, tf.int64))

        images = records.filter(first_in_epoch).map(
                lambda serialized: _image_part(_decode_for_pretraining(serialized, feature_dim, None)),
                num_parallel_calls=parallel, deterministic=True)
        if options.shuffle_buffer:
            images = _shuffle(images, options.itm_negative_pool_size, tf.cast(epoch, tf.int64) * 7919 + seed + 2)
        return images

    return tf.data.Dataset.counter().flat_map(image_epoch)


def _image_part(example):
    return {key: example[key] for key in ("image_id", "num_regions", "region_features", "region_positions")}


def _with_itm_negatives(examples, files, epoch, seed: int, options: PretrainingInputConfig, input_context,
                        parallel, feature_dim: int):
    """Replaces the image of about half the examples by a uniformly drawn different image (spec §3.6)."""
    candidates = _distinct_images(files, seed + 1, options, input_context, parallel, feature_dim)
    candidates = candidates.padded_batch(2, padded_shapes={
            "image_id": [], "num_regions": [], "region_features": [None, feature_dim],
            "region_positions": [None, 7]}, drop_remainder=True)

    def swap_image(index, example, pair):
        draw_seed = masking.example_seed(seed + 1, epoch, index)
        draws = tf.random.stateless_uniform([2], draw_seed)
        wants_negative = draws[0] < options.itm_negative_probability
        own = example["image_id"]
        # A random one of the two images (so that every image of the stream is equally likely to be used),
        # the other one when that is the caption's own image.
        choice = tf.cast(draws[1] < 0.5, tf.int32)
        choice = tf.where(tf.equal(pair["image_id"][choice], own), 1 - choice, choice)
        negative = wants_negative & tf.not_equal(pair["image_id"][choice], own)
        swapped = dict(example)
        num_regions = pair["num_regions"][choice]
        swapped["image_id"] = tf.where(negative, pair["image_id"][choice], own)
        swapped["num_regions"] = tf.where(negative, num_regions, example["num_regions"])
        for key in ("region_features", "region_positions"):
            swapped[key] = tf.cond(negative, lambda key=key: pair[key][choice][:num_regions],
                                   lambda key=key: example[key])
        swapped["itm_label"] = tf.cast(tf.logical_not(negative), tf.int32)
        return swapped

    examples = examples.map(_for_itm, num_parallel_calls=parallel, deterministic=True)
    zipped = tf.data.Dataset.zip((examples.enumerate(), candidates))
    return zipped.map(lambda indexed, pair: swap_image(indexed[0], indexed[1], pair),
                      num_parallel_calls=parallel, deterministic=True)


def _for_itm(example):
    # ITM needs no soft labels (and the swap must not leave the caption's image's labels behind).
    return {"token_ids": example["token_ids"], **_image_part(example)}


def _mask_example(task: str, example, seed, model_config, options: PretrainingInputConfig):
    """Applies the task's conditional masking and builds the unbatched model inputs and target."""
    token_ids = example["token_ids"]
    num_regions = example["num_regions"]
    region_features = example["region_features"]
    if task == "mlm":
        token_ids, word_labels = masking.mask_tokens(
                token_ids, seed, mask_token_id=model_config.mask_token_id,
                random_token_range=(model_config.first_word_id, model_config.vocab_size),
                mask_probability=options.mlm_probability)
    cls_id = tf.constant([model_config.cls_token_id], tf.int32)
    sep_id = tf.constant([model_config.sep_token_id], tf.int32)
    inputs = {
            TOKEN_IDS: tf.concat([cls_id, token_ids, sep_id], axis=0),
            TEXT_MASK: tf.ones([tf.size(token_ids) + 2], tf.int32),
            REGION_POSITIONS: example["region_positions"],
            REGION_MASK: tf.ones([num_regions], tf.int32),
    }
    if task == "mlm":
        ignore = tf.constant([masking.IGNORE_LABEL], tf.int32)
        inputs[MLM_LABELS] = tf.concat([ignore, word_labels, ignore], axis=0)
    elif task in REGION_TASKS:
        region_mask = masking.sample_region_mask(num_regions, seed, mask_probability=options.mrm_probability)
        inputs[MASKED_REGIONS] = region_mask
        if task == "mrfr":
            inputs[MRFR_TARGETS] = region_features
        else:
            inputs[MRC_TARGETS] = example["soft_labels"]
        region_features = masking.mask_region_features(region_features, region_mask)
    elif task == "itm":
        inputs[ITM_LABELS] = example["itm_label"]
    inputs[REGION_FEATURES] = region_features
    return inputs


def _bucket_and_batch(examples: tf.data.Dataset, options: PretrainingInputConfig) -> tf.data.Dataset:
    text_boundaries = tf.constant(options.text_bucket_boundaries, tf.int64)
    region_boundaries = tf.constant(options.region_bucket_boundaries, tf.int64)
    num_region_buckets = len(options.region_bucket_boundaries)
    batch_sizes = tf.constant([[options.batch_size_for(t, n) for n in options.region_bucket_boundaries]
                               for t in options.text_bucket_boundaries], tf.int64)

    def bucket_of(example):
        text_length = tf.cast(tf.shape(example[TOKEN_IDS])[0], tf.int64)
        num_regions = tf.cast(tf.shape(example[REGION_MASK])[0], tf.int64)
        text_bucket = tf.searchsorted(text_boundaries, [text_length], side="left", out_type=tf.int64)[0]
        region_bucket = tf.searchsorted(region_boundaries, [num_regions], side="left", out_type=tf.int64)[0]
        return text_bucket * num_region_buckets + region_bucket

    def batch_bucket(key, window):
        text_length = text_boundaries[key // num_region_buckets]
        num_regions = region_boundaries[key % num_region_buckets]
        padded_shapes = {}
        padding_values = {}
        for name, spec in window.element_spec.items():
            if spec.shape.rank == 0:
                padded_shapes[name] = tf.TensorShape([])
            else:
                first = text_length if name in TEXT_KEYS else num_regions
                trailing = [tf.constant(dim, tf.int64) for dim in spec.shape.as_list()[1:]]
                padded_shapes[name] = tf.stack([first] + trailing)
            padding_values[name] = (tf.constant(masking.IGNORE_LABEL, spec.dtype) if name == MLM_LABELS
                                    else tf.zeros([], spec.dtype))
        return window.padded_batch(batch_sizes[key // num_region_buckets, key % num_region_buckets],
                                   padded_shapes=padded_shapes, padding_values=padding_values)

    def window_size(key):
        return batch_sizes[key // num_region_buckets, key % num_region_buckets]

    return examples.group_by_window(key_func=bucket_of, reduce_func=batch_bucket, window_size_func=window_size)


__all__ = [
        "TASKS", "REGION_TASKS", "PretrainingInputConfig", "build_task_dataset", "list_files",
        "TOKEN_IDS", "TEXT_MASK", "REGION_FEATURES", "REGION_POSITIONS", "REGION_MASK", "MASKED_REGIONS",
        "MLM_LABELS", "MRFR_TARGETS", "MRC_TARGETS", "ITM_LABELS",
]
