"""Training: ``train(config)`` and ``pixelwise train --config recipe.yaml [key=value ...]``.

The shape of torchvision's ``references/segmentation/train.py`` (build, ``train_one_step``,
``evaluate``, the loop), counted in iterations rather than epochs so a run can stop and resume
at any point. Every ``checkpoint_every`` iterations and at the end, ``last.pt`` is written
atomically with everything needed to continue exactly (weights, optimiser, iteration, random
state; the data order is a function of the iteration, see :mod:`pixelwise.training.sampling`)
and to predict without the recipe (model spec, class names, palette, normalisation).

Under ``torchrun`` the same function trains with ``DistributedDataParallel``
(:mod:`pixelwise.training.distributed`): ``data.batch_size`` is **per process**, so the global
batch is ``batch_size × world_size``; process ``r`` takes slice ``r`` of every global batch, so
N processes at batch b see exactly the samples (and augmentations) of one process at batch N·b.
Gradients are averaged over the processes, each process evaluates its share of the validation
set and the confusion matrices are summed, so every process sees the same metrics. Only rank 0
writes files. With ``train.time_budget_min`` the run sizes itself to a wall-clock budget
(:mod:`pixelwise.training.budget`).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from pixelwise.config import Config, ConfigError, config_to_dict, save_config
from pixelwise.data import ClassInfo, DataError, SegmentationDataset
from pixelwise.data.transforms import IMAGENET_MEAN, IMAGENET_STD, CutMix, RareClassSampling
from pixelwise.errors import InputError, PixelwiseError
from pixelwise.io.checkpoint import non_finite_tensors, save_checkpoint
from pixelwise.losses import create_loss, loss_with_aux
from pixelwise.metrics import ConfusionMatrix
from pixelwise.runtimes import autocast_context
from pixelwise.runtimes.torch_runtime import slow_precision_warning
from pixelwise.training.budget import EVAL_PROBE_IMAGES, RECENT_STEPS, BudgetClock, BudgetPlan, iterations_for_budget
from pixelwise.training.distributed import (DistributedContext, broadcast_object, convert_sync_batchnorm,
                                          distributed_session, gather_objects, mean_over_processes, sync_buffers,
                                          unwrap, wrap_model)
from pixelwise.training.ema import WeightAverage
from pixelwise.training.recipe import (CLASS_WEIGHTINGS, build_datasets, build_model, build_optimizer, class_weights,
                                       learning_rate, model_spec, recipe_inference, train_class_pixels,
                                       training_samples, validation_inference)
from pixelwise.training.run_folder import (check_resume_config, keep_earlier_defaults, load_resume_state,
                                           prepare_run_folder, restore_rng)
from pixelwise.training.run_log import RunLog, plot_curves
from pixelwise.training.sampling import ResumableBatchSampler, SeededSamples

logger = logging.getLogger(__name__)

# The sampler's end while a time budget has not fixed the total yet: batches are a function of
# the iteration alone, so an open-ended sampler yields the same batches as a bounded one.
OPEN_ENDED = sys.maxsize


class TrainingDiverged(PixelwiseError, RuntimeError):
    """The loss, a weight or a batch-norm statistic became NaN or infinite."""


@dataclass
class TrainResult:
    """Where a run left its files and how it ended."""

    run_dir: Path
    iterations: int
    best_miou: float
    last_metrics: dict | None
    plots: list[Path] = field(default_factory=list)


@dataclass
class Progress:
    """Where a run stands; checkpoints store it."""

    iteration: int = 0
    total: int | None = None  # None until a time budget fixes it
    best_miou: float = -1.0
    train_seconds: float = 0.0  # wall time trained, earlier sessions of a resumed run included
    budget: dict | None = None  # the time budget's plan (BudgetPlan.to_dict()) once made


def _record_rare_class_sampling(samples: Dataset, classes: ClassInfo, iteration: int, log: RunLog) -> None:
    """Each class's probability of being drawn, where the run samples for rare classes: one line of
    ``metrics.jsonl`` (``{"rare_class_sampling": {class: probability}}``) and the INFO log, from
    the main process only."""
    rare = samples.dataset if isinstance(samples, CutMix) else samples
    if not isinstance(rare, RareClassSampling) or not log.enabled:
        return
    probability = dict(zip(classes.names, rare.class_probability.tolist()))
    log.record({"iteration": iteration, "rare_class_sampling": probability})
    logger.info("rare-class sampling draws %s", ", ".join(f"{name} {p:.1%}" for name, p in probability.items()))


def evaluate(model: nn.Module, dataset: SegmentationDataset, device: torch.device,
             amp: str | None = None, context: DistributedContext | None = None) -> ConfusionMatrix:
    """Whole-image inference over ``dataset`` into a confusion matrix (one image at a time:
    validation images may differ in size).

    With a distributed ``context`` each process evaluates every ``world_size``-th image from its
    rank on, and the matrices are summed over processes, so all of them return the same counts.
    """
    context = context or DistributedContext(device=device)
    shard = range(context.rank, len(dataset), context.world_size)
    matrix = _evaluate_images(unwrap(model), dataset, shard, device, amp)
    return matrix.all_reduce() if context.distributed else matrix


def _evaluate_images(model: nn.Module, dataset: SegmentationDataset, indices: range, device: torch.device,
                     amp: str | None) -> ConfusionMatrix:
    classes = dataset.classes
    matrix = ConfusionMatrix(classes.num_classes, classes.ignore_index, device=device)
    options = validation_inference(amp)
    for image, mask in DataLoader(Subset(dataset, indices), batch_size=1, num_workers=0):
        logits = options.logits(model, image.to(device))
        matrix.update_logits(mask.to(device), logits)
    return matrix


def train_one_step(model: nn.Module, batch: tuple[Tensor, Tensor], loss_fn: nn.Module,
                   optimizer: torch.optim.Optimizer, config: Config, device: torch.device,
                   context: DistributedContext | None = None) -> float:
    """One optimisation step; returns the loss (averaged over processes when distributed).

    Raises:
        TrainingDiverged: on a NaN or infinite loss, on every process at once (the check uses
            the averaged loss, so no process is left waiting for the others' gradients).
    """
    images, masks = (t.to(device, non_blocking=True) for t in batch)
    model.train()
    with autocast_context(config.train.amp, device):
        outputs = model(images, return_aux=unwrap(model).has_aux)
    logits, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
    loss = loss_with_aux(loss_fn, logits.float(), masks, None if aux is None else aux.float(),
                         config.train.aux_weight)
    reported = mean_over_processes(loss.detach(), context or DistributedContext(device=device)).item()
    if not math.isfinite(reported):
        raise TrainingDiverged(f"the loss became {reported}; lower optim.lr, add optim.clip_grad_norm, "
                               f"or check the data (check-data). The last good checkpoint is kept.")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DistributedDataParallel averages the gradients over processes here
    if config.optim.clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_grad_norm)
    optimizer.step()
    return reported


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, config: Config, classes: ClassInfo,
                     progress: Progress, rng_states: list[Tensor] | None = None,
                     average: WeightAverage | None = None) -> dict:
    """Everything to resume exactly and to predict without the recipe.

    Args:
        rng_states: every process's CPU random state, in rank order (default: this process's).
        average: the run's moving average of the weights (``train.ema``): ``"model"`` then holds
            the average, which is what predicts, and ``"training_model"`` the trained weights.
    """
    rng_states = rng_states or [torch.get_rng_state()]
    averaged = {} if average is None else {"training_model": unwrap(model).state_dict(),
                                           "ema_updates": average.updates}
    return {
        "model": (unwrap(model) if average is None else average.module).state_dict(), **averaged,
        "optimizer": optimizer.state_dict(),
        "iteration": progress.iteration, "total_iterations": progress.total, "best_miou": progress.best_miou,
        "train_seconds": progress.train_seconds, "time_budget": progress.budget,
        "rng": rng_states[0], "rng_per_rank": rng_states, "config": config_to_dict(config),
        "model_spec": model_spec(config, classes.num_classes), "classes": classes.to_dict(),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "inference": recipe_inference(config).to_dict(),
    }


def train(config: Config, resume: bool = False, device: str | torch.device = "cpu",
          on_step: Callable[[int, float], None] | None = None,
          on_total: Callable[[int, BudgetPlan | None], None] | None = None, overwrite: bool = False) -> TrainResult:
    """Run (or resume) a training run described by ``config``, in one process or under torchrun.

    Args:
        config: the recipe.
        resume: continue from ``<output_dir>/last.pt`` exactly where it stopped. The recipe must
            be the run's, except for :data:`RESUMABLE_CHANGES` (a new ``train.iterations`` sets
            the run's new length); ``config.yaml`` then records what runs.
        device: where to train (``"cuda"`` becomes ``cuda:LOCAL_RANK`` under torchrun).
        on_step: called after every step with ``(iteration, loss)`` (progress display, tests).
        on_total: called with ``(total iterations, None)`` once the total is known at the start,
            and with ``(total, plan)`` when a time budget fixes it.
        overwrite: start afresh in a folder that holds an earlier run, deleting its files
            (:data:`RUN_FILES`); without it (or ``resume``) such a folder is refused.

    Raises:
        RunFolderInUse: the run folder is not empty, and neither ``resume`` nor ``overwrite`` was given.
        ConfigError: resuming with settings the run did not use.
        TrainingDiverged: the loss, a weight or a batch-norm statistic became NaN or infinite;
            the last checkpoint written is kept, and it holds finite values.
    """
    if resume and overwrite:
        raise InputError("resume continues the run in the folder and overwrite replaces it: pass one of the two")
    with distributed_session(device) as context:
        return _train(config, resume, overwrite, context, on_step, on_total)


def _train(config: Config, resume: bool, overwrite: bool, context: DistributedContext,
           on_step: Callable[[int, float], None] | None,
           on_total: Callable[[int, BudgetPlan | None], None] | None) -> TrainResult:
    session_start = time.perf_counter()
    run_dir = Path(config.train.output_dir)
    slow = slow_precision_warning(config.train.amp, context.device)
    if slow and context.is_main:
        logger.warning("train.amp = bf16: %s", slow)
    if context.is_main:
        prepare_run_folder(run_dir, resume, overwrite)
    torch.manual_seed(config.train.seed)
    train_set, val_set = build_datasets(config)
    state = load_resume_state(run_dir, context) if resume else None
    if state is not None:
        keep_earlier_defaults(config, state)
    model = _build_training_model(config, train_set.classes.num_classes, context)
    optimizer = build_optimizer(config, model)
    # Counted once where both class weights and rare-class sampling need the training split's pixels.
    both = config.data.rare_classes is not None and config.class_weights in CLASS_WEIGHTINGS
    table = train_class_pixels(config, train_set.classes) if both else None
    loss_fn = create_loss(config.loss, ignore_index=train_set.classes.ignore_index,
                          class_weights=class_weights(config, train_set.classes, table)).to(context.device)
    progress = _restore(state, model, optimizer, config)
    average = _restore_average(state, model, config)
    model = wrap_model(model, context)
    if context.is_main:
        save_config(config, run_dir / "config.yaml")
    sampler = ResumableBatchSampler(len(train_set), config.data.batch_size, config.train.seed, progress.iteration,
                                    OPEN_ENDED if config.train.time_budget_min is not None else progress.total,
                                    context.rank, context.world_size)  # a budget's total may be revised
    samples = training_samples(config, train_set, table)
    batches = _plain_data_errors(iter(DataLoader(SeededSamples(samples), batch_sampler=sampler,
                                                 num_workers=config.data.workers)))
    # After creating the loader's iterator, which draws a seed from the global generator:
    # restoring first would leave a resumed run one draw apart from an uninterrupted one.
    restore_rng(state, config, context)
    clock = _budget_clock(config, progress, session_start)
    if progress.total is not None and on_total is not None:
        on_total(progress.total, None)
    run = _Run(config, context, model, average, optimizer, loss_fn, train_set.classes, val_set, run_dir, progress,
               clock, session_start, on_step, on_total)
    with RunLog(run_dir, context.is_main, progress.iteration if state is not None else None,
                train_set.classes.names) as log:
        _record_rare_class_sampling(samples, train_set.classes, progress.iteration, log)
        last_metrics = run.loop(batches, log)
    plots = plot_curves(run_dir / "metrics.jsonl", run_dir) if context.is_main else []
    return TrainResult(run_dir, progress.iteration, progress.best_miou, last_metrics, plots)


def _build_training_model(config: Config, num_classes: int, context: DistributedContext) -> nn.Module:
    """The recipe's network on this process's device, with synchronised batch norms if asked."""
    model = build_model(config, num_classes)
    if config.train.sync_batchnorm:
        model = convert_sync_batchnorm(model, context)
    model = model.to(context.device)
    if config.train.channels_last:
        model = model.to_channels_last()
    return model


def _plain_data_errors(batches):
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


def _restore(state: dict | None, model: nn.Module, optimizer: torch.optim.Optimizer, config: Config) -> Progress:
    """Load a checkpoint's weights and optimiser state; where the run stands."""
    if state is None:
        total = None if config.train.time_budget_min is not None else config.train.iterations
        return Progress(total=total)
    check_resume_config(config, state.get("config") or {})
    diverged = non_finite_tensors(state["model"]) + non_finite_tensors(state.get("training_model", {}))
    if diverged:
        raise TrainingDiverged(f"last.pt holds NaN or infinite values ({', '.join(diverged[:3])}), so the run cannot "
                               f"continue from it; train again with --overwrite and a lower optim.lr")
    model.load_state_dict(state.get("training_model", state["model"]))
    optimizer.load_state_dict(state["optimizer"])
    total = state["total_iterations"]
    if config.train.time_budget_min is None:
        if total is not None and config.train.iterations != total:
            if config.train.iterations < state["iteration"]:
                raise ConfigError(f"train.iterations = {config.train.iterations} is below the {state['iteration']} "
                                  f"iterations the run has done; pass at least {state['iteration']} to resume it")
            logger.warning("resuming with train.iterations = %d (the run was set to %d): the schedule now ends at "
                           "%d", config.train.iterations, total, config.train.iterations)
        total = config.train.iterations  # what the recipe says (also: a budget that is now gone)
    return Progress(state["iteration"], total, state["best_miou"], state.get("train_seconds", 0.0),
                    state.get("time_budget"))


