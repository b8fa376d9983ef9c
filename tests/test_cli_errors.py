"""Errors a person can act on: the real ``uniter`` program reports a user error in one line, exit 2.

Cases that import TensorFlow or Beam cost seconds each, so they are started together (one module-scoped
batch of subprocesses) and each test reads its own result.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from uniter_tf import cli, console
from uniter_tf.commands import serve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITER = os.path.join(os.path.dirname(sys.executable), "uniter")


def user_env(log_dir, **extra):
    env = {key: value for key, value in os.environ.items() if key != console.ENV_VERBOSE}
    env[console.ENV_LOG_DIR] = str(log_dir)
    env.update(extra)
    return env


def run_uniter(args, log_dir, timeout=300, **extra_env):
    return subprocess.run([UNITER, *args], capture_output=True, text=True, cwd=REPO, env=user_env(log_dir, **extra_env),
                          timeout=timeout)


def assert_one_line_error(result, *needles):
    """Exit 2, nothing on stdout, one stderr line naming the command and the problem, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("uniter") and ": error: " in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    captions = root / "captions.json"
    captions.write_text(json.dumps({"images": [], "annotations": [{"id": 1, "image_id": 1, "caption": "a dog"}]}))
    np.savez(root / "regions.npz", region_features=np.zeros((3, 8), np.float32),
             region_positions=np.zeros((3, 7), np.float32))
    return root


# Cases that import Beam or TensorFlow: name -> (uniter arguments, what the one error line must name).
# The fast suite runs them in-process (this process imports TF and Beam once for all); the slow suite runs
# them through the real program, in parallel.
HEAVY_CASES = {
    "extract_typo": (["extract", "--images", "{root}/none/*.png", "--output", "{root}/out", "--max-boxs", "5"],
                     ["uniter extract: error:", "--max-boxs 5", "neither uniter extract nor Apache Beam",
                      "did you mean --max-boxes?"]),
    # The Beam flags got past the check: the error is the empty glob / missing features, found after them.
    "extract_beam_flags": (["extract", "--images", "{root}/none/*.png", "--output", "{root}/out",
                            "--runner=DirectRunner", "--direct_num_workers", "1", "--experiments=a"],
                           ["uniter extract: error:", "no images match"]),
    "ingest_beam_flags": (["ingest", "--format", "coco", "--annotations", "{root}/captions.json", "--features",
                           "{root}/missing.tsv", "--output", "{root}/out", "--runner=DirectRunner",
                           "--direct_num_workers=1"],
                          ["uniter ingest: error:", "no feature files match", "missing.tsv"]),
    "ingest_beam_flags_after_separator": (["ingest", "--format", "coco", "--annotations", "{root}/captions.json",
                                           "--features", "{root}/missing.tsv", "--output", "{root}/out", "--",
                                           "--runner=DirectRunner"],
                                          ["uniter ingest: error:", "no feature files match"]),
    "ingest_typo": (["ingest", "--format", "coco", "--annotations", "{root}/captions.json", "--features",
                     "{root}/missing.tsv", "--output", "{root}/out", "--runer=DirectRunner"],
                    ["uniter ingest: error:", "--runer=DirectRunner", "did you mean --runner?"]),
    "ingest_bad_beam_value": (["ingest", "--format", "coco", "--annotations", "{root}/captions.json", "--features",
                               "{root}/missing.tsv", "--output", "{root}/out", "--direct_num_workers=two"],
                              ["uniter ingest: error:", "--direct_num_workers", "two"]),
    "pretrain_bogus_key": (["pretrain", "--set", "bogus_key=1"], ["uniter pretrain: error:", "bogus_key"]),
    # Port 1 on the loopback: nothing listens, the connection is refused at once.
    "query_no_server": (["query", "--target", "127.0.0.1:1", "--regions", "{root}/regions.npz", "--text", "a dog",
                         "--timeout", "20"],
                        ["uniter query: error:", "no server answered at --target 127.0.0.1:1", "uniter serve"]),
}


def _case_args(name, root):
    return [arg.format(root=root) for arg in HEAVY_CASES[name][0]]


@pytest.fixture(scope="module")
def program_results(workspace):
    processes = {name: subprocess.Popen([UNITER, *_case_args(name, workspace)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, cwd=REPO,
                                        env=user_env(workspace / "logs" / name))
                 for name in HEAVY_CASES}
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=900)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


# --- no TensorFlow import: fast -------------------------------------------------------------------------

def test_pretrain_missing_config_is_one_line(tmp_path):
    assert_one_line_error(run_uniter(["pretrain", "--config", "missing.json"], tmp_path), "missing.json",
                          "no such file")


