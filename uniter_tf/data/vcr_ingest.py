"""``uniter ingest --format vcr``: the released VCR layout -> canonical VCR records (Beam).

Inputs (the released layout, spec §5.6):

* ``--annotations``: ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` of ``vcr1annots`` (one question per
  line, :mod:`uniter_tf.data.readers.vcr`);
* ``--images-dir``: ``vcr1images``, where ``img_fn`` and ``metadata_fn`` (the ``boxes`` of each image)
  live; a question whose image or metadata file is absent is an ``unknown_image`` dead letter;
* ``--features``: region features pooled over the **ground-truth boxes** of the metadata, in their order
  (the official ``vcr_gt_*`` img_db, or ``uniter extract --boxes-json`` output: ground-truth-box mode;
  :func:`metadata_boxes_json` writes that boxes file from the metadata). Every stored region is kept
  (no box-selection rule: reference ``[i]`` is region ``i``);
* ``--detected-features`` (optional): detected-box features (the official ``vcr_*`` img_db), which come
  **after** the ground-truth regions, selected with the usual box rule (``--conf-threshold`` ...).

Each question becomes one record (:func:`uniter_tf.models.vcr_task.make_vcr_example`): the question,
four answers and four rationales as strings and as WordPiece ids with references mapped in-graph
(:func:`uniter_tf.tokenization.tokenize_with_references`), the labels, the regions (ground truth first;
their boxes are the metadata's pixel boxes clipped to the image) and ``vcr_num_gt_regions``. No length
rule is applied here: the VCR task drops (training) or trims (evaluation) rows over ``max_text_length``.

Joining: the questions, the ground-truth records and the detected records are grouped by image key
(``CoGroupByKey``), so one image's feature records are held together, never the data set. Every
question ends in exactly one place: a split's records, ``excluded_split`` (``test`` with
``--splits-from-annotations``) or a dead letter with its reason (reader reasons, ``duplicate_id``,
``unknown_image`` when a feature record is missing, ``image_rejected`` when it was dead-lettered,
``bad_reference`` when the ground-truth record has fewer regions than the question's objects); so
``text_items_read == examples_written_train + examples_written_eval + excluded_split + text dead letters``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np

from uniter_tf.data import dead_letter
from uniter_tf.data import image_keys

#: Texts per question: the question, four answers, four rationales.
TEXTS_PER_QUESTION = 9


def _counter(name: str):
    from apache_beam.metrics import Metrics

    return Metrics.counter(dead_letter.METRICS_NAMESPACE, name)


def metadata_boxes_json(annotations: Sequence[str], images_dir: str, output_path: str) -> int:
    """Writes the ground-truth boxes file of ``uniter extract --boxes-json`` from the VCR metadata.

    Keys are image file base names, values ``{"boxes": [[x1, y1, x2, y2], ...], "labels": objects}`` in
    the metadata's order; images whose metadata is missing or broken are skipped (the ingest
    dead-letters their questions).

    Returns:
        The number of images written.
    """
    from uniter_tf.data.readers import vcr

    entries = {}
    for path in annotations:
        for item in vcr.read_vcr(path, images_dir):
            if isinstance(item, dead_letter.DeadLetter):
                continue
            entries[os.path.basename(item.image_file)] = {"boxes": item.gt_boxes.tolist(),
                                                          "labels": list(item.objects)}
    with open(output_path, "w", encoding="utf-8") as handle:
        json.dump(entries, handle)
    return len(entries)


def _read_vcr_file(path: str, images_dir: str) -> Iterator:
    from uniter_tf.data.readers import vcr

    try:
        yield from vcr.read_vcr(path, images_dir)
    except Exception as error:  # pylint: disable=broad-except  (costs the rest of this file, not the run)
        yield dead_letter.DeadLetter(path, dead_letter.UNREADABLE_INPUT,
                                     f"reading stopped: {type(error).__name__}: {dead_letter.safe_text(error)}",
                                     path, kind="input")


class CountQuestions(beam.DoFn):
    """Questions go on, dead letters to ``dead``; every question and per-question letter is counted as read."""

    def __init__(self):
        self._read = _counter(dead_letter.TEXT_ITEMS_READ)

    def process(self, element):
        if isinstance(element, dead_letter.DeadLetter):
            if element.kind != "input":
                self._read.inc()
            yield beam.pvalue.TaggedOutput("dead", element)
            return
        self._read.inc()
        yield element


class TokenizeQuestions(beam.DoFn):
    """A batch of questions -> ``(item, ids)``, ``ids`` the 9 id lists (references mapped in-graph)."""

    def __init__(self, vocabulary: Optional[str], lower_case: bool):
        self._vocabulary, self._lower_case = vocabulary, lower_case
        self._encode = None

    def setup(self):
        import tensorflow as tf

        from uniter_tf.tokenization import UniterTokenizer, tokenize_with_references

        tokenizer = UniterTokenizer(vocabulary=self._vocabulary, lower_case=self._lower_case)
        self._encode = tf.function(lambda texts: tokenize_with_references(tokenizer, texts),
                                   input_signature=[tf.TensorSpec([None], tf.string)])

    def process(self, batch):
        import tensorflow as tf

        texts = [text for item in batch for text in (item.question, *item.answers, *item.rationales)]
        all_ids = self._encode(tf.constant(texts)).to_list()
        for index, item in enumerate(batch):
            ids = all_ids[TEXTS_PER_QUESTION * index:TEXTS_PER_QUESTION * (index + 1)]
            empty = [name for name, token_ids in zip(_text_names(), ids) if not token_ids]
            if empty:
                yield beam.pvalue.TaggedOutput("dead", dead_letter.DeadLetter(
                        item.example_id, dead_letter.EMPTY_TEXT, f"{empty[0]} has no WordPiece tokens", item.source))
                continue
            yield item, [[int(token) for token in token_ids] for token_ids in ids]


def _text_names():
    return (["question"] + [f"answer_choices[{index}]" for index in range(4)]
            + [f"rationale_choices[{index}]" for index in range(4)])


class AssignVcrSplit(beam.DoFn):
    """``(image_key, (item, ids, split))``; questions of an excluded split are counted (``excluded_split``)."""

    def __init__(self, config):
        self._config = config
        self._excluded = _counter(dead_letter.EXCLUDED_SPLIT)

    def process(self, element):
        from uniter_tf.data.ingest import output_split

        item, ids = element
        key = image_keys.image_key(item.image_file, self._config.image_key_mode)
        split = output_split(item, key, self._config)
        if split is None:
            self._excluded.inc()
            return
        yield key, (item, ids, split)


def build_vcr_record(item, ids, gt_record, det_record=None):
    """The VCR ``tf.train.Example`` of one question from its ground-truth (and detected) feature records.

    Raises:
        ValueError: the ground-truth record has fewer regions than the question has objects.
    """
    from uniter_tf.data import boxes as boxes_lib
    from uniter_tf.data.importers import feature_record
    from uniter_tf.models.vcr_task import make_vcr_example

    num_gt = len(item.gt_boxes)
    if gt_record.num_regions < num_gt:
        raise ValueError(f"the ground-truth feature record of {item.image_file!r} has {gt_record.num_regions} "
                         f"regions, the question's objects need {num_gt}")
    height, width = item.image_height, item.image_width
    features = [np.asarray(gt_record.features[:num_gt], np.float32)]
    boxes = [boxes_lib.clip_boxes(np.asarray(item.gt_boxes, np.float32), height, width)]
    if det_record is not None and det_record.num_regions:
        det_boxes = det_record.boxes
        if det_boxes is None or not (det_record.image_height > 0 and det_record.image_width > 0):
            det_boxes = feature_record.pixel_boxes_from_normalized(det_record.positions, height, width)
        elif (det_record.image_height, det_record.image_width) != (height, width):  # rescale to the metadata size
            scale = np.asarray([width / det_record.image_width, height / det_record.image_height] * 2, np.float32)
            det_boxes = np.asarray(det_boxes, np.float32) * scale
        features.append(np.asarray(det_record.features, np.float32))
        boxes.append(np.asarray(det_boxes, np.float32))
    return make_vcr_example(
            example_id=item.example_id, image_id=item.image_file, question=item.question, question_ids=ids[0],
            answers=item.answers, answer_ids=ids[1:5], rationales=item.rationales, rationale_ids=ids[5:9],
            answer_label=item.answer_label, rationale_label=item.rationale_label,
            region_features=np.concatenate(features, axis=0), region_boxes=np.concatenate(boxes, axis=0),
            image_height=height, image_width=width, num_gt_regions=num_gt)


class JoinQuestions(beam.DoFn):
    """``(key, {questions, gt, det, gt_rejected, det_rejected})`` -> records on the split outputs or letters."""

    def __init__(self, with_detected: bool):
        from uniter_tf.data.ingest import SPLITS

        self._with_detected = with_detected
        self._written = {split: _counter(dead_letter.EXAMPLES_WRITTEN_PREFIX + split) for split in SPLITS}
        self._without_text = _counter(dead_letter.IMAGES_WITHOUT_TEXT)

    def process(self, grouped):
        key, groups = grouped
        questions = list(groups["questions"])
        gt, det = list(groups["gt"]), list(groups["det"])
        if not questions:
            if gt:
                self._without_text.inc()
            return
        problem = self._missing(key, "ground-truth", gt, list(groups["gt_rejected"]))
        if problem is None and self._with_detected:
            problem = self._missing(key, "detected", det, list(groups["det_rejected"]))
        for item, ids, split in questions:
            if problem is not None:
                yield beam.pvalue.TaggedOutput("dead", dead_letter.DeadLetter(item.example_id, problem[0], problem[1],
                                                                              item.source))
                continue
            try:
                example = build_vcr_record(item, ids, gt[0], det[0] if self._with_detected else None)
            except ValueError as error:
                yield beam.pvalue.TaggedOutput("dead", dead_letter.DeadLetter(
                        item.example_id, dead_letter.BAD_REFERENCE, dead_letter.safe_text(error), item.source))
                continue
            self._written[split].inc()
            yield beam.pvalue.TaggedOutput(split, example.SerializeToString())

    @staticmethod
    def _missing(key, kind, records, rejected):
        if records:
            return None
        if rejected:
            return dead_letter.IMAGE_REJECTED, f"the {kind}-box feature record of image {key!r} was rejected ({rejected[0]})"
        return dead_letter.UNKNOWN_IMAGE, f"no {kind}-box feature record for image {key!r}"


def vcr_ingest_expand(pipeline, config, shards=None, output_prefixes: Optional[Dict[str, str]] = None):
    """The VCR branch of :func:`uniter_tf.data.ingest.IngestExamples` (same outputs)."""
    from uniter_tf.data import importers
    from uniter_tf.data import ingest as ingest_lib

    if not config.images_dir:
        raise ValueError("format 'vcr' needs --images-dir (the vcr1images folder with the images and metadata)")
    gt_config = dataclasses.replace(config, conf_threshold=None)  # every ground-truth region is kept, in order
    if shards is None:
        shards = importers.list_shards(config.features, config.feature_format)
    read = (pipeline
            | "VcrFiles" >> beam.Create(list(config.annotations))
            | "ReadVcr" >> beam.FlatMap(_read_vcr_file, config.images_dir)
            | "CountQuestions" >> beam.ParDo(CountQuestions()).with_outputs("dead", main="items"))
    unique = (read.items
              | "ByAnnotId" >> beam.Map(lambda item: (item.example_id, item))
              | "GroupByAnnotId" >> beam.GroupByKey()
              | "OnePerAnnotId" >> beam.ParDo(ingest_lib.KeepFirstOfEachId()).with_outputs("dead", main="items"))
    tokenized = (unique.items
                 | "BatchQuestions" >> beam.BatchElements(min_batch_size=8, max_batch_size=256)
                 | "TokenizeQuestions" >> beam.ParDo(TokenizeQuestions(config.vocabulary, config.lower_case))
                 .with_outputs("dead", main="items"))
    keyed = tokenized.items | "AssignVcrSplit" >> beam.ParDo(AssignVcrSplit(config))
    dead = [read.dead, unique.dead, tokenized.dead]

    def read_features(label, feature_config, feature_shards):
        shared = beam.pvalue.AsDict(ingest_lib.shared_image_keys(pipeline, feature_shards, feature_config,
                                                                 label=f"{label}Keys"))
        return (pipeline
                | f"{label}Shards" >> beam.Create(list(feature_shards))
                | f"{label}Read" >> beam.ParDo(ingest_lib.ReadFeatures(feature_config), shared).with_outputs(
                        "dead", "rejected", main="records"))

    gt = read_features("GtFeatures", gt_config, shards)
    dead.append(gt.dead)
    groups = {"questions": keyed, "gt": gt.records, "gt_rejected": gt.rejected}
    with_detected = bool(config.detected_features)
    if with_detected:
        det_config = dataclasses.replace(config, features=config.detected_features)
        det = read_features("DetFeatures", det_config,
                            importers.list_shards(config.detected_features, config.feature_format))
        dead.append(det.dead)
        groups.update(det=det.records, det_rejected=det.rejected)
    else:
        groups.update(det=pipeline | "NoDetected" >> beam.Create([]),
                      det_rejected=pipeline | "NoDetectedRejected" >> beam.Create([]))
    joined = (groups
              | "GroupByImage" >> beam.CoGroupByKey()
              | "JoinQuestions" >> beam.ParDo(JoinQuestions(with_detected)).with_outputs("dead", *ingest_lib.SPLITS))
    dead.append(joined.dead)
    dead_letters = tuple(dead) | "AllDeadLetters" >> beam.Flatten()
    outputs = {}
    if output_prefixes:
        for split in ingest_lib.SPLITS:
            ingest_lib.write_examples(joined[split], output_prefixes[split], config.num_shards,
                                      label=f"Write{split.capitalize()}")
    else:
        outputs = {split: joined[split] for split in ingest_lib.SPLITS}
    outputs["dead_letters"] = dead_letters
    return outputs


__all__ = ["metadata_boxes_json", "build_vcr_record", "vcr_ingest_expand", "TEXTS_PER_QUESTION"]
