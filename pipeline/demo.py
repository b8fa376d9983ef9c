"""``make demo``: the whole path on the bundled sample data, from images to answers of a served model.

    python -m pipeline.demo [--root DIR] [--fresh]

1. renders the deterministic sample data (``uniter sample-data``) into the pipeline root when absent;
2. runs the TFX pipeline with LocalDagRunner (SQLite ML Metadata, Beam DirectRunner, tiny preset):
   region features → examples → statistics / schema / validation → pretraining → VQA fine-tuning →
   evaluation gate → Pusher (TF Serving layout);
3. starts ``uniter serve`` on the pushed base path, sends one gRPC query (``uniter query``: an image and two
   questions) and one REST query (``serve_examples`` on two eval records), prints the answers;
4. stops the server and prints where everything is.

It never fakes a success: a missing piece is named and the furthest real slice runs; the exit status is
non-zero only when something that exists fails.
"""

from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import List, Optional, Sequence, Tuple

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ROOT = os.path.join(REPOSITORY_ROOT, "demo_output")
QUESTIONS = ("what color is the circle?", "how many shapes are there?")

_started = time.time()


def say(message: str) -> None:
    """One progress line with the elapsed time."""
    elapsed = int(time.time() - _started)
    print(f"[demo {elapsed // 60:02d}:{elapsed % 60:02d}] {message}", flush=True)


def _missing_pieces() -> Tuple[List[str], bool]:
    """What the demo needs that this checkout lacks: (descriptions, pretraining available)."""
    import importlib.util

    missing = []
    for module in ("components.region_feature_extractor.component", "components.uniter_example_gen.component",
                   "components.uniter_evaluator.component", "uniter_tf.export.exporter", "serving.server",
                   "serving.client"):
        if importlib.util.find_spec(module) is None:
            missing.append(f"module {module}")
    has_pretraining = os.path.exists(os.path.join(REPOSITORY_ROOT, "pipeline", "pretrain_module.py"))
    if not has_pretraining:
        missing.append("pipeline/pretrain_module.py (fine-tuning then starts from a random backbone)")
    return missing, has_pretraining


def run_pipeline(root: str, include_pretraining: bool) -> Tuple[bool, str]:
    """Runs the pipeline; returns (succeeded, message)."""
    os.environ["UNITER_PIPELINE_ROOT"] = os.path.join(root, "tfx")
    os.environ.setdefault("UNITER_SAMPLE_DATA_DIR", os.path.join(root, "sample_data"))
    # configs reads the environment at import time.
    from pipeline import configs, local_runner
    from tfx import v1 as tfx

    say(f"sample data: {configs.SAMPLE_DATA_DIR}")
    local_runner.ensure_sample_data(configs.SAMPLE_DATA_DIR)
    say("running the TFX pipeline (LocalDagRunner; first run about 5-10 minutes on 2 cores) ...")
    pipeline = local_runner.build_local_pipeline(include_pretraining=include_pretraining)
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
    for node, node_states in sorted(_node_states(configs).items()):
        say(f"  {node:28s} {node_states[-1] if node_states else '-'}")
    return True, "ok"


def _report_progress(configs, stop: "threading.Event", interval_s: float = 10.0) -> None:
    """Prints each component's state changes (read from ML Metadata) while the pipeline runs."""
    seen = {}
    while not stop.wait(interval_s):
        for node, node_states in sorted(_node_states(configs).items()):
            state = f"{len(node_states)}:{node_states[-1]}" if node_states else ""
            if state and seen.get(node) != state:
                seen[node] = state
                say(f"  {node}: {node_states[-1]}")


def _node_states(configs):
    from pipeline import local_runner

    try:
        return local_runner.node_states(configs.METADATA_PATH, configs.PIPELINE_NAME)
    except Exception:  # the store may not exist if the run failed early
        return {}


def latest_evaluation(pipeline_root: str) -> Optional[dict]:
    """The newest gate report (``UniterEvaluator/evaluation/<id>/metrics.json``)."""
    reports = glob.glob(os.path.join(pipeline_root, "UniterEvaluator", "evaluation", "*", "metrics.json"))
    if not reports:
        return None
    newest = max(reports, key=lambda path: int(path.split(os.sep)[-2]))
    with open(newest, encoding="utf-8") as handle:
        report = json.load(handle)
    report["path"] = newest
    return report