def _restore_average(state: dict | None, model: nn.Module, config: Config) -> WeightAverage | None:
    """The moving average of the weights when the recipe keeps one: the checkpoint's, or (a fresh
    run, or one started without an average) a copy of the model."""
    if config.train.ema is None:
        return None
    average = WeightAverage(model, config.train.ema)
    if state is not None and "ema_updates" in state:
        average.load(state["model"], state["ema_updates"])
    return average


def _budget_clock(config: Config, progress: Progress, session_start: float) -> BudgetClock | None:
    """A clock timing the first iterations when a time budget has yet to fix the total."""
    if progress.total is not None or config.train.time_budget_min is None:
        return None
    spent = progress.train_seconds + time.perf_counter() - session_start
    return BudgetClock(config.train.time_budget_min, spent_s=spent)


@dataclass
class _Run:
    """The loop's state and collaborators, so each part of an iteration is a short method."""

    config: Config
    context: DistributedContext
    model: nn.Module
    average: WeightAverage | None  # train.ema's moving average: what validation scores and checkpoints predict with
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    classes: ClassInfo
    val_set: SegmentationDataset
    run_dir: Path
    progress: Progress
    clock: BudgetClock | None
    session_start: float
    on_step: Callable[[int, float], None] | None
    on_total: Callable[[int, BudgetPlan | None], None] | None
    last_metrics: dict | None = None
    recent_steps: list[float] = field(default_factory=list)  # iteration times since the budget's plan

    def loop(self, batches, log: RunLog) -> dict | None:
        """Train until the total; returns the last evaluation's summary."""
        progress, config = self.progress, self.config
        tick = time.perf_counter()
        for batch in batches:
            if progress.total is not None and progress.iteration >= progress.total:
                break  # resumed at the end of a budgeted run (its sampler is open-ended)
            lr = learning_rate(progress.iteration, progress.total, config)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            start = time.perf_counter()
            loss = train_one_step(self.model, batch, self.loss_fn, self.optimizer, config, self.context.device,
                                  self.context)
            if self.average is not None:
                self.average.update(unwrap(self.model))
            progress.iteration += 1
            log.step(progress.iteration, loss, lr, time.perf_counter() - start)
            if self.on_step is not None:
                self.on_step(progress.iteration, loss)
            iteration_s = time.perf_counter() - tick
            if self.clock is not None:
                self._plan_budget(iteration_s, log)
            elif progress.budget is not None:
                self.recent_steps = [*self.recent_steps[1 - RECENT_STEPS:], iteration_s]
            self._evaluate_and_save(log)
            if progress.total is not None and progress.iteration >= progress.total:
                break  # a budget's total ends the open-ended sampler (which would load one more batch)
            tick = time.perf_counter()
        return self.last_metrics

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
        shard = range(self.context.rank, len(self.val_set), self.context.world_size)
        probe = shard[:EVAL_PROBE_IMAGES]
        if len(probe) == 0:
            return 0.0
        start = time.perf_counter()
        _evaluate_images(unwrap(self.model), self.val_set, probe, self.context.device, self.config.train.amp)
        return (time.perf_counter() - start) * len(shard) / len(probe)

    def _evaluate_and_save(self, log: RunLog) -> None:
        """Evaluate and checkpoint when due (the same iterations on every process); never with
        non-finite weights or batch-norm statistics."""
        progress, train_config = self.progress, self.config.train
        final = progress.total is not None and progress.iteration >= progress.total
        if final or progress.iteration % train_config.eval_every == 0 \
                or progress.iteration % train_config.checkpoint_every == 0:
            self._check_finite()
        saves = []
        if progress.iteration % train_config.eval_every == 0 or final:
            start = time.perf_counter()
            predicting = self.model if self.average is None else self.average.module
            sync_buffers(predicting, self.context)  # evaluate rank 0's batch-norm statistics everywhere
            self.last_metrics = evaluate(predicting, self.val_set, self.context.device, train_config.amp,
                                         self.context).summary()
            log.evaluation(progress.iteration, self.last_metrics)
            if self.last_metrics["mean_iou"] > progress.best_miou:
                progress.best_miou = self.last_metrics["mean_iou"]
                saves.append("best.pt")
            if progress.budget is not None and not final:
                self._revise_budget(time.perf_counter() - start, log)
                final = progress.iteration >= progress.total
        if progress.iteration % train_config.checkpoint_every == 0 or final:
            saves.append("last.pt")
        if saves:
            self._save(saves)

    def _check_finite(self) -> None:
        """Batch-norm running statistics can overflow before the loss does: a model with NaN or
        infinite weights or statistics predicts one class everywhere, and must not be kept."""
        diverged = non_finite_tensors(unwrap(self.model).state_dict())
        if self.average is not None:
            diverged += [f"average's {name}" for name in non_finite_tensors(self.average.module.state_dict())]
        if diverged:
            raise TrainingDiverged(f"at iteration {self.progress.iteration} the model's {', '.join(diverged[:3])}"
                                   f"{' and more' if len(diverged) > 3 else ''} became NaN or infinite; lower "
                                   f"optim.lr or add optim.clip_grad_norm. Nothing was written: the last "
                                   f"checkpoint is kept, and it holds finite values.")

    def _save(self, names: list[str]) -> None:
        """Write checkpoints from rank 0 (every process takes part in gathering the random states)."""
        rng_states = gather_objects(torch.get_rng_state(), self.context)
        self.progress.train_seconds += time.perf_counter() - self.session_start
        self.session_start = time.perf_counter()
        if not self.context.is_main:
            return
        state = checkpoint_state(self.model, self.optimizer, self.config, self.classes, self.progress, rng_states,
                                 self.average)
        for name in names:
            save_checkpoint(state, self.run_dir / name)
