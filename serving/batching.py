"""Server-side batching: concurrent requests for the same signature run as one call.

Requests are grouped by (version, signature, the dtypes and non-batch dimensions of their inputs), so
only requests whose tensors can be concatenated along dimension 0 share a batch; nothing is padded
here (the exported signatures pad to their own buckets). A batch runs when it reaches
``max_batch_size`` rows or when its oldest request has waited ``batch_timeout_micros``. If a merged
batch fails with INVALID_ARGUMENT, its requests are rerun one by one so that one bad request cannot
fail its neighbours.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from typing import Callable, Dict, Hashable, List, Mapping, Optional

import numpy as np

from serving.errors import Code, ServingError

Runner = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """Batching parameters (names follow TF Serving's ``--batching_parameters_file``).

    Attributes:
        max_batch_size: the most rows one merged call runs.
        batch_timeout_micros: how long the first request of a batch waits for others.
        num_batch_threads: how many merged calls run at once.
        max_enqueued_batches: closed batches that may wait for a thread before new requests are
            refused with UNAVAILABLE.
    """

    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    num_batch_threads: int = 2
    max_enqueued_batches: int = 64

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        if self.num_batch_threads < 1:
            raise ValueError(f"num_batch_threads must be >= 1, got {self.num_batch_threads}")


class _Task:
    __slots__ = ("inputs", "rows", "runner", "done", "outputs", "error")

    def __init__(self, inputs: Dict[str, np.ndarray], rows: int, runner: Runner):
        self.inputs = inputs
        self.rows = rows
        self.runner = runner
        self.done = threading.Event()
        self.outputs: Optional[Dict[str, np.ndarray]] = None
        self.error: Optional[BaseException] = None


class _OpenBatch:
    __slots__ = ("tasks", "rows", "deadline")

    def __init__(self, deadline: float):
        self.tasks: List[_Task] = []
        self.rows = 0
        self.deadline = deadline


def batch_key(group: Hashable, inputs: Mapping[str, np.ndarray]) -> Hashable:
    """The key under which requests may share a batch: the group plus every input's dtype and
    non-batch dimensions."""
    return (group, tuple(sorted((name, array.dtype.str, array.shape[1:]) for name, array in inputs.items())))


class BatchScheduler:
    """Merges concurrent requests into batches and runs them on a small thread pool.

    Args:
        options: the batching parameters.
    """

    def __init__(self, options: BatchingOptions):
        self.options = options
        self._condition = threading.Condition()
        self._open: Dict[Hashable, _OpenBatch] = {}
        self._ready: List[List[_Task]] = []
        self._running = 0
        self._closed = False
        self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=options.num_batch_threads, thread_name_prefix="batch")
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="batch-dispatch", daemon=True)
        self._dispatcher.start()
        self.batches_run = 0
        self.rows_run = 0

    def run(self, group: Hashable, inputs: Dict[str, np.ndarray], runner: Runner) -> Dict[str, np.ndarray]:
        """Runs ``runner`` on ``inputs``, possibly merged with other requests of the same key.

        Args:
            group: what must match for requests to share a batch besides the input shapes (e.g. the
                version object and signature name).
            inputs: the validated inputs; every one must have the batch as dimension 0.
            runner: runs a (merged) dict of inputs and returns a dict of outputs with the batch as
                dimension 0.

        Returns:
            This request's rows of the outputs.

        Raises:
            ServingError: what the runner raised, or UNAVAILABLE when the queue is full.
        """
        if not inputs or any(array.ndim == 0 for array in inputs.values()):
            return runner(inputs)  # nothing to batch along
        rows = next(iter(inputs.values())).shape[0]
        if rows >= self.options.max_batch_size:
            return runner(inputs)
        task = _Task(inputs, rows, runner)
        key = batch_key(group, inputs)
        with self._condition:
            if self._closed:
                raise ServingError(Code.UNAVAILABLE, "the server is shutting down")
            batch = self._open.get(key)
            if batch is not None and batch.rows + rows > self.options.max_batch_size:
                self._close(key)
                batch = None
            if batch is None:
                if len(self._ready) >= self.options.max_enqueued_batches:
                    raise ServingError(Code.UNAVAILABLE,
                                       f"the batching queue is full ({self.options.max_enqueued_batches} "
                                       f"batches wait); retry later")
                batch = _OpenBatch(time.monotonic() + self.options.batch_timeout_micros / 1e6)
                self._open[key] = batch
            batch.tasks.append(task)
            batch.rows += rows
            if batch.rows >= self.options.max_batch_size:
                self._close(key)
            self._condition.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def close(self) -> None:
        """Runs what is queued, then stops the threads."""
        with self._condition:
            self._closed = True
            for key in list(self._open):
                self._close(key)
            self._condition.notify()
        self._dispatcher.join(timeout=30)
        self._executor.shutdown(wait=True)

    def _close(self, key: Hashable) -> None:
        batch = self._open.pop(key)
        self._ready.append(batch.tasks)

    def _dispatch_loop(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                for key in [key for key, batch in self._open.items() if batch.deadline <= now]:
                    self._close(key)
                while self._ready:
                    tasks = self._ready.pop(0)
                    self._executor.submit(self._execute, tasks)
                if self._closed and not self._open:
                    return
                deadlines = [batch.deadline for batch in self._open.values()]
                wait = max(0.0, min(deadlines) - now) if deadlines else None
                self._condition.wait(wait)

    def _execute(self, tasks: List[_Task]) -> None:
        try:
            if len(tasks) == 1:
                self._run_alone(tasks[0])
                return
            try:
                merged = {name: np.concatenate([task.inputs[name] for task in tasks])
                          for name in tasks[0].inputs}
                outputs = tasks[0].runner(merged)
                total = sum(task.rows for task in tasks)
                for name, array in outputs.items():
                    if np.ndim(array) == 0 or array.shape[0] != total:
                        raise ServingError(Code.INTERNAL,
                                           f"output '{name}' has shape {list(np.shape(array))}, which is not "
                                           f"batched along dimension 0 ({total} rows); disable batching "
                                           f"for this model")
                start = 0
                for task in tasks:
                    task.outputs = {name: array[start:start + task.rows] for name, array in outputs.items()}
                    start += task.rows
                self.batches_run += 1
                self.rows_run += total
            except ServingError as error:
                if error.code != Code.INVALID_ARGUMENT:
                    raise
                for task in tasks:  # isolate the request(s) that caused it
                    self._run_alone(task)
        except BaseException as error:  # hand every failure to the waiting requests
            for task in tasks:
                if task.outputs is None and task.error is None:
                    task.error = error
        finally:
            for task in tasks:
                task.done.set()

    def _run_alone(self, task: _Task) -> None:
        try:
            task.outputs = task.runner(task.inputs)
            self.batches_run += 1
            self.rows_run += task.rows
        except BaseException as error:
            task.error = error
