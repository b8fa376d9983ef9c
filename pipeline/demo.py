"""``make demo``: the whole path on the bundled sample data, from images to a served model that answers.

    python -m pipeline.demo [--root DIR] [--fresh] [--verbose]

1. renders the deterministic sample data (``uniter sample-data``) into the root when absent;
2. runs the TFX pipeline with LocalDagRunner (SQLite ML Metadata, Beam DirectRunner): region features
   (SSD-MobileNet-v2) → examples → statistics / schema / validation → pretraining → VQA fine-tuning →
   evaluation gate → Pusher (TF Serving layout). The gate blesses the model only when it reaches the
   learning levels of :mod:`pipeline.configs` (held-out ITM accuracy, VQA score above the question-only
   baseline) minus a margin, so an untrained model is not pushed;
3. starts ``uniter serve`` on the pushed base path, asks every held-out question over gRPC and over REST
   (``serve_examples``), prints a few answers and the served VQA score next to the evaluator's, and scores a
   matching and a mismatched caption for one held-out image;
4. writes ``report.html`` (metrics against the gate, training curves, one held-out image with its regions,
   attention and word-region alignment, the served answers) and ends with its path.

The terminal shows only the demo's own lines; TensorFlow, absl, Beam, pip/setuptools and the server log to
``<root>/logs/`` (``--verbose`` or ``UNITER_VERBOSE=1`` shows them). A failure prints the error and the log
file to read. It never fakes a success: the exit status is non-zero when a step fails, the gate does not
bless the model, or the served answers disagree with the evaluator.
"""

from __future__ import annotations

import argparse
import base64
import glob
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ROOT = os.path.join(REPOSITORY_ROOT, "demo_output")
#: How many served questions are printed (the served score covers all held-out questions).
SHOWN_QUESTIONS = 8
#: Largest allowed difference between the served VQA score and the evaluator's (the server pads batches
#: differently from the evaluator, which can move a logit in the last bits; an answer flip moves the score
#: by 1 / #questions).
SCORE_AGREEMENT_TOLERANCE = 0.01
SERVING_BATCH = 32

_started = time.time()
_terminal = sys.stdout
_terminal_lock = threading.Lock()


def say(message: str) -> None:
    """One progress line with the elapsed time, on the terminal."""
    elapsed = int(time.time() - _started)
    with _terminal_lock:
        _terminal.write(f"[demo {elapsed // 60:02d}:{elapsed % 60:02d}] {message}\n")
        _terminal.flush()


def show(text: str) -> None:
    """Lines of results (no time stamp), on the terminal."""
    with _terminal_lock:
        _terminal.write(text.rstrip("\n") + "\n")
        _terminal.flush()


class _QuietTerminal:
    """Library output to ``log_path``; the demo's own lines to the real stdout (see :func:`say`).

    :func:`uniter_tf.console.quiet_libraries` sends file descriptor 2, warnings and logging to the log;
    here file descriptor 1 goes there too, because TFX packages the Trainer modules with pip / setuptools
    child processes that print to stdout.
    """

    def __init__(self, log_path: str, verbose: bool):
        global _terminal
        from uniter_tf import console

        self.log_path = log_path
        self.session = console.quiet_libraries(log_path, verbose, name="demo", redirect_fd=not verbose,
                                               show_own_logs=False)
        self._saved_stdout_fd = None
        if verbose:
            return
        sys.stdout.flush()
        self._saved_stdout_fd = os.dup(1)
        _terminal = io.TextIOWrapper(io.FileIO(self._saved_stdout_fd, "w", closefd=False), encoding="utf-8",
                                     errors="backslashreplace", line_buffering=True, write_through=True)
        log = open(log_path, "a", encoding="utf-8", buffering=1)  # pylint: disable=consider-using-with
        os.dup2(log.fileno(), 1)
        self._log = log
        sys.stdout = log

    def close(self) -> None:
        """Restores stdout and stderr."""
        global _terminal
        if self._saved_stdout_fd is not None:
            sys.stdout = sys.__stdout__
            os.dup2(self._saved_stdout_fd, 1)
            os.close(self._saved_stdout_fd)
            self._saved_stdout_fd = None
            self._log.close()
            _terminal = sys.stdout
        self.session.restore()