def test_verbose_shows_the_traceback(tmp_path):
    for result in (run_uniter(["pretrain", "--config", "missing.json", "--verbose"], tmp_path),
                   run_uniter(["--verbose", "pretrain", "--config", "missing.json"], tmp_path),
                   run_uniter(["pretrain", "--config", "missing.json"], tmp_path, UNITER_VERBOSE="1")):
        assert result.returncode == 2
        assert "Traceback" in result.stderr and "UserError: --config missing.json: no such file" in result.stderr
        assert result.stderr.strip().splitlines()[-1] == "uniter pretrain: error: --config missing.json: no such file"


def test_unknown_flag_of_a_plain_command_is_rejected_with_a_hint(tmp_path):
    line = assert_one_line_error(run_uniter(["sample-data", "--output", str(tmp_path / "s"), "--num-imagez", "3"],
                                            tmp_path), "unrecognized arguments: --num-imagez 3", "--num-images")
    assert line.startswith("uniter sample-data: error:")
    assert not (tmp_path / "s").exists()


def test_finetune_task_lists_its_choices(tmp_path):
    assert_one_line_error(run_uniter(["finetune", "--task", "vqq", "--config", "x.json"], tmp_path),
                          "invalid choice: 'vqq'", "'vqa'")
    help_text = run_uniter(["finetune", "--help"], tmp_path).stdout
    from uniter_tf.commands import finetune

    assert "--task {" + ",".join(finetune.TASKS) + "}" in help_text


def test_finetune_task_choices_are_the_registered_tasks():
    from uniter_tf.commands import finetune
    from uniter_tf.models import task
    from uniter_tf.tasks import base_task

    base_task._import_task_modules()  # pylint: disable=protected-access  (registers every task module)
    # Shipped downstream tasks only: other tests register their own task classes in the same process.
    downstream = sorted(name for name, task_class in task.TASK_REGISTRY.items()
                        if issubclass(task_class, task.DownstreamTask)
                        and task_class.__module__.startswith("uniter_tf."))
    # Pretraining is a Task too, but `uniter finetune` only takes the downstream ones.
    assert "pretraining" in task.TASK_REGISTRY
    assert sorted(finetune.TASKS) == downstream


def test_serve_missing_base_path_fails_before_loading_anything(tmp_path):
    assert_one_line_error(run_uniter(["serve", "--model_base_path", str(tmp_path / "nothing")], tmp_path),
                          "--model-base-path", "no such directory")


def _listening_socket():
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    return busy


def test_serve_busy_port_is_reported_before_the_model_loads(tmp_path):
    (tmp_path / "base" / "1").mkdir(parents=True)
    busy = _listening_socket()
    port = busy.getsockname()[1]
    try:
        assert_one_line_error(run_uniter(["serve", "--model_base_path", str(tmp_path / "base"), "--port", str(port),
                                          "--rest_api_port", "0"], tmp_path), f"--port {port}", "already in use")
        assert_one_line_error(run_uniter(["serve", "--model-base-path", str(tmp_path / "base"), "--port", "0",
                                          "--rest-api-port", str(port)], tmp_path),
                              f"--rest-api-port {port}", "already in use")
        # Nothing heavy was imported before the check: the model would have been loaded after it.
        probe = textwrap.dedent(f"""
            import sys
            from uniter_tf import cli
            status = cli.main(["serve", "--model_base_path", {str(tmp_path / 'base')!r}, "--port", "{port}"])
            print(status, "tensorflow" in sys.modules, "serving.server" in sys.modules)
        """)
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                                env=user_env(tmp_path), timeout=120)
        assert result.stdout.split() == ["2", "False", "False"], result.stdout + result.stderr
    finally:
        busy.close()


def test_serve_accepts_tf_serving_flag_spellings(tmp_path):
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 500 }  # comment\n"
                        "num_batch_threads { value: 3 }\npad_variable_length_inputs: true\n")
    parser = cli.build_parser()
    args = parser.parse_args(["serve", "--model_base_path=/models/uniter", "--model_name=uniter2", "--port=9000",
                              "--rest_api_port=0", "--enable_batching=true", "--file_system_poll_wait_seconds=5",
                              f"--batching_parameters_file={batching}", "--grpc_max_threads=4",
                              "--tensorflow_session_parallelism=2"])
    assert (args.model_base_path, args.model_name, args.port, args.rest_api_port) == ("/models/uniter", "uniter2",
                                                                                       9000, 0)
    assert args.enable_batching is True and args.file_system_poll_wait_seconds == 5.0
    assert args.grpc_threads == 4 and args.session_threads == 2
    assert serve.read_batching_parameters(args.batching_parameters_file) == {
            "max_batch_size": 8, "batch_timeout_micros": 500, "num_batch_threads": 3}
    assert parser.parse_args(["serve", "--model_base_path=b", "--enable_batching"]).enable_batching is True
    assert parser.parse_args(["serve", "--model_base_path=b", "--enable_batching=false"]).enable_batching is False
    assert parser.parse_args(["serve", "--model_base_path=b"]).enable_batching is False
    # Our own spellings still work.
    ours = parser.parse_args(["serve", "--model-base-path", "b", "--rest-api-port", "8601", "--enable-batching"])
    assert (ours.model_base_path, ours.rest_api_port, ours.enable_batching) == ("b", 8601, True)


