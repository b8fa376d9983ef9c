"""The serving graph: input checks, padding to fixed buckets, backbone, ITM and task heads.

Every exported signature funnels into :meth:`ServingGraph.score`, so that raw text, pre-tokenised ids
and serialized canonical records give identical numbers for the same pair. Inputs are cut to the
longest real row and padded up to the next *bucket* inside the graph (the padding a client or TF
Serving's batcher adds never reaches the model, and the model sees few distinct shapes). Bad inputs
fail in-graph assertions whose messages name the input; servers report them as INVALID_ARGUMENT.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf

from uniter_tf.export.task_heads import TaskHeadExport

# Signature names (docs/serving.md lists their inputs and outputs).
SERVING_DEFAULT = "serving_default"
SCORE_POSITIONS = "score_positions"
SCORE_TENSORS = "score_tensors"
SERVE_EXAMPLES = "serve_examples"
TOKENIZE = "tokenize"
SIGNATURE_NAMES = (SERVING_DEFAULT, SCORE_POSITIONS, SCORE_TENSORS, SERVE_EXAMPLES, TOKENIZE)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """Limits and buckets of the exported signatures.

    Attributes:
        max_text_length: the longest token row, ``[CLS]``/``[SEP]`` included; raw text is truncated
            to it (as in training), pre-tokenised rows longer than it are rejected.
        text_buckets: token-row widths the graph pads to (the smallest that fits).
        region_buckets: region counts the graph pads to; the last one is the most regions accepted.
        top_k: answers per example for task heads with labels (overrides the head's when set).
        warmup: write ``assets.extra/tf_serving_warmup_requests`` (one request per signature).
        jit_compile: run the model part of every scoring signature (backbone, ITM and task head) as
            one XLA-compiled function, and pad the batch to a power of two so that XLA sees few
            shapes. Faster inference on CPU (docs/performance.md), but each new (batch bucket, text
            bucket, region bucket) is compiled on its first request (tens of seconds for uniter-base;
            cached on disk by every ``uniter`` command, see :mod:`uniter_tf.training.performance`),
            and ``tensorflow_model_server`` needs ``--xla_cpu_compilation_enabled=true`` to run it.
    """

    max_text_length: int = 60
    text_buckets: Tuple[int, ...] = (16, 32, 60)
    region_buckets: Tuple[int, ...] = (16, 36, 64, 100)
    top_k: Optional[int] = None
    warmup: bool = True
    jit_compile: bool = False

    def __post_init__(self):
        for name in ("text_buckets", "region_buckets"):
            buckets = tuple(int(value) for value in getattr(self, name))
            if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
                raise ValueError(f"ExportOptions.{name} must be a non-empty increasing list of positive sizes, "
                                 f"got {getattr(self, name)}")
            object.__setattr__(self, name, buckets)
        if self.max_text_length < 3:
            raise ValueError(f"ExportOptions.max_text_length must be >= 3, got {self.max_text_length}")
        if self.text_buckets[-1] != self.max_text_length:
            raise ValueError(f"ExportOptions.text_buckets must end at max_text_length={self.max_text_length}, "
                             f"got {self.text_buckets}")

    @property
    def max_regions(self) -> int:
        """The most regions one example may have."""
        return self.region_buckets[-1]


def _bucket_width(length: tf.Tensor, buckets: tf.Tensor) -> tf.Tensor:
    """The smallest bucket >= ``length`` (``length`` is already checked against the last bucket)."""
    index = tf.reduce_sum(tf.cast(buckets < length, tf.int32))
    return buckets[tf.minimum(index, tf.size(buckets) - 1)]


def _fit_axis1(tensor: tf.Tensor, length: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Cuts ``tensor`` to ``length`` along axis 1, then zero-pads it to ``width``."""
    tensor = tensor[:, :length]
    rank = tensor.shape.rank
    paddings = [[0, 0], [0, width - length]] + [[0, 0]] * (rank - 2)
    return tf.pad(tensor, paddings)


class ServingGraph:
    """Builds the outputs of every signature from the model's Keras pieces.

    Args:
        backbone: the :class:`~uniter_tf.models.backbone.UniterBackbone`.
        itm_head: the ITM head (pooled output -> ``[B, 2]`` logits, class 1 = match).
        preprocessor: a :class:`~uniter_tf.tokenization.UniterPreprocessor` (text -> ids in-graph).
        options: the limits and buckets.
        task: an optional task head hook.
        label_table: with ``task.labels``, a lookup table from class index (int64) to label.
        vocab_table: a lookup table from token id (int64) to vocabulary entry.
    """

    def __init__(self, backbone, itm_head, preprocessor, options: ExportOptions,
                 task: Optional[TaskHeadExport] = None, label_table=None, vocab_table=None):
        self.backbone = backbone
        self.itm_head = itm_head
        self.preprocessor = preprocessor
        self.tokenizer = preprocessor.tokenizer
        self.options = options
        self.task = task
        self.label_table = label_table
        self.vocab_table = vocab_table
        config = backbone.config
        self.feature_dim = int(config.region_feature_dim)
        self.hidden_size = int(config.hidden_size)
        self.max_text_length = min(options.max_text_length, int(config.max_position_embeddings))
        self.top_k = (options.top_k or task.top_k) if task is not None else 0
        if task is not None and task.labels is not None:
            self.top_k = min(self.top_k, len(task.labels))
        self._model_function = tf.function(self._model_outputs, jit_compile=True) if options.jit_compile \
            else self._model_outputs

    def _model_outputs(self, inputs) -> Dict[str, tf.Tensor]:
        """Backbone, ITM head and task head: the part of every scoring signature XLA can compile."""
        encoded = self.backbone(inputs, training=False)
        pooled_output = encoded["pooled_output"]
        outputs = {"itm_logits": tf.cast(self.itm_head(pooled_output), tf.float32),
                   "pooled_output": tf.cast(pooled_output, tf.float32)}
        if self.task is not None:
            # As TaskModel: heads that read the regions (RefCOCO) need the region slots' validity too.
            head_inputs = dict(encoded)
            head_inputs.setdefault("region_mask", inputs["region_mask"])
            outputs["task_logits"] = tf.cast(self.task.head(head_inputs, training=False), tf.float32)
        return outputs

    def _run_model(self, inputs) -> Dict[str, tf.Tensor]:
        if not self.options.jit_compile:
            return self._model_function(inputs)
        # Zero rows pad the batch to a power of two (all-padding rows are valid model inputs and are
        # cut off again), so XLA compiles per batch bucket rather than per batch size.
        batch_size = tf.shape(inputs["token_ids"])[0]
        padded_size = tf.constant(1, tf.int32)
        padded_size = tf.while_loop(lambda size: size < batch_size, lambda size: [size * 2], [padded_size])[0]
        padded = {}
        for name, value in inputs.items():
            paddings = tf.concat([[[0, padded_size - batch_size]], tf.zeros([value.shape.rank - 1, 2], tf.int32)],
                                 axis=0)
            padded[name] = tf.pad(value, paddings)
            padded[name].set_shape([None] + value.shape[1:].as_list())
        return {name: value[:batch_size] for name, value in self._model_function(padded).items()}

    # --------------------------------------------------------------------------------- the core

    def _text_checks(self, token_ids, text_mask):
        """The longest text (≥ 1) and the assertions every scoring graph runs on packed text inputs."""
        text_lengths = tf.reduce_sum(text_mask, axis=1)
        longest_text = tf.reduce_max(tf.concat([text_lengths, [1]], axis=0))
        checks = [
                tf.debugging.assert_less_equal(
                        longest_text, tf.constant(self.max_text_length, tf.int32),
                        message=f"text_mask: a text has more than {self.max_text_length} tokens "
                                f"([CLS] and [SEP] included)"),
                tf.debugging.assert_greater_equal(
                        tf.reduce_min(tf.concat([text_lengths, [2]], axis=0)), 2,
                        message="text_mask: every text needs at least [CLS] and [SEP]"),
                tf.debugging.assert_non_negative(token_ids, message="token_ids: negative token id"),
                tf.debugging.assert_less(
                        token_ids, tf.constant(int(self.backbone.config.vocab_size), tf.int32),
                        message=f"token_ids: a token id is outside the vocabulary "
                                f"[0, {self.backbone.config.vocab_size})"),
        ]
        return longest_text, checks

    def score(self, token_ids, text_mask, region_features, region_positions, region_mask) -> Dict[str, tf.Tensor]:
        """Checks, buckets and scores a batch given as backbone inputs (masks are prefixes of ones)."""
        token_ids = tf.cast(token_ids, tf.int32)
        text_mask = tf.cast(text_mask, tf.int32)
        region_mask = tf.cast(region_mask, tf.int32)
        region_features = tf.cast(region_features, tf.float32)
        region_positions = tf.cast(region_positions, tf.float32)
        region_counts = tf.reduce_sum(region_mask, axis=1)
        most_regions = tf.reduce_max(tf.concat([region_counts, [0]], axis=0))
        longest_text, checks = self._text_checks(token_ids, text_mask)
        checks += [
                tf.debugging.assert_less_equal(
                        most_regions, tf.constant(self.options.max_regions, tf.int32),
                        message=f"region_mask / num_regions: an example has more than {self.options.max_regions} "
                                f"regions"),
                *self._region_choice_checks(region_counts),
        ]
        with tf.control_dependencies(checks):
            text_width = _bucket_width(longest_text, tf.constant(self.options.text_buckets, tf.int32))
            region_width = _bucket_width(tf.maximum(most_regions, 1),
                                         tf.constant(self.options.region_buckets, tf.int32))
            inputs = {
                    "token_ids": _fit_axis1(token_ids, longest_text, text_width),
                    "text_mask": _fit_axis1(text_mask, longest_text, text_width),
                    "region_features": _fit_axis1(region_features, most_regions, region_width),
                    "region_positions": _fit_axis1(region_positions, most_regions, region_width),
                    "region_mask": _fit_axis1(region_mask, most_regions, region_width),
            }
        # The fitted tensors keep the static feature sizes the Dense layers need.
        inputs["region_features"] = tf.ensure_shape(inputs["region_features"], [None, None, self.feature_dim])
        inputs["region_positions"] = tf.ensure_shape(inputs["region_positions"], [None, None, 7])
        model_outputs = self._run_model(inputs)
        itm_logits = model_outputs["itm_logits"]
        outputs = {
                "itm_score": tf.nn.softmax(itm_logits, axis=-1)[:, 1],
                "itm_logits": itm_logits,
                "pooled_output": model_outputs["pooled_output"],
        }
        if self.task is not None:
            outputs.update(self._task_outputs(model_outputs["task_logits"]))
        return outputs

    def _chooses_regions(self) -> bool:
        return self.task is not None and bool(getattr(self.task.outputs, "region_choice", False))

    def _region_choice_checks(self, region_counts):
        if not self._chooses_regions():
            return []
        return [tf.debugging.assert_greater_equal(
                tf.reduce_min(tf.concat([region_counts, [1]], axis=0)), 1,
                message=f"num_regions / region_mask: task {self.task.name!r} chooses one of the regions; an "
                        f"example has zero regions")]

    def _chosen_box(self, outputs, region_boxes) -> Dict[str, tf.Tensor]:
        # The chosen slot is a real region (padded slots score -1e4), so it indexes the request's own boxes.
        if self._chooses_regions():
            outputs = dict(outputs)
            outputs["chosen_box"] = tf.gather(tf.cast(region_boxes, tf.float32), outputs["chosen_region"],
                                              axis=1, batch_dims=1)
        return outputs

    def _task_outputs(self, logits) -> Dict[str, tf.Tensor]:
        # Output names and the activation are the task's declaration (TaskHeadExport.from_task).
        outputs = {self.task.outputs.logits_output: logits}
        if self._chooses_regions():
            outputs["region_scores"] = tf.nn.softmax(logits, axis=-1)
            outputs["chosen_region"] = tf.argmax(logits, axis=-1, output_type=tf.int32)
        if self.task.labels is not None:
            probabilities = tf.sigmoid(logits) if self.task.outputs.activation == "sigmoid" else tf.nn.softmax(logits)
            top_scores, top_indices = tf.math.top_k(probabilities, k=self.top_k)
            outputs[self.task.outputs.labels_output] = self.label_table.lookup(tf.cast(top_indices, tf.int64))
            outputs[self.task.outputs.scores_output] = top_scores
        return outputs

    # ------------------------------------------------------------------------------ the inputs

    def _check_region_inputs(self, region_features, num_regions, extra_checks=()):
        width = tf.shape(region_features)[1]
        checks = [
                tf.debugging.assert_non_negative(num_regions, message="num_regions: a count is negative"),
                tf.debugging.assert_less_equal(
                        num_regions, width,
                        message="num_regions: a count exceeds the number of rows in region_features"),
                tf.debugging.assert_less_equal(
                        num_regions, tf.constant(self.options.max_regions, tf.int32),
                        message=f"num_regions: an example has more than {self.options.max_regions} regions"),
                *extra_checks,
        ]
        with tf.control_dependencies(checks):
            return tf.sequence_mask(num_regions, width, dtype=tf.int32)

    def text_to_ids(self, text) -> Tuple[tf.Tensor, tf.Tensor]:
        """Tokenises ``[B]`` strings into ``token_ids`` / ``text_mask`` (truncated to the text limit)."""
        packed = self.preprocessor(tf.reshape(text, [-1]))
        return packed["token_ids"], packed["text_mask"]

    def boxes_to_positions(self, region_boxes, image_size) -> tf.Tensor:
        """Pixel ``x1, y1, x2, y2`` boxes and ``[height, width]`` -> the 7-d positions (clipped)."""
        image_size = tf.cast(image_size, tf.float32)
        check = tf.debugging.assert_positive(image_size, message="image_size: height and width must be positive")
        with tf.control_dependencies([check]):
            height = image_size[:, 0][:, None]
            width = image_size[:, 1][:, None]
        x_low = tf.clip_by_value(tf.minimum(region_boxes[..., 0], region_boxes[..., 2]), 0.0, width)
        x_high = tf.clip_by_value(tf.maximum(region_boxes[..., 0], region_boxes[..., 2]), 0.0, width)
        y_low = tf.clip_by_value(tf.minimum(region_boxes[..., 1], region_boxes[..., 3]), 0.0, height)
        y_high = tf.clip_by_value(tf.maximum(region_boxes[..., 1], region_boxes[..., 3]), 0.0, height)
        x1, x2 = x_low / width, x_high / width
        y1, y2 = y_low / height, y_high / height
        box_width, box_height = x2 - x1, y2 - y1
        return tf.stack([x1, y1, x2, y2, box_width, box_height, box_width * box_height], axis=-1)

    def serving_default(self, text, region_features, region_boxes, image_size, num_regions):
        """Raw text + pixel boxes with the image size."""
        token_ids, text_mask = self.text_to_ids(text)
        batch_checks = [tf.debugging.assert_equal(
                tf.shape(image_size)[0], tf.shape(region_features)[0],
                message="image_size: needs one [height, width] row per example")]
        region_mask = self._check_region_inputs(region_features, num_regions, batch_checks)
        positions = self.boxes_to_positions(region_boxes, image_size)
        return self._chosen_box(self.score(token_ids, text_mask, region_features, positions, region_mask),
                                region_boxes)

    def score_positions(self, text, region_features, region_positions, num_regions):
        """Raw text + the 7-d normalised positions."""
        token_ids, text_mask = self.text_to_ids(text)
        region_mask = self._check_region_inputs(region_features, num_regions)
        return self.score(token_ids, text_mask, region_features, region_positions, region_mask)

    def score_tensors(self, token_ids, text_mask, region_features, region_positions, region_mask):
        """Pre-tokenised backbone inputs."""
        return self.score(token_ids, text_mask, region_features, region_positions, region_mask)

    def _record_token_ids(self, record_ids: tf.RaggedTensor, texts: tf.Tensor):
        """Packed ``[CLS] ... [SEP]`` ids and mask of parsed records: their ``token_ids``, or for records that
        carry only raw ``text``, the text tokenised here (``serve_examples`` of one- and two-image exports)."""
        from uniter_tf.tokenization import pack_token_ids

        has_ids = record_ids.row_lengths() > 0
        tokenized = self.tokenizer.tokenize(texts)
        word_ids = tf.concat([
                tf.ragged.boolean_mask(record_ids, record_ids.with_flat_values(
                        tf.repeat(has_ids, record_ids.row_lengths()))),
                tf.ragged.boolean_mask(tokenized, tokenized.with_flat_values(
                        tf.repeat(tf.logical_not(has_ids), tokenized.row_lengths())))], axis=1)
        return pack_token_ids(word_ids, self.max_text_length, cls_id=self.tokenizer.cls_id,
                              sep_id=self.tokenizer.sep_id, pad_id=self.tokenizer.pad_id,
                              padded_length=tf.minimum(
                                      tf.cast(tf.reduce_max(tf.concat([word_ids.row_lengths(), [0]], 0)), tf.int32)
                                      + 2, self.max_text_length))

    def serve_examples(self, examples):
        """Serialized canonical ``tf.Example`` records (``uniter_tf.data.schema``)."""
        from uniter_tf.data import schema

        feature_dim = self.feature_dim

        def parse_one(serialized):
            record = schema.parse_and_decode(serialized, feature_dim=feature_dim)
            return {key: record[key] for key in (schema.EXAMPLE_ID, schema.TEXT, schema.TOKEN_IDS,
                                                 schema.REGION_FEATURES, schema.REGION_POSITIONS)}

        parsed = tf.map_fn(parse_one, tf.reshape(examples, [-1]), fn_output_signature={
                schema.EXAMPLE_ID: tf.TensorSpec([], tf.string),
                schema.TEXT: tf.TensorSpec([], tf.string),
                schema.TOKEN_IDS: tf.RaggedTensorSpec([None], tf.int32, ragged_rank=0),
                schema.REGION_FEATURES: tf.RaggedTensorSpec([None, feature_dim], tf.float32, ragged_rank=0),
                schema.REGION_POSITIONS: tf.RaggedTensorSpec([None, 7], tf.float32, ragged_rank=0),
        })
        token_ids, text_mask = self._record_token_ids(parsed[schema.TOKEN_IDS], parsed[schema.TEXT])
        region_counts = tf.cast(parsed[schema.REGION_FEATURES].row_lengths(), tf.int32)
        region_features = parsed[schema.REGION_FEATURES].to_tensor()
        region_positions = parsed[schema.REGION_POSITIONS].to_tensor()
        region_mask = tf.sequence_mask(region_counts, tf.shape(region_features)[1], dtype=tf.int32)
        outputs = self.score(token_ids, text_mask, region_features, region_positions, region_mask)
        outputs["example_id"] = parsed[schema.EXAMPLE_ID]
        return outputs

    def tokenize(self, text):
        """What the server makes of raw text: ids, mask and the vocabulary entries."""
        token_ids, text_mask = self.text_to_ids(text)
        tokens = self.vocab_table.lookup(tf.cast(token_ids, tf.int64))
        tokens = tf.where(text_mask > 0, tokens, tf.constant("", tf.string))
        return {"token_ids": token_ids, "text_mask": text_mask, "tokens": tokens}

    # ------------------------------------------------------------------------------ signatures

    def input_signatures(self) -> Dict[str, Sequence[tf.TensorSpec]]:
        """The ``tf.TensorSpec`` list of every signature, in argument order."""
        dim = self.feature_dim
        text = tf.TensorSpec([None], tf.string, name="text")
        features = tf.TensorSpec([None, None, dim], tf.float32, name="region_features")
        positions = tf.TensorSpec([None, None, 7], tf.float32, name="region_positions")
        num_regions = tf.TensorSpec([None], tf.int32, name="num_regions")
        return {
                SERVING_DEFAULT: [text, features, tf.TensorSpec([None, None, 4], tf.float32, name="region_boxes"),
                                  tf.TensorSpec([None, 2], tf.float32, name="image_size"), num_regions],
                SCORE_POSITIONS: [text, features, positions, num_regions],
                SCORE_TENSORS: [tf.TensorSpec([None, None], tf.int32, name="token_ids"),
                                tf.TensorSpec([None, None], tf.int32, name="text_mask"), features, positions,
                                tf.TensorSpec([None, None], tf.int32, name="region_mask")],
                SERVE_EXAMPLES: [tf.TensorSpec([None], tf.string, name="examples")],
                TOKENIZE: [text],
        }

    def functions(self):
        """Signature name -> the Python function implementing it."""
        return {SERVING_DEFAULT: self.serving_default, SCORE_POSITIONS: self.score_positions,
                SCORE_TENSORS: self.score_tensors, SERVE_EXAMPLES: self.serve_examples, TOKENIZE: self.tokenize}
