"""Shared pytest setup for uniter-tf."""

import os

# Quiet TF's C++ logging and keep tests on the CPU, with deterministic op selection where TF offers it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# `uniter` commands called in-process or as subprocesses write their library logs under UNITER_LOG_DIR;
# keep the test suite's logs in one temporary folder instead of the user's ~/.cache/uniter/logs.
if "UNITER_LOG_DIR" not in os.environ:
    import tempfile

    os.environ["UNITER_LOG_DIR"] = tempfile.mkdtemp(prefix="uniter-test-logs-")
