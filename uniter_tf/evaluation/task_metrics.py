"""The downstream tasks' own metrics on an eval split: SNLI-VE accuracy, NLVR2 accuracy and consistency,
RefCOCO accuracy (IoU > 0.5).

What the TFX evaluation gate adds for a pipeline that fine-tunes one of these tasks
(``components/uniter_evaluator``, parameter ``task``), next to the ITM / retrieval figures of
:func:`uniter_tf.evaluation.evaluate`. The model is reached through the same *scorer*
(:data:`uniter_tf.evaluation.Scorer`: serialized canonical records in, ``task_logits`` out, e.g. the
export's ``serve_examples`` signature), and each record is scored as it is (the text with its own image):

* ``ve``: ``ve_accuracy`` = share of hypotheses whose argmax class is the ``label`` (contradiction 0 /
  entailment 1 / neutral 2);
* ``nlvr2``: ``nlvr2_accuracy`` (argmax over False / True against ``label``) and ``nlvr2_consistency`` (the
  share of sentences whose every image pair is answered correctly, official ``scripts/eval_nlvr2.py``);
  the scorer must take NLVR2 pair records (both images);
* ``refcoco``: ``refcoco_accuracy`` = share of expressions whose highest-scoring region's box overlaps the
  ``target_box`` with IoU > 0.5, in the official inclusive-pixel IoU
  (:func:`uniter_tf.models.refcoco_task.inclusive_iou`), among the record's real regions.

Only the records of the task (their ``task`` field) count; records are streamed one batch at a time.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Sequence

import numpy as np

from uniter_tf.data import schema

#: The export's task-head output every task metric reads.
TASK_LOGITS = "task_logits"
#: Pipeline task name → the ``task`` field of its canonical records.
RECORD_TASKS = {"ve": schema.TASK_SNLI_VE, "nlvr2": schema.TASK_NLVR2, "refcoco": schema.TASK_REFCOCO}
#: Pipeline task name → the metrics :func:`evaluate_task` returns for it (the gate's threshold names).
TASK_METRICS = {"ve": ("ve_accuracy",), "nlvr2": ("nlvr2_accuracy", "nlvr2_consistency"),
                "refcoco": ("refcoco_accuracy",)}
#: RefCOCO: a prediction is correct above this IoU (official ``train_re.py``).
IOU_THRESHOLD = 0.5


def inclusive_iou(boxes: np.ndarray, target: np.ndarray) -> np.ndarray:
    """IoU of pixel ``x1, y1, x2, y2`` boxes ``[N, 4]`` with one box ``[4]``, counting pixels inclusively.

    The official RefCOCO IoU (``computeIoU`` over ``[x, y, w, h]``: the intersection spans
    ``x1 .. min(x + w - 1)``, and its area adds 1 per side), in numpy; equal to
    :func:`uniter_tf.models.refcoco_task.inclusive_iou`. 0 where the union is 0.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    target = np.asarray(target, np.float32).reshape(4)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    target_width, target_height = target[2] - target[0], target[3] - target[1]
    inter_x1 = np.maximum(boxes[:, 0], target[0])
    inter_y1 = np.maximum(boxes[:, 1], target[1])
    inter_x2 = np.minimum(boxes[:, 0] + widths - 1, target[0] + target_width - 1)
    inter_y2 = np.minimum(boxes[:, 1] + heights - 1, target[1] + target_height - 1)
    overlaps = (inter_x1 < inter_x2) & (inter_y1 < inter_y2)
    inter = np.where(overlaps, (inter_x2 - inter_x1 + 1) * (inter_y2 - inter_y1 + 1), 0.0)
    union = widths * heights + target_width * target_height - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union != 0, inter / np.where(union != 0, union, 1.0), 0.0).astype(np.float32)


def _record_name(decoded: Mapping) -> str:
    value = decoded.get(schema.EXAMPLE_ID) or decoded.get(schema.IMAGE_ID) or b"?"
    return value.decode("utf-8", "replace")


def _task_records(serialized_records: Iterable[bytes], record_task: str) -> Iterable:
    """``(serialized, decoded)`` of the records whose ``task`` field is ``record_task``; a malformed one raises."""
    for index, serialized in enumerate(serialized_records):
        try:
            decoded = schema.decode_example(serialized)
        except Exception as error:  # the decoder names the field; add the record's position
            raise ValueError(f"eval record #{index} cannot be decoded: {error}") from error
        task = decoded.get(schema.TASK, b"").decode("utf-8", "replace")
        if task == record_task:
            yield serialized, decoded