# ------------------------------------------------------------------------------------------- pipeline

def _missing_pieces() -> List[str]:
    """Modules the demo needs that this checkout lacks."""
    import importlib.util

    return [f"module {module}" for module in (
            "components.region_feature_extractor.component", "components.uniter_example_gen.component",
            "components.uniter_evaluator.component", "uniter_tf.export.exporter", "serving.server",
            "serving.client") if importlib.util.find_spec(module) is None]


def run_pipeline(configs, local_runner) -> Tuple[bool, str]:
    """Runs the pipeline; returns (succeeded, message)."""
    from tfx import v1 as tfx

    say(f"sample data: {configs.SAMPLE_DATA_DIR} ({configs.SAMPLE_NUM_IMAGES} rendered images)")
    local_runner.ensure_sample_data(configs.SAMPLE_DATA_DIR)
    say(f"running the TFX pipeline: tiny UNITER ({configs.MODEL_OVERRIDES.get('num_hidden_layers', 2)} layers), "
        f"{configs.PRETRAIN_TRAIN_STEPS} pretraining + {configs.FINETUNE_TRAIN_STEPS} fine-tuning updates "
        f"(a first run renders and extracts everything; later runs reuse cached components)")
    pipeline = local_runner.build_local_pipeline()
    stop_progress = threading.Event()
    progress = threading.Thread(target=_report_progress, args=(configs, stop_progress), daemon=True)
    progress.start()
    try:
        tfx.orchestration.LocalDagRunner().run(pipeline)
    except Exception as error:  # report which node failed, from MLMD
        stop_progress.set()
        progress.join()
        states = _node_states(configs)
        failed = [node for node, node_states in states.items() if node_states and node_states[-1] == "FAILED"]
        return False, f"the pipeline failed in {failed or 'an unknown node'}: {type(error).__name__}: {error}"
    stop_progress.set()
    progress.join()
    _print_final_states(configs)
    return True, "ok"


def _print_final_states(configs) -> None:
    states = sorted(_node_states(configs).items())
    show("  " + ", ".join(f"{node} {node_states[-1] if node_states else '-'}" for node, node_states in states))


def _report_progress(configs, stop: "threading.Event", interval_s: float = 5.0) -> None:
    """Prints when each component starts and ends (read from ML Metadata) while the pipeline runs."""
    # Executions of earlier runs are history: report only what changes from now on.
    seen = {node: f"{len(node_states)}:{node_states[-1]}" for node, node_states in _node_states(configs).items()
            if node_states}
    while not stop.wait(interval_s):
        for node, node_states in sorted(_node_states(configs).items()):
            state = f"{len(node_states)}:{node_states[-1]}" if node_states else ""
            if state and seen.get(node) != state:
                seen[node] = state
                say(f"  {node}: {node_states[-1].lower()}")


def _node_states(configs):
    from pipeline import local_runner

    try:
        return local_runner.node_states(configs.METADATA_PATH, configs.PIPELINE_NAME)
    except Exception:  # the store may not exist if the run failed early
        return {}


def _newest_artifact_dir(pipeline_root: str, node: str, output: str) -> Optional[str]:
    candidates = [path for path in glob.glob(os.path.join(pipeline_root, node, output, "*"))
                  if os.path.basename(path).isdigit()]
    return max(candidates, key=lambda path: int(os.path.basename(path))) if candidates else None


def latest_evaluation(pipeline_root: str) -> Optional[dict]:
    """The newest gate report (``UniterEvaluator/evaluation/<id>/metrics.json``)."""
    newest = _newest_artifact_dir(pipeline_root, "UniterEvaluator", "evaluation")
    path = os.path.join(newest, "metrics.json") if newest else None
    if path is None or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        report = json.load(handle)
    report["path"] = path
    return report


