"""Training: ``train(config)`` and ``pixelwise train --config recipe.yaml [key=value ...]``.

The shape of torchvision's ``references/segmentation/train.py`` (build, ``train_one_step``,
``evaluate``, the loop), counted in iterations rather than epochs so a run can stop and resume
at any point. The loop is :class:`~pixelwise.training.run_loop.TrainingLoop`, which this module
drives as a segmentation task: a step of :func:`train_one_step`, ``best.pt`` at the best
validation mean IoU (or, on two-class membrane data, the ISBI 2012 metric ``train.best_metric``
names). Every ``checkpoint_every`` iterations and at the end, ``last.pt`` is written
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from pixelwise.config import Config, ConfigError, check_weight_map, save_config
from pixelwise.data import ClassInfo, SegmentationDataset
from pixelwise.data.transforms import IMAGENET_MEAN, IMAGENET_STD, CutMix, RareClassSampling
from pixelwise.errors import InputError
from pixelwise.losses import WeightedCrossEntropyLoss, create_loss, loss_with_aux, takes_pixel_weights
import pixelwise.openmp as openmp
from pixelwise.metrics import RANKING_KEYS, ConfusionMatrix, MembraneMetric, summary_direction
from pixelwise.runtimes import autocast_context
from pixelwise.runtimes.compiled import CompiledOrEager
from pixelwise.runtimes.threads import loader_workers, set_threads
from pixelwise.runtimes.torch_runtime import choose_precision, slow_precision_warning
from pixelwise.training.budget import BudgetPlan
from pixelwise.training.distributed import (DistributedContext, convert_sync_batchnorm, distributed_session,
                                          mean_over_processes, unwrap, wrap_model)
from pixelwise.training.ema import WeightAverage
from pixelwise.training.recipe import (CLASS_WEIGHTINGS, build_datasets, build_model, build_optimizer, class_weights,
                                       learning_rate, model_spec, recipe_inference, train_class_pixels,
                                       training_samples, validation_inference)
from pixelwise.training.run_folder import keep_earlier_defaults, load_resume_state, prepare_run_folder
from pixelwise.training.run_log import RunLog, plot_curves
from pixelwise.training.run_loop import (BestMetric, TrainingDiverged, TrainingLoop, TrainingTask, restore_progress,
                                         resumable_batches, worker_message)

__all__ = ["MEAN_IOU", "TrainResult", "TrainingDiverged", "best_metric", "build_datasets", "build_model", "class_weights",
           "evaluate", "learning_rate", "model_spec", "train", "train_one_step", "training_samples", "validate",
           "worker_message"]

logger = logging.getLogger(__name__)

# best.pt holds the model of the highest validation mean IoU; a run not yet evaluated stores -1.
MEAN_IOU = BestMetric("mean_iou", "best_miou", initial=-1.0)


def best_metric(name: str, num_classes: int) -> BestMetric:
    """The validation value that decides ``best.pt`` (``train.best_metric``): the mean IoU, or on
    two classes one of the ISBI 2012 membrane metrics (:data:`~pixelwise.metrics.RANKING_KEYS`),
    kept in checkpoints as ``best_value_<name>``.

    Raises:
        ConfigError: an unknown name, or a membrane metric on data of more than two classes.
    """
    if name == MEAN_IOU.summary_key:
        return MEAN_IOU
    if name not in RANKING_KEYS:
        raise ConfigError(f"train.best_metric = {name!r} is not a validation metric: use mean_iou, or on two-class "
                          f"membrane data one of {', '.join(RANKING_KEYS)}")
    if num_classes != 2:
        raise ConfigError(f"train.best_metric = {name!r} is an ISBI 2012 membrane metric, which scores two-class "
                          f"data (membrane, cell); this data set has {num_classes} classes: use mean_iou")
    lower = summary_direction(name)
    return BestMetric(name, f"best_value_{name}", initial=math.inf if lower else -math.inf, higher_is_better=not lower)


@dataclass
class TrainResult:
    """Where a run left its files and how it ended: ``best`` is the best validation value of
    ``best_metric`` (``train.best_metric``), the one ``best.pt`` holds the model of."""

    run_dir: Path
    iterations: int
    best: float
    last_metrics: dict | None
    plots: list[Path] = field(default_factory=list)
    best_metric: str = MEAN_IOU.summary_key


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
             amp: str | None = None, context: DistributedContext | None = None,
             membrane: MembraneMetric | None = None) -> ConfusionMatrix:
    """Whole-image inference over ``dataset`` into a confusion matrix (one image at a time:
    validation images may differ in size), each image also scored by ``membrane`` where given.

    With a distributed ``context`` each process evaluates every ``world_size``-th image from its
    rank on, and the matrices (and membrane metrics) are summed over processes, so all of them
    return the same counts.
    """
    context = context or DistributedContext(device=device)
    shard = range(context.rank, len(dataset), context.world_size)
    matrix = _evaluate_images(unwrap(model), dataset, shard, device, amp, membrane)
    if context.distributed:
        matrix.all_reduce()
        if membrane is not None:
            membrane.all_reduce()
    return matrix


def validate(model: nn.Module, dataset: SegmentationDataset, device: torch.device, amp: str | None = None,
             context: DistributedContext | None = None) -> dict:
    """The validation summary of a training run: :func:`evaluate`'s confusion-matrix summary and,
    on two-class data, the ISBI 2012 membrane metrics (:meth:`MembraneMetric.summary`)."""
    membrane = _membrane_metric(dataset, device)
    matrix = evaluate(model, dataset, device, amp, context, membrane)
    return matrix.summary() | ({} if membrane is None else membrane.summary())


def _membrane_metric(dataset: SegmentationDataset, device: torch.device) -> MembraneMetric | None:
    """The membrane metrics of two-class data (as ``pixelwise evaluate`` scores it), else None."""
    classes = dataset.classes
    return MembraneMetric(classes.ignore_index, device=device) if classes.num_classes == 2 else None


def _evaluate_images(model: nn.Module, dataset: SegmentationDataset, indices: Sequence[int], device: torch.device,
                     amp: str | None, membrane: MembraneMetric | None = None) -> ConfusionMatrix:
    """The images' confusion matrix; each image also scored by ``membrane`` where given."""
    classes = dataset.classes
    matrix = ConfusionMatrix(classes.num_classes, classes.ignore_index, device=device)
    options = validation_inference(amp)
    for image, mask in DataLoader(Subset(dataset, indices), batch_size=1, num_workers=0):
        logits, mask = options.logits(model, image.to(device)), mask.to(device)
        matrix.update_logits(mask, logits)
        if membrane is not None:
            membrane.update_logits(mask, logits)
    return matrix


