"""Executor of the UNITER evaluation gate: TFX artifacts in and out around :mod:`uniter_tf.evaluation`.

Everything that computes a metric or decides the blessing lives in the library; this module only reads
the ``Examples`` / ``Model`` artifacts and writes ``ModelBlessing`` / ``ModelEvaluation``.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any, Dict, Iterable, Iterator, List

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.utils import io_utils, path_utils

from components.uniter_evaluator import spec as spec_lib
from uniter_tf import evaluation as evaluation_lib
from uniter_tf.evaluation.metrics import gate_checks

# The custom properties TFX's Evaluator sets on its ModelBlessing (tfx.components.evaluator.constants);
# Pusher reads `blessed`, LatestBlessedModelStrategy reads `blessed` and `current_model_id`.
BLESSED_KEY = "blessed"
CURRENT_MODEL_KEY = "current_model"
CURRENT_MODEL_ID_KEY = "current_model_id"
BASELINE_MODEL_KEY = "baseline_model"
BASELINE_MODEL_ID_KEY = "baseline_model_id"
BLESSING_MESSAGE_KEY = "blessing_message"
BLESSED_FILE_NAME = "BLESSED"
NOT_BLESSED_FILE_NAME = "NOT_BLESSED"
METRICS_FILE_NAME = "metrics.json"
#: The split whose questions give the question-only baseline (the split the model was trained on).
TRAIN_SPLIT = "train"
#: The task evaluated on the caption examples themselves: the full gallery of the eval split, every caption
#: against every image, scored by the model's rank logit (uniter_tf.retrieval.gallery).
RETRIEVAL_TASK = "retrieval"
#: With the retrieval task, ``r_mean`` and the recalls are the full gallery's; the general routine's figures
#: (ITM match logit, first ``max_gallery_texts`` captions) are kept under this prefix.
ITM_MATCH_PREFIX = "itm_match_"
#: The full gallery's score matrix and ids, written beside ``metrics.json`` (``retrieval_scores.npy`` float16
#: ``[n_text, n_image]``, ``retrieval_ids.json``, ``retrieval.json``).
GALLERY_OUTPUT_NAME = "retrieval"


def split_files(examples_artifact: types.Artifact, split: str) -> List[str]:
    """The record files of one split of an ``Examples`` artifact."""
    split_uri = artifact_utils.get_split_uri([examples_artifact], split)
    files = sorted(path for path in fileio.glob(os.path.join(split_uri, "*")) if not fileio.isdir(path))
    if not files:
        raise ValueError(f"split {split!r} of {examples_artifact.uri} holds no files")
    return files


def read_split_records(examples_artifact: types.Artifact, split: str) -> Iterator[bytes]:
    """Streams every serialized record of one split of an ``Examples`` artifact (GZIP or plain TFRecords)."""
    return evaluation_lib.iter_serialized_records(split_files(examples_artifact, split))


def read_question_records(serialized_records: Iterable[bytes]) -> list:
    """The VQA question records of a split (for the baseline), told apart by the record's task."""
    return evaluation_lib.read_questions(serialized_records)


def load_scorer(model_dir: str) -> evaluation_lib.Scorer:
    """Loads a SavedModel and returns the scorer over its serialized-records signature
    (:func:`uniter_tf.evaluation.saved_model_scorer`)."""
    return evaluation_lib.saved_model_scorer(model_dir)


def _chain_files(file_lists: List[List[str]]) -> Iterator[bytes]:
    return evaluation_lib.iter_serialized_records([path for files in file_lists for path in files])


def is_pair_model(model_dir: str) -> bool:
    """Whether the SavedModel is a two-image export (NLVR2: ``task.image_pair`` in its metadata), whose
    signatures take pair records only and have no ITM outputs."""
    from uniter_tf.export.exporter import read_metadata  # pylint: disable=import-outside-toplevel

    try:
        return bool((read_metadata(model_dir).get("task") or {}).get("image_pair"))
    except Exception:  # no metadata (an older export): a one-image model  # pylint: disable=broad-except
        return False