def _check_targets(task: str, decoded: Mapping) -> None:
    name = _record_name(decoded)
    if task in ("ve", "nlvr2") and schema.LABEL not in decoded:
        raise ValueError(f"{task} eval record {name!r} has no {schema.LABEL!r}")
    if task == "refcoco":
        if schema.TARGET_BOX not in decoded or np.asarray(decoded[schema.TARGET_BOX]).size != 4:
            raise ValueError(f"refcoco eval record {name!r} needs a 4-value {schema.TARGET_BOX!r}")
        if int(decoded[schema.NUM_REGIONS]) < 1:
            raise ValueError(f"refcoco eval record {name!r} has no region to choose")


def evaluate_task(scorer: Callable[[Sequence[bytes]], Mapping[str, np.ndarray]], task: str,
                  serialized_records: Iterable[bytes], batch_size: int = 32) -> Dict[str, float]:
    """The task's metrics (:data:`TASK_METRICS`) of a model on the task's eval records.

    Args:
        scorer: serialized records → outputs with ``task_logits [B, C]`` (VE: 3 classes, NLVR2: 2, RefCOCO:
            one logit per region slot).
        task: ``ve``, ``nlvr2`` or ``refcoco``.
        serialized_records: the eval split (any iterable, read once; records of other tasks are skipped).
        batch_size: records per scorer call.

    Returns:
        The task's metrics plus ``num_<task>_examples`` (the denominator).

    Raises:
        ValueError: an unknown task (named), no record of the task, a record without its target (named), or
            a scorer output of the wrong shape.
    """
    if task not in TASK_METRICS:
        raise ValueError(f"no task metric for {task!r}: tasks with one are {sorted(TASK_METRICS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    correct: List[bool] = []
    identifiers: List[str] = []
    batch: List[bytes] = []
    targets: List[Mapping] = []

    def flush():
        result = scorer(batch)
        if TASK_LOGITS not in result:
            raise KeyError(f"the model's scoring signature has no output {TASK_LOGITS!r} (it has {sorted(result)}): "
                           f"it was not fine-tuned for {task!r}")
        logits = np.asarray(result[TASK_LOGITS], np.float32)
        if logits.ndim != 2 or logits.shape[0] != len(batch):
            raise ValueError(f"the scorer returned {TASK_LOGITS} of shape {logits.shape} for {len(batch)} records")
        for row, decoded in zip(logits, targets):
            if task == "refcoco":
                num_regions = int(decoded[schema.NUM_REGIONS])
                if row.shape[0] < num_regions:
                    raise ValueError(f"the scorer returned {row.shape[0]} region scores for record "
                                     f"{_record_name(decoded)!r} with {num_regions} regions")
                chosen = int(np.argmax(row[:num_regions]))
                box = np.asarray(decoded[schema.REGION_BOXES], np.float32)[chosen]
                correct.append(bool(inclusive_iou(box, decoded[schema.TARGET_BOX])[0] > IOU_THRESHOLD))
            else:
                correct.append(int(np.argmax(row)) == int(decoded[schema.LABEL]))
            identifiers.append(_record_name(decoded))
        batch.clear()
        targets.clear()

    for serialized, decoded in _task_records(serialized_records, RECORD_TASKS[task]):
        _check_targets(task, decoded)
        batch.append(serialized)
        targets.append(decoded)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not correct:
        raise ValueError(f"the eval split holds no {task} record (task field {RECORD_TASKS[task]!r})")
    metrics = {f"{task}_accuracy": float(np.mean(correct)), f"num_{task}_examples": float(len(correct))}
    if task == "nlvr2":
        from uniter_tf.models.nlvr2_task import nlvr2_consistency  # the official definition, one copy

        metrics["nlvr2_consistency"] = nlvr2_consistency(identifiers, correct)
    return metrics


__all__ = ["IOU_THRESHOLD", "RECORD_TASKS", "TASK_LOGITS", "TASK_METRICS", "evaluate_task", "inclusive_iou"]
