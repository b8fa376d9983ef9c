"""Signatures of a task whose example is one text about two images (an ``image_pair`` declaration).

A task declares it with an export declaration that has ``image_pair = True`` (NLVR2's
``ImagePairOutputs``); nothing here names a task. Every scoring signature then takes the one-image
inputs of :mod:`uniter_tf.export.signatures` for the left image and the same inputs with the suffix
``_2`` for the right image, and runs the declaration's ``pair_model(backbone, head)`` (which lays the
two images out as the task was trained) instead of backbone + head:

* ``serving_default``: ``text [B]``, ``region_features [B, N, D]``, ``region_boxes [B, N, 4]`` (pixels),
  ``image_size [B, 2]``, ``num_regions [B]``, then ``region_features_2``, ``region_boxes_2``,
  ``image_size_2``, ``num_regions_2`` (``[B, M, ...]``);
* ``score_positions``: the same with ``region_positions`` / ``region_positions_2`` ``[B, *, 7]``;
* ``score_tensors``: ``token_ids``, ``text_mask``, then per image features, positions and mask;
* ``serve_examples``: serialized canonical pair records (the right image in the ``*_2`` fields);
* ``tokenize``: unchanged.

Outputs: the declaration's logits (``task_logits [B, C]``), its probability of the positive class
(``p_true [B]``), the argmax label (``label [B]``, a string) and every label with its probability
(``labels`` / ``label_scores [B, k]``, best first). The pair signatures have no ITM outputs. An
example whose either image has zero regions is refused (an in-graph assertion naming ``num_regions`` or
``num_regions_2``, ``region_mask_2`` for ``score_tensors``; servers answer INVALID_ARGUMENT), and a
request without the ``_2`` inputs is refused by the server's input check, which names them.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from uniter_tf.export.signatures import (SCORE_POSITIONS, SCORE_TENSORS, SERVE_EXAMPLES, SERVING_DEFAULT, TOKENIZE,
                                         ServingGraph, _bucket_width, _fit_axis1)

#: The suffix of the second image's inputs (as the canonical record's ``*_2`` fields).
SECOND = "_2"
#: Inputs that are about the text, not an image (they have no ``_2`` twin).
_TEXT_INPUTS = ("text", "token_ids", "text_mask")


def is_image_pair(task) -> bool:
    """Whether a :class:`~uniter_tf.export.task_heads.TaskHeadExport` declares a two-image task."""
    return task is not None and bool(getattr(task.outputs, "image_pair", False))


class PairServingGraph(ServingGraph):
    """The serving graph of a two-image task (module docstring); arguments as :class:`ServingGraph`.

    Raises:
        ValueError: the task hook does not declare ``image_pair``, or has no labels (the ``label``
            output needs them).
    """

    def __init__(self, backbone, itm_head, preprocessor, options, task=None, label_table=None, vocab_table=None):
        if not is_image_pair(task):
            raise ValueError("PairServingGraph needs a task hook whose declaration has image_pair=True")
        if task.labels is None or label_table is None:
            raise ValueError(f"task {task.name!r}: a two-image export needs the declaration's labels")
        outputs = task.outputs
        for name in ("probability_output", "label_output"):
            clash = getattr(outputs, name) in (outputs.logits_output, outputs.labels_output, outputs.scores_output)
            if clash:
                raise ValueError(f"task {task.name!r}: {name} {getattr(outputs, name)!r} repeats another output name")
        if not 0 <= int(outputs.positive_class) < len(task.labels):
            raise ValueError(f"task {task.name!r}: positive_class {outputs.positive_class} is not a label index")
        self.pair_model = outputs.pair_model(backbone, task.head)
        super().__init__(backbone, itm_head, preprocessor, options, task=task, label_table=label_table,
                         vocab_table=vocab_table)

    def _model_outputs(self, inputs) -> Dict[str, tf.Tensor]:
        # The pair model lays out both images as in training; backbone and head are the tracked ones.
        return {"task_logits": tf.cast(self.pair_model(inputs, training=False), tf.float32)}

    # --------------------------------------------------------------------------------- the core

    def _image_checks(self, region_counts, count_name: str):
        most_regions = tf.reduce_max(tf.concat([region_counts, [0]], axis=0))
        image = "right" if count_name.endswith(SECOND) else "left"
        checks = [
                tf.debugging.assert_less_equal(
                        most_regions, tf.constant(self.options.max_regions, tf.int32),
                        message=f"{count_name}: an example has more than {self.options.max_regions} regions in the "
                                f"{image} image"),
                tf.debugging.assert_greater_equal(
                        tf.reduce_min(tf.concat([region_counts, [1]], axis=0)), 1,
                        message=f"{count_name}: an example has zero regions in the {image} image; task "
                                f"{self.task.name!r} needs both images' regions"),
        ]
        return most_regions, checks

    def score_pair(self, token_ids, text_mask, left, right, count_names=("num_regions", "num_regions_2")
                   ) -> Dict[str, tf.Tensor]:
        """Checks, buckets and scores a batch of texts with two images.

        Args:
            token_ids: ``[B, T]`` packed ids.
            text_mask: ``[B, T]`` (a prefix of ones).
            left: ``(region_features [B, N, D], region_positions [B, N, 7], region_mask [B, N])``.
            right: the same for the right image ``[B, M, ...]``.
            count_names: the input names the zero-region and too-many-region messages name.
        """
        token_ids = tf.cast(token_ids, tf.int32)
        text_mask = tf.cast(text_mask, tf.int32)
        longest_text, checks = self._text_checks(token_ids, text_mask)
        images = []
        for (features, positions, mask), count_name in zip((left, right), count_names):
            mask = tf.cast(mask, tf.int32)
            most, image_checks = self._image_checks(tf.reduce_sum(mask, axis=1), count_name)
            checks += image_checks
            images.append((tf.cast(features, tf.float32), tf.cast(positions, tf.float32), mask, most))
        with tf.control_dependencies(checks):
            text_width = _bucket_width(longest_text, tf.constant(self.options.text_buckets, tf.int32))
            # One region width for both images (the paired layout stacks them; triplet concatenates).
            region_width = _bucket_width(tf.maximum(tf.maximum(images[0][3], images[1][3]), 1),
                                         tf.constant(self.options.region_buckets, tf.int32))
            inputs = {"token_ids": _fit_axis1(token_ids, longest_text, text_width),
                      "text_mask": _fit_axis1(text_mask, longest_text, text_width)}
            for suffix, (features, positions, mask, most) in zip(("", SECOND), images):
                inputs[f"region_features{suffix}"] = tf.ensure_shape(
                        _fit_axis1(features, most, region_width), [None, None, self.feature_dim])
                inputs[f"region_positions{suffix}"] = tf.ensure_shape(
                        _fit_axis1(positions, most, region_width), [None, None, 7])
                inputs[f"region_mask{suffix}"] = _fit_axis1(mask, most, region_width)
        logits = self._run_model(inputs)["task_logits"]
        outputs = self._task_outputs(logits)
        declared = self.task.outputs
        probabilities = tf.sigmoid(logits) if declared.activation == "sigmoid" else tf.nn.softmax(logits, axis=-1)
        outputs[declared.probability_output] = probabilities[:, int(declared.positive_class)]
        outputs[declared.label_output] = self.label_table.lookup(tf.argmax(logits, axis=-1, output_type=tf.int64))
        return outputs

    # ------------------------------------------------------------------------------ the inputs

    def _pair_region_mask(self, text_batch, region_features, num_regions, count_name: str, extra_checks=()):
        width = tf.shape(region_features)[1]
        features_name = "region_features" + (SECOND if count_name.endswith(SECOND) else "")
        checks = [
                tf.debugging.assert_equal(
                        tf.shape(region_features)[0], text_batch,
                        message=f"{features_name}: needs one row per text (the batch sizes differ)"),
                tf.debugging.assert_equal(
                        tf.shape(num_regions)[0], text_batch,
                        message=f"{count_name}: needs one count per text (the batch sizes differ)"),
                tf.debugging.assert_non_negative(num_regions, message=f"{count_name}: a count is negative"),
                tf.debugging.assert_less_equal(
                        num_regions, width,
                        message=f"{count_name}: a count exceeds the number of rows in {features_name}"),
                *extra_checks,
        ]
        with tf.control_dependencies(checks):
            return tf.sequence_mask(num_regions, width, dtype=tf.int32)

    def _image_from_boxes(self, text_batch, features, boxes, image_size, num_regions, suffix):
        size_name = f"image_size{suffix}"
        checks = [tf.debugging.assert_equal(tf.shape(image_size)[0], text_batch,
                                            message=f"{size_name}: needs one [height, width] row per example"),
                  tf.debugging.assert_positive(image_size, message=f"{size_name}: height and width must be positive")]
        mask = self._pair_region_mask(text_batch, features, num_regions, f"num_regions{suffix}", checks)
        with tf.control_dependencies(checks):
            positions = self.boxes_to_positions(boxes, image_size)
        return features, positions, mask

    def serving_default(self, text, region_features, region_boxes, image_size, num_regions,
                        region_features_2, region_boxes_2, image_size_2, num_regions_2):
        """Raw text + each image's features, pixel boxes, image size and region count."""
        token_ids, text_mask = self.text_to_ids(text)
        batch = tf.shape(token_ids)[0]
        left = self._image_from_boxes(batch, region_features, region_boxes, image_size, num_regions, "")
        right = self._image_from_boxes(batch, region_features_2, region_boxes_2, image_size_2, num_regions_2, SECOND)
        return self.score_pair(token_ids, text_mask, left, right)

    def score_positions(self, text, region_features, region_positions, num_regions,
                        region_features_2, region_positions_2, num_regions_2):
        """Raw text + each image's features, 7-d positions and region count."""
        token_ids, text_mask = self.text_to_ids(text)
        batch = tf.shape(token_ids)[0]
        left = (region_features, region_positions,
                self._pair_region_mask(batch, region_features, num_regions, "num_regions"))
        right = (region_features_2, region_positions_2,
                 self._pair_region_mask(batch, region_features_2, num_regions_2, "num_regions_2"))
        return self.score_pair(token_ids, text_mask, left, right)

    def score_tensors(self, token_ids, text_mask, region_features, region_positions, region_mask,
                      region_features_2, region_positions_2, region_mask_2):
        """Pre-tokenised ids + each image's features, positions and mask."""
        return self.score_pair(token_ids, text_mask, (region_features, region_positions, region_mask),
                               (region_features_2, region_positions_2, region_mask_2),
                               count_names=("region_mask", "region_mask_2"))

    def serve_examples(self, examples):
        """Serialized canonical pair records (the right image in the ``*_2`` fields)."""
        from uniter_tf.data import schema

        feature_dim = self.feature_dim
        image_keys = (schema.REGION_FEATURES, schema.REGION_POSITIONS, schema.REGION_FEATURES_2,
                      schema.REGION_POSITIONS_2)

        def parse_one(serialized):
            record = schema.parse_and_decode(serialized, feature_dim=feature_dim, second_image=True)
            return {key: record[key] for key in (schema.EXAMPLE_ID, schema.TEXT, schema.TOKEN_IDS) + image_keys}

        widths = {schema.REGION_FEATURES: feature_dim, schema.REGION_POSITIONS: 7,
                  schema.REGION_FEATURES_2: feature_dim, schema.REGION_POSITIONS_2: 7}
        parsed = tf.map_fn(parse_one, tf.reshape(examples, [-1]), fn_output_signature={
                schema.EXAMPLE_ID: tf.TensorSpec([], tf.string),
                schema.TEXT: tf.TensorSpec([], tf.string),
                schema.TOKEN_IDS: tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0),
                **{key: tf.RaggedTensorSpec([None, width], tf.float32, ragged_rank=0)
                   for key, width in widths.items()}})
        token_ids, text_mask = self._record_token_ids(parsed[schema.TOKEN_IDS], parsed[schema.TEXT])
        images = []
        for features_key, positions_key in ((schema.REGION_FEATURES, schema.REGION_POSITIONS),
                                            (schema.REGION_FEATURES_2, schema.REGION_POSITIONS_2)):
            counts = tf.cast(parsed[features_key].row_lengths(), tf.int32)
            features = parsed[features_key].to_tensor()
            images.append((features, parsed[positions_key].to_tensor(),
                           tf.sequence_mask(counts, tf.shape(features)[1], dtype=tf.int32)))
        outputs = self.score_pair(token_ids, text_mask, images[0], images[1])
        outputs["example_id"] = parsed[schema.EXAMPLE_ID]
        return outputs

    # ------------------------------------------------------------------------------ signatures

    def input_signatures(self):
        """The one-image signatures' specs, each scoring one followed by the ``_2`` twins of its image inputs."""
        specs = super().input_signatures()
        paired = {}
        for name in (SERVING_DEFAULT, SCORE_POSITIONS, SCORE_TENSORS):
            image_specs = [spec for spec in specs[name] if spec.name not in _TEXT_INPUTS]
            paired[name] = list(specs[name]) + [tf.TensorSpec(spec.shape, spec.dtype, name=spec.name + SECOND)
                                                for spec in image_specs]
        paired[SERVE_EXAMPLES] = specs[SERVE_EXAMPLES]
        paired[TOKENIZE] = specs[TOKENIZE]
        return paired

    def functions(self):
        """Only the signatures implemented for two images (one-image ones would miss the right image)."""
        return {SERVING_DEFAULT: self.serving_default, SCORE_POSITIONS: self.score_positions,
                SCORE_TENSORS: self.score_tensors, SERVE_EXAMPLES: self.serve_examples, TOKENIZE: self.tokenize}