def test_serve_rejects_bad_tf_serving_values(tmp_path):
    assert_one_line_error(run_uniter(["serve", "--model_base_path=b", "--enable_batching=maybe"], tmp_path),
                          "--enable-batching", "maybe")
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    (tmp_path / "base").mkdir()
    assert_one_line_error(run_uniter(["serve", f"--model_base_path={tmp_path / 'base'}", "--port=0",
                                      "--rest_api_port=0", "--enable_batching",
                                      f"--batching_parameters_file={batching}"], tmp_path),
                          str(batching), "allowed_batch_sizes", "not supported")
    batching.write_text("max_batch_size { value: eight }\n")
    assert_one_line_error(run_uniter(["serve", f"--model_base_path={tmp_path / 'base'}", "--port=0",
                                      "--rest_api_port=0", f"--batching_parameters_file={batching}"], tmp_path),
                          "max_batch_size must be an integer")


def test_in_process_callers_get_the_status_and_keep_their_stderr(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(console.ENV_LOG_DIR, str(tmp_path / "logs"))
    stderr_before = sys.stderr
    assert cli.main(["pretrain", "--config", str(tmp_path / "missing.json")]) == 2
    assert sys.stderr is stderr_before
    assert capsys.readouterr().err.strip() == f"uniter pretrain: error: --config {tmp_path / 'missing.json'}: no such file"
    (log,) = (tmp_path / "logs").glob("pretrain-*.log")
    assert "Traceback" in log.read_text()  # the traceback is kept for whoever debugs it


def test_an_unexpected_failure_is_one_line_naming_the_log(tmp_path, capsys, monkeypatch):
    from uniter_tf.commands import tokenize

    def broken(args):
        raise RuntimeError("shape (3, 4) vs (3, 5)\nin layer 2")

    monkeypatch.setattr(tokenize, "run", broken)
    monkeypatch.setenv(console.ENV_LOG_DIR, str(tmp_path / "logs"))
    assert cli.main(["tokenize", "a dog"]) == 1
    (log,) = (tmp_path / "logs").glob("tokenize-*.log")
    error = capsys.readouterr().err
    assert error == f"uniter tokenize: failed: RuntimeError: shape (3, 4) vs (3, 5) in layer 2; the traceback is in {log}\n"
    assert "Traceback" in log.read_text() and "in broken" in log.read_text()


# --- Beam / TensorFlow imports ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(HEAVY_CASES))
def test_user_errors_of_commands_that_import_beam_or_tensorflow(name, workspace, capsys, monkeypatch):
    monkeypatch.setenv(console.ENV_LOG_DIR, str(workspace / "logs" / "in_process"))
    status = cli.main(_case_args(name, workspace))
    captured = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess([], status, captured.out, captured.err), *HEAVY_CASES[name][1])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HEAVY_CASES))
def test_user_errors_of_the_uniter_program(name, program_results):
    assert_one_line_error(program_results[name], *HEAVY_CASES[name][1])


@pytest.mark.slow
@pytest.mark.e2e
def test_serve_runs_a_tensorflow_model_server_command_line(tmp_path):
    """A tensorflow_model_server command line, unchanged but for the program name, serves a model."""
    import urllib.request

    from serving.toy_model import write_toy_model

    write_toy_model(str(tmp_path / "models" / "toy"), 1)
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 4 }\nbatch_timeout_micros { value: 1000 }\n"
                        "num_batch_threads { value: 1 }\n")
    with socket.socket() as free:  # TF Serving's --rest_api_port=0 disables REST: give it a free port
        free.bind(("127.0.0.1", 0))
        rest_port = free.getsockname()[1]
    command = [UNITER, "serve", "--port=0", f"--rest_api_port={rest_port}", "--model_name=toy",
               f"--model_base_path={tmp_path / 'models' / 'toy'}", "--file_system_poll_wait_seconds=0",
               "--enable_batching=true", f"--batching_parameters_file={batching}",
               "--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env=user_env(tmp_path / "logs"))
    try:
        line = process.stdout.readline()
        assert line.startswith("SERVING model=toy"), line + process.stderr.read()
        rest = dict(part.split("=", 1) for part in line.split()[1:])["rest"]
        assert rest == f"127.0.0.1:{rest_port}"
        deadline = time.time() + 60
        while True:
            with urllib.request.urlopen(f"http://{rest}/v1/models/toy", timeout=10) as response:
                status = json.load(response)
            if status["model_version_status"][0]["state"] == "AVAILABLE" or time.time() > deadline:
                break
            time.sleep(0.5)
        assert (status["model_version_status"][0]["version"], status["model_version_status"][0]["state"]) == (
                "1", "AVAILABLE")
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert process.returncode == 0
    assert "Traceback" not in process.stderr.read()
