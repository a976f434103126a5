"""The overlap (checkerboard) problem of transposed convolution, measured.

A transposed convolution pastes one scaled copy of its kernel per input pixel, ``stride``
pixels apart. Where the copies overlap unevenly, some output pixels receive more
contributions than their neighbours, in a pattern that repeats every ``stride`` pixels: the
checkerboard of Odena et al., "Deconvolution and Checkerboard Artifacts" (Distill, 2016).

- :func:`overlap_map` counts those contributions (the structural view: which kernel/stride
  pairs overlap evenly), with a text and a PNG rendering.
- :func:`checkerboard_score` measures the pattern an actual upsampler imprints on its output
  (the learned view: even overlap does not stop weights from learning a checkerboard), and
  :func:`compare_upsamplers` tabulates it for pixelwise's four upsampler kinds.
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.errors import InputError
from pixelwise.layers.upsample import UPSAMPLE_KINDS, make_upsampler

# The largest map computed (a side in output pixels) and the largest PNG written (a side in pixels).
MAX_MAP_SIDE = 4096
MAX_PNG_SIDE = 8192


def overlap_counts_1d(kernel: int, stride: int, input_size: int = 8, padding: int = 0,
                      dilation: int = 1) -> Tensor:
    """How many input pixels contribute to each output pixel of a 1-D transposed convolution.

    Example: ``overlap_counts_1d(3, 2, input_size=3).tolist() == [1, 1, 2, 1, 2, 1, 1]``.

    Returns:
        An int64 tensor of the output's length.
    """
    if min(kernel, stride, input_size, dilation) < 1 or padding < 0:
        raise InputError(f"kernel, stride, input_size and dilation must be ≥ 1 and padding ≥ 0, got "
                         f"{kernel=}, {stride=}, {input_size=}, {dilation=}, {padding=}")
    ones = torch.ones(1, 1, input_size, dtype=torch.float64)
    weight = torch.ones(1, 1, kernel, dtype=torch.float64)
    # All-ones input and kernel: each output pixel sums one 1 per contributing (input, tap) pair.
    try:
        counts = F.conv_transpose1d(ones, weight, stride=stride, padding=padding, dilation=dilation)
    except RuntimeError as error:  # padding crops the whole output away
        raise InputError(f"no output: {error}") from error
    return counts[0, 0].round().long()


@dataclass(frozen=True)
class OverlapMap:
    """Contribution counts of a transposed convolution with a square kernel.

    Attributes:
        kernel, stride, padding, dilation, input_size: the layer and input measured.
        counts: per-axis 1-D counts (rows and columns alike: the layer is square).
        grid: the 2-D counts, ``counts ⊗ counts``.
        period: the period of the interior pattern (the stride).
        pattern: the interior counts by phase: ``pattern[r]`` is the count of every output
            pixel ``o`` away from the borders with ``o % period == r``.
        even: whether the interior counts are all equal (no structural checkerboard).
    """

    kernel: int
    stride: int
    padding: int
    dilation: int
    input_size: int
    counts: Tensor
    grid: Tensor
    period: int
    pattern: tuple[int, ...]
    even: bool

    def render(self, limit: int = 64) -> str:
        """The 2-D map as a text grid, one right-aligned count per output pixel (its top-left
        ``limit``×``limit`` corner for larger maps, saying so)."""
        shown = self.grid[:limit, :limit]
        width = len(str(int(shown.max())))
        text = "\n".join(" ".join(f"{int(count):>{width}}" for count in row) for row in shown.tolist())
        if shown.shape != self.grid.shape:
            text += f"\n(the top-left {shown.shape[0]}×{shown.shape[1]} of {self.grid.shape[0]}×{self.grid.shape[1]})"
        return text

    def summary(self) -> str:
        """Two lines: the layer and its output, then the interior pattern and its verdict."""
        layer = (f"kernel {self.kernel}, stride {self.stride}, padding {self.padding}, dilation "
                 f"{self.dilation}: input {self.input_size}×{self.input_size} → output "
                 f"{len(self.counts)}×{len(self.counts)}")
        verdict = "even (no checkerboard from overlap)" if self.even else "uneven (checkerboard)"
        pattern = f"period {self.period}, interior pattern {list(self.pattern)} (by output index mod {self.period})"
        return f"{layer}\n{pattern}: {verdict}"

    def save_png(self, path: str | Path, cell: int = 16) -> None:
        """Write the 2-D map as a grey heat map, ``cell``×``cell`` pixels per output pixel
        (white = most contributions, black = none), each cell labelled with its count
        when ``cell`` ≥ 12."""
        from PIL import Image, ImageDraw

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cell = max(1, min(cell, MAX_PNG_SIDE // max(self.grid.shape)))
        peak = max(int(self.grid.max()), 1)
        levels = (self.grid.double() * 255 / peak).round().to(torch.uint8)
        image = Image.fromarray(levels.numpy()).resize(
            (levels.shape[1] * cell, levels.shape[0] * cell), Image.Resampling.NEAREST)
        if cell >= 12:  # the default bitmap font needs about 10 pixels
            draw = ImageDraw.Draw(image)
            for (row, col), count in zip(torch.cartesian_prod(*map(torch.arange, levels.shape)).tolist(),
                                         self.grid.flatten().tolist()):
                ink = 0 if levels[row, col] > 127 else 255  # dark text on light cells, and back
                draw.text(((col + 0.5) * cell, (row + 0.5) * cell), str(count), fill=ink, anchor="mm")
        image.save(path)


def overlap_map(kernel: int, stride: int, input_size: int = 8, padding: int = 0,
                dilation: int = 1) -> OverlapMap:
    """Count the contributions to each output pixel of a square transposed convolution.

    The interior is even exactly when ``stride`` divides ``kernel`` and ``gcd(dilation,
    stride) == 1``: phase ``r`` receives the taps ``j`` with ``j·dilation ≡ r + padding
    (mod stride)``; with dilation 1 that is ``kernel // stride`` or one more taps, so every
    phase gets the same number iff ``kernel % stride == 0`` (kernel 4 / stride 2 even,
    kernel 3 / stride 2 not), and a dilation sharing a factor with the stride leaves some
    phases with none.

    Example: ``overlap_map(3, 2).pattern == (2, 1)``.

    Raises:
        ValueError: if ``input_size`` is too small to show one period away from the borders.
    """
    side = (input_size - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1
    if side > MAX_MAP_SIDE:
        raise InputError(f"input_size {input_size} gives a {side}×{side} map, past the {MAX_MAP_SIDE}×{MAX_MAP_SIDE} "
                         f"that can be shown ({side * side * 8 / 2**30:.1f} GiB of counts); the pattern repeats "
                         f"every {stride} pixels, so a size of a few strides shows it all: use a smaller --size")
    counts = overlap_counts_1d(kernel, stride, input_size, padding, dilation)
    # An all-ones k×k kernel is ones(k) ⊗ ones(k) and the ones input is separable too, so the
    # 2-D transposed convolution factorises: grid[y, x] = counts[y] · counts[x].
    grid = torch.outer(counts, counts)
    interior = _interior(counts, kernel, stride, input_size, padding, dilation)
    pattern = tuple(int(counts[next(o for o in interior if o % stride == phase)]) for phase in range(stride))
    return OverlapMap(kernel, stride, padding, dilation, input_size, counts, grid, stride, pattern,
                      even=len(set(pattern)) == 1)


def _interior(counts: Tensor, kernel: int, stride: int, input_size: int, padding: int,
              dilation: int) -> range:
    """The output indices that every kernel tap able to reach them does reach (no border loss)."""
    extent = dilation * (kernel - 1) + 1
    # Before cropping, position q is reached by every tap aligned with it iff the input pixels
    # those taps come from, q // stride back to (q - extent + 1) / stride, all exist.
    interior = range(max(0, extent - 1 - padding), min(len(counts), (input_size - 1) * stride - padding + 1))
    if len(interior) < stride:
        # Length (in - 1)·stride - extent + 2 uncropped, or the whole output when the padding
        # crops past the border region; either must reach one stride.
        smallest = 2 + math.ceil(max(extent - 2, 2 * padding - extent) / stride)
        raise InputError(f"input_size {input_size} is too small to show the interior pattern of kernel "
                         f"{kernel}, stride {stride}, padding {padding}, dilation {dilation}: use ≥ {smallest}")
    return interior


@dataclass(frozen=True)
class ScoreRow:
    """One row of :func:`compare_upsamplers`.

    Attributes:
        upsampler: what was measured (a kind of :func:`make_upsampler`, or a bare layer).
        init: ``"pixelwise"`` (its own initialisation), ``"random"`` (PyTorch's default) or
            ``"positive"`` (uniform(0, 1) weights, no bias).
        score: :func:`checkerboard_score`, averaged over ``seeds`` random draws.
        seeds: how many initialisations were averaged.
    """

    upsampler: str
    init: str
    score: float
    seeds: int


@torch.no_grad()
def checkerboard_score(upsampler: nn.Module, channels: int, scale: int, size: int = 16) -> float:
    """How strongly an upsampler imprints a pattern of period ``scale`` on a constant input.

    The input is constant (1 in every channel and pixel). Any resize rule, nearest or
    bilinear, maps it to the same constant, so whatever repeats every ``scale`` pixels in the
    output comes from the upsampler itself: unevenly overlapping kernels, per-phase weight
    sums or biases. (A ramp would not do: nearest turns it into a staircase and bilinear shifts
    it by sub-pixel amounts, both periodic deviations without any checkerboard.)

    The output, less ``2·scale`` pixels at each border (zero padding lives there), is split
    into the ``scale × scale`` phase classes ``(y mod scale, x mod scale)``; the score is the
    standard deviation of the per-phase means (per output channel, root-mean-squared over
    channels) divided by the root mean square of the output. So it lies in [0, 1]: 0 is no
    checkerboard, 1 an output that is all checkerboard; and it does not change when the
    output is scaled.

    Args:
        upsampler: a module mapping ``(N, channels, H, W)`` to ``(N, C, scale·H, scale·W)``; it is
            measured on a float64 copy in eval mode and left untouched.
        channels: input channels.
        scale: upsampling factor: the period looked for.
        size: input height and width; at least 5 so that an interior remains.
    """
    if size < 5:
        raise InputError(f"size must be at least 5 to leave an interior of whole periods, got {size}")
    probe = copy.deepcopy(upsampler).double().eval()
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    output = probe(torch.ones(1, channels, size, size, dtype=torch.float64, device=device))
    if output.shape[-2:] != (scale * size, scale * size):
        raise InputError(f"expected a {scale * size}×{scale * size} output for scale {scale}, "
                         f"got {tuple(output.shape[-2:])}")
    # Whole periods only, starting at a multiple of scale, so phase (0, 0) is output pixel (0, 0)'s.
    interior = output[0, :, 2 * scale:-2 * scale, 2 * scale:-2 * scale]
    cells = interior.reshape(interior.shape[0], size - 4, scale, size - 4, scale)
    phase_means = cells.mean(dim=(1, 3)).flatten(1)  # (C, scale²)
    spread = phase_means.var(dim=1, unbiased=False).mean().sqrt()
    magnitude = interior.square().mean().sqrt()
    return 0.0 if magnitude == 0 else float(spread / magnitude)


def compare_upsamplers(channels: int = 8, scale: int = 2, seed: int = 0, num_seeds: int = 4) -> list[ScoreRow]:
    """Checkerboard scores of the four upsampler kinds, at pixelwise's initialisation and at
    PyTorch's default random one, plus two bare transposed convolutions for reference: kernel
    ``scale + 1`` (uneven overlap; kernel 3 at scale 2) and ``2·scale`` (even; kernel 4).

    The bare convolutions are also scored with uniform(0, 1) weights and no bias
    (``init="positive"``): with positive weights the per-phase sums follow the overlap counts,
    so those two rows show the overlap effect itself, while zero-mean random weights produce
    a checkerboard for any kernel.

    Random rows average :func:`checkerboard_score` over ``num_seeds`` draws (seeds ``seed``,
    ``seed + 1``, …) on a forked RNG: the result depends only on the arguments, and the
    global random state is left alone.
    """
    random_seeds = list(range(seed, seed + num_seeds))

    def score(build: Callable[[], nn.Module], seeds: list[int]) -> float:
        return _mean_score(build, channels, scale, seeds)

    rows = []
    for kind in UPSAMPLE_KINDS:
        build = functools.partial(make_upsampler, kind, channels, channels, scale)
        rows.append(ScoreRow(kind, "pixelwise", score(build, [seed]), 1))
        rows.append(ScoreRow(kind, "random", score(lambda: _reset(build()), random_seeds), num_seeds))
    for kernel in (scale + 1, 2 * scale):
        build = functools.partial(_transposed_conv, channels, kernel, scale)
        name = f"ConvTranspose2d k{kernel} s{scale}"
        rows.append(ScoreRow(name, "random", score(build, random_seeds), num_seeds))
        rows.append(ScoreRow(name, "positive", score(lambda: _positive(build()), random_seeds), num_seeds))
    return rows


def _transposed_conv(channels: int, kernel: int, scale: int) -> nn.ConvTranspose2d:
    """A bare transposed convolution (kernel ≥ scale) whose output is exactly ``scale`` times its input."""
    # out = (in - 1)·scale + kernel - 2·padding + output_padding must equal in·scale.
    padding = math.ceil((kernel - scale) / 2)
    return nn.ConvTranspose2d(channels, channels, kernel, stride=scale, padding=padding,
                              output_padding=2 * padding - (kernel - scale))


def _reset(module: nn.Module) -> nn.Module:
    """PyTorch's default random initialisation on every submodule that has one."""
    for submodule in module.modules():
        if hasattr(submodule, "reset_parameters"):
            submodule.reset_parameters()
    return module


@torch.no_grad()
def _positive(conv: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Uniform(0, 1) weights and no bias: per-phase sums then grow with the overlap counts."""
    nn.init.uniform_(conv.weight, 0.0, 1.0)
    if conv.bias is not None:
        conv.bias.zero_()
    return conv


def _mean_score(build: Callable[[], nn.Module], channels: int, scale: int, seeds: list[int]) -> float:
    """The mean checkerboard score of ``build()`` called under each seed in turn."""
    scores = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            scores.append(checkerboard_score(build(), channels, scale))
    return sum(scores) / len(scores)
