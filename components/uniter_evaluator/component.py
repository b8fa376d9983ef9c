"""UniterEvaluator: the evaluation gate in front of the Pusher.

TFMA's Evaluator scores one model input per example; UNITER's metrics need pairs that are not in the data
(ITM negatives: a caption with another image; retrieval: every caption against every image of the eval
gallery), so this gate is a custom component (see docs/pipeline.md).
"""

from __future__ import annotations

import json
from typing import Mapping, Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts

from components.uniter_evaluator import executor
from components.uniter_evaluator import spec as spec_lib

#: Default value thresholds: better than chance on ITM (2 classes). Pipelines set their own.
DEFAULT_LOWER_BOUNDS = {"itm_accuracy": 0.0}
#: Default change thresholds: a new model may not lose more than 1 point of any headline metric.
DEFAULT_MAX_REGRESSION = {"itm_accuracy": 0.01, "r_mean": 0.01, "vqa_score": 0.01}


class UniterEvaluator(base_component.BaseComponent):
    """Computes ITM accuracy, retrieval R@1/5/10 and the VQA score, and blesses the model or not.

    Args:
        examples: ``Examples`` channel (canonical records) with the eval split.
        task_examples: optional second ``Examples`` channel (e.g. VQA questions) evaluated with them.
        model: the candidate ``Model`` (a SavedModel under ``Format-Serving``).
        baseline_model: optional ``Model`` channel with the last blessed model, usually from a
            ``Resolver`` with ``LatestBlessedModelStrategy`` (which reads ML Metadata).
        eval_split: the split name.
        lower_bounds: metric → minimum value.
        max_regression: metric → largest allowed drop below the baseline's value on the same data.
        batch_size: pairs scored per model call.
        max_gallery_texts: at most this many texts enter retrieval (the gallery is their images).
        task: the fine-tuning task whose metric the gate adds from ``task_examples`` (``ve``: ``ve_accuracy``;
            ``nlvr2``: ``nlvr2_accuracy``, ``nlvr2_consistency``; ``refcoco``: ``refcoco_accuracy``, IoU > 0.5;
            ``retrieval``: the full gallery of ``examples`` scored by the rank logit, ``r_mean`` and the
            recalls, no ``task_examples``); None for VQA (``vqa_score``, from the general routine).

    Raises:
        ValueError: an unknown ``task`` (named), or ``task`` without ``task_examples``.
    """

    SPEC_CLASS = spec_lib.UniterEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, examples: types.BaseChannel, model: types.BaseChannel,
                 task_examples: Optional[types.BaseChannel] = None,
                 baseline_model: Optional[types.BaseChannel] = None, eval_split: str = "eval",
                 lower_bounds: Optional[Mapping[str, float]] = None,
                 max_regression: Optional[Mapping[str, float]] = None, batch_size: int = 32,
                 max_gallery_texts: int = 1000, task: Optional[str] = None):
        if task is not None:
            from uniter_tf.evaluation.task_metrics import TASK_METRICS  # pylint: disable=import-outside-toplevel

            if task not in TASK_METRICS and task != executor.RETRIEVAL_TASK:
                raise ValueError(f"UniterEvaluator: unknown task {task!r}; task metrics exist for "
                                 f"{sorted([*TASK_METRICS, executor.RETRIEVAL_TASK])} (VQA: leave task unset)")
            if task_examples is None and task != executor.RETRIEVAL_TASK:
                raise ValueError(f"UniterEvaluator: task {task!r} needs task_examples (its eval records)")
        spec = spec_lib.UniterEvaluatorSpec(
                examples=examples,
                task_examples=task_examples,
                model=model,
                baseline_model=baseline_model,
                eval_split=eval_split,
                lower_bounds=json.dumps(dict(DEFAULT_LOWER_BOUNDS if lower_bounds is None else lower_bounds),
                                        sort_keys=True),
                max_regression=json.dumps(
                        dict(DEFAULT_MAX_REGRESSION if max_regression is None else max_regression), sort_keys=True),
                batch_size=batch_size,
                max_gallery_texts=max_gallery_texts,
                task=task,
                blessing=types.Channel(type=standard_artifacts.ModelBlessing),
                evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
        )
        super().__init__(spec=spec)
