"""``tf.data`` input pipeline of the downstream tasks: canonical records → padded backbone batches.

Every example becomes the backbone input dict of docs/architecture.md (``token_ids`` = ``[CLS] w… [SEP]``,
``text_mask``, ``region_features``, ``region_positions``, ``region_mask``) plus the task's label features
(e.g. VQA's ``answer_labels`` / ``answer_scores``, padded with -1 / 0), and ``example_id``. The task
decides which records it can use (:func:`task_record_filter`: its :meth:`DownstreamTask.keep_record`;
VQA keeps every annotated question, including those whose answers are all outside the vocabulary: their
target is all zeros, spec §5.1). Texts longer than ``max_text_length`` are dropped from training, never truncated (spec §7.14);
evaluation never drops a record for its length: it truncates the text to ``max_text_length`` WordPieces
instead, so every question stays in the denominator.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import tensorflow as tf

from uniter_tf.config import UniterConfig
from uniter_tf.data import schema

FilePatterns = Union[str, Sequence[str]]

#: Padding value of each batch key that is not 0.
_PADDING_VALUES = {schema.ANSWER_LABELS: -1}


def list_record_files(file_patterns: FilePatterns) -> list:
    """Expands glob patterns into a sorted file list.

    Raises:
        ValueError: when nothing matches.
    """
    patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
    files = sorted({path for pattern in patterns for path in tf.io.gfile.glob(pattern)})
    if not files:
        raise ValueError(f"no record files match {patterns}")
    return files


def _record_dataset(files: Sequence[str]) -> tf.data.Dataset:
    gzip_files = [path for path in files if path.endswith(".gz")]
    plain_files = [path for path in files if not path.endswith(".gz")]
    datasets = []
    if gzip_files:
        datasets.append(tf.data.TFRecordDataset(gzip_files, compression_type="GZIP"))
    if plain_files:
        datasets.append(tf.data.TFRecordDataset(plain_files))
    dataset = datasets[0]
    for other in datasets[1:]:
        dataset = dataset.concatenate(other)
    return dataset


def example_to_model_inputs(parsed: Dict[str, tf.Tensor], model_config: UniterConfig,
                            label_keys: Sequence[str] = (),
                            max_text_length: Optional[int] = None) -> Dict[str, tf.Tensor]:
    """One parsed record (:func:`uniter_tf.data.schema.parse_and_decode`) → unbatched model inputs.

    Args:
        parsed: the parsed record.
        model_config: supplies the ``[CLS]`` / ``[SEP]`` ids.
        label_keys: record features to carry along as targets.
        max_text_length: if given, the text is truncated to its first this-many WordPieces (before
            ``[CLS]`` / ``[SEP]`` are added); evaluation uses this instead of dropping the record.

    Returns:
        The backbone inputs (unbatched) plus ``example_id`` and the label features.
    """
    word_ids = tf.cast(parsed[schema.TOKEN_IDS], tf.int32)
    if max_text_length is not None:
        if max_text_length < 1:
            raise ValueError(f"max_text_length must be >= 1, got {max_text_length}")
        word_ids = word_ids[:max_text_length]
    token_ids = tf.concat([[model_config.cls_token_id], word_ids, [model_config.sep_token_id]], axis=0)
    num_regions = tf.shape(parsed[schema.REGION_FEATURES])[0]
    inputs = {
            "token_ids": token_ids,
            "text_mask": tf.ones_like(token_ids),
            "region_features": parsed[schema.REGION_FEATURES],
            "region_positions": parsed[schema.REGION_POSITIONS],
            "region_mask": tf.ones([num_regions], tf.int32),
            schema.EXAMPLE_ID: parsed[schema.EXAMPLE_ID],
    }
    for key in label_keys:
        inputs[key] = parsed[key]
    return inputs


def task_record_filter(task):
    """The predicate that decides which parsed records enter ``task``'s dataset.

    It is the task's :meth:`keep_record`, widened for tasks that read VQA answer labels: an annotated
    question (one with human ``answers``) stays even when none of its answers is in the answer
    vocabulary, i.e. its label list is empty. Official UNITER keeps these questions, in training with an
    all-zero target and in validation in the denominator (spec §5.1, ``data/vqa.py:14-20``,
    ``train_vqa.py:282-294``); dropping them inflates the VQA score.
    """
    if schema.ANSWER_LABELS not in tuple(task.label_keys):
        return task.keep_record

    def keep_question(parsed):
        return tf.logical_or(task.keep_record(parsed), tf.size(parsed[schema.ANSWERS]) > 0)

    return keep_question


def build_finetune_dataset(file_patterns: FilePatterns, task, model_config: UniterConfig, batch_size: int,
                           *, max_text_length: int = 60, training: bool = True, seed: int = 42,
                           shuffle_buffer_size: int = 1024,
                           num_parallel_calls: Optional[int] = tf.data.AUTOTUNE,
                           input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    """Batches of ``(model inputs, label features)`` for fine-tuning or evaluating a task.

    Args:
        file_patterns: TFRecord files of canonical records (GZIP when the name ends in ``.gz``).
        task: a :class:`uniter_tf.models.task.DownstreamTask`.
        model_config: the model's config (feature dim, special ids).
        batch_size: examples per batch.
        max_text_length: longest text in WordPieces without ``[CLS]``/``[SEP]``; in training longer texts
            are dropped (official ``TxtTokLmdb``), in evaluation (``training=False``) they are truncated to
            it, so an evaluation never loses a record for its length.
        training: shuffle and repeat forever when True; one ordered pass otherwise.
        seed: shuffle seed.
        shuffle_buffer_size: records in the shuffle buffer.
        num_parallel_calls: parallelism of the parse map.
        input_context: from ``tf.distribute`` (``distribute_datasets_from_function``): with several input
            pipelines (workers) each reads every ``num_input_pipelines``-th record; ``batch_size`` is then
            the per-replica batch.

    Returns:
        A dataset of ``(inputs, labels)`` dicts; ``inputs`` has the backbone keys and ``example_id``,
        ``labels`` the task's ``label_keys``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_text_length < 1:
        raise ValueError(f"max_text_length must be >= 1, got {max_text_length}")
    files = list_record_files(file_patterns)
    dataset = _record_dataset(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        # Records, not files, are sharded: a run with few shards still splits evenly over workers.
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        dataset = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.map(lambda serialized: schema.parse_and_decode(serialized, model_config.region_feature_dim),
                          num_parallel_calls=num_parallel_calls, deterministic=True)
    dataset = dataset.filter(task_record_filter(task))
    if training:
        dataset = dataset.filter(lambda parsed: tf.size(parsed[schema.TOKEN_IDS]) <= max_text_length)
    label_keys = tuple(task.label_keys)
    # In training every kept text already fits; in evaluation the long ones are truncated.
    truncate_to = None if training else max_text_length
    dataset = dataset.map(lambda parsed: example_to_model_inputs(parsed, model_config, label_keys, truncate_to),
                          num_parallel_calls=num_parallel_calls, deterministic=True)
    padding_values = {key: tf.constant(_PADDING_VALUES.get(key, 0), spec.dtype) if spec.dtype != tf.string
                      else tf.constant(b"") for key, spec in dataset.element_spec.items()}
    dataset = dataset.padded_batch(batch_size, padding_values=padding_values, drop_remainder=False)

    def split_labels(batch):
        labels = {key: batch.pop(key) for key in label_keys}
        return batch, labels

    return dataset.map(split_labels).prefetch(tf.data.AUTOTUNE)
