"""A small closed-loop load generator: N client threads call a function for a bounded time.

Used by ``bench/serving_bench.py`` and by the hot-swap test, which pushes a new model version in
the middle of the load and checks that no request failed.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np


@dataclasses.dataclass
class LoadResult:
    """What a load run measured.

    Attributes:
        latencies_s: the latency of every successful call, in seconds.
        errors: the text of every failed call.
        versions: how many successful calls each model version answered.
        duration_s: the wall time of the run.
    """

    latencies_s: List[float]
    errors: List[str]
    versions: Dict[int, int]
    duration_s: float

    @property
    def requests(self) -> int:
        """Successful calls."""
        return len(self.latencies_s)

    @property
    def qps(self) -> float:
        """Successful calls per second."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, percentile: float) -> float:
        """A latency percentile in milliseconds (NaN when nothing succeeded)."""
        if not self.latencies_s:
            return float("nan")
        return float(np.percentile(np.asarray(self.latencies_s), percentile) * 1e3)

    def summary(self) -> Dict[str, object]:
        """The figures as a JSON-friendly dict."""
        return {"requests": self.requests, "errors": len(self.errors), "qps": round(self.qps, 1),
                "p50_ms": round(self.percentile_ms(50), 3), "p99_ms": round(self.percentile_ms(99), 3),
                "duration_s": round(self.duration_s, 2),
                "versions": {str(version): count for version, count in sorted(self.versions.items())},
                "first_errors": self.errors[:3]}


def run_load(call: Callable[[int], Optional[int]], concurrency: int, duration_s: float,
             midpoint: Optional[Callable[[], None]] = None, warmup_calls: int = 2,
             midpoint_fraction: float = 0.5, until: Optional[Callable[[], bool]] = None,
             max_duration_s: Optional[float] = None) -> LoadResult:
    """Runs ``call`` from ``concurrency`` threads for ``duration_s`` seconds.

    Args:
        call: ``(client index) -> model version that answered`` (or ``None``); raising counts as an
            error.
        concurrency: the number of client threads (each sends its next request when the last returns).
        duration_s: how long to send requests.
        midpoint: run once, in its own thread, during the load (e.g. push a new model version).
        warmup_calls: calls per client before timing starts (not counted).
        midpoint_fraction: when ``midpoint`` runs, as a fraction of ``duration_s``.
        until: after ``duration_s``, keep going until this returns True (checked every 50 ms) or
            ``max_duration_s`` has passed; e.g. until a pushed version has answered.
        max_duration_s: the bound for ``until`` (default ``4 * duration_s``).

    Returns:
        The measured :class:`LoadResult`.
    """
    for index in range(concurrency):
        for _ in range(warmup_calls):
            call(index)
    latencies: List[List[float]] = [[] for _ in range(concurrency)]
    errors: List[str] = []
    versions: collections.Counter = collections.Counter()
    lock = threading.Lock()
    start_barrier = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def client(index: int) -> None:
        start_barrier.wait()
        own = latencies[index]
        while time.perf_counter() < deadline[0]:
            started = time.perf_counter()
            try:
                version = call(index)
            except Exception as error:  # every failure is a data point, never a crash
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            own.append(time.perf_counter() - started)
            with lock:
                versions[version] += 1

    threads = [threading.Thread(target=client, args=(index,), daemon=True) for index in range(concurrency)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    deadline[0] = started + ((max_duration_s or 4 * duration_s) if until is not None else duration_s)
    start_barrier.wait()
    if until is not None:
        # Clients read the deadline on every loop; move it in once the condition holds.
        def watch():
            time.sleep(duration_s)
            while time.perf_counter() < deadline[0] and not until():
                time.sleep(0.05)
            deadline[0] = min(deadline[0], time.perf_counter())

        threading.Thread(target=watch, daemon=True).start()
    midpoint_thread = None
    if midpoint is not None:
        def delayed_midpoint():
            time.sleep(duration_s * midpoint_fraction)
            midpoint()

        midpoint_thread = threading.Thread(target=delayed_midpoint, daemon=True)
        midpoint_thread.start()
    for thread in threads:
        thread.join()
    duration = time.perf_counter() - started
    if midpoint_thread is not None:
        midpoint_thread.join()
    return LoadResult(latencies_s=[value for own in latencies for value in own], errors=errors,
                      versions=dict(versions), duration_s=duration)
