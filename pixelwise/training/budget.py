"""Fit a training run into a wall-clock budget (``train.time_budget_min``).

The run first trains :data:`WARMUP_STEPS` untimed steps (allocator warm-up, cuDNN autotuning,
data-loader start-up), then times :data:`MEASURED_STEPS` iterations (data loading included,
evaluation and checkpoint time excluded) and a few validation images. From those it fixes the
total iteration count that fits what is left of the budget, counting the periodic evaluations
(:func:`iterations_for_budget`). Until then the learning-rate schedule stands at its start (warm-up,
then the base rate), which is where it would be in any long schedule; afterwards poly or cosine
decay runs over the chosen total.

Speed drifts on a shared machine, so after every evaluation the total is fitted again to the
mean of the last :data:`RECENT_STEPS` iterations and the evaluation's real duration, and the
schedule follows the new length. Each choice is logged to ``metrics.jsonl`` and stored in every
checkpoint, so a resumed run continues from the last total (a run interrupted before the first
choice measures again, counting the time it had already spent).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from pixelwise.errors import InputError

WARMUP_STEPS = 3
MEASURED_STEPS = 10
EVAL_PROBE_IMAGES = 4  # validation images timed to estimate one evaluation
RECENT_STEPS = 50  # iterations averaged when each evaluation re-fits the total to the budget


@dataclass
class BudgetPlan:
    """The time budget's decision and the measurements behind it."""

    minutes: float
    step_s: float  # seconds per training iteration (data loading included)
    eval_s: float  # estimated seconds per evaluation (this process's share of the validation set)
    elapsed_s: float  # budget already spent when the plan was made
    decided_at: int  # iteration at which the plan was made
    total_iterations: int

    def to_dict(self) -> dict:
        """Plain data for checkpoints and ``metrics.jsonl``."""
        return asdict(self)

    def describe(self) -> str:
        """One line for people: what fits and why."""
        return (f"time budget {self.minutes:g} min: {self.total_iterations} iterations "
                f"({self.step_s:.3f} s per iteration, {self.eval_s:.1f} s per evaluation, "
                f"{self.elapsed_s:.0f} s spent before planning)")


def iterations_for_budget(budget_s: float, elapsed_s: float, done: int, step_s: float, eval_s: float,
                          eval_every: int) -> int:
    """The total iteration count that fits the budget.

    What is left after ``elapsed_s`` pays for the final evaluation, then for iterations that each
    cost ``step_s`` plus their share of an evaluation every ``eval_every`` iterations.

    Args:
        budget_s: the whole budget in seconds.
        elapsed_s: seconds already spent (set-up and the measured steps).
        done: iterations already trained; the total is never below this.
        step_s: seconds per training iteration.
        eval_s: seconds per evaluation.
        eval_every: iterations between evaluations.
    """
    remaining = budget_s - elapsed_s - eval_s
    per_iteration = step_s + eval_s / max(1, eval_every)
    if remaining <= 0 or per_iteration <= 0:
        return done
    return done + math.floor(remaining / per_iteration)


class BudgetClock:
    """Times iterations until there are enough to plan.

    Args:
        minutes: the budget.
        spent_s: seconds a resumed run had already spent (from its checkpoint).
    """

    def __init__(self, minutes: float, spent_s: float = 0.0) -> None:
        if minutes <= 0:
            raise InputError(f"train.time_budget_min must be positive, got {minutes}")
        self.minutes = minutes
        self._start = time.perf_counter() - spent_s
        self._durations: list[float] = []

    def elapsed(self) -> float:
        """Seconds of the budget spent so far."""
        return time.perf_counter() - self._start

    def observe(self, iteration_s: float) -> None:
        """Record one iteration's duration (evaluation and checkpoint time left out)."""
        self._durations.append(iteration_s)

    @property
    def ready(self) -> bool:
        """Enough iterations are timed (the same iteration on every process)."""
        return len(self._durations) >= WARMUP_STEPS + MEASURED_STEPS

    def plan(self, done: int, eval_s: float, eval_every: int) -> BudgetPlan:
        """Fix the total from the timed iterations and the estimated evaluation time."""
        timed = self._durations[WARMUP_STEPS:]
        step_s = sum(timed) / len(timed)
        elapsed = self.elapsed()
        total = iterations_for_budget(self.minutes * 60.0, elapsed, done, step_s, eval_s, eval_every)
        return BudgetPlan(self.minutes, step_s, eval_s, elapsed, done, total)
