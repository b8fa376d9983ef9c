"""Shared pytest setup for uniter-tf."""

import os

# Quiet TF's C++ logging and keep tests on the CPU, with deterministic op selection where TF offers it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
