"""Training: ``train(config)`` and ``pixelwise train --config recipe.yaml [key=value ...]``.

The shape of torchvision's ``references/segmentation/train.py`` (build, ``train_one_step``,
``evaluate``, the loop), counted in iterations rather than epochs so a run can stop and resume
at any point. Every ``checkpoint_every`` iterations and at the end, ``last.pt`` is written
atomically with everything needed to continue exactly (weights, optimiser, iteration, random
state; the data order is a function of the iteration, see :mod:`pixelwise.engine.sampling`)
and to predict without the recipe (model spec, class names, palette, normalisation).
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pixelwise.config import Config, config_to_dict, save_config
from pixelwise.data import ClassInfo, SegmentationDataset, create_dataset
from pixelwise.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform, val_transform
from pixelwise.engine.checkpoint import load_checkpoint, save_checkpoint
from pixelwise.engine.sampling import ResumableBatchSampler, SeededSamples
from pixelwise.losses import create_loss, loss_with_aux
from pixelwise.metrics import ConfusionMatrix
from pixelwise.models import SegmentationModel, create_model


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """Where a run left its files and how it ended."""

    run_dir: Path
    iterations: int
    best_miou: float
    last_metrics: dict | None


def build_datasets(config: Config) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The training set (with the training augmentation) and the validation set (full images)."""
    data = config.data
    options = {"root": data.root, **data.options} if data.root is not None else dict(data.options)
    probe = create_dataset(data.format, split=data.train_split, **options)
    ignore_index = probe.classes.ignore_index
    augment = train_transform(tuple(data.crop_size), tuple(data.scale_range), ignore_index=ignore_index)
    train_set = create_dataset(data.format, split=data.train_split, transform=augment, **options)
    val_set = create_dataset(data.format, split=data.val_split, transform=val_transform(), **options)
    return train_set, val_set


def build_model(config: Config, num_classes: int) -> SegmentationModel:
    """The network the recipe names, for ``num_classes`` classes."""
    spec = model_spec(config, num_classes)
    return create_model(spec["name"], num_classes=num_classes, encoder_weights=config.model.encoder_weights,
                        **spec["options"])


def model_spec(config: Config, num_classes: int) -> dict:
    """What a checkpoint records to rebuild the model without the recipe (no weights source:
    the checkpoint carries the weights)."""
    options = dict(config.model.options)
    if config.model.encoder is not None:
        options["encoder"] = config.model.encoder
    if config.model.upsample is not None:
        options["upsample"] = config.model.upsample
    return {"name": config.model.name, "num_classes": num_classes, "options": options}


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW; no weight decay on norms and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    name = config.optim.name.lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=config.optim.lr, momentum=config.optim.momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=config.optim.lr)
    raise ValueError(f"optim.name {config.optim.name!r} is not supported; choose 'sgd' or 'adamw'")


def learning_rate(iteration: int, total: int, config: Config) -> float:
    """Linear warm-up, then poly or cosine decay from ``optim.lr`` to ``schedule.min_lr``."""
    base, schedule = config.optim.lr, config.schedule
    if iteration < schedule.warmup_iters:
        return base * (iteration + 1) / schedule.warmup_iters
    progress = (iteration - schedule.warmup_iters) / max(1, total - schedule.warmup_iters)
    if schedule.name == "poly":
        factor = (1 - progress) ** schedule.power
    elif schedule.name == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule.name == "constant":
        factor = 1.0
    else:
        raise ValueError(f"schedule.name {schedule.name!r} is not supported; choose poly, cosine or constant")
    return schedule.min_lr + (base - schedule.min_lr) * factor


def autocast_context(amp: str | None, device: torch.device):
    """bf16 autocast on CPU or CUDA, fp16 on CUDA only; ``None`` for full precision."""
    if amp is None:
        return nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise ValueError(f"train.amp {amp!r} is not supported; choose bf16, fp16 or null")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs a CUDA device; on CPU use train.amp=bf16")
    return torch.autocast(device.type, dtype=dtypes[amp])


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: SegmentationDataset, device: torch.device,
             amp: str | None = None) -> ConfusionMatrix:
    """Whole-image inference over ``dataset`` into a confusion matrix (one image at a time:
    validation images may differ in size)."""
    classes = dataset.classes
    matrix = ConfusionMatrix(classes.num_classes, classes.ignore_index, device=device)
    model.eval()
    for image, mask in DataLoader(dataset, batch_size=1, num_workers=0):
        with autocast_context(amp, device):
            logits = model(image.to(device))
        matrix.update_logits(mask.to(device), logits.float())
    return matrix


