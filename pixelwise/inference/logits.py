"""Inference: whole image, sliding window, test-time augmentation, and images larger than memory.

**Sliding window.** Windows of a fixed size run from flush with the top-left border to flush
with the bottom-right one, as few as keep every step at most ``stride``, spread evenly (as
nnU-Net places them), so every pixel is covered, every window is full-size and all overlaps are
alike; a side no longer than the window gets a single window as long as the side, so an image
no larger than one window is exactly one forward pass on the whole image. Overlapping logits
are blended with a Gaussian importance map (sigma = window / 8, as in nnU-Net: Isensee et al.,
"nnU-Net", Nature Methods 2021), which trusts a window's centre, where the network saw context
on every side, over its borders; or uniformly.

**Blending by cells.** The window edges cut the image into rectangular *cells*, each covered by
a fixed set of windows. A cell's running sums (weighted logits and weights) exist only from the
first window that touches it to the last; then it is finished, handed to a sink and freed.
Cells covered by a single window are handed on directly, unweighted. Windows are visited row by
row (column by column for an image wider than tall), so the partial sums alive at any moment
are the overlap strip between two rows of windows, across the shorter side. For images of any
size, :func:`predict_tiled` also cuts that side into *bands* (4096 pixels by default, at window
edges) and finishes one band before starting the next, re-running the one column of windows
that straddles each cut: memory is then bounded whatever the image's size (for 11 classes and
512-pixel windows at most 384 apart, some 15-35 MB of partial sums, against the 2.8 GB of an
8000×8000 image's logits), for a few percent more windows (5% at 8000×8000). A cell's windows
are folded in the same order either way, so :func:`predict_logits` (whose sink fills a logit
tensor) and :func:`predict_tiled` (whose sink writes class indices) agree exactly (with bands,
as exactly as the model's convolutions agree with themselves when windows are batched
differently).

**Test-time augmentation.** Each scale resizes the image (bilinear), optionally also flipped
horizontally; each view is predicted, its logits flipped back and resized to the input size,
and the views' softmax *probabilities* are averaged, as DeepLab and mmsegmentation do: averaging
logits would let one over-confident view (logit scales differ across input scales) outvote the
rest. The result is returned as the log of the mean probability, i.e. logits of the averaged
prediction (``softmax`` gives the mean back), so callers treat one view and many alike.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from pixelwise.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pixelwise.errors import InputError
from pixelwise.layers.resize import resize_bilinear, scaled_size
from pixelwise.runtimes.base import Runtime, check_precision
from pixelwise.runtimes.torch_runtime import TorchRuntime

Mode = Literal["whole", "slide"]
Blend = Literal["gaussian", "uniform"]
Size = int | tuple[int, int]
RegionReader = Callable[[int, int, int, int], Tensor]
"""``read_region(top, left, height, width)``: the image's pixels there, ``(channels, height, width)``."""
BlockSink = Callable[[int, int, Tensor], None]
"""``emit(top, left, block)``: a finished block of the output, ``(channels, height, width)``."""
LabelSink = np.ndarray | Callable[[int, int, np.ndarray], None]
Predictor = Runtime | nn.Module
"""What runs the network: a :class:`~pixelwise.runtimes.Runtime`, or a PyTorch module."""
Normalization = Mapping[str, Sequence[float]]
"""``{"mean": [...], "std": [...]}`` per channel, applied to images scaled to [0, 1]."""
IMAGENET_NORMALIZATION: Normalization = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}


# Window geometry ------------------------------------------------------------------------------

