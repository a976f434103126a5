"""The four upsampling choices behind one factory, :func:`make_upsampler`.

Every kind maps ``(N, in_channels, H, W)`` to ``(N, out_channels, s·H, s·W)`` exactly, and every
kind starts as its resize rule: with ``in_channels == out_channels`` an upsampler at
initialisation *is* the interpolation it is named after (the convolution starts as identity),
so swapping kinds changes what can be learned, not where training starts.

- ``"transposed"``: a transposed convolution with kernel ``2s - s mod 2`` and stride ``s``,
  initialised to bilinear interpolation as in the FCN paper (Long et al., 2015). The input is
  padded by one replicated pixel so the borders match ``F.interpolate(mode="bilinear")`` too.
  Overlapping kernels can learn checkerboard artefacts (Odena et al., 2016).
- ``"nearest"`` / ``"bilinear"``: resize, then a 3×3 convolution (Odena et al., 2016).
- ``"pixelshuffle"``: a 3×3 convolution to ``s²`` times the channels, then sub-pixel shuffling
  (Shi et al., 2016), ICNR-initialised (Aitken et al., 2017) so it starts as nearest-neighbour
  upsampling of its convolution and free of checkerboard.

The resize rules above place output pixel ``j`` at input coordinate ``(j + 1/2)/s - 1/2``
(half-pixel centres, ``align_corners=False``). With ``aligned=True`` every kind instead places
output pixel ``j`` at input coordinate ``j/s`` (input pixel ``m`` lands on output pixel ``s·m``,
:func:`~pixelwise.layers.align.aligned_upsample`), the geometry of encoders whose stride-2 layers
pad evenly; each kind then starts as that aligned resize rule:

- ``"transposed"``: a triangle kernel of size ``2s - 1`` (taps ``1 - |t - (s-1)|/s``), padding
  ``s - 1``, the input replicate-padded by one pixel at the bottom and right and the output
  cropped to ``s·H × s·W``: aligned bilinear, borders included.
- ``"nearest"`` / ``"bilinear"``: aligned resize (``floor(j/s + 1/2)`` / linear between
  ``floor(j/s)`` and the next pixel), then the 3×3 convolution.
- ``"pixelshuffle"``: the 3×3 convolution (replicate padding) starts with sub-pixel ``(r, c)`` of
  input pixel ``(m, n)`` equal to the bilinear mix of pixels ``m, m+1`` (weights ``1 - r/s, r/s``)
  and ``n, n+1`` (``1 - c/s, c/s``): aligned bilinear, borders included.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.layers.align import aligned_upsample
from pixelwise.registry import Registry

Upsampler = Callable[[int, int, int], nn.Module]
UPSAMPLERS: Registry[Upsampler] = Registry("upsample kind")


def bilinear_kernel(scale: int) -> Tensor:
    """The 2-D bilinear interpolation kernel of size ``2·scale - scale mod 2`` (FCN's filler)."""
    size = 2 * scale - scale % 2
    center = scale - 1 if size % 2 == 1 else scale - 0.5
    taps = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / scale
    return (taps[:, None] * taps[None, :]).float()


def triangle_taps(scale: int) -> Tensor:
    """The ``2·scale - 1`` linear-interpolation taps ``1 - |t - (scale - 1)|/scale`` (float64)."""
    return 1 - (torch.arange(2 * scale - 1, dtype=torch.float64) - (scale - 1)).abs() / scale


def _projection(in_channels: int, out_channels: int) -> Tensor:
    """A ``(out, in)`` channel map: identity when the counts match, else PyTorch's default 1×1 init."""
    if in_channels == out_channels:
        return torch.eye(in_channels)
    return nn.Conv2d(in_channels, out_channels, 1).weight.detach()[:, :, 0, 0]


def _init_conv_as_identity_or_default(conv: nn.Conv2d) -> None:
    """Dirac-initialise a conv whose input and output channel counts match (it then passes
    its input through unchanged); leave PyTorch's default init otherwise."""
    if conv.in_channels == conv.out_channels:
        nn.init.dirac_(conv.weight)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


@UPSAMPLERS.register("transposed")
class TransposedUpsample(nn.Module):
    """Transposed convolution, bilinear-initialised, exact at the borders.

    With ``aligned=True`` output pixel ``j`` sits at input coordinate ``j/scale`` (see the module
    docstring) and the kernel starts as aligned bilinear interpolation.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int, aligned: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.aligned = aligned
        if aligned:
            # Output o gathers input i through tap o + (s - 1) - i·s, weight 1 - |o/s - i|: linear
            # interpolation at o/s. The replicated last row/column feeds o/s in (H - 1, H); the
            # transposed conv yields s·H + 1 rows, the last is cropped in forward.
            taps = triangle_taps(scale)
            kernel = (taps[:, None] * taps[None, :]).float()
            self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel.shape[-1], stride=scale,
                                           padding=scale - 1, bias=False)
            with torch.no_grad():
                self.conv.weight.copy_(_projection(in_channels, out_channels).t()[:, :, None, None] * kernel)
            return
        kernel = bilinear_kernel(scale)
        # One replicated pixel each side (see forward) makes the border taps interpolate like
        # F.interpolate; the conv's own padding then crops exactly that pad (s) and the kernel's
        # half-overhang (s // 2) from every side, so no sliced copy of the output is made.
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel.shape[-1], stride=scale,
                                       padding=scale + scale // 2, bias=False)
        with torch.no_grad():
            # weight is (in, out, k, k): bilinear taps scaled by a channel projection.
            self.conv.weight.copy_(_projection(in_channels, out_channels).t()[:, :, None, None] * kernel)

    def forward(self, x: Tensor) -> Tensor:
        if self.aligned:
            height, width = self.scale * x.shape[-2], self.scale * x.shape[-1]
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="replicate"))[..., :height, :width]
        return self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))


class ResizeConv(nn.Module):
    """Resize (nearest or bilinear), then a 3×3 convolution. With ``aligned=True`` the resize is
    :func:`~pixelwise.layers.align.aligned_upsample` (output pixel ``j`` at input ``j/scale``)."""

    def __init__(self, in_channels: int, out_channels: int, scale: int, mode: str, aligned: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.mode = mode
        self.aligned = aligned
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        _init_conv_as_identity_or_default(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        if self.aligned:
            return self.conv(aligned_upsample(x, self.scale, self.mode))
        kwargs = {"align_corners": False} if self.mode == "bilinear" else {}
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode=self.mode, **kwargs))


@UPSAMPLERS.register("nearest")
def _nearest_resize_conv(in_channels: int, out_channels: int, scale: int, aligned: bool = False) -> ResizeConv:
    return ResizeConv(in_channels, out_channels, scale, "nearest", aligned)


@UPSAMPLERS.register("bilinear")
def _bilinear_resize_conv(in_channels: int, out_channels: int, scale: int, aligned: bool = False) -> ResizeConv:
    return ResizeConv(in_channels, out_channels, scale, "bilinear", aligned)


@UPSAMPLERS.register("pixelshuffle")
class PixelShuffleUpsample(nn.Module):
    """Sub-pixel convolution with ICNR initialisation.

    With ``aligned=True`` the convolution pads by replication and starts as
    :func:`bilinear_icnr_` (aligned bilinear upsampling, output pixel ``j`` at input ``j/scale``).
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int, aligned: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.aligned = aligned
        self.conv = nn.Conv2d(in_channels, out_channels * scale**2, 3, padding=1,
                              padding_mode="replicate" if aligned else "zeros")
        self.shuffle = nn.PixelShuffle(scale)
        if aligned:
            bilinear_icnr_(self.conv, scale)
        else:
            icnr_(self.conv, scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.conv(x))


def icnr_(conv: nn.Conv2d, scale: int) -> None:
    """ICNR: every group of ``scale²`` output channels that pixel-shuffle into one channel gets
    the same kernel, so the shuffled output starts as nearest upsampling of that kernel's output."""
    out_channels = conv.out_channels // scale**2
    base = nn.Conv2d(conv.in_channels, out_channels, conv.kernel_size, padding=conv.padding)
    _init_conv_as_identity_or_default(base)
    with torch.no_grad():
        conv.weight.copy_(base.weight.repeat_interleave(scale**2, dim=0))
        conv.bias.copy_(base.bias.repeat_interleave(scale**2, dim=0))


def bilinear_icnr_(conv: nn.Conv2d, scale: int) -> None:
    """Initialise a 3×3 conv feeding ``PixelShuffle(scale)`` as aligned bilinear upsampling.

    Output channel ``c·scale² + r·scale + q`` (sub-pixel ``(r, q)`` of channel ``c``) gets taps
    ``(1 - r/s)`` at row offset 0 and ``r/s`` at row offset +1, times ``(1 - q/s)`` / ``q/s`` at
    column offsets 0 / +1, times a channel map (identity when the channel counts match, else
    PyTorch's default 1×1 init); the bias starts at zero. With replicate padding the bottom and
    right border then equal :func:`~pixelwise.layers.align.aligned_upsample` too.
    """
    if conv.kernel_size != (3, 3) or conv.out_channels % scale**2:
        raise ValueError(f"bilinear ICNR needs a 3×3 conv with a multiple of {scale**2} output channels, "
                         f"got kernel {conv.kernel_size} and {conv.out_channels} channels")
    out_channels = conv.out_channels // scale**2
    fractions = torch.arange(scale, dtype=torch.float64) / scale
    taps = torch.zeros(scale, 3, dtype=torch.float64)  # (sub-pixel, tap offset -1/0/+1)
    taps[:, 1], taps[:, 2] = 1 - fractions, fractions
    spatial = taps[:, None, :, None] * taps[None, :, None, :]  # (r, q, 3, 3)
    projection = _projection(conv.in_channels, out_channels).double()  # (out, in)
    weight = projection[:, None, None, :, None, None] * spatial[None, :, :, None]  # (out, r, q, in, 3, 3)
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(conv.out_channels, conv.in_channels, 3, 3))
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


