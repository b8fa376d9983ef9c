"""The installed stack is the pinned one, and the CLI skeleton works."""

import importlib
import importlib.metadata
import json
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# The versions the project is built and tested against (DEVELOPERS brief / issue 2).
PINNED = {
    "tensorflow": "2.16.2",
    "keras": "3.12.4",
    "keras-nlp": "0.14.4",
    "tensorflow-text": "2.16.1",
    "tensorflow-serving-api": "2.16.1",
    "tfx": "1.16.0",
    "apache-beam": "2.74.0",
    "tf-keras": "2.16.0",
}


def _lock_pins():
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(3)
    return pins


def test_python_is_3_10():
    assert sys.version_info[:2] == (3, 10)


@pytest.mark.parametrize("distribution,version", sorted(PINNED.items()))
def test_stack_versions_are_pinned(distribution, version):
    assert importlib.metadata.version(distribution) == version
    assert _lock_pins()[distribution] == version


def test_every_locked_package_is_installed_at_its_pin():
    mismatched = {}
    for name, version in _lock_pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            mismatched[name] = (version, None)
            continue
        if installed != version:
            mismatched[name] = (version, installed)
    assert not mismatched, f"lock pin vs installed: {mismatched}"


def test_lock_keeps_beams_dill_extra():
    # tfx-bsl imports dill, which apache-beam 2.74 no longer brings without the [dill] extra.
    assert "dill" in _lock_pins()
    importlib.import_module("dill")


@pytest.mark.parametrize("module", [
    "tensorflow", "keras", "keras_nlp", "tensorflow_text", "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "apache_beam", "tfx.v1", "tfx_bsl", "tensorflow_data_validation", "ml_metadata", "tf_keras",
    "matplotlib", "skimage", "safetensors", "lmdb", "msgpack",
])
def test_stack_imports(module):
    importlib.import_module(module)


def test_library_does_not_import_tfx():
    code = ("import sys, uniter_tf, uniter_tf.cli, uniter_tf.env_info; "
            "bad = [m for m in sys.modules if m == 'tfx' or m.startswith('tfx.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_version():
    out = subprocess.run([sys.executable, "-m", "uniter_tf.cli", "--version"], capture_output=True, text=True,
                         check=True).stdout
    import uniter_tf
    assert out.strip() == f"uniter-tf {uniter_tf.__version__}"


def test_cli_env_reports_stack_cpu_and_devices():
    out = subprocess.run([sys.executable, "-m", "uniter_tf.cli", "env", "--json"], capture_output=True, text=True,
                         check=True).stdout
    report = json.loads(out)
    for distribution, version in PINNED.items():
        assert report["packages"][distribution] == version
    assert report["python"].startswith("3.10.")
    assert set(report["cpu"]["features"]) >= {"avx512f", "amx_tile", "amx_bf16"}
    assert any(device.startswith("CPU:") for device in report["devices"])


def test_cpu_feature_parsing(tmp_path):
    from uniter_tf import env_info
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test CPU\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n")
    report = env_info.cpu_features(str(cpuinfo))
    assert report["model"] == "Test CPU"
    assert report["features"]["avx512f"] and report["features"]["amx_bf16"]
    assert not report["features"]["amx_int8"]


def test_cli_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "uniter_tf.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "env" in out