def pushed_versions(serving_model_dir: str) -> List[str]:
    """Numeric version directories with a SavedModel under the Pusher's base path."""
    if not os.path.isdir(serving_model_dir):
        return []
    return sorted((entry for entry in os.listdir(serving_model_dir)
                   if entry.isdigit() and os.path.exists(os.path.join(serving_model_dir, entry, "saved_model.pb"))),
                  key=int)


def metric_rows(configs) -> List[Dict[str, Any]]:
    """The report's and the terminal's metric rows: value, gate threshold, learning target."""
    bounds = configs.EVAL_LOWER_BOUNDS
    return [
            {"metric": "itm_accuracy", "label": "ITM accuracy (held-out pairs, 50 % mismatched)",
             "gate": bounds.get("itm_accuracy"), "target": configs.TARGET_ITM_ACCURACY},
            {"metric": "vqa_score", "label": "VQA score (held-out questions)", "gate": bounds.get("vqa_score"),
             "target": None},
            {"metric": "vqa_baseline_score", "label": "question-only baseline (best answer per question type)",
             "gate": None, "target": None},
            {"metric": "vqa_score_over_baseline", "label": "VQA score above the baseline",
             "gate": bounds.get("vqa_score_over_baseline"), "target": configs.TARGET_VQA_OVER_BASELINE},
            {"metric": "r_mean", "label": "retrieval mean recall (R@1/5/10, both directions)",
             "gate": bounds.get("r_mean"), "target": None},
    ]


def print_gate(report: dict, configs) -> None:
    """The gate's verdict and its metrics against the thresholds."""
    say("gate: " + report["message"])
    for row in metric_rows(configs):
        value = report["metrics"].get(row["metric"])
        text = "-" if value is None else f"{value:.3f}"
        limits = []
        if row["gate"] is not None:
            limits.append(f"gate >= {row['gate']:.2f}")
        if row["target"] is not None:
            limits.append(f"target >= {row['target']:.2f}")
        show(f"  {row['label']:58s} {text:>6s}  {'  '.join(limits)}")


# -------------------------------------------------------------------------------------------- serving

