"""Referring expressions (RefCOCO, RefCOCO+, RefCOCOg) as a task: the official ``train_re.py`` (spec §5.5).

An expression and the regions of its image: which region does the expression refer to? The head is
:class:`uniter_tf.models.referring_expression.ReferringExpressionHead` (one score per region, ``mlp`` 1 or
2, padded region slots at exactly −10000, text positions never scored: the head reads the region part of
the compact sequence only).

Records are the canonical ones of ``uniter ingest --format refcoco``: the image's regions
(``region_boxes`` in pixels) and the expression's ``target_box`` (the referred annotation's box, pixel
``x1, y1, x2, y2``). The **target region** is the region whose box has the highest official IoU with the
target box; on ground-truth-box features (what the official training uses) that is the referred
annotation's own row (IoU 1), i.e. the official ``ann_ids.index(ann_id)``.

Losses (``loss``):

* ``cls`` (official default): softmax cross-entropy over the region slots, ``reduction='none'``, then
  **summed** over the batch (``train_re.py:195``), not averaged.
* ``rank``: ``max(0, margin + σ(s_neg) − σ(s_pos))`` with one negative region per expression: with
  probability ``hard_ratio`` the highest-scoring non-target region, else a uniformly random non-target
  region (``model/re.py:74-123``); summed over the batch as well. An expression whose image has one
  region only has no negative and adds 0.

Metric: ``accuracy`` = the box of the argmax region has IoU > 0.5 with the target box, with the official
inclusive IoU (``ReEvalDataset.computeIoU``: ``x2 = x + w − 1``, intersection ``(x2 − x1 + 1)·(y2 − y1 + 1)``
only when ``x1 < x2`` and ``y1 < y2`` strictly, union from the plain ``w·h`` areas). The same metric scores
ground-truth-box records and detected-box records (any region boxes): evaluate each set of records.
Predictions (``results/results_{step}.json``): the list of ``{"sent_id", "pred_box", "tgt_box"}`` the
official ``inf_re.py`` meant to write (spec §7.23: it writes the dict keys instead), boxes in pixel
``[x, y, w, h]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional

import keras
import numpy as np
import tensorflow as tf

from uniter_tf.data import schema
from uniter_tf.models.referring_expression import ReferringExpressionHead, referring_expression_loss
from uniter_tf.models.task import EXAMPLE_ID_KEY, DownstreamTask, ExportOutputs, register_task

#: The task's registry / CLI name (``uniter finetune --task refcoco``).
REFCOCO_TASK_NAME = "refcoco"
#: The official losses (``--loss``).
RE_LOSSES = ("cls", "rank")
#: Official IoU threshold of a correct box.
IOU_THRESHOLD = 0.5
TARGET_INDEX_KEY = "target_index"
TARGET_BOX_KEY = "target_box"
REGION_BOXES_KEY = "region_boxes"
REGION_VALID_KEY = "region_valid"


def official_iou(box1, box2) -> float:
    """The official inclusive IoU of two pixel ``[x, y, w, h]`` boxes (``data/re.py:226-238``), in Python.

    Args:
        box1: ``[x, y, w, h]``.
        box2: ``[x, y, w, h]``.

    Returns:
        The IoU (0 for disjoint boxes).
    """
    inter_x1 = max(box1[0], box2[0])
    inter_y1 = max(box1[1], box2[1])
    inter_x2 = min(box1[0] + box1[2] - 1, box2[0] + box2[2] - 1)
    inter_y2 = min(box1[1] + box1[3] - 1, box2[1] + box2[3] - 1)
    if inter_x1 < inter_x2 and inter_y1 < inter_y2:
        inter = (inter_x2 - inter_x1 + 1) * (inter_y2 - inter_y1 + 1)
    else:
        inter = 0
    union = box1[2] * box1[3] + box2[2] * box2[3] - inter
    return float(inter) / union


def inclusive_iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """:func:`official_iou` on pixel ``x1, y1, x2, y2`` boxes, broadcast over leading dimensions.

    Args:
        boxes_a: ``[..., 4]`` pixel corners.
        boxes_b: ``[..., 4]`` pixel corners (broadcastable with ``boxes_a``).

    Returns:
        ``[...]`` float32 IoU; 0 where the union is 0 (e.g. two empty padding boxes).
    """
    boxes_a = tf.cast(boxes_a, tf.float32)
    boxes_b = tf.cast(boxes_b, tf.float32)
    ax, ay = boxes_a[..., 0], boxes_a[..., 1]
    aw, ah = boxes_a[..., 2] - ax, boxes_a[..., 3] - ay
    bx, by = boxes_b[..., 0], boxes_b[..., 1]
    bw, bh = boxes_b[..., 2] - bx, boxes_b[..., 3] - by
    inter_x1 = tf.maximum(ax, bx)
    inter_y1 = tf.maximum(ay, by)
    inter_x2 = tf.minimum(ax + aw - 1, bx + bw - 1)
    inter_y2 = tf.minimum(ay + ah - 1, by + bh - 1)
    overlaps = tf.logical_and(inter_x1 < inter_x2, inter_y1 < inter_y2)
    inter = tf.where(overlaps, (inter_x2 - inter_x1 + 1) * (inter_y2 - inter_y1 + 1), 0.0)
    union = aw * ah + bw * bh - inter
    return tf.math.divide_no_nan(inter, union)


def xywh(box) -> List[float]:
    """Pixel ``x1, y1, x2, y2`` → the official ``[x, y, w, h]`` (plain floats, for JSON)."""
    x1, y1, x2, y2 = (float(value) for value in box)
    return [x1, y1, x2 - x1, y2 - y1]


def predicted_boxes(scores: tf.Tensor, region_boxes: tf.Tensor) -> tf.Tensor:
    """The box of each expression's best-scoring region: ``[B, N]`` scores, ``[B, N, 4]`` → ``[B, 4]``."""
    best = tf.argmax(scores, axis=-1, output_type=tf.int32)
    return tf.gather(tf.cast(region_boxes, tf.float32), best, axis=1, batch_dims=1)


