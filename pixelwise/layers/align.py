"""Resampling between feature-map grids placed exactly on the image.

A :class:`Grid` says where a feature map's pixels sit on the input image, along one axis (both
axes share it): pixel ``j`` is centred on image position ``offset + stride·j``. Encoders whose
stride-2 layers pad evenly (ResNet, MobileNet) centre pixel ``y`` of a stride-``s`` map on
``s·y`` (offset 0), while ``F.interpolate(align_corners=False)`` assumes ``s·y + (s - 1)/2``
(:meth:`Grid.half_pixel`); resizing between the two conventions shifts features by a fraction
of a pixel per level.

:func:`aligned_resize` samples a map on ``source`` at the pixels of ``target``: target pixel
``j`` reads source coordinate

    u_j = (target.offset + target.stride·j - source.offset) / source.stride

(bilinear: linear interpolation between ``floor(u)`` and ``floor(u) + 1``; nearest:
``floor(u + 1/2)``; both clamp to the border, i.e. replicate it). Upsampling by ``k`` from
``Grid(k, 0)`` to ``Grid(1, 0)`` reads ``u_j = j/k``: output pixel ``k·m`` is input pixel ``m``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from pixelwise.errors import InputError
from pixelwise.layers.padding import replicate_pad

Number = Union[Fraction, int, float]

#: Float strides and offsets become fractions with at most this denominator (1/3 stays 1/3).
MAX_DENOMINATOR = 1 << 16
#: Bound on the integers of a sampling rule ``(a + b·j) / d``, so that it stays within int64 for
#: every size below ``2**29``.
_MAX_RULE_INTEGER = 1 << 32
RESIZE_MODES = ("bilinear", "nearest")


def _fraction(value: Number, name: str) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (Fraction, int, float)):
        raise TypeError(f"grid {name} must be a Fraction, int or float, got {value!r}")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InputError(f"grid {name} must be finite, got {value!r}")
        return Fraction(value).limit_denominator(MAX_DENOMINATOR)
    return Fraction(value)


@dataclass(frozen=True)
class Grid:
    """Where a feature map's pixels sit on the image: pixel ``j`` is centred on image position
    ``offset + stride·j`` (image pixel centres are at integers). Floats are stored as fractions
    (denominator at most :data:`MAX_DENOMINATOR`).

    Attributes:
        stride: image pixels between neighbouring pixels of the map (positive).
        offset: image position of the map's pixel 0.
    """

    stride: Fraction
    offset: Fraction = Fraction(0)

    def __post_init__(self) -> None:
        stride, offset = _fraction(self.stride, "stride"), _fraction(self.offset, "offset")
        if stride <= 0:
            raise InputError(f"grid stride must be positive, got {self.stride!r}")
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "offset", offset)

    @classmethod
    def half_pixel(cls, stride: Number) -> Grid:
        """The grid ``F.interpolate(align_corners=False)`` assumes for a stride-``stride`` map:
        pixel ``y`` covers image pixels ``[s·y, s·y + s)`` and is centred on ``s·y + (s - 1)/2``."""
        stride = _fraction(stride, "stride")
        return cls(stride, (stride - 1) / 2)

    def position(self, index: Number) -> Fraction:
        """Image position of (possibly fractional) pixel ``index`` of this map."""
        return self.offset + self.stride * _fraction(index, "index")

    def locate(self, position: Number) -> Fraction:
        """Pixel coordinate in this map of image position ``position`` (inverse of :meth:`position`)."""
        return (_fraction(position, "position") - self.offset) / self.stride

    def scaled(self, factor: Number) -> Grid:
        """This grid with ``factor`` times the pixel density and the same pixel 0 (``factor = k``
        is the target of an aligned upsampling by ``k``)."""
        return Grid(self.stride / _fraction(factor, "factor"), self.offset)

    def shift_from(self, source: Grid) -> Fraction:
        """``δ``: the source coordinate read by this grid's pixel 0 (``u_0``), zero when both
        grids start at the same image position."""
        return source.locate(self.offset)


def sampling_rule(source: Grid, target: Grid) -> tuple[int, int, int]:
    """Integers ``(a, b, d)`` with ``u_j = (a + b·j) / d``: the source coordinate read by target
    pixel ``j``, ``d > 0``.

    Raises:
        ValueError: the rule needs integers beyond ``2**32`` (grids with huge denominators).
    """
    start = target.shift_from(source)
    step = target.stride / source.stride
    d = math.lcm(start.denominator, step.denominator)
    a, b = int(start * d), int(step * d)
    common = math.gcd(a, b, d)
    a, b, d = a // common, b // common, d // common
    if max(abs(a), abs(b), d) > _MAX_RULE_INTEGER:
        raise InputError(f"sampling {target} from {source} needs the rule u_j = ({a} + {b}·j)/{d}, whose "
                         f"integers exceed 2**32; give strides and offsets with small denominators")
    return a, b, d


def _axis_taps(length, size, rule: tuple[int, int, int], mode: str, device: torch.device,
               dtype: torch.dtype) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Indices (and for bilinear the second index and its weight) sampling ``size`` target
    pixels from a source axis of ``length`` pixels. Integer tensor arithmetic only, so a symbolic
    ``length`` or ``size`` under ``torch.export`` stays symbolic."""
    a, b, d = rule
    j = torch.arange(size, device=device, dtype=torch.int64)
    last = length - 1
    if mode == "nearest":
        # floor(u + 1/2) = floor((2a + 2b·j + d) / 2d)
        index = torch.div(2 * a + d + (2 * b) * j, 2 * d, rounding_mode="floor")
        return index.clamp(min=0).clamp(max=last), None, None
    scaled = a + b * j
    low = torch.div(scaled, d, rounding_mode="floor")
    # In at least float32, so that d (up to 2**32) does not overflow a half-precision weight.
    weight = ((scaled - low * d).to(torch.promote_types(dtype, torch.float32)) / d).to(dtype)
    return low.clamp(min=0).clamp(max=last), (low + 1).clamp(min=0).clamp(max=last), weight