UPSAMPLE_KINDS: tuple[str, ...] = tuple(UPSAMPLERS)


def make_upsampler(kind: str, in_channels: int, out_channels: int, scale: int,
                   aligned: bool = False) -> nn.Module:
    """Build an upsampler.

    Args:
        kind: one of :data:`UPSAMPLE_KINDS` (an unknown kind raises
            :class:`~pixelwise.registry.UnknownNameError`).
        in_channels: channels of the input.
        out_channels: channels of the output.
        scale: integer upsampling factor; 1 gives identity (or a 1×1 conv to change channels).
        aligned: place output pixel ``j`` at input coordinate ``j/scale`` (input pixel ``m`` on
            output pixel ``scale·m``) instead of ``(j + 1/2)/scale - 1/2``; for feature maps whose
            pixel ``y`` is centred on image pixel ``stride·y`` (see :mod:`pixelwise.layers.align`).

    Returns:
        A module mapping ``(N, in_channels, H, W)`` to ``(N, out_channels, scale·H, scale·W)``.
    """
    build = UPSAMPLERS[kind]
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"upsampling scale must be a positive integer, got {scale!r}")
    if scale == 1:
        return nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
    if aligned:
        return build(in_channels, out_channels, scale, aligned=True)
    return build(in_channels, out_channels, scale)