def rank_loss(scores: tf.Tensor, target_index: tf.Tensor, region_valid: tf.Tensor, *, margin: float = 0.2,
              hard_ratio: float = 0.3, seed: Optional[int] = None) -> tf.Tensor:
    """The official ``rank`` loss per expression (``model/re.py:74-123``).

    Args:
        scores: ``[B, N]`` region scores.
        target_index: ``[B]`` target region.
        region_valid: ``[B, N]`` bool, True for real (not padded) regions.
        margin: hinge margin (official 0.2).
        hard_ratio: probability of the hardest negative instead of a random one (official 0.3).
        seed: op seed of the random draws (tests).

    Returns:
        ``[B]`` hinge losses (0 where the image has no other region).
    """
    scores = tf.cast(scores, tf.float32)
    num_slots = tf.shape(scores)[1]
    target_index = tf.cast(tf.reshape(target_index, [-1]), tf.int32)
    candidates = tf.logical_and(tf.cast(region_valid, tf.bool),
                                tf.logical_not(tf.one_hot(target_index, num_slots, on_value=True, off_value=False)))
    has_negative = tf.reduce_any(candidates, axis=-1)
    very_low = tf.constant(-1e9, tf.float32)
    hardest = tf.argmax(tf.where(candidates, scores, very_low), axis=-1, output_type=tf.int32)
    # Uniform over the candidates: equal logits on them, -1e9 elsewhere (all -1e9 rows are masked below).
    uniform = tf.where(candidates, tf.zeros_like(scores), very_low)
    random_pick = tf.cast(tf.random.categorical(uniform, 1, seed=seed)[:, 0], tf.int32)
    use_hard = tf.random.uniform(tf.shape(target_index), seed=seed) < hard_ratio
    negative = tf.where(use_hard, hardest, random_pick)
    positive_score = tf.sigmoid(tf.gather(scores, target_index, axis=1, batch_dims=1))
    negative_score = tf.sigmoid(tf.gather(scores, negative, axis=1, batch_dims=1))
    hinge = tf.nn.relu(margin + negative_score - positive_score)
    return tf.where(has_negative, hinge, tf.zeros_like(hinge))


@dataclasses.dataclass(frozen=True)
class RegionChoiceOutputs(ExportOutputs):
    """The export declaration of a task whose logits score the regions (one per region slot).

    The signatures (``uniter_tf.export.signatures``) then also return ``region_scores [B, N]`` (softmax
    over the regions), ``chosen_region [B]`` and, where the request has pixel boxes (``serving_default``),
    ``chosen_box [B, 4]``; they refuse an example with zero regions (INVALID_ARGUMENT naming
    ``num_regions``).
    """

    region_choice: bool = True


