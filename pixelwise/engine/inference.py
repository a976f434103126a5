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
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from pixelwise.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pixelwise.layers.resize import resize_bilinear, scaled_size

Mode = Literal["whole", "slide"]
Blend = Literal["gaussian", "uniform"]
Size = int | tuple[int, int]
RegionReader = Callable[[int, int, int, int], Tensor]
"""``read_region(top, left, height, width)``: the image's pixels there, ``(channels, height, width)``."""
BlockSink = Callable[[int, int, Tensor], None]
"""``emit(top, left, block)``: a finished block of the output, ``(channels, height, width)``."""
LabelSink = np.ndarray | Callable[[int, int, np.ndarray], None]


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
        raise ValueError(f"need 1 <= stride <= window, got window {window} and stride {stride}")
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
        raise ValueError(f"blend must be 'gaussian' or 'uniform', got {blend!r}")
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


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd, restoring the model's training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _forward(model: nn.Module, batch: Tensor, num_classes: int | None) -> Tensor:
    logits = model(batch).float()  # blend in float32 even for a half-precision model
    if logits.shape[-2:] != batch.shape[-2:] or (num_classes is not None and logits.shape[1] != num_classes):
        raise ValueError(f"model returned logits of shape {tuple(logits.shape)} for input {tuple(batch.shape)}; "
                         f"expected (N, {num_classes or 'classes'}, H, W) at the input size")
    return logits