def retrieval_task_metrics(scorer, general_metrics, records, batch_size, gallery_output_prefix=None):
    """The retrieval task's figures: the full gallery's recalls and ``r_mean`` by the rank score replace the
    general routine's (renamed ``itm_match_*``), so the gate's ``r_mean`` is the task's.

    Args:
        scorer: the model's serialized-records scorer.
        general_metrics: what :func:`uniter_tf.evaluation.evaluate` returned for the model (not changed).
        records: the eval split (caption records).
        batch_size: pairs per scorer call.
        gallery_output_prefix: where to write the score matrix and ids (None: not written).

    Returns:
        A new metrics dict.
    """
    from uniter_tf.retrieval import gallery as gallery_lib  # pylint: disable=import-outside-toplevel

    renamed = {"num_gallery_images"} | {f"{side}_r{k}" for side in ("img", "txt") for k in evaluation_lib.RECALL_KS}
    renamed |= {"img_r_mean", "txt_r_mean", "r_mean"}
    metrics = {(ITM_MATCH_PREFIX + key if key in renamed else key): value for key, value in general_metrics.items()}
    gallery = gallery_lib.evaluate_scorer_gallery(scorer, records, batch_size=batch_size,
                                                  output_prefix=gallery_output_prefix)
    metrics["num_gallery_texts"] = gallery.pop("num_texts")
    metrics["num_gallery_images"] = gallery.pop("num_images")
    metrics.update(gallery)
    return metrics


def _model_metrics(model_dir, task, eval_records, task_files, batch_size, max_gallery_texts, train_questions,
                   gallery_output_prefix=None):
    """The general figures (ITM, retrieval, VQA) and, with ``task``, the task's own; a two-image export has
    only the task's (its signatures cannot score a caption with one image)."""
    if task is not None and is_pair_model(model_dir):
        scorer, metrics = evaluation_lib.saved_model_scorer(model_dir, required_output="task_logits"), {}
    else:
        scorer = load_scorer(model_dir)
        metrics = evaluation_lib.evaluate(scorer, eval_records(), batch_size, max_gallery_texts,
                                          train_questions=train_questions)
    if task == RETRIEVAL_TASK:
        return retrieval_task_metrics(scorer, metrics, eval_records(), batch_size, gallery_output_prefix)
    if task is not None:
        # The task's own metric on its eval records, streamed from the files (uniter_tf.evaluation).
        metrics.update(evaluation_lib.evaluate_task(scorer, task, _chain_files(task_files), batch_size))
    return metrics


