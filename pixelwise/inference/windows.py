"""Windows over an image, run through the network and blended: the part of inference that
sliding-window and tiled prediction share.

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

**Context.** A PyTorch model that declares a context margin (the valid-convolution U-Net, see
:attr:`~pixelwise.models.base.SegmentationModel.context_margin`) has each window read with the
real image around it that the model asks for, mirrored only past the image's borders, and its
logits cropped back to the window: the paper's overlap-tile, window by window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pixelwise.errors import InputError
from pixelwise.models.base import SegmentationModel
from pixelwise.runtimes.base import Runtime
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


# Window geometry ------------------------------------------------------------------------------

def as_pair(value: Size) -> tuple[int, int]:
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
    (height, width), (window_h, window_w), (stride_h, stride_w) = map(as_pair, (image_size, window, stride))
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
    height, width = as_pair(window)
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


def forward_logits(runtime: Runtime, batch: Tensor, num_classes: int | None, margin: int = 0) -> Tensor:
    """The runtime's logits of ``batch``, float32, checked: at the input's size less ``margin`` on
    every side (a model's context margin, see :class:`_WindowReader`), with ``num_classes``."""
    logits = runtime(batch).float()  # blend in float32 whatever the network computes in
    size = tuple(side - 2 * margin for side in batch.shape[-2:])
    if tuple(logits.shape[-2:]) != size or (num_classes is not None and logits.shape[1] != num_classes):
        where = "at the input size" if not margin else f"at the input size less {margin} pixels on each side"
        raise InputError(f"model returned logits of shape {tuple(logits.shape)} for input {tuple(batch.shape)}; "
                         f"expected (N, {num_classes or 'classes'}, H, W) {where}")
    return logits


# Windows with context ---------------------------------------------------------------------------

def mirror_indices(start: int, length: int, side: int) -> Tensor:
    """Image rows (or columns) for positions ``start .. start + length - 1`` of a side ``side``
    long, mirrored outside it as :func:`~pixelwise.layers.mirror_pad` mirrors (reflection
    without repeating the edge pixel, again and again; a side of one pixel is repeated)."""
    positions = torch.arange(start, start + length)
    if side == 1:
        return torch.zeros_like(positions)
    period = 2 * (side - 1)
    positions = positions.remainder(period)
    return torch.where(positions < side, positions, period - positions)


def read_mirrored(read_region: RegionReader, image_size: tuple[int, int], region: Sequence[int]) -> Tensor:
    """The image over ``region`` ``(top, left, height, width)``, which may reach outside the image:
    one read of the pixels it needs, mirrored outwards (``read_region`` itself when inside)."""
    top, left, height, width = region
    if top >= 0 and left >= 0 and top + height <= image_size[0] and left + width <= image_size[1]:
        return read_region(top, left, height, width)
    rows, cols = mirror_indices(top, height, image_size[0]), mirror_indices(left, width, image_size[1])
    first_row, first_col = int(rows.min()), int(cols.min())
    block = read_region(first_row, first_col, int(rows.max()) - first_row + 1, int(cols.max()) - first_col + 1)
    return block[:, (rows - first_row).to(block.device)][:, :, (cols - first_col).to(block.device)]


class _ContextForward(nn.Module):
    """A model's :meth:`~pixelwise.models.base.SegmentationModel.forward_context` as a module, for a
    :class:`~pixelwise.runtimes.TorchRuntime` to run (eval mode, autocast) like the model itself."""

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # the runtime restores this flag after each call

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_context(x)


@dataclass
class _WindowReader:
    """What the network sees of each window: the window itself, or, for a PyTorch model with a
    context margin (:attr:`~pixelwise.models.base.SegmentationModel.context_margin`), the region
    around it the model asks for (mirrored past the image's borders), whose logits are cropped
    back to the window."""

    read_region: RegionReader
    image_size: tuple[int, int]
    model: SegmentationModel | None = None

    @classmethod
    def build(cls, runtime: Runtime, read_region: RegionReader, image_size: tuple[int, int]
              ) -> tuple[_WindowReader, Runtime]:
        """The reader for ``runtime``'s model, and the runtime that runs the windows it reads."""
        model = runtime.model if isinstance(runtime, TorchRuntime) else None
        if not (isinstance(model, SegmentationModel) and model.context_margin > 0):
            return cls(read_region, image_size), runtime
        return cls(read_region, image_size, model), TorchRuntime(_ContextForward(model), runtime.precision)

    @property
    def margin(self) -> int:
        return self.model.context_margin if self.model is not None else 0

    def region(self, window: Sequence[int]) -> tuple[int, int, int, int]:
        """The region read for ``window`` ``(top, left, height, width)``."""
        return tuple(window) if self.model is None else self.model.context_region(window, self.image_size)

    def read(self, window: Sequence[int]) -> Tensor:
        if self.model is None:
            return self.read_region(*window)
        return read_mirrored(self.read_region, self.image_size, self.region(window))

    def crop(self, window: Sequence[int], logits: Tensor) -> Tensor:
        """The window's own logits out of the logits of its region."""
        if self.model is None:
            return logits
        top, left, height, width = window
        region_top, region_left = self.region(window)[:2]
        rows, cols = top - region_top - self.margin, left - region_left - self.margin
        return logits[:, rows:rows + height, cols:cols + width]


@torch.inference_mode()
def run_windows(model: Predictor, read_region: RegionReader, image_size: Size, emit: BlockSink,
                window: Size = 512, stride: Size = 341, blend: Blend = "gaussian", batch_size: int = 4,
                num_classes: int | None = None, band: int | None = None) -> TiledStats:
    """Slide a window over an image, blend the overlapping logits, emit finished blocks.

    Args:
        model: a runtime, or a module (run in fp32), mapping ``(N, channels, h, w)`` to logits
            ``(N, classes, h, w)``.
        read_region: the image, a region at a time, always inside the image: window-sized, or
            for a PyTorch model with a context margin (the valid-convolution U-Net) the window
            with the real context around it the model asks for, mirrored past the image's
            borders (overlap-tile: the window's logits are then those of the whole image).
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
    height, width = as_pair(image_size)
    reader, runtime = _WindowReader.build(as_runtime(model), read_region, (height, width))
    (window_h, window_w), (stride_h, stride_w) = as_pair(window), as_pair(stride)
    rows, cols = _Axis.build(height, window_h, stride_h), _Axis.build(width, window_w, stride_w)
    weights = importance_map((rows.window, cols.window), blend).to(runtime.device)
    windows = sliding_windows((height, width), window, stride)
    stats = TiledStats(largest_read=reader.region(windows[0])[2:])
    for cells in _bands(rows, cols, band):
        blender = _CellBlender(rows, cols, cells, weights, emit)
        _run_band(runtime, reader, [w for w in windows if blender.touches(*w[:2])], blender, batch_size,
                  num_classes, stats)
        stats.bands += 1
        stats.peak_blend_bytes = max(stats.peak_blend_bytes, blender.peak_bytes)
    return stats


def _run_band(runtime: Runtime, reader: _WindowReader, windows: list[tuple[int, int, int, int]],
              blender: _CellBlender, batch_size: int, num_classes: int | None, stats: TiledStats) -> None:
    """Run the windows touching one band through the network, a batch at a time, and blend them."""
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        batch = torch.stack([reader.read(window) for window in chunk]).to(runtime.device)
        for window, logits in zip(chunk, forward_logits(runtime, batch, num_classes, reader.margin)):
            blender.add(window[0], window[1], reader.crop(window, logits))
        stats.windows += len(chunk)
        stats.forwards += 1