def pair_example_inputs(feature_dim: int, batch_size: int = 1, num_regions: Tuple[int, int] = (4, 3),
                        seed: int = 0) -> Dict[str, Dict[str, np.ndarray]]:
    """Small valid inputs for every pair signature (warm-up requests, smoke tests): the left image has
    ``num_regions[0]`` regions, the right one ``num_regions[1]``."""
    from uniter_tf.data import schema
    from uniter_tf.export.exporter import example_inputs

    left = example_inputs(feature_dim, batch_size, num_regions[0], seed=seed,
                          captions=["The left image has more shapes than the right image."] * batch_size)
    right = example_inputs(feature_dim, batch_size, num_regions[1], seed=seed + 1)
    requests = {}
    for name in (SERVING_DEFAULT, SCORE_POSITIONS, SCORE_TENSORS):
        requests[name] = dict(left[name])
        requests[name].update({key + SECOND: value for key, value in right[name].items() if key not in _TEXT_INPUTS})
    examples = [schema.merge_second_image_features(left[SERVE_EXAMPLES]["examples"][index],
                                                   right[SERVE_EXAMPLES]["examples"][index]).SerializeToString()
                for index in range(batch_size)]
    requests[SERVE_EXAMPLES] = {"examples": np.array(examples, dtype=object)}
    requests[TOKENIZE] = left[TOKENIZE]
    return requests

