"""tests/BUILD declares one Bazel py_test per test file."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_tests_build_file_is_current():
    spec = importlib.util.spec_from_file_location("gen_bazel_build", REPO / "scripts" / "gen_bazel_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (REPO / "tests" / "BUILD").read_text() == module.render(), (
        "tests/BUILD is stale: run `.venv/bin/python scripts/gen_bazel_build.py`")
