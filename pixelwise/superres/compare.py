"""Every upscaling method on the same images: one table, one figure; and upscaling for users.

:func:`compare_methods` downscales each high-resolution image (:func:`~pixelwise.superres.images.downscale`),
upscales it back with the fixed rules and with trained networks, and scores each method on
luminance (PSNR, SSIM, the periodic error of :class:`~pixelwise.superres.quality.PeriodicError`),
its checkerboard score on a constant image (:func:`pixelwise.analysis.overlap.checkerboard_score`:
0 for every interpolation rule; for ESPCN and FSRCNN also their learned last layer alone), and its time.
:func:`save_comparison_figure` shows the same region for every method, with its error map.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from pixelwise.analysis.overlap import checkerboard_score
from pixelwise.data.io import decode_image
from pixelwise.data.pairing import IMAGE_EXTENSIONS
from pixelwise.errors import InputError
from pixelwise.inference.predict import expand_inputs
from pixelwise.runtimes.torch_runtime import autocast_context
from pixelwise.superres.images import (FIXED_METHODS, downscale, luminance, modcrop, rgb_to_ycbcr, to_pixels,
                                       to_tensor, upscale_fixed, ycbcr_to_rgb)
from pixelwise.superres.models import method_name
from pixelwise.superres.quality import PEAK, QualityScores
from pixelwise.superres.train import OnnxNetwork, load_superres_model, super_resolve

CHECKERBOARD_SIZE = 16  # input side of the constant image the checkerboard score uses


@dataclass
class MethodScore:
    """One row of the comparison table (means over the images)."""

    method: str
    psnr: float
    ssim: float
    checkerboard: float  # the whole method on a constant image
    upsampler_checkerboard: float | None  # ESPCN's or FSRCNN's last layer alone; None for other methods
    periodic_db: float
    periodic_rms: float
    ms_per_image: float


@dataclass
class Comparison:
    """The table, and what the figure shows: per method the upscaled first image and its
    luminance error (grey levels)."""

    scale: int
    images: list[str]
    rows: list[MethodScore]
    high: Tensor | None = None  # the first image, 1×3×H×W
    outputs: dict[str, Tensor] = field(default_factory=dict)
    errors: dict[str, Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The table as plain data (for JSON)."""
        return {"scale": self.scale, "images": self.images, "rows": [asdict(row) for row in self.rows]}


class Interpolation(nn.Module):
    """A fixed rule as a module (so it is scored like the networks)."""

    def __init__(self, scale: int, method: str) -> None:
        super().__init__()
        self.scale, self.method = scale, method

    def forward(self, image: Tensor) -> Tensor:
        return upscale_fixed(image, self.scale, self.method)


@torch.no_grad()
def upscale_luminance(model: nn.Module, low: Tensor) -> Tensor:
    """The network's upscaled luminance (1×1×sH×sW, grey levels in [0, 255]) of RGB ``low``."""
    return super_resolve(model, luminance(low) / PEAK) * PEAK


@torch.no_grad()
def upscale_rgb(model: nn.Module, low: Tensor, scale: int, y: Tensor | None = None) -> Tensor:
    """RGB 1×3×H×W in [0, 1] upscaled: the network on luminance (or ``y`` if already computed),
    bicubic on chroma (the usual way to apply a luminance network to colour images)."""
    ycbcr = rgb_to_ycbcr(upscale_fixed(low, scale, "bicubic"))
    ycbcr[:, :1] = upscale_luminance(model, low) if y is None else y
    return ycbcr_to_rgb(ycbcr).clamp(0, 1)