def _pair(value: Size) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of the windows along one side, from flush with the start to flush with the end.

    As few windows as keep every step at most ``stride``, spread evenly (nnU-Net's placement):
    the overlaps are all alike, instead of a last window crammed against the border that
    overlaps its neighbour almost entirely (costing as much as the others, adding little, and
    widening the strip of partial sums that tiled prediction holds).

    Args:
        size: length of the side.
        window: window length (a side no longer than it gets one window at 0).
        stride: largest step between windows, at most ``window`` so that no pixel is skipped.
    """
    if window < 1 or not 1 <= stride <= window:
        raise InputError(f"need 1 <= stride <= window, got window {window} and stride {stride}")
    if size <= window:
        return [0]
    steps = math.ceil((size - window) / stride)
    return [round(index * (size - window) / steps) for index in range(steps + 1)]


def sliding_windows(image_size: Size, window: Size, stride: Size) -> list[tuple[int, int, int, int]]:
    """The windows covering an image, as ``(top, left, height, width)``, in the order they run.

    Windows are clipped to the image (a side shorter than the window gets one window as long as
    the side) and visited row by row (column by column when the image is wider than tall), so
    the strip of unfinished overlaps runs across the shorter side.
    """
    (height, width), (window_h, window_w), (stride_h, stride_w) = map(_pair, (image_size, window, stride))
    tops, lefts = window_starts(height, window_h, stride_h), window_starts(width, window_w, stride_w)
    window_h, window_w = min(window_h, height), min(window_w, width)
    if width > height:
        return [(top, left, window_h, window_w) for left in lefts for top in tops]
    return [(top, left, window_h, window_w) for top in tops for left in lefts]


def importance_map(window: Size, blend: Blend = "gaussian") -> Tensor:
    """Weights of a window's pixels when blending overlaps, largest 1, ``(height, width)``.

    Args:
        window: window size.
        blend: ``"gaussian"`` (sigma = side / 8, centred, never zero: even a corner keeps about
            1e-7, so a pixel only one window covers is still defined) or ``"uniform"`` (ones).
    """
    height, width = _pair(window)
    if blend == "uniform":
        return torch.ones(height, width)
    if blend != "gaussian":
        raise InputError(f"blend must be 'gaussian' or 'uniform', got {blend!r}")
    rows, cols = (_gaussian_1d(side) for side in (height, width))
    weights = rows[:, None] * cols[None, :]
    return weights / weights.max()


def _gaussian_1d(length: int) -> Tensor:
    # Centred between pixels for even lengths, so the map is symmetric under flips.
    offsets = torch.arange(length, dtype=torch.float64) - (length - 1) / 2
    sigma = length / 8
    return torch.exp(-(offsets**2) / (2 * sigma**2)).float()


# Blending by cells ----------------------------------------------------------------------------

@dataclass
class _Axis:
    """One side of the image cut into cells by the window edges.

    Attributes:
        window: window length (clipped to the side).
        edges: every window edge, sorted: cell ``i`` is ``[edges[i], edges[i + 1])``.
        cover: how many windows cover each cell.
        index: position of each edge in ``edges``.
    """

    window: int
    edges: list[int]
    cover: list[int]
    index: dict[int, int]

    @classmethod
    def build(cls, size: int, window: int, stride: int) -> _Axis:
        starts = window_starts(size, window, stride)
        window = min(window, size)
        edges = sorted({0, size, *starts, *(start + window for start in starts)})
        cover = [sum(s <= low and high <= s + window for s in starts) for low, high in zip(edges, edges[1:])]
        return cls(window, edges, cover, {edge: i for i, edge in enumerate(edges)})

    def cells(self, start: int, within: range) -> range:
        """The cells of a window at ``start`` that lie ``within`` a range of cells."""
        return range(max(self.index[start], within.start), min(self.index[start + self.window], within.stop))

    def bands(self, width: int | None) -> list[range]:
        """The side's cells in ``ceil(side / width)`` consecutive ranges of nearly equal length,
        cut at the window edges nearest to even cuts (``None``: one range)."""
        cells, size = len(self.cover), self.edges[-1]
        count = 1 if width is None else math.ceil(size / width)
        if count == 1 or cells == 1:
            return [range(cells)]
        nearest = (min(range(1, cells), key=lambda i: abs(self.edges[i] - k * size / count)) for k in range(1, count))
        bounds = [0, *sorted(set(nearest)), cells]
        return [range(first, stop) for first, stop in zip(bounds, bounds[1:])]


@dataclass
class _Cell:
    weighted_sum: Tensor  # (classes, h, w): sum of weight · logits
    weight_sum: Tensor  # (h, w)
    remaining: int  # windows still to come


class _CellBlender:
    """Blends overlapping window logits cell by cell, within one band of cells, and emits each
    cell once it is finished.

    Attributes:
        peak_bytes: the most memory the unfinished cells held at once.
    """

    def __init__(self, rows: _Axis, cols: _Axis, band: tuple[range, range], weights: Tensor,
                 emit: BlockSink) -> None:
        self.rows, self.cols, self.band = rows, cols, band
        self.weights, self.emit = weights, emit
        self.cells: dict[tuple[int, int], _Cell] = {}
        self.live_bytes = self.peak_bytes = 0

    def touches(self, top: int, left: int) -> bool:
        """Whether a window at ``(top, left)`` covers any cell of the band."""
        return bool(self.rows.cells(top, self.band[0])) and bool(self.cols.cells(left, self.band[1]))

    def add(self, top: int, left: int, logits: Tensor) -> None:
        """Fold in one window's logits ``(classes, height, width)`` placed at ``(top, left)``."""
        for row in self.rows.cells(top, self.band[0]):
            for col in self.cols.cells(left, self.band[1]):
                y0, y1, x0, x1 = *self.rows.edges[row:row + 2], *self.cols.edges[col:col + 2]
                inside = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
                self._add_to_cell((row, col), (y0, x0), logits[(slice(None), *inside)], self.weights[inside])

    def _add_to_cell(self, key: tuple[int, int], corner: tuple[int, int], logits: Tensor, weights: Tensor) -> None:
        cover = self.rows.cover[key[0]] * self.cols.cover[key[1]]
        if cover == 1:  # unweighted: no rounding, so one window reproduces whole-image inference
            self.emit(*corner, logits)
            return
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = _Cell(logits * weights, weights.clone(), cover)
            self._count(cell, +1)
        else:
            cell.weighted_sum.addcmul_(logits, weights)
            cell.weight_sum += weights
        cell.remaining -= 1
        if cell.remaining == 0:
            self.emit(*corner, cell.weighted_sum.div_(cell.weight_sum))
            self._count(self.cells.pop(key), -1)

    def _count(self, cell: _Cell, sign: int) -> None:
        size = cell.weighted_sum.nbytes + cell.weight_sum.nbytes
        self.live_bytes += sign * size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)