def run_windows(model: nn.Module, read_region: RegionReader, image_size: Size, emit: BlockSink,
                window: Size = 512, stride: Size = 341, blend: Blend = "gaussian", batch_size: int = 4,
                num_classes: int | None = None, band: int | None = None) -> TiledStats:
    """Slide a window over an image, blend the overlapping logits, emit finished blocks.

    The model must already be in eval mode, under ``torch.inference_mode()``.

    Args:
        model: maps ``(N, channels, h, w)`` to logits ``(N, classes, h, w)``.
        read_region: the image, a region at a time (only window-sized regions are asked for).
        image_size: ``(height, width)`` of the image.
        emit: receives each finished block of blended logits (float32, on the model's device),
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
        raise ValueError(f"batch_size and band must be positive, got {batch_size} and {band}")
    height, width = _pair(image_size)
    (window_h, window_w), (stride_h, stride_w) = _pair(window), _pair(stride)
    rows, cols = _Axis.build(height, window_h, stride_h), _Axis.build(width, window_w, stride_w)
    weights = importance_map((rows.window, cols.window), blend).to(_model_device(model))
    windows = sliding_windows((height, width), window, stride)
    stats = TiledStats(largest_read=windows[0][2:])
    for cells in _bands(rows, cols, band):
        blender = _CellBlender(rows, cols, cells, weights, emit)
        _run_band(model, read_region, [w for w in windows if blender.touches(*w[:2])], blender, batch_size,
                  num_classes, stats)
        stats.bands += 1
        stats.peak_blend_bytes = max(stats.peak_blend_bytes, blender.peak_bytes)
    return stats


def _run_band(model: nn.Module, read_region: RegionReader, windows: list[tuple[int, int, int, int]],
              blender: _CellBlender, batch_size: int, num_classes: int | None, stats: TiledStats) -> None:
    """Run the windows touching one band through the model, a batch at a time, and blend them."""
    device = _model_device(model)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        batch = torch.stack([read_region(*region) for region in chunk]).to(device)
        for (top, left, _, _), logits in zip(chunk, _forward(model, batch, num_classes)):
            blender.add(top, left, logits)
        stats.windows += len(chunk)
        stats.forwards += 1


# Whole-image and sliding-window logits, with test-time augmentation ---------------------------

def _slide(model: nn.Module, images: Tensor, window: Size, stride: Size, blend: Blend, batch_size: int) -> Tensor:
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

        run_windows(model, read, image.shape[-2:], paste, window, stride, blend, batch_size)
        outputs.append(canvas[0])
    return torch.stack(outputs)


def _predict_view(model: nn.Module, images: Tensor, mode: Mode, window: Size, stride: Size, blend: Blend,
                  batch_size: int) -> Tensor:
    if mode == "whole":
        return _forward(model, images, None)
    if mode == "slide":
        return _slide(model, images, window, stride, blend, batch_size)
    raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")


def predict_logits(model: nn.Module, image: Tensor, mode: Mode = "whole", window: Size = (512, 512),
                   stride: Size = (341, 341), blend: Blend = "gaussian", batch_size: int = 4,
                   scales: Sequence[float] = (1.0,), flip: bool = False) -> Tensor:
    """Logits of a batch of images at their size: whole, sliding window, multi-scale and flip.

    Runs in eval mode (the model's training flag is restored afterwards) under
    ``torch.inference_mode()``, on the model's device.

    Args:
        model: maps ``(N, channels, H, W)`` to logits ``(N, classes, H, W)``.
        image: normalised images ``(N, channels, H, W)``.
        mode: ``"whole"`` (one forward pass) or ``"slide"`` (overlapping windows, blended).
        window: window size for ``"slide"``, in pixels of the (rescaled) image.
        stride: largest step between windows for ``"slide"`` (at most the window).
        blend: ``"gaussian"`` or ``"uniform"`` weighting of overlapping windows.
        batch_size: windows per forward pass for ``"slide"``.
        scales: factors the image is resized by before prediction (test-time augmentation).
        flip: also predict the horizontally flipped image at each scale.

    Returns:
        Logits ``(N, classes, H, W)`` on the model's device: the model's own for a single view
        (``scales=(1.0,)``, no flip); for several views, the log of their mean softmax
        probability.
    """
    if image.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(image.shape)}")
    if not scales:
        raise ValueError("scales must name at least one scale")
    size = image.shape[-2:]
    with _evaluating(model):
        image = image.to(_model_device(model))
        views = [(scale, flipped) for scale in scales for flipped in ((False, True) if flip else (False,))]
        if len(views) == 1 and views[0][0] == 1.0:
            return _predict_view(model, image, mode, window, stride, blend, batch_size)
        mean_probs = None
        for scale, flipped in views:
            view = resize_bilinear(image, scaled_size(size, scale))
            view = view.flip(-1) if flipped else view
            logits = _predict_view(model, view, mode, window, stride, blend, batch_size)
            probs = resize_bilinear(logits.flip(-1) if flipped else logits, size).softmax(1)
            mean_probs = probs if mean_probs is None else mean_probs.add_(probs)
        # Clamped so a class no view gives any probability stays finite (-87, not -inf).
        return mean_probs.div_(len(views)).clamp_min_(torch.finfo(mean_probs.dtype).tiny).log_()


# Images larger than memory --------------------------------------------------------------------

def _label_writer(sink: LabelSink, image_size: tuple[int, int]) -> Callable[[int, int, np.ndarray], None]:
    if callable(sink):
        return sink
    if tuple(sink.shape) != tuple(image_size):
        raise ValueError(f"label array has shape {sink.shape}, expected the image size {tuple(image_size)}")

    def write(top: int, left: int, labels: np.ndarray) -> None:
        sink[top:top + labels.shape[0], left:left + labels.shape[1]] = labels
    return write


def predict_tiled(model: nn.Module, read_region: RegionReader, image_size: Size, num_classes: int,
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
        model: maps ``(N, channels, h, w)`` to logits ``(N, num_classes, h, w)``.
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
            called with each finished block ``(h, w)`` (uint8 up to 256 classes, else int32).
        write_probs: called as ``write_probs(top, left, probs)`` with each finished block's
            softmax probabilities ``(num_classes, h, w)`` on the CPU.
        band: about the longest strip of overlaps held, in pixels across the image's shorter
            side: a longer side is cut into ``ceil(side / band)`` bands done one at a time, the
            windows on each cut run once per band (``None``: never cut).

    Returns:
        Counts of the work done and the memory held for blending.
    """
    height, width = _pair(image_size)
    label_dtype = np.uint8 if num_classes <= 256 else np.int32
    write = _label_writer(write_labels, (height, width)) if write_labels is not None else None

    def emit(top: int, left: int, logits: Tensor) -> None:
        if write is not None:
            write(top, left, logits.argmax(0).cpu().numpy().astype(label_dtype))
        if write_probs is not None:
            write_probs(top, left, logits.softmax(0).cpu())

    with _evaluating(model):
        return run_windows(model, read_region, (height, width), emit, window, stride, blend, batch_size,
                           num_classes, band)


def _normalising_reader(image: np.ndarray, normalize: tuple[Sequence[float], Sequence[float]] | None,
                        ) -> RegionReader:
    """Reads regions of a ``(H, W, C)`` uint8 array as normalised float tensors, one at a time."""
    channels = image.shape[2]
    mean, std = normalize if normalize is not None else ((0.0,) * channels, (1.0,) * channels)
    mean_t, std_t = (torch.tensor(values, dtype=torch.float32).view(-1, 1, 1) for values in (mean, std))

    def read(top: int, left: int, height: int, width: int) -> Tensor:
        tile = torch.from_numpy(np.ascontiguousarray(image[top:top + height, left:left + width]))
        return (tile.permute(2, 0, 1).float() / 255 - mean_t) / std_t
    return read


def predict_large_image(model: nn.Module, image: np.ndarray | Image.Image, num_classes: int,
                        window: Size = (512, 512), stride: Size = (341, 341),
                        normalize: tuple[Sequence[float], Sequence[float]] | None = (IMAGENET_MEAN, IMAGENET_STD),
                        blend: Blend = "gaussian", batch_size: int = 4, band: int | None = 4096,
                        out: np.ndarray | None = None) -> np.ndarray:
    """Class indices of a large ``(H, W, 3)`` uint8 image, predicted with bounded memory.

    Each window is normalised as it is read; no float copy of the image is ever made, and no
    full-image logits (see :func:`predict_tiled`).

    Args:
        model: maps normalised ``(N, 3, h, w)`` images to logits ``(N, num_classes, h, w)``.
        image: the image, ``(H, W, 3)`` uint8; a ``np.memmap`` keeps it on disk.
        num_classes: number of classes the model predicts.
        window: window size.
        stride: largest step between windows (at most the window).
        normalize: ``(mean, std)`` per channel, applied after scaling to [0, 1]; ``None``
            only scales.
        blend: ``"gaussian"`` or ``"uniform"`` weighting of overlapping windows.
        batch_size: windows per forward pass.
        band: the longest strip of overlaps held, see :func:`predict_tiled`.
        out: array ``(H, W)`` to write into (for example a ``np.memmap``); by default a new
            uint8 array (int32 above 256 classes).

    Returns:
        The class-index map ``(H, W)``.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a (H, W, C) uint8 image, got shape {image.shape} and dtype {image.dtype}")
    size = image.shape[:2]
    if out is None:
        out = np.empty(size, dtype=np.uint8 if num_classes <= 256 else np.int32)
    predict_tiled(model, _normalising_reader(image, normalize), size, num_classes, window, stride, blend,
                  batch_size, write_labels=out, band=band)
    return out