@register_task("refcoco")  # a literal: tests read the registered names from the source
class RefcocoTask(DownstreamTask):
    """Referring-expression comprehension (spec §5.5).

    Args:
        mlp: 1 (``Linear(H, 1)``: refcoco / refcocog configs) or 2 (the refcoco+ config's MLP).
        loss: ``cls`` (official default) or ``rank``.
        margin: the ``rank`` loss margin (official 0.2).
        hard_ratio: the ``rank`` loss's share of hardest negatives (official 0.3).
        head_learning_rate_multiplier: ``lr_mul`` of ``re_output`` (1.0 in the official configs).
    """

    name = REFCOCO_TASK_NAME
    label_keys = (schema.TARGET_BOX, schema.REGION_BOXES, schema.NUM_REGIONS)
    primary_metric = "accuracy"

    def __init__(self, mlp: int = 1, loss: str = "cls", margin: float = 0.2, hard_ratio: float = 0.3,
                 head_learning_rate_multiplier: float = 1.0):
        if mlp not in (1, 2) or isinstance(mlp, bool):
            raise ValueError(f"task 'refcoco': mlp must be 1 or 2, got {mlp!r}")
        if loss not in RE_LOSSES:
            raise ValueError(f"task 'refcoco': loss must be one of {RE_LOSSES}, got {loss!r}")
        if not 0.0 <= hard_ratio <= 1.0:
            raise ValueError(f"task 'refcoco': hard_ratio must be in [0, 1], got {hard_ratio!r}")
        if margin < 0:
            raise ValueError(f"task 'refcoco': margin must be >= 0, got {margin!r}")
        if head_learning_rate_multiplier <= 0:
            raise ValueError(f"task 'refcoco': head_learning_rate_multiplier must be > 0, "
                             f"got {head_learning_rate_multiplier}")
        self.mlp = int(mlp)
        self.loss = loss
        self.margin = float(margin)
        self.hard_ratio = float(hard_ratio)
        self.head_learning_rate_multiplier = float(head_learning_rate_multiplier)

    def build_head(self, hidden_size: int) -> keras.layers.Layer:
        return ReferringExpressionHead(hidden_size=hidden_size, mlp=self.mlp, name="re_output")

    def keep_record(self, parsed: Mapping[str, tf.Tensor]) -> tf.Tensor:
        # Records of other tasks have no target box; an image without regions has nothing to choose.
        return tf.logical_and(tf.equal(tf.size(parsed[schema.TARGET_BOX]), 4), parsed[schema.NUM_REGIONS] > 0)

    def targets_from_features(self, features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        missing = [key for key in self.label_keys if key not in features]
        if missing:
            raise KeyError(f"refcoco needs the record features {missing}; the batch has {sorted(features)}")
        region_boxes = tf.cast(features[schema.REGION_BOXES], tf.float32)
        target_box = tf.reshape(tf.cast(features[schema.TARGET_BOX], tf.float32), [-1, 4])
        region_valid = tf.sequence_mask(tf.reshape(features[schema.NUM_REGIONS], [-1]), tf.shape(region_boxes)[1])
        overlap = tf.where(region_valid, inclusive_iou(region_boxes, target_box[:, tf.newaxis, :]), -1.0)
        return {TARGET_INDEX_KEY: tf.argmax(overlap, axis=-1, output_type=tf.int32), TARGET_BOX_KEY: target_box,
                REGION_BOXES_KEY: region_boxes, REGION_VALID_KEY: region_valid}

    def per_example_loss(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> tf.Tensor:
        """``[B]`` losses of the configured kind (before the official sum over the batch)."""
        if self.loss == "cls":
            return referring_expression_loss(logits, targets[TARGET_INDEX_KEY])[0]
        return rank_loss(logits, targets[TARGET_INDEX_KEY], targets[REGION_VALID_KEY], margin=self.margin,
                         hard_ratio=self.hard_ratio)

    def compute_loss(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> tf.Tensor:
        # train_re.py:195: reduction='none' then .sum(): the batch's loss is the SUM over expressions.
        return tf.reduce_sum(self.per_example_loss(targets, logits))

    def compute_metrics(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> Dict[str, tf.Tensor]:
        boxes = predicted_boxes(logits, targets[REGION_BOXES_KEY])
        return {"accuracy": tf.cast(inclusive_iou(boxes, targets[TARGET_BOX_KEY]) > IOU_THRESHOLD, tf.float32)}

    def evaluate(self, model, files=None, max_batches=None, *, seed: int = 43, output_dir=None, step=None):
        """Mean per-expression loss, ``accuracy`` and ``num_examples`` on ``files``.

        With ``output_dir`` and ``step`` also writes ``results/results_{step}.json``: the list of
        ``{"sent_id", "pred_box", "tgt_box"}`` (pixel ``[x, y, w, h]``), sorted by ``sent_id``.

        Raises:
            ValueError: the files hold no referring-expression record.
        """
        del seed  # one ordered pass
        files, dataset, predictions_path = self.evaluation_inputs(files, output_dir=output_dir, step=step)
        return evaluate_referring_expressions(self, model, dataset, max_batches=max_batches,
                                              predictions_path=predictions_path, files=files)

    def export_outputs(self) -> ExportOutputs:
        # One score per region slot (softmax over the regions, as trained with `cls`), the chosen region and
        # its pixel box; no label vocabulary.
        return RegionChoiceOutputs(name=self.name, activation="softmax")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RefcocoTask":
        """Constructs the task from :meth:`get_config`'s dict.

        Raises:
            ValueError: an unknown argument (named).
        """
        arguments = dict(config)
        known = {"mlp", "loss", "margin", "hard_ratio", "head_learning_rate_multiplier"}
        unknown = sorted(set(arguments) - known)
        if unknown:
            raise ValueError(f"task 'refcoco' has no argument(s) {unknown}; it takes {sorted(known)}")
        return cls(**arguments)

    def get_config(self) -> Dict[str, object]:
        return {"mlp": self.mlp, "loss": self.loss, "margin": self.margin, "hard_ratio": self.hard_ratio,
                "head_learning_rate_multiplier": self.head_learning_rate_multiplier}


def sentence_id(example_id: str):
    """``ref_{sent_id}`` → the integer ``sent_id`` (other ids are returned unchanged)."""
    if example_id.startswith("ref_") and example_id[4:].isdigit():
        return int(example_id[4:])
    return example_id


def evaluate_referring_expressions(task: RefcocoTask, model, dataset, *, max_batches: Optional[int] = None,
                                   predictions_path: Optional[str] = None, files=None) -> Dict[str, float]:
    """Loss, accuracy and predictions of ``model`` over ``dataset`` (``(inputs, labels)`` batches).

    Args:
        task: the RefCOCO task.
        model: the task model.
        dataset: batches of :func:`uniter_tf.data.finetune_inputs.build_finetune_dataset`.
        max_batches: stop after this many batches.
        predictions_path: where the ``{sent_id, pred_box, tgt_box}`` list goes (any ``tf.io.gfile`` path).
        files: the files read (for the error message).

    Returns:
        ``{"loss": mean per-expression loss, "accuracy", "num_examples"}``.

    Raises:
        ValueError: no record was evaluated.
    """
    step = getattr(model, "_uniter_re_eval_step", None)
    if step is None:
        def forward(inputs, labels):
            scores = tf.cast(model({key: value for key, value in inputs.items() if key != EXAMPLE_ID_KEY},
                                   training=False), tf.float32)
            targets = task.targets_from_features(labels)
            return (task.per_example_loss(targets, scores), task.compute_metrics(targets, scores)["accuracy"],
                    predicted_boxes(scores, targets[REGION_BOXES_KEY]), targets[TARGET_BOX_KEY])

        step = tf.function(forward, reduce_retracing=True)
        object.__setattr__(model, "_uniter_re_eval_step", step)
    count, loss_sum, correct, predictions = 0, 0.0, 0.0, []
    for batch_index, (inputs, labels) in enumerate(dataset):
        if max_batches is not None and batch_index >= max_batches:
            break
        losses, accuracy, pred_boxes, target_boxes = (value.numpy() for value in step(inputs, labels))
        count += len(losses)
        loss_sum += float(np.sum(losses))
        correct += float(np.sum(accuracy))
        if predictions_path is not None:
            ids = [value.decode("utf-8") for value in inputs[EXAMPLE_ID_KEY].numpy()]
            predictions.extend({"sent_id": sentence_id(example_id), "pred_box": xywh(pred_box),
                                "tgt_box": xywh(target_box)}
                               for example_id, pred_box, target_box in zip(ids, pred_boxes, target_boxes))
    if count == 0:
        raise ValueError(f"the eval files {files} hold no usable refcoco records (records with a target_box "
                         f"and at least one region)")
    if predictions_path is not None:
        tf.io.gfile.makedirs(os.path.dirname(predictions_path))
        predictions.sort(key=lambda row: (isinstance(row["sent_id"], str), row["sent_id"]))
        with tf.io.gfile.GFile(predictions_path, "w") as handle:
            handle.write(json.dumps(predictions, indent=1))
    return {"loss": loss_sum / count, "accuracy": correct / count, "num_examples": float(count)}
