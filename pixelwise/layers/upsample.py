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
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.registry import Registry

Upsampler = Callable[[int, int, int], nn.Module]
UPSAMPLERS: Registry[Upsampler] = Registry("upsample kind")


def bilinear_kernel(scale: int) -> Tensor:
    """The 2-D bilinear interpolation kernel of size ``2·scale - scale mod 2`` (FCN's filler)."""
    size = 2 * scale - scale % 2
    center = scale - 1 if size % 2 == 1 else scale - 0.5
    taps = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / scale
    return (taps[:, None] * taps[None, :]).float()


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
    """Transposed convolution, bilinear-initialised, exact at the borders."""

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
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
        return self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))


class ResizeConv(nn.Module):
    """Resize (nearest or bilinear), then a 3×3 convolution."""

    def __init__(self, in_channels: int, out_channels: int, scale: int, mode: str) -> None:
        super().__init__()
        self.scale = scale
        self.mode = mode
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        _init_conv_as_identity_or_default(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        kwargs = {"align_corners": False} if self.mode == "bilinear" else {}
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode=self.mode, **kwargs))


@UPSAMPLERS.register("nearest")
def _nearest_resize_conv(in_channels: int, out_channels: int, scale: int) -> ResizeConv:
    return ResizeConv(in_channels, out_channels, scale, "nearest")


@UPSAMPLERS.register("bilinear")
def _bilinear_resize_conv(in_channels: int, out_channels: int, scale: int) -> ResizeConv:
    return ResizeConv(in_channels, out_channels, scale, "bilinear")


@UPSAMPLERS.register("pixelshuffle")
class PixelShuffleUpsample(nn.Module):
    """Sub-pixel convolution with ICNR initialisation."""

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(in_channels, out_channels * scale**2, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
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


UPSAMPLE_KINDS: tuple[str, ...] = tuple(UPSAMPLERS)


def make_upsampler(kind: str, in_channels: int, out_channels: int, scale: int) -> nn.Module:
    """Build an upsampler.

    Args:
        kind: one of :data:`UPSAMPLE_KINDS` (an unknown kind raises
            :class:`~pixelwise.registry.UnknownNameError`).
        in_channels: channels of the input.
        out_channels: channels of the output.
        scale: integer upsampling factor; 1 gives identity (or a 1×1 conv to change channels).

    Returns:
        A module mapping ``(N, in_channels, H, W)`` to ``(N, out_channels, scale·H, scale·W)``.
    """
    build = UPSAMPLERS[kind]
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"upsampling scale must be a positive integer, got {scale!r}")
    if scale == 1:
        return nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
    return build(in_channels, out_channels, scale)