class Executor(base_executor.BaseExecutor):
    """Evaluates the candidate (and the baseline) and writes ModelBlessing + ModelEvaluation."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(input_dict[spec_lib.EXAMPLES_KEY])
        model = artifact_utils.get_single_instance(input_dict[spec_lib.MODEL_KEY])
        baseline_models = input_dict.get(spec_lib.BASELINE_MODEL_KEY) or []
        baseline = baseline_models[0] if baseline_models else None
        blessing = artifact_utils.get_single_instance(output_dict[spec_lib.BLESSING_KEY])
        evaluation_artifact = artifact_utils.get_single_instance(output_dict[spec_lib.EVALUATION_KEY])

        split = exec_properties[spec_lib.EVAL_SPLIT_KEY]
        lower_bounds = json.loads(exec_properties.get(spec_lib.LOWER_BOUNDS_KEY) or "{}")
        max_regression = json.loads(exec_properties.get(spec_lib.MAX_REGRESSION_KEY) or "{}")
        batch_size = int(exec_properties.get(spec_lib.BATCH_SIZE_KEY) or 32)
        max_gallery_texts = int(exec_properties.get(spec_lib.MAX_GALLERY_TEXTS_KEY) or 1000)
        task = exec_properties.get(spec_lib.TASK_KEY) or None

        serialized_splits = [read_split_records(examples, split)]
        train_questions = []
        for task_examples in input_dict.get(spec_lib.TASK_EXAMPLES_KEY) or []:
            serialized_splits.append(read_split_records(task_examples, split))
            task_splits = (artifact_utils.decode_split_names(task_examples.split_names)
                           if task_examples.split_names else [])
            # The question-only baseline needs VQA questions; another task's training split has none.
            if task is None and split != TRAIN_SPLIT and TRAIN_SPLIT in task_splits:
                train_questions.extend(read_question_records(read_split_records(task_examples, TRAIN_SPLIT)))
        built: List[evaluation_lib.EvalRecords] = []

        def eval_records() -> evaluation_lib.EvalRecords:
            # Read once, when a one-image model is scored (a two-image export scores only the task's records).
            if not built:
                built.append(evaluation_lib.EvalRecords(itertools.chain.from_iterable(serialized_splits)))
            return built[0]

        model_dir = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
        task_files = [split_files(task_examples, split)
                      for task_examples in input_dict.get(spec_lib.TASK_EXAMPLES_KEY) or []] if task else []
        candidate_metrics = _model_metrics(model_dir, task, eval_records, task_files, batch_size, max_gallery_texts,
                                           train_questions,
                                           os.path.join(evaluation_artifact.uri, GALLERY_OUTPUT_NAME))
        logging.info("UniterEvaluator: candidate metrics %s", candidate_metrics)

        baseline_metrics = None
        if baseline is not None and baseline.id != model.id:
            baseline_dir = path_utils.serving_model_path(baseline.uri, path_utils.is_old_model_artifact(baseline))
            baseline_metrics = _model_metrics(baseline_dir, task, eval_records, task_files, batch_size,
                                              max_gallery_texts, train_questions)
            logging.info("UniterEvaluator: baseline (model id %s) metrics %s", baseline.id, baseline_metrics)

        blessed, reasons = evaluation_lib.bless(candidate_metrics, lower_bounds, baseline_metrics, max_regression)
        passed_checks = [text for passed, text in gate_checks(candidate_metrics, lower_bounds, baseline_metrics,
                                                                 max_regression) if passed]
        if blessed:
            if baseline_metrics is not None:
                comparison = " and no regression against the last blessed model"
            elif baseline is not None:
                # A cached Trainer hands the evaluator the model that is already the last blessed one.
                comparison = " (the candidate is the last blessed model)"
            else:
                comparison = " (no blessed baseline yet)"
            message = "blessed: thresholds met" + comparison
        else:
            message = "not blessed: " + "; ".join(reasons)
        logging.info("UniterEvaluator: %s; checks passed: %s", message, passed_checks)

        report = {
                "blessed": blessed,
                "message": message,
                "failed_checks": list(reasons),
                # What a blessing rests on, each naming its metric (e.g. the retrieval gate's r_mean).
                "passed_checks": passed_checks,
                "eval_split": split,
                "metrics": candidate_metrics,
                "baseline_metrics": baseline_metrics,
                "baseline_model_id": baseline.id if baseline is not None else None,
                "lower_bounds": lower_bounds,
                "max_regression": max_regression,
                "model": model.uri,
        }
        if task is not None:
            report["task"] = task
        report_text = json.dumps(report, indent=2, sort_keys=True)
        io_utils.write_string_file(os.path.join(evaluation_artifact.uri, METRICS_FILE_NAME), report_text)
        io_utils.write_string_file(os.path.join(blessing.uri, METRICS_FILE_NAME), report_text)
        io_utils.write_string_file(
                os.path.join(blessing.uri, BLESSED_FILE_NAME if blessed else NOT_BLESSED_FILE_NAME), "")
        blessing.set_string_custom_property(CURRENT_MODEL_KEY, model.uri)
        blessing.set_int_custom_property(CURRENT_MODEL_ID_KEY, model.id)
        if baseline is not None:
            blessing.set_string_custom_property(BASELINE_MODEL_KEY, baseline.uri)
            blessing.set_int_custom_property(BASELINE_MODEL_ID_KEY, baseline.id)
        blessing.set_string_custom_property(BLESSING_MESSAGE_KEY, message)
        blessing.set_int_custom_property(BLESSED_KEY, 1 if blessed else 0)
        for name, value in candidate_metrics.items():
            evaluation_artifact.set_float_custom_property(name, float(value))
