"""Training super-resolution networks through the training loop segmentation uses
(:class:`~pixelwise.training.run_loop.TrainingLoop`).

``pixelwise superres train --config configs/superres_espcn_x3.yaml [key=value ...]``: a YAML
recipe checked key by key (:class:`SuperResConfig`), a wall-clock budget
(``train.time_budget_min``, :mod:`pixelwise.training.budget`), ``last.pt`` written atomically every
``checkpoint_every`` iterations with everything to resume exactly (the batches and their crops
are functions of the iteration, :mod:`pixelwise.training.sampling`), ``best.pt`` at the best
validation PSNR, ``metrics.jsonl`` / TensorBoard, and ``loss.png`` / ``psnr.png`` plots.

Data: every image in the ``data.train`` folder is cropped to a multiple of the scale, downscaled
(:func:`~pixelwise.superres.images.downscale`) and kept in memory as luminance; a training sample
is a random ``patch_size`` square of one low-resolution frame (flipped and transposed at random)
and the matching high-resolution square. Validation scores whole ``data.val`` images.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from pixelwise.config import RANGES, ConfigError, OptimConfig, ScheduleConfig, check_ranges, load_recipe, save_config
from pixelwise.data.io import DataError, decode_image
from pixelwise.errors import InputError
from pixelwise.training.budget import BudgetPlan
from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.io.model_file import model_file_format, read_superres_onnx
from pixelwise.inference.predict import expand_inputs
from pixelwise.runtimes.onnx_runtime import OnnxRuntime
from pixelwise.training.distributed import DistributedContext
from pixelwise.training.run_log import RunLog, plot_curves
from pixelwise.training.run_loop import (BestMetric, TrainingDiverged, TrainingLoop, TrainingTask, restore_progress,
                                         resumable_batches)
from pixelwise.training.recipe import build_optimizer
from pixelwise.training.run_folder import prepare_run_folder
from pixelwise.superres.images import downscale, luminance, modcrop, shrink, to_tensor, upscale_fixed
from pixelwise.superres.models import create_sr_model
from pixelwise.superres.quality import PEAK, QualityScores

logger = logging.getLogger(__name__)

RUN_FILES = ("config.yaml", "metrics.jsonl", "best.pt", "last.pt", "loss.png", "psnr.png", "tensorboard")
RESUMABLE_CHANGES = ("train.iterations", "train.eval_every", "train.checkpoint_every", "train.output_dir",
                     "data.train", "data.val", "data.workers")
SUMMARY_TAGS = {"psnr": "val/PSNR", "ssim": "val/SSIM", "periodic_db": "val/periodic_error_dB"}
PSNR_CURVE = ("psnr", "psnr.png", "validation PSNR (luminance)", "PSNR (dB)", None)
TASK = "superres"  # checkpoints say what they hold
# best.pt holds the model of the highest validation PSNR.
PSNR = BestMetric("psnr", "best_psnr", initial=-float("inf"))


@dataclass
class SuperResModelConfig:
    """Which network: ``espcn`` or ``fsrcnn`` (``options.upsample``: transposed, nearest, bilinear,
    pixelshuffle) or ``srcnn``, and the upscaling factor."""

    name: str = "espcn"
    scale: int = 3
    options: dict = field(default_factory=dict)


@dataclass
class SuperResDataConfig:
    """Folders of high-resolution images; patches in low-resolution pixels."""

    train: str = "../shared/datasets/camvid/train"
    val: str = "../shared/datasets/camvid/val"
    patch_size: int = 24
    batch_size: int = 32
    workers: int = 0
    val_images: int | None = None  # N validation images evenly spaced through the folder (None: all)
    # Each training image is also used shrunk by these factors before degradation (FSRCNN:
    # [1.0, 0.9, 0.8, 0.7, 0.6]); copies too small for a patch are left out.
    shrink: list[float] = field(default_factory=lambda: [1.0])
    # Draw training images in proportion to their area (as dense patch extraction does) instead of
    # equally: for folders of images of different sizes, such as T91.
    sample_by_area: bool = False


@dataclass
class SuperResTrainConfig:
    """Length of the run, checkpoints and logging (as the segmentation recipe's ``train``)."""

    iterations: int = 2000
    eval_every: int = 500
    checkpoint_every: int = 100
    seed: int = 0
    output_dir: str = "runs/superres"
    time_budget_min: float | None = None


@dataclass
class SuperResConfig:
    """A whole super-resolution recipe."""

    model: SuperResModelConfig = field(default_factory=SuperResModelConfig)
    data: SuperResDataConfig = field(default_factory=SuperResDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine"))
    loss: str = "mse"  # mse | l1
    train: SuperResTrainConfig = field(default_factory=SuperResTrainConfig)


_SR_RANGES = (
    ("model.scale", lambda v: v >= 2, "an integer of at least 2"),
    ("data.patch_size", lambda v: v >= 4, "at least 4 low-resolution pixels"),
    ("data.batch_size", lambda v: v >= 1, "at least 1"),
    ("data.workers", lambda v: v >= 0, "0 (load in the main process) or more"),
    ("data.val_images", lambda v: v is None or v >= 1, "at least 1, or null for all"),
    ("data.shrink", lambda v: len(v) >= 1 and all(0 < f <= 1 for f in v), "one or more factors in (0, 1]"),
    ("train.iterations", lambda v: v >= 1, "at least 1"),
    ("train.eval_every", lambda v: v >= 1, "at least 1"),
    ("train.checkpoint_every", lambda v: v >= 1, "at least 1"),
    ("train.time_budget_min", lambda v: v is None or v > 0, "a positive number of minutes, or null"),
    *(entry for entry in RANGES if entry[0].startswith(("optim.", "schedule."))),
)


def load_superres_config(path: str | Path | None = None, overrides: tuple[str, ...] | list[str] = ()) -> SuperResConfig:
    """Read and check a super-resolution recipe (unknown keys, types and ranges)."""
    config = load_recipe(SuperResConfig, path, overrides)
    check_ranges(config, _SR_RANGES)
    if config.loss not in ("mse", "l1"):
        raise ConfigError(f"loss = {config.loss!r} is not supported: choose mse or l1")
    return config


class SuperResFrames(Dataset):
    """High-resolution images of a folder with their low-resolution versions, in memory.

    Training frames (``patch_size`` given) can hold each image also shrunk by the ``shrink``
    factors (:func:`~pixelwise.superres.images.shrink`, before the modcrop and degradation) and be
    drawn in proportion to their area (``by_area``): sample ``index`` then falls on image ``i`` for
    about ``area_i / patch_size²`` of the indices.

    Attributes:
        high_y: per image, 1×1×H×W luminance in [0, 1] (cropped to a multiple of the scale).
        low_rgb: per image, 1×3×(H/s)×(W/s) low-resolution RGB in [0, 1], 8-bit values.
        low_y: per image, its luminance in [0, 1].
        paths: the files.
        sources: per image, its file and shrinking factor.
        left_out: shrunk copies too small for a patch, as ``(file, factor)``.
    """

    def __init__(self, folder: str | Path, scale: int, patch_size: int | None = None, limit: int | None = None,
                 shrink_factors: Sequence[float] = (1.0,), by_area: bool = False) -> None:
        self.scale, self.patch_size = scale, patch_size
        self.paths = expand_inputs([folder])
        if limit is not None and limit < len(self.paths):  # evenly spaced: frames of a video are alike nearby
            self.paths = [self.paths[index * len(self.paths) // limit] for index in range(limit)]
        self.high_y, self.low_rgb, self.low_y = [], [], []
        self.sources: list[tuple[Path, float]] = []
        self.left_out: list[tuple[Path, float]] = []
        for path in self.paths:
            original = to_tensor(decode_image(path)[0])
            for factor in shrink_factors:
                high = modcrop(shrink(original, factor), scale)
                low = downscale(high, scale)
                if patch_size is not None and min(low.shape[-2:]) < patch_size:
                    if factor != 1:
                        self.left_out.append((path, factor))
                        continue
                    raise DataError(f"{path}: {tuple(high.shape[-2:])} is too small for {patch_size}-pixel patches "
                                    f"at scale {scale}; lower data.patch_size or remove the image", path, "too small")
                self.high_y.append(luminance(high) / PEAK)
                self.low_rgb.append(low)
                self.low_y.append(luminance(low) / PEAK)
                self.sources.append((path, factor))
        if by_area and patch_size is None:
            raise InputError("drawing by area is for training frames: pass patch_size")
        counts = [max(1, round(low.shape[-2] * low.shape[-1] / patch_size**2)) if by_area else 1
                  for low in self.low_y]
        self.ends = torch.tensor(counts).cumsum(0)  # sample indices [ends[i-1], ends[i]) fall on image i

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def image_of(self, index: int) -> int:
        """The image that sample ``index`` falls on."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        return int(torch.searchsorted(self.ends, index, right=True))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """A random patch pair of the image sample ``index`` falls on (low 1×p×p, high 1×sp×sp),
        randomly flipped and transposed; uses the global random generator (seeded per sample by
        the sampler)."""
        if self.patch_size is None:
            raise InputError("these frames are for validation: pass patch_size to draw training patches")
        image = self.image_of(index)
        low, high, size, scale = self.low_y[image][0], self.high_y[image][0], self.patch_size, self.scale
        top = int(torch.randint(low.shape[-2] - size + 1, ()))
        left = int(torch.randint(low.shape[-1] - size + 1, ()))
        low = low[:, top:top + size, left:left + size]
        high = high[:, top * scale:(top + size) * scale, left * scale:(left + size) * scale]
        flips = torch.randint(2, (3,))
        for axis in (-1, -2):
            if flips[axis]:
                low, high = low.flip(axis), high.flip(axis)
        if flips[0]:
            low, high = low.transpose(-1, -2), high.transpose(-1, -2)
        return low.contiguous(), high.contiguous()


@torch.no_grad()
def super_resolve(model: nn.Module, low_y: Tensor) -> Tensor:
    """The network's 1×1×sH×sW luminance in [0, 1] for 1×1×H×W luminance in [0, 1]."""
    model.eval()
    return model(low_y).clamp(0, 1)


@torch.no_grad()
def evaluate_frames(frames: SuperResFrames, upscale: Callable[[int], Tensor],
                    indices: Sequence[int] | None = None) -> dict:
    """PSNR / SSIM (mean over images) and the periodic error of one method on ``frames``.

    Args:
        upscale: maps an image index to the 1×1×sH×sW luminance in [0, 1] the method produces.
        indices: the images to score (default: all).
    """
    scores = QualityScores(frames.scale)
    for index in range(len(frames.high_y)) if indices is None else indices:
        scores.add(upscale(index) * PEAK, frames.high_y[index] * PEAK)
    return scores.summary()


def evaluate_network(model: nn.Module, frames: SuperResFrames, indices: Sequence[int] | None = None) -> dict:
    """:func:`evaluate_frames` for a network on the frames' low-resolution luminance."""
    return evaluate_frames(frames, lambda index: super_resolve(model, frames.low_y[index]), indices)


def evaluate_interpolation(method: str, frames: SuperResFrames) -> dict:
    """:func:`evaluate_frames` for a fixed rule applied to the low-resolution RGB image."""
    return evaluate_frames(frames, lambda index: luminance(upscale_fixed(frames.low_rgb[index], frames.scale,
                                                                         method)) / PEAK)


@dataclass
class SuperResResult:
    """Where a run left its files and how it ended."""

    run_dir: Path
    iterations: int
    best_psnr: float
    bicubic: dict
    last_metrics: dict | None
    plots: list[Path] = field(default_factory=list)


def train_superres(config: SuperResConfig, resume: bool = False, overwrite: bool = False,
                   on_step: Callable[[int, float], None] | None = None,
                   on_total: Callable[[int, BudgetPlan | None], None] | None = None) -> SuperResResult:
    """Run (or resume, exactly) a super-resolution training run on the CPU.

    Raises:
        RunFolderInUse: the run folder holds an earlier run and neither ``resume`` nor ``overwrite``.
        ConfigError: resuming with settings other than the run's (:data:`RESUMABLE_CHANGES` aside).
        TrainingDiverged: the loss or a weight became NaN or infinite; the last checkpoint is kept.
    """
    if resume and overwrite:
        raise InputError("resume continues the run in the folder and overwrite replaces it: pass one of the two")
    session_start = time.perf_counter()
    run_dir = Path(config.train.output_dir)
    context = DistributedContext()  # one process, on the CPU
    prepare_run_folder(run_dir, resume, overwrite, RUN_FILES)
    torch.manual_seed(config.train.seed)
    train_frames = SuperResFrames(config.data.train, config.model.scale, config.data.patch_size,
                                  shrink_factors=config.data.shrink, by_area=config.data.sample_by_area)
    if train_frames.left_out:
        logger.info("%d shrunk copies of training images are smaller than a %d-pixel patch and left out",
                    len(train_frames.left_out), config.data.patch_size)
    val_frames = SuperResFrames(config.data.val, config.model.scale, limit=config.data.val_images)
    model = create_sr_model(config.model.name, config.model.scale, **config.model.options)
    optimizer = build_optimizer(config, model)
    state = load_checkpoint(run_dir / "last.pt") if resume else None
    if state is not None:
        _check_task(state, run_dir / "last.pt")
    progress = restore_progress(state, model, optimizer, config, PSNR, RESUMABLE_CHANGES)
    bicubic = evaluate_interpolation("bicubic", val_frames) if state is None else state["bicubic"]
    save_config(config, run_dir / "config.yaml")
    batches = resumable_batches(train_frames, config, progress, state, context)
    task = _superres_task(config, model, optimizer, val_frames, bicubic)
    run = TrainingLoop(task, config, context, model, optimizer, None, progress, run_dir, session_start, on_step,
                       on_total)
    with RunLog(run_dir, resume_from=progress.iteration if state is not None else None,
                summary_tags=SUMMARY_TAGS) as log:
        if state is None:
            log.record({"iteration": 0, "baseline": {"bicubic": bicubic}})
        last_metrics = run.run(batches, log)
    plots = plot_curves(run_dir / "metrics.jsonl", run_dir, PSNR_CURVE)
    return SuperResResult(run_dir, progress.iteration, progress.best, bicubic, last_metrics, plots)


def _superres_task(config: SuperResConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                   val_frames: SuperResFrames, bicubic: dict) -> TrainingTask:
    """Super-resolution for the training loop: a step on patch pairs, validation by PSNR, and
    checkpoints that say what they hold (``task``, the network's spec, the bicubic baseline)."""
    loss_fn = nn.MSELoss() if config.loss == "mse" else nn.L1Loss()

    def step(batch: tuple[Tensor, Tensor]) -> float:
        low, high = batch
        model.train()
        loss = loss_fn(model(low), high)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss.item()}; lower optim.lr. The last good checkpoint is "
                                   f"kept.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    extras = {"task": TASK, "bicubic": bicubic,
              "model_spec": {"name": config.model.name, "scale": config.model.scale,
                             "options": dict(config.model.options)}}
    return TrainingTask(step, lambda network: evaluate_network(network, val_frames),
                        lambda network, indices: evaluate_network(network, val_frames, indices), len(val_frames),
                        PSNR, extras, divergence_advice="lower optim.lr")


def _check_task(state: dict, path: Path) -> None:
    if state.get("task") != TASK:
        raise ConfigError(f"{path} is not a super-resolution checkpoint (it has no task: {TASK!r}); a segmentation "
                          f"checkpoint is used with pixelwise evaluate / predict")


class OnnxNetwork(nn.Module):
    """A super-resolution network exported to ONNX, run by ONNX Runtime, called as the network is
    (N×1×H×W luminance in [0, 1] to N×1×sH×sW; computed in float32 whatever the input's type).
    It holds no parameters, and a copy shares the same runtime session (which nothing changes)."""

    def __init__(self, path: str | Path, spec: dict) -> None:
        super().__init__()
        self.runtime, self.scale = OnnxRuntime(path), spec["scale"]

    def forward(self, image: Tensor) -> Tensor:
        return self.runtime(image).to(image.dtype)

    def __deepcopy__(self, memo: dict) -> OnnxNetwork:
        return self


def is_superres_file(path: str | Path) -> bool:
    """Whether ``path`` holds a super-resolution network: a checkpoint of ``superres train`` or
    its ONNX export (a checkpoint is loaded, ``weights_only``, to read its task)."""
    path = Path(path)
    kind = model_file_format(path)
    if kind == "onnx":
        try:
            read_superres_onnx(path)
        except InputError:
            return False
        return True
    return kind == "checkpoint" and path.is_file() and load_checkpoint(path).get("task") == TASK


def load_superres_model(path: str | Path) -> tuple[nn.Module, dict]:
    """A trained network (eval mode) and its spec ``{"name", "scale", "options"}`` from a checkpoint
    (loaded with ``weights_only=True``: nothing in it runs) or from its ONNX export (run by ONNX
    Runtime: a graph of standard operators)."""
    if model_file_format(path) == "onnx":
        spec, _ = read_superres_onnx(path)
        return OnnxNetwork(path, spec).eval(), spec
    state = load_checkpoint(path)
    _check_task(state, Path(path))
    spec = state["model_spec"]
    model = create_sr_model(spec["name"], spec["scale"], **spec["options"])
    model.load_state_dict(state["model"])
    return model.eval(), spec
