"""Deterministic task mixing: which pretraining task an optimizer update uses (official ``MetaLoader``).

The official loader draws one task per accumulation window from a pool in which every task appears
``mix_ratio`` times (``P(task) ∝ ratio``) and broadcasts rank 0's draw. Here the draw of update ``step`` is a
pure function of ``(seed, step)``: every worker computes the same task without communication, and a resumed
run continues the exact sequence it would have had without interruption.
"""

from __future__ import annotations

from typing import Dict, List, Mapping

import numpy as np


class TaskSampler:
    """Draws the task of each update with probability proportional to its ratio.

    Args:
        task_ratios: task → non-negative ratio (tasks with ratio 0 are never drawn).
        seed: run seed.
    """

    def __init__(self, task_ratios: Mapping[str, float], seed: int):
        self.tasks: List[str] = [task for task, ratio in task_ratios.items() if float(ratio) > 0]
        if not self.tasks:
            raise ValueError(f"no task has a positive ratio: {dict(task_ratios)}")
        ratios = np.asarray([float(task_ratios[task]) for task in self.tasks], np.float64)
        self.probabilities = ratios / ratios.sum()
        self._cumulative = np.cumsum(self.probabilities)
        self.seed = int(seed)

    def task_for_step(self, step: int) -> str:
        """The task of update ``step`` (any integer; the trainer uses the 1-based update number)."""
        draw = np.random.default_rng([self.seed, int(step)]).random()
        index = int(np.searchsorted(self._cumulative, draw, side="right"))
        return self.tasks[min(index, len(self.tasks) - 1)]

    def counts(self, first_step: int, last_step: int) -> Dict[str, int]:
        """How many updates in ``[first_step, last_step]`` each task gets."""
        counts = {task: 0 for task in self.tasks}
        for step in range(first_step, last_step + 1):
            counts[self.task_for_step(step)] += 1
        return counts


__all__ = ["TaskSampler"]
