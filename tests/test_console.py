"""A clean terminal: library logs, warnings and C++ lines go to the log file, our own lines stay on screen."""

import io
import logging
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from uniter_tf import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITER = os.path.join(os.path.dirname(sys.executable), "uniter")
# What TensorFlow, absl and google-api-core print when they are not kept off the terminal.
LIBRARY_NOISE = ("cuda_dnn", "cuDNN", "cuBLAS", "cuFFT", "TensorRT", "absl::", "FutureWarning", "I0000",
                 "oneDNN", "Traceback", "Exception ignored", "WARNING:", "E external/", "W tensorflow/")


def user_env(tmp_path, **extra):
    """The environment of a user's shell: none of conftest's TF settings, logs to ``tmp_path/logs``."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", console.ENV_VERBOSE, "GRPC_VERBOSITY", "PYTHONWARNINGS")}
    env[console.ENV_LOG_DIR] = str(tmp_path / "logs")
    env.update(extra)
    return env


def log_files(tmp_path):
    directory = tmp_path / "logs"
    return sorted(directory.glob("*.log")) if directory.exists() else []


def test_in_process_session_routes_library_output_to_the_log_and_restores_everything(tmp_path, monkeypatch):
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    root = logging.getLogger()
    handlers_before, level_before, hook_before = list(root.handlers), root.level, sys.unraisablehook
    with console.quiet_libraries(str(tmp_path / "logs"), verbose=False, name="unit", redirect_fd=False) as session:
        assert session.log_path.startswith(str(tmp_path / "logs")) and session.log_path.endswith(".log")
        warnings.warn("a library's RuntimeWarning", RuntimeWarning)  # pytest's config ignores FutureWarning
        logging.getLogger("apache_beam.runners").info("Beam INFO line")
        logging.getLogger("uniter_tf.training.finetune").info("step 10: loss 1.5")
        logging.getLogger("serving.server").warning("version 2 failed to load")
        print("our own error line", file=sys.stderr)
        sys.unraisablehook(_Unraisable())
        session.say("done")
        log_path = session.log_path
    shown = terminal.getvalue()
    assert shown.splitlines() == ["step 10: loss 1.5", "warning: version 2 failed to load", "our own error line",
                                  "done"]
    logged = open(log_path, encoding="utf-8").read()
    for line in ("a library's RuntimeWarning", "Beam INFO line", "step 10: loss 1.5", "version 2 failed to load",
                 "Exception ignored in", "ZeroDivisionError"):
        assert line in logged
    assert "our own error line" not in logged
    assert root.handlers == handlers_before and root.level == level_before
    assert sys.unraisablehook is hook_before and sys.stderr is terminal
    assert warnings.showwarning is not logging._showwarning  # pylint: disable=protected-access


class _Unraisable:
    """What the interpreter hands sys.unraisablehook for an exception in ``__del__``."""

    def __init__(self):
        try:
            1 / 0  # pylint: disable=pointless-statement
        except ZeroDivisionError as error:
            self.exc_type, self.exc_value, self.exc_traceback = type(error), error, error.__traceback__
        self.err_msg = "Exception ignored in"
        self.object = "<function AtomicFunction.__del__>"


def test_verbose_session_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(console.ENV_VERBOSE, "1")
    assert console.verbose_from_env()
    monkeypatch.setenv(console.ENV_VERBOSE, "0")
    assert not console.verbose_from_env()
    stderr_before, showwarning_before = sys.stderr, warnings.showwarning
    with console.quiet_libraries(str(tmp_path / "logs"), verbose=True, redirect_fd=False) as session:
        assert session.log_path is None and sys.stderr is stderr_before
        assert warnings.showwarning is showwarning_before
    assert not (tmp_path / "logs").exists()


def test_log_location_and_pruning(tmp_path, monkeypatch):
    monkeypatch.setenv(console.ENV_LOG_DIR, str(tmp_path / "mine"))
    assert console.default_log_dir() == str(tmp_path / "mine")
    monkeypatch.delenv(console.ENV_LOG_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert console.default_log_dir() == str(tmp_path / "cache" / "uniter" / "logs")
    path = console.new_log_path("pretrain")
    assert os.path.dirname(path) == str(tmp_path / "cache" / "uniter" / "logs")
    assert os.path.basename(path).startswith("pretrain-") and path.endswith(f"-{os.getpid()}.log")
    assert console.new_log_path("x", str(tmp_path / "demo" / "run.log")) == str(tmp_path / "demo" / "run.log")

    directory = tmp_path / "many"
    directory.mkdir()
    for index in range(console.KEEP_LOG_FILES + 5):
        log = directory / f"extract-20260101-0000{index:02d}-{index}.log"
        log.write_text("x")
        os.utime(log, (1000 + index, 1000 + index))
    (directory / "notes.log").write_text("not ours")
    with console.quiet_libraries(str(directory), name="extract", redirect_fd=False):
        pass
    remaining = sorted(path.name for path in directory.glob("extract-*.log"))
    assert len(remaining) == console.KEEP_LOG_FILES
    assert "extract-20260101-000000-0.log" not in remaining and (directory / "notes.log").exists()


def test_process_session_sends_fd2_children_and_shutdown_noise_to_the_log(tmp_path):
    script = textwrap.dedent(f"""
        import os, subprocess, sys
        from uniter_tf import console

        session = console.quiet_libraries({str(tmp_path / "logs")!r}, name="proc", redirect_fd=True)
        os.write(2, b"E external/local_xla/cuda_dnn.cc:9261] Unable to register cuDNN factory\\n")
        subprocess.run(["sh", "-c", "echo child process stderr >&2"], check=True)
        print("our line on stderr", file=sys.stderr)
        print("result on stdout")

        class Finalised:
            def __del__(self):
                raise TypeError("'NoneType' object is not subscriptable")

        keep = Finalised()  # finalised at interpreter exit, after the last line
        session.detach_terminal()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                            env=user_env(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "our line on stderr\n"
    assert result.stdout == "result on stdout\n"
    (log,) = log_files(tmp_path)
    logged = log.read_text()
    for line in ("Unable to register cuDNN factory", "child process stderr", "Exception ignored",
                 "'NoneType' object is not subscriptable"):
        assert line in logged
    assert "our line on stderr" not in logged


def test_parity_prints_only_its_answer(tmp_path):
    result = subprocess.run([UNITER, "parity", "--fixture", os.path.join(REPO, "tests", "fixtures", "parity_official")],
                            capture_output=True, text=True, cwd=REPO, env=user_env(tmp_path), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("output") and lines[-1].endswith("outputs within tolerance")
    assert all(len(line.split()) >= 4 for line in lines[1:-1])  # one row per output, nothing else
    for noise in LIBRARY_NOISE:
        assert noise not in result.stdout
    (log,) = log_files(tmp_path)
    # google-api-core warns about Python 3.10 on every import of the pinned stack: it went to the log.
    assert "FutureWarning" in log.read_text()


@pytest.mark.slow
def test_parity_verbose_shows_library_output(tmp_path):
    # The same run with UNITER_VERBOSE=1: the FutureWarning the quiet run kept in its log is on the terminal.
    result = subprocess.run([UNITER, "parity", "--fixture", os.path.join(REPO, "tests", "fixtures", "parity_official")],
                            capture_output=True, text=True, cwd=REPO, env=user_env(tmp_path, UNITER_VERBOSE="1"),
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FutureWarning" in result.stderr
    assert not log_files(tmp_path)


@pytest.mark.slow
def test_extract_ends_without_a_traceback(tmp_path):
    subprocess.run([UNITER, "sample-data", "--output", str(tmp_path / "sample"), "--num-images", "2"], check=True,
                   capture_output=True, env=user_env(tmp_path), timeout=120)
    result = subprocess.run([UNITER, "extract", "--images", str(tmp_path / "sample" / "images" / "*.png"),
                             "--output", str(tmp_path / "out"), "--num-shards", "1", "--runner=DirectRunner",
                             "--direct_num_workers=1"],
                            capture_output=True, text=True, cwd=REPO, env=user_env(tmp_path), timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert "extraction summary" in result.stdout and "images_ok" in result.stdout
    for noise in LIBRARY_NOISE:
        assert noise not in result.stdout
    (log,) = (tmp_path / "logs").glob("extract-*.log")
    assert "apache_beam" in log.read_text()  # Beam's own log lines went to the file


FAKE_PYTHON = """#!/bin/bash
# Python 3.10 for bootstrap.sh's version check; a venv whose pip talks like pip and fails on request.
if [ "$1" = "-c" ]; then exec {real} "$@"; fi
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  printf '#!/bin/bash\\necho "DEPRECATION: legacy editable install" >&2\\necho "WARNING: Location x is ignored" >&2\\n'\\
'echo "Successfully installed everything"\\nexit ${{FAKE_PIP_RC:-0}}\\n' > "$3/bin/pip"
  printf '#!/bin/bash\\necho "import chatter" >&2\\n' > "$3/bin/python"
  chmod +x "$3/bin/pip" "$3/bin/python"
  exit 0
fi
exit 3
"""


@pytest.mark.parametrize("pip_status", [0, 1])
def test_bootstrap_prints_one_line_per_phase_and_keeps_pip_output_in_its_log(tmp_path, pip_status):
    fake = tmp_path / "python3.10"
    fake.write_text(FAKE_PYTHON.format(real=sys.executable))
    fake.chmod(0o755)
    env = user_env(tmp_path, PYTHON310=str(fake), VENV=str(tmp_path / "venv"), FAKE_PIP_RC=str(pip_status))
    result = subprocess.run(["bash", os.path.join(REPO, "scripts", "bootstrap.sh")], capture_output=True, text=True,
                            env=env, timeout=120)
    (log,) = log_files(tmp_path)
    logged = log.read_text()
    assert "DEPRECATION: legacy editable install" in logged and "Successfully installed" in logged
    shown = result.stdout + result.stderr
    assert all(line.startswith("==> ") for line in result.stdout.splitlines()), result.stdout
    if pip_status == 0:
        assert result.returncode == 0, shown
        assert "DEPRECATION" not in shown and "WARNING: Location" not in shown
        phases = [line.split(" (")[0] for line in result.stdout.splitlines()]
        assert len(phases) == 5 and phases[-1].startswith("==> installed in")
        assert f"(log: {log})" in result.stdout.splitlines()[0]
        assert (tmp_path / "venv" / ".uniter-install-stamp").exists()
    else:
        assert result.returncode == 1
        assert "error: installing" in result.stderr and "failed" in result.stderr
        assert "DEPRECATION: legacy editable install" in result.stderr  # the log's tail, to act on
        assert result.stderr.strip().splitlines()[-1].strip() == f"full log: {log}"
        assert not (tmp_path / "venv" / ".uniter-install-stamp").exists()


def test_an_unwritable_log_dir_falls_back_to_the_temp_dir(tmp_path, monkeypatch):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("a file where the log directory should be")
    monkeypatch.setattr(console.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    with console.quiet_libraries(str(blocked / "logs"), name="fallback", redirect_fd=False) as session:
        assert session.log_path.startswith(str(tmp_path / "tmp" / "uniter-logs" / "fallback-"))
        logging.getLogger("apache_beam").info("still logged")
    assert "still logged" in open(session.log_path, encoding="utf-8").read()
