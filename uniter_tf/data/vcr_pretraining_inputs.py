"""Input streams of VCR second-stage pretraining (spec §3.10): MLM, MRFR, MRC-kl on VCR records.

Every labelled VCR record (:func:`uniter_tf.models.vcr_task.make_vcr_example`) gives **two** examples,
one per text format: ``qa`` = ``[CLS] q [SEP] a_gt [SEP]`` (types 0, 2) and ``qar`` = ``[CLS] q [SEP] a_gt
[SEP] r_gt [SEP]`` (types 0, 2, 3), packed with :func:`uniter_tf.tokenization.pack_segments`. The official
loader builds both formats but keys its loaders by ``{task}_{name}``, so the ``qar`` loaders overwrite the
``qa`` ones and only Q+A+R is trained (spec §7.25); here both formats are trained, as intended.

* MLM masks **each segment on its own** (the official ``random_word`` per segment: 15 %, 80/10/10, at least
  one token per segment), so question, answer and rationale each have a masked token;
* MRFR / MRC-kl mask 15 % of the regions (at least one), ground-truth boxes and detected boxes alike;
  MRC-kl needs the records' soft labels (``num_soft_labels`` = the model's).

Examples whose segments total more than ``max_text_length`` tokens are dropped (official: over-long
examples are dropped); test records (no labels) are skipped. Batches are padded to the batch's longest
row and most regions (``batch_size`` examples per replica).
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from uniter_tf.data import masking
from uniter_tf.data import pretraining_inputs as base

#: Second-stage tasks (no ITM).
VCR_PRETRAINING_TASKS = ("mlm", "mrfr", "mrckl")
TOKEN_TYPE_IDS = "token_type_ids"
#: Text formats, each with its token types (question 0, answer 2, rationale 3).
FORMATS = {"qa": (0, 2), "qar": (0, 2, 3)}


def _examples_of_record(serialized, task: str, model_config, options):
    """One VCR record -> its qa and qar examples (a dataset of two), or none for a test record."""
    from uniter_tf.models import vcr_task

    feature_dim = int(model_config.region_feature_dim)
    parsed = vcr_task.parse_vcr_record(serialized, feature_dim)
    answer_label = parsed[vcr_task.VCR_ANSWER_LABEL]
    rationale_label = parsed[vcr_task.VCR_RATIONALE_LABEL]
    labelled = tf.logical_and(answer_label >= 0, rationale_label >= 0)
    safe_answer, safe_rationale = tf.maximum(answer_label, 0), tf.maximum(rationale_label, 0)
    segments = [tf.cast(parsed["token_ids"], tf.int32), parsed["answer_ids"][safe_answer],
                parsed["rationale_ids"][safe_rationale]]
    soft_labels = parsed["soft_labels"]
    if task == "mrckl":
        classes = int(model_config.num_soft_labels)
        check = tf.debugging.Assert(
                tf.equal(tf.shape(soft_labels)[1], classes),
                [f"VCR MRC-kl needs {classes} soft labels per region (the model's num_soft_labels); record "
                 "example_id:", parsed["example_id"], "has", tf.shape(soft_labels)[1]])
        with tf.control_dependencies([check]):
            soft_labels = tf.ensure_shape(tf.identity(soft_labels), [None, classes])
    example = {"example_id": parsed["example_id"], "num_regions": tf.cast(parsed["num_regions"], tf.int32),
               "region_features": parsed["region_features"], "region_positions": parsed["region_positions"],
               "soft_labels": soft_labels, "labelled": labelled,
               "question": segments[0], "answer": segments[1], "rationale": segments[2]}
    return example


def _pack(example, text_format: str, task: str, seed, model_config, options):
    """The unbatched model inputs and target of one example in ``text_format``."""
    from uniter_tf.tokenization import pack_segments

    names = ("question", "answer", "rationale")[:len(FORMATS[text_format])]
    segments = [example[name] for name in names]
    labels = None
    if task == "mlm":
        seeds = tf.random.experimental.stateless_split(seed, len(segments))
        masked, labels = [], []
        for index, segment in enumerate(segments):  # each segment on its own: >= 1 masked token each
            ids, segment_labels = masking.mask_tokens(
                    segment, seeds[index], mask_token_id=model_config.mask_token_id,
                    random_token_range=(model_config.first_word_id, model_config.vocab_size),
                    mask_probability=options.mlm_probability)
            masked.append(ids)
            labels.append(segment_labels)
        segments = masked
    ragged = [tf.RaggedTensor.from_tensor(segment[tf.newaxis]) for segment in segments]
    token_ids, type_ids = pack_segments(ragged, FORMATS[text_format], model_config.cls_token_id,
                                        model_config.sep_token_id)
    token_ids, type_ids = token_ids.flat_values, type_ids.flat_values
    num_regions = example["num_regions"]
    inputs = {base.TOKEN_IDS: token_ids, TOKEN_TYPE_IDS: type_ids, base.TEXT_MASK: tf.ones_like(token_ids),
              base.REGION_POSITIONS: example["region_positions"], base.REGION_MASK: tf.ones([num_regions], tf.int32)}
    region_features = example["region_features"]
    if task == "mlm":
        # The labels follow the packing: ignored at [CLS] and at every [SEP].
        ignore = tf.constant([masking.IGNORE_LABEL], tf.int32)
        parts = [ignore]
        for segment_labels in labels:
            parts += [segment_labels, ignore]
        inputs[base.MLM_LABELS] = tf.concat(parts, axis=0)
    else:
        region_mask = masking.sample_region_mask(num_regions, seed, mask_probability=options.mrm_probability)
        inputs[base.MASKED_REGIONS] = region_mask
        if task == "mrfr":
            inputs[base.MRFR_TARGETS] = region_features
        else:
            inputs[base.MRC_TARGETS] = example["soft_labels"]
        region_features = masking.mask_region_features(region_features, region_mask)
    inputs[base.REGION_FEATURES] = region_features
    return inputs


def build_vcr_pretraining_dataset(task: str, file_patterns, model_config, options=base.PretrainingInputConfig(), *,
                                  seed: int = 42, num_epochs: Optional[int] = None, input_context=None,
                                  formats=("qa", "qar")) -> tf.data.Dataset:
    """The batched stream of one second-stage task on VCR records (module docstring).

    Args:
        task: ``mlm``, ``mrfr`` or ``mrckl``.
        file_patterns: VCR record shards.
        model_config: the VCR-sized :class:`~uniter_tf.config.UniterConfig`.
        options: batch size, ``max_text_length`` (segment tokens; 220 for VCR), probabilities, shuffling.
        seed: masks and shuffles are functions of it.
        num_epochs: None repeats forever (training); 1 for evaluation.
        input_context: from ``tf.distribute``: shards the input; batches are per replica.
        formats: the text formats (both by default, see the module docstring).

    Returns:
        Batches with ``token_ids``, ``token_type_ids``, ``text_mask``, the region inputs, and the task's
        target (``mlm_labels`` / ``masked_regions`` + ``region_feature_targets`` / ``soft_labels``).

    Raises:
        ValueError: an unknown task or format, or no matching file.
    """
    if task not in VCR_PRETRAINING_TASKS:
        raise ValueError(f"VCR second-stage pretraining has the tasks {VCR_PRETRAINING_TASKS}, got {task!r}")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"VCR pretraining formats must be among {sorted(FORMATS)}, got {list(formats)}")
    files = base.list_files(file_patterns)
    task_seed = base._task_seed(seed, task)  # pylint: disable=protected-access
    max_regions = options.region_bucket_boundaries[-1]

    def epoch_dataset(epoch):
        records = base._records_of_epoch(files, epoch, task_seed, options, input_context)  # pylint: disable=protected-access
        examples = records.map(lambda serialized: _examples_of_record(serialized, task, model_config, options),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        examples = examples.filter(lambda example: example["labelled"]).enumerate()

        def expand(index, example):
            # One record -> its formats in order (qa, then qar); each keeps the masks of its own seed.
            seeds = tf.random.experimental.stateless_split(masking.example_seed(task_seed, epoch, index), len(formats))
            expanded = None
            for position, text_format in enumerate(formats):
                packed = _pack(example, text_format, task, seeds[position], model_config, options)
                specials = len(FORMATS[text_format]) + 1
                fits = tf.logical_and(tf.size(packed[base.TOKEN_IDS]) - specials <= options.max_text_length,
                                      example["num_regions"] <= max_regions)
                one = tf.data.Dataset.from_tensors((packed, fits))
                expanded = one if expanded is None else expanded.concatenate(one)
            return expanded.filter(lambda packed, fits: fits).map(lambda packed, fits: packed)

        return examples.flat_map(expand)

    epochs = tf.data.Dataset.range(num_epochs) if num_epochs is not None else tf.data.Dataset.counter()
    examples = epochs.flat_map(epoch_dataset)
    batch_size = input_context.get_per_replica_batch_size(options.batch_size) if input_context else options.batch_size
    padding = {name: (tf.constant(masking.IGNORE_LABEL, spec.dtype) if name == base.MLM_LABELS
                      else tf.zeros([], spec.dtype)) for name, spec in examples.element_spec.items()}
    return examples.padded_batch(batch_size, padding_values=padding).prefetch(tf.data.AUTOTUNE)


__all__ = ["VCR_PRETRAINING_TASKS", "FORMATS", "build_vcr_pretraining_dataset"]