def train_one_step(model: nn.Module, batch: Sequence[Tensor], loss_fn: nn.Module,
                   optimizer: torch.optim.Optimizer, config: Config, device: torch.device,
                   context: DistributedContext | None = None) -> float:
    """One optimisation step; returns the loss (averaged over processes when distributed).

    ``batch`` is ``(images, masks)``, or ``(images, masks, weights)`` with per-pixel loss weights
    (``data.weight_map``), which go to the loss.

    Raises:
        TrainingDiverged: on a NaN or infinite loss, on every process at once (the check uses
            the averaged loss, so no process is left waiting for the others' gradients).
    """
    images, masks, *weights = (t.to(device, non_blocking=True) for t in batch)
    model.train()
    with autocast_context(config.train.amp, device):
        outputs = model(images, return_aux=unwrap(model).has_aux)
    logits, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
    loss = loss_with_aux(loss_fn, logits.float(), masks, None if aux is None else aux.float(),
                         config.train.aux_weight, weights[0] if weights else None)
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
    requested = config.train.amp
    # Decided once, before anything reads it: the run folder's config.yaml records what ran.
    config.train.amp, precision_reason = choose_precision(requested, context.device)
    if requested == "auto" and context.is_main:
        logger.info("train.amp = auto: %s (%s)", config.train.amp or "fp32", precision_reason)
    if config.train.threads is not None:
        threads, why = set_threads(config.train.threads)
        if context.is_main:
            logger.info("train.threads: %d (%s)", threads, why)
    if context.is_main:
        logger.info("OpenMP threads wait: %s", openmp.DECISION)
    if config.data.workers == "auto":
        config.data.workers, why = loader_workers(config.data.workers)
        if context.is_main:
            logger.info("data.workers = %d (%s)", config.data.workers, why)
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
    _check_pixel_weights(config, loss_fn)
    best = best_metric(config.train.best_metric, train_set.classes.num_classes)
    progress = restore_progress(state, model, optimizer, config, best)
    average = _restore_average(state, model, config)
    model = wrap_model(model, context)
    if context.is_main:
        save_config(config, run_dir / "config.yaml")
    samples = training_samples(config, train_set, table)
    batches = resumable_batches(samples, config, progress, state, context)
    task = _segmentation_task(config, context, model, optimizer, loss_fn, train_set.classes, val_set, best)
    run = TrainingLoop(task, config, context, model, optimizer, average, progress, run_dir, session_start, on_step,
                       on_total)
    with RunLog(run_dir, context.is_main, progress.iteration if state is not None else None,
                train_set.classes.names) as log:
        _record_rare_class_sampling(samples, train_set.classes, progress.iteration, log)
        if requested == "auto":
            log.record({"iteration": progress.iteration, "precision": {
                "requested": requested, "chosen": config.train.amp or "fp32", "reason": precision_reason}})
        last_metrics = run.run(batches, log)
    plots = plot_curves(run_dir / "metrics.jsonl", run_dir) if context.is_main else []
    return TrainResult(run_dir, progress.iteration, progress.best, last_metrics, plots, best.summary_key)