def _bands(rows: _Axis, cols: _Axis, band: int | None) -> list[tuple[range, range]]:
    """Bands of cells, cut across the shorter side: the side the strip of overlaps spans."""
    every_row, every_col = range(len(rows.cover)), range(len(cols.cover))
    if rows.edges[-1] >= cols.edges[-1]:  # visited row by row: cut the width
        return [(every_row, cells) for cells in cols.bands(band)]
    return [(cells, every_col) for cells in rows.bands(band)]


# Running windows ------------------------------------------------------------------------------

@dataclass
class TiledStats:
    """What a windowed prediction did.

    Attributes:
        windows: number of windows run through the model (those straddling two bands, twice).
        forwards: number of forward passes (batches of windows).
        bands: number of bands the image was cut into.
        peak_blend_bytes: the most memory unfinished overlaps held at once: the only buffer
            that grows with the image, up to the band width.
        largest_read: the largest region read, ``(height, width)``.
    """

    windows: int = 0
    forwards: int = 0
    bands: int = 0
    peak_blend_bytes: int = 0
    largest_read: tuple[int, int] = field(default=(0, 0))


def as_runtime(model: Predictor, precision: str | None = None) -> Runtime:
    """What runs the network: a module is wrapped in a :class:`~pixelwise.runtimes.TorchRuntime`
    (eval mode, no autograd, autocast at ``precision``); a runtime is used as it is.

    Raises:
        ValueError: a runtime asked for a precision other than its own.
    """
    if isinstance(model, nn.Module):
        return TorchRuntime(model, precision or "fp32")
    if precision is not None and precision != model.precision:
        raise InputError(f"the {model.name} runtime computes in {model.precision}, not {precision}; "
                         f"build the runtime with the precision you want")
    return model


def _forward(runtime: Runtime, batch: Tensor, num_classes: int | None) -> Tensor:
    logits = runtime(batch).float()  # blend in float32 whatever the network computes in
    if logits.shape[-2:] != batch.shape[-2:] or (num_classes is not None and logits.shape[1] != num_classes):
        raise InputError(f"model returned logits of shape {tuple(logits.shape)} for input {tuple(batch.shape)}; "
                         f"expected (N, {num_classes or 'classes'}, H, W) at the input size")
    return logits