def train_one_step(model: SegmentationModel, batch: tuple[Tensor, Tensor], loss_fn: nn.Module,
                   optimizer: torch.optim.Optimizer, config: Config, device: torch.device) -> float:
    """One optimisation step; returns the loss. Raises :class:`TrainingDiverged` on NaN/inf."""
    images, masks = (t.to(device, non_blocking=True) for t in batch)
    model.train()
    with autocast_context(config.train.amp, device):
        outputs = model(images, return_aux=model.has_aux)
    logits, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
    loss = loss_with_aux(loss_fn, logits.float(), masks, None if aux is None else aux.float(),
                         config.train.aux_weight)
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"the loss became {loss.item()}; lower optim.lr, add optim.clip_grad_norm, "
                               f"or check the data (check-data). The last good checkpoint is kept.")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.optim.clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), config.optim.clip_grad_norm)
    optimizer.step()
    return loss.item()


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, config: Config, classes: ClassInfo,
                     iteration: int, total: int, best_miou: float) -> dict:
    """Everything to resume exactly and to predict without the recipe."""
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "iteration": iteration, "total_iterations": total, "best_miou": best_miou,
        "rng": torch.get_rng_state(), "config": config_to_dict(config),
        "model_spec": model_spec(config, classes.num_classes), "classes": classes.to_dict(),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    }


def train(config: Config, resume: bool = False, device: str | torch.device = "cpu",
          on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Run (or resume) a training run described by ``config``.

    Args:
        config: the recipe.
        resume: continue from ``<output_dir>/last.pt`` exactly where it stopped.
        device: where to train.
        on_step: called after every step with ``(iteration, loss)`` (progress display, tests).
    """
    device = torch.device(device)
    run_dir = Path(config.train.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.train.seed)
    train_set, val_set = build_datasets(config)
    model = build_model(config, train_set.classes.num_classes).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
    optimizer = build_optimizer(config, model)
    loss_fn = create_loss(config.loss, ignore_index=train_set.classes.ignore_index).to(device)
    iteration, total, best_miou = 0, config.train.iterations, -1.0
    state = load_checkpoint(run_dir / "last.pt") if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        iteration, total, best_miou = state["iteration"], state["total_iterations"], state["best_miou"]
    save_config(config, run_dir / "config.yaml")
    sampler = ResumableBatchSampler(len(train_set), config.data.batch_size, config.train.seed, iteration, total)
    batches = iter(DataLoader(SeededSamples(train_set), batch_sampler=sampler, num_workers=config.data.workers))
    if state is not None:
        # After creating the loader's iterator, which draws a seed from the global generator:
        # restoring first would leave a resumed run one draw apart from an uninterrupted one.
        torch.set_rng_state(state["rng"])
    last_metrics = None
    with open(run_dir / "metrics.jsonl", "a") as log:
        for batch in batches:
            lr = learning_rate(iteration, total, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            start = time.perf_counter()
            loss = train_one_step(model, batch, loss_fn, optimizer, config, device)
            iteration += 1
            _log(log, {"iteration": iteration, "loss": loss, "lr": lr, "step_s": time.perf_counter() - start})
            if on_step is not None:
                on_step(iteration, loss)
            if iteration % config.train.eval_every == 0 or iteration == total:
                last_metrics = evaluate(model, val_set, device, config.train.amp).summary()
                _log(log, {"iteration": iteration, "eval": last_metrics})
                if last_metrics["mean_iou"] > best_miou:
                    best_miou = last_metrics["mean_iou"]
                    save_checkpoint(checkpoint_state(model, optimizer, config, train_set.classes, iteration, total,
                                                     best_miou), run_dir / "best.pt")
            if iteration % config.train.checkpoint_every == 0 or iteration == total:
                save_checkpoint(checkpoint_state(model, optimizer, config, train_set.classes, iteration, total,
                                                 best_miou), run_dir / "last.pt")
    return TrainResult(run_dir, iteration, best_miou, last_metrics)


def _log(handle, record: dict) -> None:
    handle.write(json.dumps(record) + "\n")
    handle.flush()