def _methods(scale: int, checkpoints: Sequence[str | Path], fixed: Sequence[str]) -> list[tuple[str, nn.Module, bool]]:
    """``(name, module, learned)`` for each fixed rule and each checkpoint of this scale."""
    methods = [(method, Interpolation(scale, method), False) for method in fixed]
    for checkpoint in checkpoints:
        model, spec = load_superres_model(checkpoint)
        if spec["scale"] != scale:
            raise InputError(f"{checkpoint} upscales by {spec['scale']}, not by --scale {scale}; compare it at "
                             f"--scale {spec['scale']}")
        name = method_name(spec["name"], spec["options"])
        names = [existing for existing, _, _ in methods]
        methods.append((name if name not in names else f"{name} ({Path(checkpoint).parent.name})", model, True))
    return methods


def _upscale(module: nn.Module, learned: bool, low: Tensor, scale: int) -> tuple[Tensor, Tensor]:
    """(RGB, luminance in [0, 255]) of one method on one low-resolution RGB image."""
    if learned:
        y = upscale_luminance(module, low)
        return upscale_rgb(module, low, scale, y), y
    rgb = module(low)
    return rgb, luminance(rgb)


@torch.no_grad()
def compare_methods(images: Sequence[str | Path], scale: int, checkpoints: Sequence[str | Path] = (),
                    fixed: Sequence[str] = FIXED_METHODS) -> Comparison:
    """Score every fixed rule and every trained network on ``images`` (high-resolution files,
    folders or patterns) at ``scale``."""
    paths = expand_inputs(list(images))
    methods = _methods(scale, checkpoints, fixed)
    scores = {name: QualityScores(scale) for name, _, _ in methods}
    seconds = dict.fromkeys(scores, 0.0)
    comparison = Comparison(scale, [str(path) for path in paths], [])
    for number, path in enumerate(paths):
        high = modcrop(to_tensor(decode_image(path)[0]), scale)
        low, target = downscale(high, scale), luminance(high)
        for name, module, learned in methods:
            if number == 0:  # untimed: a method's first call pays one-off set-up (threads, kernels chosen)
                _upscale(module, learned, low, scale)
            start = time.perf_counter()
            rgb, y = _upscale(module, learned, low, scale)
            seconds[name] += time.perf_counter() - start
            error = scores[name].add(y, target)
            if number == 0:
                comparison.high, comparison.outputs[name], comparison.errors[name] = high, rgb, error
    for name, module, learned in methods:
        summary = scores[name].summary()
        channels = 3 if not learned else 1
        upsampler = None
        if hasattr(module, "upsampler"):  # ESPCN, FSRCNN
            upsampler = checkerboard_score(module.upsampler, module.upsampler_channels, scale, CHECKERBOARD_SIZE)
        comparison.rows.append(MethodScore(
            name, summary["psnr"], summary["ssim"], checkerboard_score(module, channels, scale, CHECKERBOARD_SIZE),
            upsampler, summary["periodic_db"], summary["periodic_rms"], 1000.0 * seconds[name] / len(paths)))
    return comparison