@torch.inference_mode()
def run_windows(model: Predictor, read_region: RegionReader, image_size: Size, emit: BlockSink,
                window: Size = 512, stride: Size = 341, blend: Blend = "gaussian", batch_size: int = 4,
                num_classes: int | None = None, band: int | None = None) -> TiledStats:
    """Slide a window over an image, blend the overlapping logits, emit finished blocks.

    Args:
        model: a runtime, or a module (run in fp32), mapping ``(N, channels, h, w)`` to logits
            ``(N, classes, h, w)``.
        read_region: the image, a region at a time (only window-sized regions are asked for).
        image_size: ``(height, width)`` of the image.
        emit: receives each finished block of blended logits (float32, on the runtime's device),
            every pixel exactly once.
        window: window size.
        stride: largest step between windows.
        blend: how overlapping logits are weighted, see :func:`importance_map`.
        batch_size: windows per forward pass.
        num_classes: checked against the model's output when given.
        band: cut the image's shorter side into ``ceil(side / band)`` bands of about equal width
            (at window edges) and finish one band before the next, bounding memory whatever the
            image's size; windows straddling two bands run once for each. ``None``: one band.
    """
    if batch_size < 1 or (band is not None and band < 1):
        raise InputError(f"batch_size and band must be positive, got {batch_size} and {band}")
    runtime = as_runtime(model)
    height, width = _pair(image_size)
    (window_h, window_w), (stride_h, stride_w) = _pair(window), _pair(stride)
    rows, cols = _Axis.build(height, window_h, stride_h), _Axis.build(width, window_w, stride_w)
    weights = importance_map((rows.window, cols.window), blend).to(runtime.device)
    windows = sliding_windows((height, width), window, stride)
    stats = TiledStats(largest_read=windows[0][2:])
    for cells in _bands(rows, cols, band):
        blender = _CellBlender(rows, cols, cells, weights, emit)
        _run_band(runtime, read_region, [w for w in windows if blender.touches(*w[:2])], blender, batch_size,
                  num_classes, stats)
        stats.bands += 1
        stats.peak_blend_bytes = max(stats.peak_blend_bytes, blender.peak_bytes)
    return stats


def _run_band(runtime: Runtime, read_region: RegionReader, windows: list[tuple[int, int, int, int]],
              blender: _CellBlender, batch_size: int, num_classes: int | None, stats: TiledStats) -> None:
    """Run the windows touching one band through the network, a batch at a time, and blend them."""
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        batch = torch.stack([read_region(*region) for region in chunk]).to(runtime.device)
        for (top, left, _, _), logits in zip(chunk, _forward(runtime, batch, num_classes)):
            blender.add(top, left, logits)
        stats.windows += len(chunk)
        stats.forwards += 1


# Whole-image and sliding-window logits, with test-time augmentation ---------------------------

def _slide(runtime: Runtime, images: Tensor, window: Size, stride: Size, blend: Blend, batch_size: int) -> Tensor:
    """Sliding-window logits of each image of a batch."""
    outputs = []
    for image in images:
        canvas: list[Tensor] = []

        def paste(top: int, left: int, block: Tensor) -> None:
            if not canvas:  # the number of classes is known at the first block
                canvas.append(block.new_empty(block.shape[0], *image.shape[-2:]))
            canvas[0][:, top:top + block.shape[1], left:left + block.shape[2]] = block

        def read(top: int, left: int, height: int, width: int) -> Tensor:
            return image[:, top:top + height, left:left + width]

        run_windows(runtime, read, image.shape[-2:], paste, window, stride, blend, batch_size)
        outputs.append(canvas[0])
    return torch.stack(outputs)


def _predict_view(runtime: Runtime, images: Tensor, mode: Mode, window: Size, stride: Size, blend: Blend,
                  batch_size: int) -> Tensor:
    if mode == "whole":
        return _forward(runtime, images, None)
    if mode == "slide":
        return _slide(runtime, images, window, stride, blend, batch_size)
    raise InputError(f"mode must be 'whole' or 'slide', got {mode!r}")


