"""Server-side batching: merging, splitting, shape grouping, and isolating a bad request."""

import threading
import time

import numpy as np
import pytest

from serving.batching import BatchingOptions, BatchScheduler
from serving.errors import Code, ServingError


class _RecordingRunner:
    """Doubles its input; fails with INVALID_ARGUMENT on negative values; records every call."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, inputs):
        with self.lock:
            self.calls.append(inputs["x"].shape[0])
        if (inputs["x"] < 0).any():
            raise ServingError(Code.INVALID_ARGUMENT, "x must be non-negative")
        return {"y": inputs["x"] * 2, "row_sum": inputs["x"].sum(axis=1)}


def _run_concurrently(scheduler, runner, arrays):
    results, errors = [None] * len(arrays), [None] * len(arrays)
    start = threading.Barrier(len(arrays))

    def worker(index):
        start.wait()
        try:
            results[index] = scheduler.run("group", {"x": arrays[index]}, runner)
        except ServingError as error:
            errors[index] = error

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(len(arrays))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results, errors


def test_concurrent_requests_are_merged_and_split_back():
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=500_000))
    runner = _RecordingRunner()
    arrays = [np.full((2, 3), index, np.float32) for index in range(4)]
    try:
        results, errors = _run_concurrently(scheduler, runner, arrays)
    finally:
        scheduler.close()
    assert errors == [None] * 4
    assert runner.calls == [8]  # four requests of 2 rows reached max_batch_size together
    for index, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], arrays[index] * 2)
        np.testing.assert_array_equal(result["row_sum"], arrays[index].sum(axis=1))


def test_requests_of_different_shapes_do_not_share_a_batch():
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=64, batch_timeout_micros=50_000))
    runner = _RecordingRunner()
    arrays = [np.ones((1, 3), np.float32), np.ones((1, 3), np.float32), np.ones((1, 5), np.float32)]
    try:
        results, errors = _run_concurrently(scheduler, runner, arrays)
    finally:
        scheduler.close()
    assert errors == [None] * 3
    assert sorted(runner.calls) == [1, 2]
    assert [result["y"].shape for result in results] == [(1, 3), (1, 3), (1, 5)]


def test_a_bad_request_fails_alone():
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=3, batch_timeout_micros=500_000))
    runner = _RecordingRunner()
    arrays = [np.ones((1, 2), np.float32), -np.ones((1, 2), np.float32), np.ones((1, 2), np.float32)]
    try:
        results, errors = _run_concurrently(scheduler, runner, arrays)
    finally:
        scheduler.close()
    assert errors[1] is not None and errors[1].code == Code.INVALID_ARGUMENT
    assert errors[0] is None and errors[2] is None
    np.testing.assert_array_equal(results[0]["y"], [[2.0, 2.0]])
    assert runner.calls[0] == 3 and sorted(runner.calls[1:]) == [1, 1, 1]


def test_a_lone_request_runs_after_the_timeout():
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=32, batch_timeout_micros=20_000))
    runner = _RecordingRunner()
    try:
        started = time.perf_counter()
        result = scheduler.run("group", {"x": np.ones((1, 2), np.float32)}, runner)
        elapsed = time.perf_counter() - started
    finally:
        scheduler.close()
    np.testing.assert_array_equal(result["y"], [[2.0, 2.0]])
    assert 0.015 <= elapsed < 5.0


def test_options_are_checked():
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchingOptions(max_batch_size=0)
    with pytest.raises(ValueError, match="num_batch_threads"):
        BatchingOptions(num_batch_threads=0)