def busiest_region(image: Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` square with the most luminance gradient energy (where
    methods differ most)."""
    y = luminance(image)[0, 0]
    size = min(size, *y.shape)
    energy = (y[1:, :-1] - y[:-1, :-1]).square() + (y[:-1, 1:] - y[:-1, :-1]).square()
    window = torch.nn.functional.avg_pool2d(energy[None, None], size - 1, stride=max(1, size // 4))[0, 0]
    row, col = divmod(int(window.argmax()), window.shape[1])
    return row * max(1, size // 4), col * max(1, size // 4)


def save_comparison_figure(comparison: Comparison, path: str | Path, region: tuple[int, int] | None = None,
                           size: int = 96) -> Path:
    """Crops of one region of the first image: the original, then each method (top row) and
    its absolute luminance error on one colour scale (bottom row)."""
    from matplotlib.figure import Figure

    if comparison.high is None:
        raise InputError("the comparison holds no images")
    border = comparison.scale
    top, left = region if region is not None else busiest_region(comparison.high, size)
    rows, cols = slice(top, top + size), slice(left, left + size)
    names = list(comparison.outputs)
    scores = {row.method: row for row in comparison.rows}
    figure = Figure(figsize=(2.2 * (len(names) + 1), 4.6), layout="constrained")
    axes = figure.subplots(2, len(names) + 1, squeeze=False)
    axes[0, 0].imshow(to_pixels(comparison.high)[rows, cols])
    axes[0, 0].set_title("original", fontsize=9)
    # errors are measured inside the border: shift the crop by it
    crops = {name: error[0, 0].abs()[max(0, top - border):top - border + size,
                                     max(0, left - border):left - border + size]
             for name, error in comparison.errors.items()}
    # one colour scale for every method, saturating at the 99th percentile so typical errors show
    limit = float(torch.quantile(torch.cat([crop.flatten() for crop in crops.values()]).float(), 0.99)) or 1.0
    shown = None
    for column, name in enumerate(names, start=1):
        axes[0, column].imshow(to_pixels(comparison.outputs[name])[rows, cols])
        axes[0, column].set_title(f"{name}\n{scores[name].psnr:.2f} dB", fontsize=9)
        shown = axes[1, column].imshow(crops[name].numpy(), cmap="magma", vmin=0, vmax=limit)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    axes[1, 0].axis("off")
    if shown is not None:
        figure.colorbar(shown, ax=axes[1, 0], location="left", label="|error| (grey levels)", fraction=0.5)
    figure.suptitle(f"×{comparison.scale} super-resolution: region ({top}, {left}), {size}×{size} px", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def upscale_file(checkpoint: str | Path, image: str | Path, out: str | Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """Upscale an image file with a trained network; writes ``out`` (PNG unless its suffix says
    otherwise). Returns the input and output (H, W)."""
    written = upscale_images(checkpoint, [image], out).images[0]
    return written.before, written.after


@dataclass
class UpscaledImage:
    """One image upscaled: where from, where to, and its (H, W) before and after."""

    source: Path
    target: Path
    before: tuple[int, int]
    after: tuple[int, int]


@dataclass
class UpscaleReport:
    """What :func:`upscale_images` wrote, and the seconds spent enlarging (reading and writing
    files left out), so frames per second can be read off."""

    images: list[UpscaledImage]
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return len(self.images) / self.seconds if self.seconds > 0 else float("inf")


def upscale_images(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path,
                   precision: str = "fp32") -> UpscaleReport:
    """Upscale image files (files, folders or glob patterns: a video's frames) with a trained
    network, loaded once.

    Args:
        checkpoint: a ``superres train`` checkpoint, or its ONNX export (run by ONNX Runtime).
        out: the file to write for one image given as a file (PNG unless its suffix says
            otherwise), else a folder that receives ``NAME.png`` for each image.
        precision: ``"fp32"``, or ``"bf16"`` (autocast; a checkpoint on a CPU with bf16 units).

    Raises:
        InputError: several images for one output file, or bf16 for an ONNX file.
    """
    from PIL import Image

    paths = expand_inputs(list(inputs))
    out = Path(out)
    one_file = len(paths) == 1 and Path(inputs[0]).is_file() and out.suffix.lower() in IMAGE_EXTENSIONS
    if not one_file and out.suffix.lower() in IMAGE_EXTENSIONS:
        raise InputError(f"--out {str(out)!r} is one image file, but {len(paths)} images were given: name a folder")
    model, spec = load_superres_model(checkpoint)
    if precision != "fp32" and isinstance(model, OnnxNetwork):
        raise InputError(f"{checkpoint} is run by ONNX Runtime in fp32; --precision {precision} is for checkpoints")
    report = UpscaleReport([], 0.0)
    for path in paths:
        low = to_tensor(decode_image(path)[0])
        start = time.perf_counter()
        with autocast_context(None if precision == "fp32" else precision, torch.device("cpu")):
            high = upscale_rgb(model, low, spec["scale"]).float()
        report.seconds += time.perf_counter() - start
        target = out if one_file else out / f"{path.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_pixels(high)).save(target)
        report.images.append(UpscaledImage(path, target, tuple(low.shape[-2:]), tuple(high.shape[-2:])))
    return report