@torch.inference_mode()
def predict_logits(model: Predictor, image: Tensor, mode: Mode = "whole", window: Size = (512, 512),
                   stride: Size = (341, 341), blend: Blend = "gaussian", batch_size: int = 4,
                   scales: Sequence[float] = (1.0,), flip: bool = False, precision: str | None = None) -> Tensor:
    """Logits of a batch of images at their size: whole, sliding window, multi-scale and flip.

    Runs under ``torch.inference_mode()``; a module runs in eval mode (its training flag is
    restored afterwards), on its device.

    Args:
        model: a runtime, or a module mapping ``(N, channels, H, W)`` to logits
            ``(N, classes, H, W)``.
        image: normalised images ``(N, channels, H, W)``.
        mode: ``"whole"`` (one forward pass) or ``"slide"`` (overlapping windows, blended).
        window: window size for ``"slide"``, in pixels of the (rescaled) image.
        stride: largest step between windows for ``"slide"`` (at most the window).
        blend: ``"gaussian"`` or ``"uniform"`` weighting of overlapping windows.
        batch_size: windows per forward pass for ``"slide"``.
        scales: factors the image is resized by before prediction (test-time augmentation).
        flip: also predict the horizontally flipped image at each scale.
        precision: autocast precision of a module (``None``: fp32; see :func:`as_runtime`).

    Returns:
        Logits ``(N, classes, H, W)`` (float32) on the runtime's device: the network's own for a
        single view (``scales=(1.0,)``, no flip); for several views, the log of their mean
        softmax probability.
    """
    if image.dim() != 4:
        raise InputError(f"expected images (N, C, H, W), got shape {tuple(image.shape)}")
    if not scales:
        raise InputError("scales must name at least one scale")
    runtime = as_runtime(model, precision)
    size = image.shape[-2:]
    image = image.to(runtime.device)
    views = [(scale, flipped) for scale in scales for flipped in ((False, True) if flip else (False,))]
    if len(views) == 1 and views[0][0] == 1.0:
        return _predict_view(runtime, image, mode, window, stride, blend, batch_size)
    mean_probs = None
    for scale, flipped in views:
        view = resize_bilinear(image, scaled_size(size, scale))
        view = view.flip(-1) if flipped else view
        logits = _predict_view(runtime, view, mode, window, stride, blend, batch_size)
        probs = resize_bilinear(logits.flip(-1) if flipped else logits, size).softmax(1)
        mean_probs = probs if mean_probs is None else mean_probs.add_(probs)
    # Clamped so a class no view gives any probability stays finite (-87, not -inf).
    return mean_probs.div_(len(views)).clamp_min_(torch.finfo(mean_probs.dtype).tiny).log_()


# The options every caller shares -------------------------------------------------------------

def default_stride(window: Size) -> tuple[int, int]:
    """Two thirds of the window on each side (341 for 512): every pixel away from the border is
    seen by at least two windows, so blending has a centre to prefer over an edge."""
    height, width = _pair(window)
    return max(1, round(height * 2 / 3)), max(1, round(width * 2 / 3))