def _check_pixel_weights(config: Config, loss_fn: nn.Module) -> None:
    """Refuse a recipe whose loss and ``data.weight_map`` do not go together: per-pixel weights
    that no loss would use, ``weighted_ce`` with none to weigh by, or class weights it would not use.

    Raises:
        ConfigError: saying which setting to add or remove.
    """
    check_weight_map(config)
    weighted = takes_pixel_weights(loss_fn)
    if config.data.weight_map is not None and not weighted:
        raise ConfigError(f"data.weight_map is set but loss {config.loss!r} takes no per-pixel weights: "
                          "use loss: weighted_ce (alone or in a weighted sum), or set data.weight_map to null")
    if weighted and config.data.weight_map is None:
        raise ConfigError(f"loss {config.loss!r} weighs pixels by the border weight map, which this recipe does "
                          "not compute: add data.weight_map: {} (binary membrane data), or use loss: ce")
    if isinstance(loss_fn, WeightedCrossEntropyLoss) and config.class_weights is not None:
        raise ConfigError("class_weights are not used by loss weighted_ce: its weight map already balances the "
                          "classes (w_c); set class_weights to null")


def _segmentation_task(config: Config, context: DistributedContext, model: nn.Module,
                       optimizer: torch.optim.Optimizer, loss_fn: nn.Module, classes: ClassInfo,
                       val_set: SegmentationDataset, best: BestMetric) -> TrainingTask:
    """Segmentation for the training loop: a step of :func:`train_one_step`, validation by
    :func:`validate` (``best`` decides ``best.pt``), and checkpoints that predict without the
    recipe (model spec, classes, normalisation, inference options)."""
    device, amp = context.device, config.train.amp
    compiled = CompiledOrEager(model, "train.compile") if config.train.compile else None

    def step(batch: Sequence[Tensor]) -> float:
        if compiled is None:
            return train_one_step(model, batch, loss_fn, optimizer, config, device, context)
        return compiled.run(lambda network: train_one_step(network, batch, loss_fn, optimizer, config, device,
                                                           context))

    def evaluate_images(network: nn.Module, indices: Sequence[int]) -> ConfusionMatrix:
        return _evaluate_images(network, val_set, indices, device, amp, _membrane_metric(val_set, device))

    extras = {"model_spec": model_spec(config, classes.num_classes), "classes": classes.to_dict(),
              "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
              "inference": recipe_inference(config).to_dict()}
    return TrainingTask(step, lambda network: validate(network, val_set, device, amp, context),
                        evaluate_images, len(val_set), best, extras,
                        divergence_advice="lower optim.lr or add optim.clip_grad_norm")


def _build_training_model(config: Config, num_classes: int, context: DistributedContext) -> nn.Module:
    """The recipe's network on this process's device, with synchronised batch norms if asked."""
    model = build_model(config, num_classes)
    if config.train.sync_batchnorm:
        model = convert_sync_batchnorm(model, context)
    model = model.to(context.device)
    if config.train.channels_last:
        model = model.to_channels_last()
    return model


def _restore_average(state: dict | None, model: nn.Module, config: Config) -> WeightAverage | None:
    """The moving average of the weights when the recipe keeps one: the checkpoint's, or (a fresh
    run, or one started without an average) a copy of the model."""
    if config.train.ema is None:
        return None
    average = WeightAverage(model, config.train.ema)
    if state is not None and "ema_updates" in state:
        average.load(state["model"], state["ema_updates"])
    return average