def _resample_axis(x: Tensor, dim: int, size, rule: tuple[int, int, int], mode: str) -> Tensor:
    low, high, weight = _axis_taps(x.shape[dim], size, rule, mode, x.device, x.dtype)
    near = x.index_select(dim, low)
    if high is None:
        return near
    far = x.index_select(dim, high)
    if dim == -2:
        weight = weight[:, None]
    return near * (1 - weight) + far * weight


def aligned_resize(x: Tensor, size: Sequence[int], source: Grid, target: Grid, mode: str = "bilinear") -> Tensor:
    """``x`` (on grid ``source``) sampled at the ``size`` (height, width) pixels of grid ``target``.

    Target pixel ``j`` reads source coordinate ``u_j = (target.offset + target.stride·j -
    source.offset) / source.stride`` along each axis. ``"bilinear"`` interpolates linearly between
    pixels ``floor(u_j)`` and ``floor(u_j) + 1``, ``"nearest"`` takes pixel ``floor(u_j + 1/2)``;
    indices outside the map are clamped to its border (replicate). Separable: one gather along
    the height, one along the width, with indices and weights computed from the sizes by integer
    tensor arithmetic, so it exports with dynamic sizes.

    Args:
        x: ``(N, C, H, W)``.
        size: output ``(height, width)``, each at least 1 (ints or symbolic sizes).
        source: the grid of ``x``.
        target: the grid of the output.
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        ``(N, C, height, width)``, the dtype and device of ``x``.
    """
    if mode not in RESIZE_MODES:
        raise InputError(f"aligned_resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if x.dim() != 4:
        raise InputError(f"aligned_resize expects (N, C, H, W), got shape {tuple(x.shape)}")
    if len(size) != 2:
        raise InputError(f"aligned_resize size must be (height, width), got {size!r}")
    rule = sampling_rule(source, target)
    out = _resample_axis(x, -2, size[0], rule, mode)
    return _resample_axis(out, -1, size[1], rule, mode)


def aligned_upsample(x: Tensor, scale: int, mode: str = "bilinear") -> Tensor:
    """``x`` upsampled by the integer ``scale`` with output pixel ``j`` at input coordinate
    ``j / scale`` (input pixel ``m`` lands on output pixel ``scale·m``): :func:`aligned_resize`
    from ``Grid(scale)`` to ``Grid(1)``, output ``scale·H × scale·W``.

    For a power-of-two ``scale`` (where ``1/scale`` and every position ``j/scale`` are exact in
    floating point) it runs PyTorch's own kernels on ``x`` replicate-padded by one pixel at the
    bottom and right: bilinear ``F.interpolate(size=scale·n + 1, align_corners=True)`` samples
    ``j·n/(scale·n) = j/scale``, nearest ``F.interpolate(scale_factor=scale)`` shifted by
    ``scale // 2`` takes ``floor(j/scale + 1/2)``; both are then cropped to ``scale·n``. Nearest
    is then bit-identical to :func:`aligned_resize`, bilinear agrees up to the rounding of its
    (differently ordered) weighted sums.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise InputError(f"upsampling scale must be a positive integer, got {scale!r}")
    if mode not in RESIZE_MODES:
        raise InputError(f"aligned_upsample mode must be one of {RESIZE_MODES}, got {mode!r}")
    if x.dim() != 4:
        raise InputError(f"aligned_upsample expects (N, C, H, W), got shape {tuple(x.shape)}")
    height, width = scale * x.shape[-2], scale * x.shape[-1]
    if scale & (scale - 1):
        return aligned_resize(x, (height, width), Grid(scale), Grid(1), mode)
    padded = replicate_pad(x, (0, 1, 0, 1))
    if mode == "bilinear":
        return F.interpolate(padded, size=(height + 1, width + 1), mode="bilinear",
                             align_corners=True)[..., :height, :width]
    shift = scale // 2
    return F.interpolate(padded, scale_factor=scale, mode="nearest")[..., shift:shift + height, shift:shift + width]


def half_pixel_shift(scale: int) -> Fraction:
    """The shift of half-pixel-centre upsampling by ``scale`` (``align_corners=False``): output
    pixel ``j`` reads input coordinate ``(j + 1/2)/scale - 1/2 = (1 - scale)/(2·scale) + j/scale``."""
    return Fraction(1 - scale, 2 * scale)


def upsampling_step(source: Grid, target: Grid) -> tuple[int, Fraction]:
    """``(scale, shift)`` of the upsampling from grid ``source`` to the denser grid ``target``:
    target pixel ``j`` reads source coordinate ``shift + j/scale``.

    Raises:
        ValueError: ``source.stride / target.stride`` is not a positive integer.
    """
    ratio = source.stride / target.stride
    if ratio.denominator != 1:
        raise InputError(f"upsampling from {source} to {target} needs an integer scale, got {ratio}")
    return int(ratio), target.shift_from(source)


def shifted_upsample(x: Tensor, scale: int, shift: Number, mode: str = "bilinear") -> Tensor:
    """``x`` upsampled by the integer ``scale``, output pixel ``j`` reading input coordinate
    ``shift + j/scale`` (clamped to the border), output ``scale·H × scale·W``.

    ``shift = 0`` is :func:`aligned_upsample`; the half-pixel shift (:func:`half_pixel_shift`)
    is ``F.interpolate(align_corners=False)`` (bilinear); any other shift is
    :func:`aligned_resize` between ``Grid(scale)`` and ``Grid(1, scale·shift)``.
    """
    shift = _fraction(shift, "shift")
    if shift == 0:
        return aligned_upsample(x, scale, mode)
    if mode == "bilinear" and shift == half_pixel_shift(scale):
        return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    size = (scale * x.shape[-2], scale * x.shape[-1])
    return aligned_resize(x, size, Grid(scale), Grid(1, scale * shift), mode)


#: The input image's own grid: pixel ``j`` at position ``j``. Logits on it are centred on the pixels they label.
IMAGE_GRID = Grid(1)