@dataclass(frozen=True)
class InferenceOptions:
    """How logits are computed, shared by training validation, evaluation, prediction and the
    service (see :func:`predict_logits`).

    Build with :meth:`create`, which checks every value before any work starts. ``precision``
    is the autocast precision of a PyTorch model (``None``: fp32, or a runtime's own).
    """

    mode: Mode = "whole"
    window: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    blend: Blend = "gaussian"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    batch_size: int = 4
    precision: str | None = None

    @classmethod
    def create(cls, mode: Mode = "whole", window: Size = 512, stride: Size | None = None,
               blend: Blend = "gaussian", scales: Sequence[float] = (1.0,), flip: bool = False,
               batch_size: int = 4, precision: str | None = None) -> InferenceOptions:
        """Checked options; ``stride=None`` is :func:`default_stride` of the window."""
        if mode not in ("whole", "slide"):
            raise InputError(f"mode must be 'whole' or 'slide', got {mode!r}")
        if blend not in ("gaussian", "uniform"):
            raise InputError(f"blend must be 'gaussian' or 'uniform', got {blend!r}")
        if not scales or any(scale <= 0 for scale in scales):
            raise InputError(f"scales must be one or more positive factors, got {list(scales)}")
        if batch_size < 1:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        if precision is not None:
            check_precision(precision)
        window = _pair(window)
        stride = default_stride(window) if stride is None else _pair(stride)
        for side, step in zip(window, stride):
            window_starts(side, side, step)  # raises unless 1 <= stride <= window
        return cls(mode, window, stride, blend, tuple(float(s) for s in scales), bool(flip), batch_size, precision)

    @property
    def augmented(self) -> bool:
        """Whether test-time augmentation (several scales, or flips) is on."""
        return self.flip or self.scales != (1.0,)

    def logits(self, model: Predictor, images: Tensor) -> Tensor:
        """Logits ``(N, classes, H, W)`` of normalised images ``(N, 3, H, W)``."""
        return predict_logits(model, images, self.mode, self.window, self.stride, self.blend, self.batch_size,
                              self.scales, self.flip, self.precision)

    @classmethod
    def following(cls, recorded: Mapping[str, Any] | None, scales: Sequence[float] | None = None,
                  flip: bool | None = None, **settings: Any) -> InferenceOptions:
        """:meth:`create` with ``settings``, and the test-time ``scales`` and ``flip`` asked for
        or, where ``None``, those a model records (see :func:`recorded_augmentation`);
        ``recorded=None`` checks the values before a model is loaded."""
        return cls.create(**settings, **recorded_augmentation(recorded, scales, flip))

    def pass_areas(self, size: tuple[int, int], geometry: nn.Module | None = None) -> list[int]:
        """The area one forward pass computes on, for each view of an image of ``size``
        (height, width): what whole-image inference of it costs, view by view (memory goes with
        the largest, time with the sum; a sliding window counts a batch of windows).

        Args:
            size: the image's height and width.
            geometry: the network, for the size it really computes on
                (:meth:`~pixelwise.models.base.SegmentationModel.padded_size`: its padding and
                input scale); ``None`` or another module: the size as given.
        """
        padded = getattr(geometry, "padded_size", lambda view: view)
        areas = []
        for scale in self.scales:
            height, width = (int(side) for side in scaled_size(size, scale))
            if self.mode == "slide":
                height, width = min(height, self.window[0]), min(width, self.window[1])
            height, width = padded((height, width))
            areas += [height * width * (self.batch_size if self.mode == "slide" else 1)] * (2 if self.flip else 1)
        return areas

    def to_dict(self) -> dict:
        """JSON-able form, for metrics files and checkpoints."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def recorded_augmentation(recorded: Mapping[str, Any] | None, scales: Sequence[float] | None = None,
                          flip: bool | None = None) -> dict[str, Any]:
    """The test-time ``scales`` and ``flip`` to predict with: those asked for; where one is
    ``None``, the one a checkpoint or exported file records (its recipe's ``inference``
    section); for files that record none, one scale and no flip."""
    recorded = recorded or {}
    return {"scales": tuple(recorded.get("scales", (1.0,)) if scales is None else scales),
            "flip": bool(recorded.get("flip", False) if flip is None else flip)}


# Images larger than memory --------------------------------------------------------------------

def label_dtype(num_classes: int) -> type:
    """The dtype of class-index maps: uint8 up to 256 classes, else int32."""
    return np.uint8 if num_classes <= 256 else np.int32


def _label_writer(sink: LabelSink, image_size: tuple[int, int]) -> Callable[[int, int, np.ndarray], None]:
    if callable(sink):
        return sink
    if tuple(sink.shape) != tuple(image_size):
        raise InputError(f"label array has shape {sink.shape}, expected the image size {tuple(image_size)}")

    def write(top: int, left: int, labels: np.ndarray) -> None:
        sink[top:top + labels.shape[0], left:left + labels.shape[1]] = labels
    return write


def predict_tiled(model: Predictor, read_region: RegionReader, image_size: Size, num_classes: int,
                  window: Size = (512, 512), stride: Size = (341, 341), blend: Blend = "gaussian",
                  batch_size: int = 4, write_labels: LabelSink | None = None,
                  write_probs: Callable[[int, int, Tensor], None] | None = None, band: int | None = 4096,
                  ) -> TiledStats:
    """Segment an image too large for memory, a window at a time, with bounded memory.

    The image is read one window at a time; blended results leave as soon as they are final, as
    blocks of class indices (and optionally probabilities). Besides the windows in flight, the
    only buffer is the strip of overlaps between two rows of windows, about ``band`` pixels
    long at most (reported as ``peak_blend_bytes``); full-image logits are never formed. The result
    equals ``predict_logits(model, image, mode="slide", ...).argmax(1)`` with the same window,
    stride and blend.

    Args:
        model: a runtime, or a module (run in fp32), mapping ``(N, channels, h, w)`` to logits
            ``(N, num_classes, h, w)``.
        read_region: ``read_region(top, left, height, width)`` gives the normalised image there,
            ``(channels, height, width)``: from a file, a memory map, or generated.
        image_size: ``(height, width)``.
        num_classes: number of classes the model predicts (checked).
        window: window size.
        stride: largest step between windows (at most the window).
        blend: ``"gaussian"`` or ``"uniform"`` weighting of overlapping windows.
        batch_size: windows per forward pass.
        write_labels: where class indices go: an array ``(height, width)`` (a ``np.memmap``
            keeps even the output out of memory), or ``write_labels(top, left, labels)``
            called with each finished block ``(h, w)`` (see :func:`label_dtype`).
        write_probs: called as ``write_probs(top, left, probs)`` with each finished block's
            softmax probabilities ``(num_classes, h, w)`` on the CPU.
        band: about the longest strip of overlaps held, in pixels across the image's shorter
            side: a longer side is cut into ``ceil(side / band)`` bands done one at a time, the
            windows on each cut run once per band (``None``: never cut).

    Returns:
        Counts of the work done and the memory held for blending.
    """
    height, width = _pair(image_size)
    dtype = label_dtype(num_classes)
    write = _label_writer(write_labels, (height, width)) if write_labels is not None else None

    def emit(top: int, left: int, logits: Tensor) -> None:
        if write is not None:
            write(top, left, logits.argmax(0).cpu().numpy().astype(dtype))
        if write_probs is not None:
            write_probs(top, left, logits.softmax(0).cpu())

    return run_windows(model, read_region, (height, width), emit, window, stride, blend, batch_size, num_classes,
                       band)


def normalize_image(pixels: np.ndarray, normalization: Normalization | None = None) -> Tensor:
    """``(H, W, C)`` uint8 pixels → float ``(C, H, W)`` scaled to [0, 1] and normalised: the
    operations of the validation transform (:func:`~pixelwise.data.transforms.val_transform`),
    so prediction sees what evaluation saw.

    Args:
        pixels: the image (or a window of it).
        normalization: ``{"mean": [...], "std": [...]}`` per channel; ``None``: only scaled.
    """
    # A copy: decoded images are read-only arrays, which torch.from_numpy warns about; the uint8
    # copy of one window (or image) costs a quarter of the float tensor made from it anyway.
    image = TF.to_dtype(torch.from_numpy(np.array(pixels, copy=True)).permute(2, 0, 1), torch.float32, scale=True)
    if normalization is None:
        return image
    return TF.normalize(image, list(normalization["mean"]), list(normalization["std"]))


def predict_large_image(model: Predictor, image: np.ndarray | Image.Image, num_classes: int,
                        options: InferenceOptions | None = None,
                        normalization: Normalization | None = IMAGENET_NORMALIZATION, band: int | None = 4096,
                        out: np.ndarray | None = None, probabilities: np.ndarray | None = None) -> np.ndarray:
    """Class indices of a large ``(H, W, 3)`` uint8 image, predicted window by window with
    bounded memory: the one large-image route of prediction and the service.

    Each window is normalised as it is read; no float copy of the image is ever made, and no
    full-image logits (see :func:`predict_tiled`). The options' mode and test-time augmentation
    do not apply (a window at a time is the point).

    Args:
        model: a runtime, or a module (run at the options' precision).
        image: the image, ``(H, W, 3)`` uint8; a ``np.memmap`` keeps it on disk.
        num_classes: number of classes the model predicts.
        options: window, stride, blend, batch size and precision (default: 512 windows).
        normalization: ``{"mean": [...], "std": [...]}`` per channel, applied after scaling to
            [0, 1]; ``None`` only scales.
        band: the longest strip of overlaps held, see :func:`predict_tiled`.
        out: array ``(H, W)`` to write into (for example a ``np.memmap``); by default a new
            array of :func:`label_dtype`.
        probabilities: an array ``(C, H, W)`` (a memory map, typically) to fill with the softmax
            probabilities, block by block.

    Returns:
        The class-index map ``(H, W)``.
    """
    options = options or InferenceOptions.create()
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if image.ndim != 3 or image.dtype != np.uint8:
        raise InputError(f"expected a (H, W, C) uint8 image, got shape {image.shape} and dtype {image.dtype}")
    size = image.shape[:2]
    if out is None:
        out = np.empty(size, dtype=label_dtype(num_classes))

    def read(top: int, left: int, height: int, width: int) -> Tensor:
        return normalize_image(image[top:top + height, left:left + width], normalization)

    def write_probs(top: int, left: int, block: Tensor) -> None:
        probabilities[:, top:top + block.shape[1], left:left + block.shape[2]] = block.numpy()

    predict_tiled(as_runtime(model, options.precision), read, size, num_classes, options.window, options.stride,
                  options.blend, options.batch_size, write_labels=out,
                  write_probs=write_probs if probabilities is not None else None, band=band)
    return out
