"""The one training loop that every task drives (segmentation, super-resolution).

A run is counted in iterations. The loop sets the learning rate of each iteration from the
schedule, lets the task run one optimisation step, updates the weights' moving average
(``train.ema``), and records the step. With ``train.time_budget_min`` it times the first iterations
and fixes the total that fits the budget, then re-fits it after every evaluation
(:mod:`pixelwise.training.budget`). Every ``eval_every`` iterations and at the end it evaluates and
writes ``best.pt`` when the task's metric improves; every ``checkpoint_every`` iterations and at
the end it writes ``last.pt`` (atomically, from rank 0), never with NaN or infinite weights.

What differs per task is a :class:`TrainingTask`: how one step runs, how the model is evaluated,
which summary value decides ``best.pt`` (:class:`BestMetric`), and what else its checkpoints hold.
A checkpoint's state is the loop's (weights, optimiser, iteration, total, best value, time spent,
budget, random states, recipe) plus the task's; :func:`restore_progress` and
:func:`resumable_batches` continue a run from it exactly.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pixelwise.config import ConfigError, config_to_dict
from pixelwise.data import DataError
from pixelwise.errors import PixelwiseError
from pixelwise.io.checkpoint import non_finite_tensors, save_checkpoint
from pixelwise.runtimes.memory import keep_freed_memory
from pixelwise.training.budget import EVAL_PROBE_IMAGES, RECENT_STEPS, BudgetClock, BudgetPlan, iterations_for_budget
from pixelwise.training.distributed import (DistributedContext, broadcast_object, gather_objects, sync_buffers,
                                          unwrap)
from pixelwise.training.ema import WeightAverage
from pixelwise.training.recipe import learning_rate
from pixelwise.training.run_folder import RESUMABLE_CHANGES, check_resume_config, restore_rng
from pixelwise.training.run_log import RunLog
from pixelwise.training.sampling import ResumableBatchSampler, SeededSamples

logger = logging.getLogger(__name__)

# The sampler's end while a time budget has not fixed the total yet: batches are a function of
# the iteration alone, so an open-ended sampler yields the same batches as a bounded one.
OPEN_ENDED = sys.maxsize


class TrainingDiverged(PixelwiseError, RuntimeError):
    """The loss, a weight or a batch-norm statistic became NaN or infinite."""


class Recipe(Protocol):
    """What the loop reads of a recipe: ``train`` (iterations, eval_every, checkpoint_every, seed,
    time_budget_min), ``data`` (batch_size, workers), and ``optim`` / ``schedule`` for the
    learning rate."""

    train: Any
    data: Any
    optim: Any
    schedule: Any


@dataclass(frozen=True)
class BestMetric:
    """Which value of an evaluation summary decides ``best.pt``.

    Attributes:
        summary_key: the summary's key (``"mean_iou"``, ``"psnr"``).
        checkpoint_key: where checkpoints keep the best value so far (``"best_miou"``).
        initial: the best value before any evaluation.
        higher_is_better: the direction in which the value improves.
    """

    summary_key: str
    checkpoint_key: str
    initial: float
    higher_is_better: bool = True

    def improves(self, value: float, best: float) -> bool:
        """Whether ``value`` is better than ``best``."""
        return value > best if self.higher_is_better else value < best


@dataclass
class TrainingTask:
    """What a task gives the loop.

    Attributes:
        step: one optimisation step on a batch; returns the loss (the same on every process).
            Raises :class:`TrainingDiverged` on a NaN or infinite loss.
        evaluate: the summary of a model on the whole validation set (the same on every process).
        evaluate_images: evaluates a model on some of this process's validation images (timed
            to estimate one evaluation).
        validation_images: how many validation images there are.
        best: the summary value that decides ``best.pt``.
        checkpoint_extras: what the task's checkpoints hold besides the loop's state.
        divergence_advice: what to change when the weights become NaN or infinite.
    """

    step: Callable[[Any], float]
    evaluate: Callable[[nn.Module], dict]
    evaluate_images: Callable[[nn.Module, Sequence[int]], object]
    validation_images: int
    best: BestMetric
    checkpoint_extras: dict
    divergence_advice: str = "lower optim.lr"


@dataclass
class Progress:
    """Where a run stands; checkpoints store it."""

    iteration: int = 0
    total: int | None = None  # None until a time budget fixes it
    best: float = -1.0  # the best value of the task's BestMetric so far
    train_seconds: float = 0.0  # wall time trained, earlier sessions of a resumed run included
    budget: dict | None = None  # the time budget's plan (BudgetPlan.to_dict()) once made


def restore_progress(state: dict | None, model: nn.Module, optimizer: torch.optim.Optimizer, config: Recipe,
                     best: BestMetric, resumable: Sequence[str] = RESUMABLE_CHANGES) -> Progress:
    """Where the run stands: a fresh start, or a checkpoint's weights, optimiser and progress
    loaded into ``model`` and ``optimizer``.

    Args:
        state: ``last.pt`` of the run to resume, or ``None``.
        resumable: the settings a resumed run may change.

    Raises:
        ConfigError: the recipe differs from the run's, or asks for fewer iterations than done.
        TrainingDiverged: the checkpoint holds NaN or infinite weights.
    """
    train = config.train
    if state is None:
        return Progress(total=None if train.time_budget_min is not None else train.iterations, best=best.initial)
    check_resume_config(config, state.get("config") or {}, resumable)
    diverged = non_finite_tensors(state["model"]) + non_finite_tensors(state.get("training_model", {}))
    if diverged:
        raise TrainingDiverged(f"last.pt holds NaN or infinite values ({', '.join(diverged[:3])}), so the run cannot "
                               f"continue from it; train again with --overwrite and a lower optim.lr")
    model.load_state_dict(state.get("training_model", state["model"]))
    optimizer.load_state_dict(state["optimizer"])
    total = state["total_iterations"]
    if train.time_budget_min is None:
        if total is not None and train.iterations != total:
            if train.iterations < state["iteration"]:
                raise ConfigError(f"train.iterations = {train.iterations} is below the {state['iteration']} "
                                  f"iterations the run has done; pass at least {state['iteration']} to resume it")
            logger.warning("resuming with train.iterations = %d (the run was set to %d): the schedule now ends at "
                           "%d", train.iterations, total, train.iterations)
        total = train.iterations  # what the recipe says (also: a budget that is now gone)
    # A run from before its metric was kept (e.g. train.best_metric added later) has no best yet.
    return Progress(state["iteration"], total, state.get(best.checkpoint_key, best.initial), state.get("train_seconds", 0.0),
                    state.get("time_budget"))


def resumable_batches(samples: Dataset, config: Recipe, progress: Progress, state: dict | None,
                      context: DistributedContext) -> Iterator:
    """This process's batches from the run's iteration on, and its random state restored.

    The batches are a function of the seed and the iteration alone; the random state is restored
    after the loader's iterator draws its seed, so a resumed run continues as an uninterrupted one.
    """
    train = config.train
    sampler = ResumableBatchSampler(len(samples), config.data.batch_size, train.seed, progress.iteration,
                                    OPEN_ENDED if train.time_budget_min is not None else progress.total,
                                    context.rank, context.world_size)  # a budget's total may be revised
    loader = DataLoader(SeededSamples(samples), batch_sampler=sampler, num_workers=config.data.workers)
    batches = _plain_data_errors(iter(loader))
    restore_rng(state, config, context)
    return batches


def _plain_data_errors(batches: Iterator) -> Iterator:
    """The batches; a :class:`DataError` raised in a loader worker arrives as its own message (the
    loader wraps it in the worker's traceback), naming the file and the fix."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except DataError as error:
            raise type(error)(worker_message(error)) from None
        yield batch


def worker_message(error: BaseException) -> str:
    """An exception's own message when a DataLoader worker re-raised it wrapped in its traceback
    (``Caught X in DataLoader worker ...``); other messages unchanged."""
    text = str(error)
    if not text.startswith(f"Caught {type(error).__name__} in DataLoader worker"):
        return text
    kind = type(error)
    marker = f"{kind.__module__}.{kind.__qualname__}: "
    return text.rsplit(marker, 1)[-1].strip() if marker in text else text


def _budget_clock(config: Recipe, progress: Progress, session_start: float) -> BudgetClock | None:
    """A clock timing the first iterations when a time budget has yet to fix the total."""
    if progress.total is not None or config.train.time_budget_min is None:
        return None
    spent = progress.train_seconds + time.perf_counter() - session_start
    return BudgetClock(config.train.time_budget_min, spent_s=spent)


@dataclass
class TrainingLoop:
    """A run's state and collaborators, so each part of an iteration is a short method.

    Attributes:
        model: the trained network (wrapped for distributed training where it is).
        average: ``train.ema``'s moving average of the weights, which validation scores and
            checkpoints predict with; ``None`` without one.
        session_start: when this session began (``time.perf_counter()``): the budget counts set-up.
        on_step: called after every step with ``(iteration, loss)``.
        on_total: called with ``(total, None)`` when the total is known at the start, and with
            ``(total, plan)`` when a time budget fixes or revises it.
    """

    task: TrainingTask
    config: Recipe
    context: DistributedContext
    model: nn.Module
    optimizer: torch.optim.Optimizer
    average: WeightAverage | None
    progress: Progress
    run_dir: Path
    session_start: float
    on_step: Callable[[int, float], None] | None = None
    on_total: Callable[[int, BudgetPlan | None], None] | None = None
    clock: BudgetClock | None = None
    last_metrics: dict | None = None
    recent_steps: list[float] = field(default_factory=list)  # iteration times since the budget's plan

    def run(self, batches: Iterable, log: RunLog) -> dict | None:
        """Train until the total; returns the last evaluation's summary."""
        progress = self.progress
        freed_memory = keep_freed_memory()
        if self.context.is_main:
            logger.info("Freed memory: %s", freed_memory)
        self.clock = _budget_clock(self.config, progress, self.session_start)
        if progress.total is not None and self.on_total is not None:
            self.on_total(progress.total, None)
        tick = time.perf_counter()
        for batch in batches:
            if progress.total is not None and progress.iteration >= progress.total:
                break  # resumed at the end of a budgeted run (its sampler is open-ended)
            self._step(batch, log)
            self._time(time.perf_counter() - tick, log)
            self._evaluate_and_save(log)
            if progress.total is not None and progress.iteration >= progress.total:
                break  # a budget's total ends the open-ended sampler (which would load one more batch)
            tick = time.perf_counter()
        return self.last_metrics

    def _step(self, batch: Any, log: RunLog) -> None:
        """One iteration at the schedule's learning rate, the moving average updated and recorded."""
        progress = self.progress
        lr = learning_rate(progress.iteration, progress.total, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        loss = self.task.step(batch)
        if self.average is not None:
            self.average.update(unwrap(self.model))
        progress.iteration += 1
        log.step(progress.iteration, loss, lr, time.perf_counter() - start)
        if self.on_step is not None:
            self.on_step(progress.iteration, loss)

    def _time(self, iteration_s: float, log: RunLog) -> None:
        """Feed the budget clock until it fixes the total; then keep the recent iteration times."""
        if self.clock is not None:
            self._plan_budget(iteration_s, log)
        elif self.progress.budget is not None:
            self.recent_steps = [*self.recent_steps[1 - RECENT_STEPS:], iteration_s]

    def _plan_budget(self, iteration_s: float, log: RunLog) -> None:
        """Time this iteration; once enough are timed, fix the total (rank 0 decides for all)."""
        self.clock.observe(iteration_s)
        if not self.clock.ready:
            return
        plan = None
        if self.context.is_main:
            plan = self.clock.plan(self.progress.iteration, self._probe_eval_seconds(), self.config.train.eval_every)
        plan = broadcast_object(plan, self.context)
        self.progress.total, self.progress.budget, self.clock = plan.total_iterations, plan.to_dict(), None
        logger.info(plan.describe())
        log.record({"iteration": self.progress.iteration, "time_budget": plan.to_dict()})
        if self.on_total is not None:
            self.on_total(plan.total_iterations, plan)

    def _revise_budget(self, eval_s: float, log: RunLog) -> None:
        """Re-fit the total to the speed measured since the plan (rank 0 decides for all): a
        machine that slows down after the first timed steps would otherwise overrun the budget,
        one that speeds up would leave it unused. The schedule follows the new length."""
        if not self.recent_steps:
            return
        plan = None
        if self.context.is_main:
            elapsed = self.progress.train_seconds + time.perf_counter() - self.session_start
            step_s = sum(self.recent_steps) / len(self.recent_steps)
            minutes = self.config.train.time_budget_min or self.progress.budget["minutes"]
            total = iterations_for_budget(minutes * 60.0, elapsed, self.progress.iteration, step_s, eval_s,
                                          self.config.train.eval_every)
            plan = BudgetPlan(minutes, step_s, eval_s, elapsed, self.progress.iteration, total)
        plan = broadcast_object(plan, self.context)
        if plan.total_iterations != self.progress.total:
            logger.info("revised: %s", plan.describe())
            log.record({"iteration": self.progress.iteration, "time_budget_revised": plan.to_dict()})
            if self.on_total is not None:
                self.on_total(plan.total_iterations, plan)
        self.progress.total, self.progress.budget = plan.total_iterations, plan.to_dict()

    def _probe_eval_seconds(self) -> float:
        """One evaluation's duration, extrapolated from a few of this process's validation images."""
        shard = range(self.context.rank, self.task.validation_images, self.context.world_size)
        probe = shard[:EVAL_PROBE_IMAGES]
        if len(probe) == 0:
            return 0.0
        start = time.perf_counter()
        self.task.evaluate_images(unwrap(self.model), probe)
        return (time.perf_counter() - start) * len(shard) / len(probe)

    def _evaluate_and_save(self, log: RunLog) -> None:
        """Evaluate and checkpoint when due (the same iterations on every process); never with
        non-finite weights or batch-norm statistics."""
        progress, train = self.progress, self.config.train
        final = progress.total is not None and progress.iteration >= progress.total
        evaluating = final or progress.iteration % train.eval_every == 0
        if evaluating or progress.iteration % train.checkpoint_every == 0:
            self._check_finite()
        saves = []
        if evaluating:
            start = time.perf_counter()
            if self._evaluate(log):
                saves.append("best.pt")
            if progress.budget is not None and not final:
                self._revise_budget(time.perf_counter() - start, log)
                final = progress.iteration >= progress.total
        if progress.iteration % train.checkpoint_every == 0 or final:
            saves.append("last.pt")
        if saves:
            self._save(saves)

    def _evaluate(self, log: RunLog) -> bool:
        """Score the predicting model (the average, where there is one); whether it is the best yet."""
        predicting = self.model if self.average is None else self.average.module
        sync_buffers(predicting, self.context)  # evaluate rank 0's batch-norm statistics everywhere
        self.last_metrics = self.task.evaluate(predicting)
        log.evaluation(self.progress.iteration, self.last_metrics)
        value, best = self.last_metrics[self.task.best.summary_key], self.task.best
        if value is None or not best.improves(value, self.progress.best):  # None: a metric of no image
            return False
        self.progress.best = value
        return True

    def _check_finite(self) -> None:
        """Batch-norm running statistics can overflow before the loss does: a model with NaN or
        infinite weights or statistics predicts one class everywhere, and must not be kept."""
        diverged = non_finite_tensors(unwrap(self.model).state_dict())
        if self.average is not None:
            diverged += [f"average's {name}" for name in non_finite_tensors(self.average.module.state_dict())]
        if diverged:
            raise TrainingDiverged(f"at iteration {self.progress.iteration} the model's {', '.join(diverged[:3])}"
                                   f"{' and more' if len(diverged) > 3 else ''} became NaN or infinite; "
                                   f"{self.task.divergence_advice}. Nothing was written: the last "
                                   f"checkpoint is kept, and it holds finite values.")

    def _save(self, names: list[str]) -> None:
        """Write checkpoints from rank 0 (every process takes part in gathering the random states)."""
        rng_states = gather_objects(torch.get_rng_state(), self.context)
        self.progress.train_seconds += time.perf_counter() - self.session_start
        self.session_start = time.perf_counter()
        if not self.context.is_main:
            return
        state = self.checkpoint_state(rng_states)
        for name in names:
            save_checkpoint(state, self.run_dir / name)

    def checkpoint_state(self, rng_states: list[torch.Tensor] | None = None) -> dict:
        """Everything to resume exactly, and the task's :attr:`TrainingTask.checkpoint_extras`.

        ``"model"`` holds the weights that predict: the moving average where there is one, the
        trained weights then in ``"training_model"``.

        Args:
            rng_states: every process's CPU random state, in rank order (default: this process's).
        """
        rng_states = rng_states or [torch.get_rng_state()]
        progress, model = self.progress, unwrap(self.model)
        averaged = {} if self.average is None else {"training_model": model.state_dict(),
                                                    "ema_updates": self.average.updates}
        return {
            "model": (model if self.average is None else self.average.module).state_dict(), **averaged,
            "optimizer": self.optimizer.state_dict(),
            "iteration": progress.iteration, "total_iterations": progress.total,
            self.task.best.checkpoint_key: progress.best,
            "train_seconds": progress.train_seconds, "time_budget": progress.budget,
            "rng": rng_states[0], "rng_per_rank": rng_states, "config": config_to_dict(self.config),
            **self.task.checkpoint_extras,
        }