def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(base_path: str, log_path: str) -> Tuple[subprocess.Popen, str, str]:
    """Starts ``uniter serve`` on free ports; returns (process, gRPC target, REST address)."""
    log = open(log_path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
    # REST port 0 would disable REST (as in tensorflow_model_server), so pick free ports here.
    process = subprocess.Popen(
            [sys.executable, "-m", "uniter_tf.cli", "serve", "--model-base-path", base_path, "--port",
             str(_free_port()), "--rest-api-port", str(_free_port()), "--file-system-poll-wait-seconds", "0"],
            cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
            env={**os.environ, "UNITER_LOG_DIR": os.path.dirname(log_path)})
    deadline = time.time() + 300
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                raise RuntimeError(f"uniter serve exited with {process.returncode}; see {log_path}")
            continue
        if line.startswith("SERVING "):
            fields = dict(part.split("=", 1) for part in line.split()[1:])
            return process, fields["grpc"], fields["rest"]
    process.terminate()
    raise RuntimeError(f"uniter serve did not report ready within 300 s; see {log_path}")


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def read_eval_records(pipeline_root: str, node: str) -> List[bytes]:
    """The serialized records of the newest ``node`` Examples artifact's eval split."""
    import tensorflow as tf

    newest = _newest_artifact_dir(pipeline_root, node, "examples")
    if newest is None:
        raise FileNotFoundError(f"no {node} examples under {pipeline_root}")
    files = sorted(glob.glob(os.path.join(newest, "Split-eval", "*")))
    return [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _rest_predict(address: str, records: Sequence[bytes]) -> List[dict]:
    """POST ``/v1/models/uniter:predict`` with the ``serve_examples`` signature (records as base64)."""
    body = json.dumps({"signature_name": "serve_examples",
                       "instances": [{"b64": base64.b64encode(record).decode("ascii")} for record in records]})
    request = urllib.request.Request(f"http://{address}/v1/models/uniter:predict", data=body.encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            reply = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:  # the server's message is in the body
        raise RuntimeError(f"REST predict failed: {error} {error.read().decode('utf-8', 'replace')[:500]}") from None
    predictions = reply.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != len(records):
        raise RuntimeError(f"REST predict returned no predictions for {len(records)} records: "
                           f"{json.dumps(reply)[:300]}")
    return predictions


def _grpc_predict(client, records: Sequence[bytes]) -> List[dict]:
    outputs = client.score_examples(records)
    return [{name: value[index] for name, value in outputs.items()} for index in range(len(records))]


def _decode_text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def ask_questions(grpc_target: str, rest_address: str, question_records: Sequence[bytes]) -> Dict[str, Any]:
    """Every held-out question over gRPC and over REST; the served VQA scores and a few answers to show.

    The score of an answer is the record's soft credit of the argmax of ``task_logits``, exactly as the
    evaluator scores it.
    """
    import numpy as np
    import tensorflow as tf

    from components.uniter_evaluator import evaluation
    from serving.client import UniterClient
    from uniter_tf.data import schema

    examples = [tf.train.Example.FromString(record) for record in question_records]
    scores = {}
    served_rows = {}
    with UniterClient(grpc_target, timeout_s=300) as client:
        for protocol in ("grpc", "rest"):
            total = 0.0
            for start in range(0, len(question_records), SERVING_BATCH):
                batch = question_records[start:start + SERVING_BATCH]
                predictions = (_grpc_predict(client, batch) if protocol == "grpc"
                               else _rest_predict(rest_address, batch))
                for offset, prediction in enumerate(predictions):
                    index = start + offset
                    answer = int(np.argmax(np.asarray(prediction["task_logits"], np.float32)))
                    credit = evaluation.soft_score(examples[index], answer)
                    total += credit
                    if protocol == "rest":
                        served_rows[index] = {
                                "answers": [(_decode_text(text), float(score)) for text, score in
                                            zip(prediction["answers"], prediction["answer_scores"])][:3],
                                "score": credit}
            scores[protocol] = total / len(question_records)
    # A few questions to show: those of the first held-out images, so one image gets several questions.
    shown = []
    for index, example in enumerate(examples):
        decoded = schema.decode_example(example)
        true_answer = decoded.get(schema.ANSWERS, [b"?"])
        shown.append({"image": _decode_text(decoded[schema.IMAGE_ID]), "question": _decode_text(decoded[schema.TEXT]),
                      "true": _decode_text(true_answer[0]) if len(true_answer) else "?", **served_rows[index]})
        if len(shown) >= SHOWN_QUESTIONS:
            break
    return {"grpc_score": scores["grpc"], "rest_score": scores["rest"], "num_questions": len(question_records),
            "rows": shown}


def score_caption_pair(grpc_target: str, caption_records: Sequence[bytes]) -> Dict[str, Any]:
    """ITM match probability of one held-out image with its own caption and with another image's caption.

    The image is the first held-out one; the mismatched caption is the first caption of the next held-out
    image (the evaluator's negative rule), so nothing is picked by hand. The same pair is scored for every
    held-out image (image ``i`` with its first caption and with image ``i + 1``'s, cyclically):
    ``pairs_won`` of ``pairs`` is how often the matching caption scored higher, so one hard pair (captions
    that differ only in a colour, say) is seen next to the rate.
    """
    import tensorflow as tf

    from components.uniter_evaluator import evaluation
    from serving.client import UniterClient
    from uniter_tf.data import schema

    examples = [tf.train.Example.FromString(record) for record in caption_records]
    by_image: Dict[str, list] = {}
    for example in examples:
        by_image.setdefault(evaluation.image_id(example).decode("utf-8"), []).append(example)
    images = sorted(by_image)
    if len(images) < 2:
        raise ValueError("the caption eval split needs captions of two images for a mismatched pair")
    firsts = [by_image[image][0] for image in images]
    pairs = []
    for index, matching in enumerate(firsts):
        other = firsts[(index + 1) % len(firsts)]
        pairs += [matching.SerializeToString(), evaluation.with_image(other, matching).SerializeToString()]
    scores = []
    with UniterClient(grpc_target, timeout_s=300) as client:
        for start in range(0, len(pairs), 64):
            scores.extend(float(score) for score in client.score_examples(pairs[start:start + 64])["itm_score"])
    won = sum(1 for index in range(len(firsts)) if scores[2 * index] > scores[2 * index + 1])

    def text(example):
        return schema.decode_example(example)[schema.TEXT].decode("utf-8")

    return {"image": images[0], "matching": text(firsts[0]), "mismatched": text(firsts[1]),
            "matching_score": scores[0], "mismatched_score": scores[1], "pairs": len(firsts), "pairs_won": won}


def serve_and_ask(configs, root: str, report: dict) -> Tuple[Optional[dict], int]:
    """Serves the pushed model, asks the held-out questions and scores a caption pair; returns (served, failures)."""
    from pipeline import definition as pipeline_lib

    server_log = os.path.join(root, "logs", "server.log")
    say(f"starting uniter serve on {configs.SERVING_MODEL_DIR} ...")
    process, grpc_target, rest_address = start_server(configs.SERVING_MODEL_DIR, server_log)
    failures = 0
    try:
        say(f"serving: gRPC {grpc_target}, REST {rest_address}")
        questions = [record for record in read_eval_records(configs.PIPELINE_ROOT, pipeline_lib.VQA_EXAMPLE_GEN)]
        say(f"asking all {len(questions)} held-out questions over gRPC and over REST (serve_examples) ...")
        served = ask_questions(grpc_target, rest_address, questions)
        for row in served["rows"]:
            mark = "right" if row["score"] >= 1.0 else ("partly" if row["score"] > 0 else "wrong")
            answers = ", ".join(f"{answer} ({score:.2f})" for answer, score in row["answers"])
            show(f"  {row['image']}  Q: {row['question']:42s} true: {row['true']:7s} served: {answers}  [{mark}]")
        evaluator_score = report["metrics"].get("vqa_score", float("nan"))
        served["evaluator_score"] = evaluator_score
        served["baseline_score"] = report["metrics"].get("vqa_baseline_score", float("nan"))
        say(f"served VQA score over {served['num_questions']} held-out questions: gRPC {served['grpc_score']:.3f}, "
            f"REST {served['rest_score']:.3f}; evaluator {evaluator_score:.3f}; question-only baseline "
            f"{served['baseline_score']:.3f}")
        for protocol in ("grpc", "rest"):
            if not abs(served[f"{protocol}_score"] - evaluator_score) <= SCORE_AGREEMENT_TOLERANCE:
                say(f"FAILED: the {protocol} VQA score disagrees with the evaluator's by more than "
                    f"{SCORE_AGREEMENT_TOLERANCE}")
                failures += 1
        captions = read_eval_records(configs.PIPELINE_ROOT, pipeline_lib.CAPTION_EXAMPLE_GEN)
        itm = score_caption_pair(grpc_target, captions)
        served["itm"] = itm
        say(f"ITM on held-out image {itm['image']} (gRPC):")
        show(f"  matching   {itm['matching_score']:.3f}  {itm['matching']}")
        show(f"  mismatched {itm['mismatched_score']:.3f}  {itm['mismatched']}")
        if not itm["matching_score"] > itm["mismatched_score"]:
            say("note: on this image the mismatched caption scored higher")
        say(f"the same pair on every held-out image: the matching caption scored higher on {itm['pairs_won']} "
            f"of {itm['pairs']}")
    finally:
        stop_server(process)
        say("server stopped")
    return served, failures


# --------------------------------------------------------------------------------------------- report

def _class_labels(soft_labels, names: Dict[int, str], object_labels: Sequence[str] = ()) -> List[str]:
    """Per region: the object's name when known (ground-truth boxes), then the detector's class and score.

    Row 0 of a soft label is the background: a region no detection overlapped says "no detection".
    """
    import numpy as np

    labels = []
    for index, row in enumerate(np.asarray(soft_labels, np.float32)):
        best = int(np.argmax(row))
        detected = f"{names.get(best, str(best))} {row[best]:.2f}" if best > 0 else "no detection"
        if index < len(object_labels):
            labels.append(f"{object_labels[index]} | detector: {detected}")
        else:
            labels.append(detected)
    return labels


def _coco_names() -> Dict[int, str]:
    from uniter_tf.assets import __file__ as assets_init

    with open(os.path.join(os.path.dirname(assets_init), "coco_labels.json"), encoding="utf-8") as handle:
        labels = json.load(handle)["labels"]
    if isinstance(labels, dict):
        return {int(key): value for key, value in labels.items()}
    return dict(enumerate(labels))


def build_report(configs, root: str, report: Optional[dict], pushed: Optional[str],
                 served: Optional[dict]) -> str:
    """Writes ``<root>/report.html``; the figures go to ``<root>/report_files/``."""
    from pipeline import definition as pipeline_lib
    from pipeline import report as report_lib

    figures = os.path.join(root, "report_files")
    os.makedirs(figures, exist_ok=True)
    notes = []
    curves = []
    pretrain_run = _newest_artifact_dir(configs.PIPELINE_ROOT, pipeline_lib.PRETRAIN_TRAINER, "model_run")
    if pretrain_run and os.path.exists(os.path.join(pretrain_run, "loss_curves.png")):
        curves.append(shutil.copy(os.path.join(pretrain_run, "loss_curves.png"),
                                  os.path.join(figures, "pretraining_curves.png")))
    finetune_run = _newest_artifact_dir(configs.PIPELINE_ROOT, pipeline_lib.FINETUNE_TRAINER, "model_run")
    if finetune_run:
        curve = report_lib.plot_finetune_curves(os.path.join(finetune_run, "metrics.jsonl"),
                                                os.path.join(figures, "finetune_curves.png"))
        if curve:
            curves.append(curve)
    example = None
    try:
        example = _example_figures(configs, finetune_run, figures)
    except Exception as error:  # the report still shows the rest; the reason is on the page and in the log
        notes.append(f"the held-out image figures could not be drawn: {type(error).__name__}: {error}")
        say(f"note: {notes[-1]}")
    notes.append(f"pipeline root {configs.PIPELINE_ROOT}; ML Metadata {configs.METADATA_PATH}; "
                 f"gate report {report['path'] if report else '-'}")
    return report_lib.write_report(
            os.path.join(root, "report.html"), title="uniter-tf demo: images to a served model",
            gate=report, metric_rows=metric_rows(configs), pushed=pushed, curve_pngs=curves, example=example,
            served=served, notes=notes)


def _example_figures(configs, finetune_run: Optional[str], figures: str) -> Optional[dict]:
    import numpy as np
    from PIL import Image

    from pipeline import definition as pipeline_lib
    from pipeline import report as report_lib
    from uniter_tf.data import schema
    from uniter_tf.visualization import RegionInputs

    if not finetune_run:
        return None
    captions = read_eval_records(configs.PIPELINE_ROOT, pipeline_lib.CAPTION_EXAMPLE_GEN)
    first = min((schema.decode_example(record) for record in captions), key=lambda decoded: decoded[schema.IMAGE_ID])
    image_name = first[schema.IMAGE_ID].decode("utf-8")
    # The extractor names records by the image file's stem (sample_000001 for images/sample_000001.png).
    candidates = sorted(glob.glob(os.path.join(configs.SAMPLE_DATA_DIR, "images", os.path.basename(image_name) + "*")))
    if not candidates:
        raise FileNotFoundError(f"no image {image_name!r} under {configs.SAMPLE_DATA_DIR}/images")
    image_path = candidates[0]
    image_name = os.path.basename(image_path)
    pixels = np.asarray(Image.open(image_path).convert("RGB"))
    regions = RegionInputs(first[schema.REGION_FEATURES], first[schema.REGION_POSITIONS], first[schema.REGION_BOXES],
                           source=image_name)
    backbone = report_lib.restore_finetuned_backbone(finetune_run)
    caption = first[schema.TEXT].decode("utf-8")
    object_labels: List[str] = []
    boxes_path = os.path.join(configs.SAMPLE_DATA_DIR, "boxes.json")
    if configs.GROUND_TRUTH_BOXES and os.path.exists(boxes_path):
        # Ground-truth mode pools over boxes.json's boxes in their order: the regions are those objects.
        with open(boxes_path, encoding="utf-8") as handle:
            object_labels = list(json.load(handle).get(image_name, {}).get("labels", []))
        if len(object_labels) != regions.num_regions:
            object_labels = []
    result = report_lib.figures_for_example(
            backbone, pixels, regions, caption,
            _class_labels(first[schema.SOFT_LABELS], _coco_names(), object_labels), figures)
    result.update({"image": image_name, "caption": caption})
    return result


# ----------------------------------------------------------------------------------------------- main

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"Where everything goes (default {DEFAULT_ROOT}).")
    parser.add_argument("--fresh", action="store_true", help="Delete the root first (no cached components).")
    parser.add_argument("--verbose", action="store_true",
                        help="Show library logs on the terminal (also UNITER_VERBOSE=1).")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root)
    if args.fresh and os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(os.path.join(root, "logs"), exist_ok=True)
    from uniter_tf import console

    log_path = os.path.join(root, "logs", "demo.log")
    terminal = _QuietTerminal(log_path, args.verbose or console.verbose_from_env())
    try:
        say(f"uniter-tf demo; output in {root} (library logs: {log_path})")
        status = _run(root)
    except Exception as error:  # one line on the terminal, the traceback in the log
        terminal.session.log_exception(error)
        say(f"FAILED: {type(error).__name__}: {error}")
        say(f"details: {log_path}")
        status = 1
    finally:
        terminal.close()
    return status


def _run(root: str) -> int:
    os.environ["UNITER_PIPELINE_ROOT"] = os.path.join(root, "tfx")
    os.environ.setdefault("UNITER_SAMPLE_DATA_DIR", os.path.join(root, "sample_data"))
    os.environ.setdefault("UNITER_LOG_DIR", os.path.join(root, "logs"))
    missing = _missing_pieces()
    for piece in missing:
        say(f"NOT IN THIS CHECKOUT: {piece}")
    if missing:
        say("the demo needs every component, the exporter and the server; nothing else to run")
        return 1
    # configs reads the environment at import time.
    from pipeline import configs, local_runner

    succeeded, message = run_pipeline(configs, local_runner)
    if not succeeded:
        say(f"FAILED: {message}")
        say(f"details: {os.path.join(root, 'logs', 'demo.log')}; artifacts under {configs.PIPELINE_ROOT}")
        return 1
    report = latest_evaluation(configs.PIPELINE_ROOT)
    if report is None:
        say("FAILED: the pipeline wrote no gate report")
        return 1
    print_gate(report, configs)
    versions = pushed_versions(configs.SERVING_MODEL_DIR)
    pushed = os.path.join(configs.SERVING_MODEL_DIR, versions[-1]) if versions and report["blessed"] else None
    failures = 0
    served = None
    if pushed is None:
        say(f"nothing pushed to {configs.SERVING_MODEL_DIR}: the gate did not bless the model")
        failures += 1
    else:
        say(f"pushed: {pushed}")
        served, failures = serve_and_ask(configs, root, report)
    say("writing the report ...")
    path = build_report(configs, root, report, pushed, served)
    if failures:
        say(f"FAILED: {failures} check(s) failed (see above)")
    say(f"report: {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