def pushed_versions(serving_model_dir: str) -> List[str]:
    """Numeric version directories with a SavedModel under the Pusher's base path."""
    if not os.path.isdir(serving_model_dir):
        return []
    return sorted((entry for entry in os.listdir(serving_model_dir)
                   if entry.isdigit() and os.path.exists(os.path.join(serving_model_dir, entry, "saved_model.pb"))),
                  key=int)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(base_path: str, log_path: str) -> Tuple[subprocess.Popen, str, str]:
    """Starts ``uniter serve`` on free ports; returns (process, grpc target, rest address)."""
    log = open(log_path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
    # REST port 0 would disable REST (as in tensorflow_model_server), so pick free ports here.
    process = subprocess.Popen(
            [sys.executable, "-m", "uniter_tf.cli", "serve", "--model-base-path", base_path, "--port",
             str(_free_port()), "--rest-api-port", str(_free_port()), "--file-system-poll-wait-seconds", "0"],
            cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
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


def _answer_line(answers) -> str:
    return ", ".join(f"{answer} ({float(score):.2f})" for answer, score in answers)


def grpc_query(target: str, image_path: str) -> Tuple[bool, str]:
    """``uniter query --image ... --mode answer`` over gRPC (regions are extracted locally)."""
    command = [sys.executable, "-m", "uniter_tf.cli", "query", "--target", target, "--image", image_path,
               "--mode", "answer"]
    for question in QUESTIONS:
        command += ["--text", question]
    completed = subprocess.run(command, cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=600)
    if completed.returncode != 0:
        return False, completed.stderr[-2000:]
    reply = json.loads(completed.stdout)
    lines = [f"  model {reply['model']} version {reply['version']}"]
    for row in reply["results"]:
        lines.append(f"  Q: {row['question']}  ->  {_answer_line(row['answers'])}")
    return True, "\n".join(lines)


def rest_query(address: str, records: Sequence[bytes]) -> Tuple[bool, str]:
    """POST ``/v1/models/uniter:predict`` with the ``serve_examples`` signature (records as base64)."""
    from uniter_tf.data import schema

    body = json.dumps({"signature_name": "serve_examples",
                       "instances": [{"b64": base64.b64encode(record).decode("ascii")} for record in records]})
    request = urllib.request.Request(f"http://{address}/v1/models/uniter:predict", data=body.encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except Exception as error:  # HTTP errors carry the server's message
        detail = getattr(error, "read", lambda: b"")().decode("utf-8", "replace")
        return False, f"{error} {detail}"
    lines = []
    for record, prediction in zip(records, answer.get("predictions", [])):
        decoded = schema.decode_example(record)
        line = (f"  {prediction.get('example_id')}: Q: {decoded[schema.TEXT].decode('utf-8')}  "
                f"(true: {', '.join(a.decode('utf-8') for a in decoded.get(schema.ANSWERS, [])[:1])})")
        if "answers" in prediction:
            line += f"  ->  {_answer_line(zip(prediction['answers'], prediction.get('answer_scores', [])))}"
        line += f"  itm_score {float(prediction.get('itm_score', float('nan'))):.2f}"
        lines.append(line)
    if not lines:
        return False, f"no predictions in the reply: {json.dumps(answer)[:500]}"
    return True, "\n".join(lines)


def _eval_question_records(pipeline_root: str, count: int = 2) -> List[bytes]:
    import tensorflow as tf

    artifact_dirs = glob.glob(os.path.join(pipeline_root, "VqaExampleGen", "examples", "*"))
    newest = max(artifact_dirs, key=lambda path: int(os.path.basename(path)))
    files = sorted(glob.glob(os.path.join(newest, "Split-eval", "*")))
    records = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(count):
        records.append(record.numpy())
    return records


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"Where everything goes (default {DEFAULT_ROOT}).")
    parser.add_argument("--fresh", action="store_true", help="Delete the root first (no cached components).")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.root)
    if args.fresh and os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root, exist_ok=True)

    missing, has_pretraining = _missing_pieces()
    for piece in missing:
        say(f"NOT IN THIS CHECKOUT: {piece}")
    if any(piece.startswith("module components.") for piece in missing):
        say("the pipeline cannot be built without its components; nothing else to run")
        return 1

    succeeded, message = run_pipeline(root, include_pretraining=has_pretraining)
    from pipeline import configs

    if not succeeded:
        say(f"FAILED: {message}")
        say(f"logs above; artifacts under {configs.PIPELINE_ROOT}")
        return 1
    report = latest_evaluation(configs.PIPELINE_ROOT)
    if report is not None:
        metrics = report["metrics"]
        say("gate: " + report["message"])
        say("metrics: " + ", ".join(f"{key}={value:.3f}" for key, value in sorted(metrics.items())
                                    if not key.startswith("num_")))
    versions = pushed_versions(configs.SERVING_MODEL_DIR)
    if not versions:
        say(f"no model was pushed to {configs.SERVING_MODEL_DIR} (the gate did not bless it; see above)")
        return 1
    say(f"pushed: {os.path.join(configs.SERVING_MODEL_DIR, versions[-1])}")

    if any(piece.startswith("module serving.") or piece.startswith("module uniter_tf.export") for piece in missing):
        say("serving is not in this checkout: stopping after the push")
        return 0
    server_log = os.path.join(root, "server.log")
    say(f"starting uniter serve on {configs.SERVING_MODEL_DIR} (log: {server_log}) ...")
    process, grpc_target, rest_address = start_server(configs.SERVING_MODEL_DIR, server_log)
    failures = 0
    try:
        say(f"serving: gRPC {grpc_target}, REST {rest_address}")
        image = sorted(glob.glob(os.path.join(configs.SAMPLE_DATA_DIR, "images", "*.png")))[0]
        say(f"gRPC query: {image} with {list(QUESTIONS)} (uniter query, regions extracted locally) ...")
        ok, output = grpc_query(grpc_target, image)
        print(output, flush=True)
        failures += not ok
        records = _eval_question_records(configs.PIPELINE_ROOT)
        say(f"REST query: serve_examples on {len(records)} eval questions ...")
        ok, output = rest_query(rest_address, records)
        print(output, flush=True)
        failures += not ok
    finally:
        stop_server(process)
        say("server stopped")
    say(f"results: pipeline root {configs.PIPELINE_ROOT}; ML Metadata {configs.METADATA_PATH}; "
        f"served model {configs.SERVING_MODEL_DIR}; gate report {report['path'] if report else '-'}")
    if failures:
        say(f"{failures} query(ies) failed")
        return 1
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
