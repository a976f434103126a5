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
- ``"resize"``: bilinear interpolation and nothing learned, as DeepLab v3/v3+ upsample (Chen et
  al., 2017, 2018); where the channel count changes, a 1×1 convolution first, at the input's
  resolution (the two are linear and commute, so it is the cheaper order of the same map).

The resize rules above place output pixel ``j`` at input coordinate ``(j + 1/2)/s - 1/2``
(half-pixel centres, ``align_corners=False``). Given a ``shift`` δ, every kind instead places
output pixel ``j`` at input coordinate ``δ + j/s`` (:func:`~pixelwise.layers.align.shifted_upsample`):
δ = 0 puts input pixel ``m`` on output pixel ``s·m``, the geometry of encoders whose stride-2
layers pad evenly; a decoder takes δ from the grids of the two maps
(:func:`~pixelwise.layers.align.upsampling_step`). Each kind then starts as linear (or nearest)
interpolation at those coordinates, borders replicated:

- ``"transposed"``: tap ``t = o - s·i`` of output ``o`` from input ``i`` weighs
  ``max(0, 1 - |t + s·δ|/s)`` (a triangle kernel; ``2s - 1`` taps for δ = 0) on the input
  replicate-padded by a pixel (two after it for δ > 1/s), the output cropped to ``s·H × s·W``.
- ``"nearest"`` / ``"bilinear"``: the shifted resize, then the 3×3 convolution.
- ``"resize"``: the shifted resize (after the 1×1 convolution, if any).
- ``"pixelshuffle"``: the 3×3 convolution (replicate padding) starts with sub-pixel ``r`` of input
  pixel ``m`` equal to the linear mix of the pixels around ``m + δ + r/s`` (per axis).

An upsampler with a shift declares it in ``sampling`` (``(scale, shift)``), which
:func:`pixelwise.analysis.trace` reads as the module's geometry.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.errors import InputError
from pixelwise.layers.padding import replicate_pad
from pixelwise.layers.align import Grid, Number, _fraction, half_pixel_shift, shifted_upsample, upsampling_step
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


def _shift_taps(scale: int, shift: Fraction) -> tuple[Tensor, int]:
    """Linear-interpolation taps of a transposed convolution at ``shift``: tap ``k`` of the
    returned 1-D kernel serves offset ``t = o - scale·i = k + first`` (output ``o``, input ``i``)
    with weight ``max(0, 1 - |t + scale·shift| / scale)``. Returns ``(taps, first)``."""
    centre = -scale * shift
    first = math.floor(centre - scale) + 1
    last = math.ceil(centre + scale) - 1
    offsets = [Fraction(first + k) for k in range(last - first + 1)]
    taps = torch.tensor([float(max(Fraction(0), 1 - abs(t - centre) / scale)) for t in offsets], dtype=torch.float64)
    return taps, first


def _check_shift(shift: Fraction, scale: int) -> None:
    if not -1 < shift < 1:
        raise InputError(f"an upsampler's shift must lie in (-1, 1) input pixels, got {shift} (scale {scale}); "
                         f"the grids of the two maps are more than a pixel apart")


def _checked_sampling(scale: int, shift: Number | None) -> tuple[int, Fraction] | None:
    """An upsampler's ``sampling``: ``(scale, shift)``, or ``None`` for half-pixel centres."""
    if shift is None:
        return None
    shift = _fraction(shift, "shift")
    _check_shift(shift, scale)
    return scale, shift


@UPSAMPLERS.register("transposed")
class TransposedUpsample(nn.Module):
    """Transposed convolution, bilinear-initialised, exact at the borders.

    With a ``shift`` output pixel ``j`` sits at input coordinate ``shift + j/scale`` (see the
    module docstring) and the kernel starts as linear interpolation there.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int, shift: Number | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.sampling = _checked_sampling(scale, shift)
        if self.sampling is not None:
            taps, first = _shift_taps(scale, self.sampling[1])
            kernel = (taps[:, None] * taps[None, :]).float()
            # Outputs read input coordinates in (shift - 1, H - 1/scale + shift + 1): the input gets
            # one replicated pixel in front and one or two after. Output o of the unpadded map is then
            # output o + scale - first of an unpadded transposed convolution; its own padding crops
            # what it can of that offset and of the excess at the end, forward slices the rest.
            self.pad_after = 1 + max(0, math.ceil(self.sampling[1] - Fraction(1, scale)))
            start, size = scale - first, kernel.shape[-1]
            crop = min(start, self.pad_after * scale + size - start)
            self.start = start - crop
            self.conv = nn.ConvTranspose2d(in_channels, out_channels, size, stride=scale, padding=crop, bias=False)
        else:
            kernel = bilinear_kernel(scale)
            # One replicated pixel each side (see forward) makes the border taps interpolate like
            # F.interpolate; the conv's own padding then crops exactly that pad (s) and the kernel's
            # half-overhang (s // 2) from every side, so no sliced copy of the output is made.
            self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel.shape[-1], stride=scale,
                                           padding=scale + scale // 2, bias=False)
        with torch.no_grad():
            # weight is (in, out, k, k): the interpolation taps scaled by a channel projection.
            self.conv.weight.copy_(_projection(in_channels, out_channels).t()[:, :, None, None] * kernel)

    def forward(self, x: Tensor) -> Tensor:
        if self.sampling is None:
            return self.conv(replicate_pad(x, (1, 1, 1, 1)))
        out = self.conv(replicate_pad(x, (1, self.pad_after, 1, self.pad_after)))
        height, width, start = self.scale * x.shape[-2], self.scale * x.shape[-1], self.start
        return out[..., start:start + height, start:start + width]


class WideTransposedUpsample(nn.Module):
    """A transposed convolution whose kernel is wider than interpolation needs, such as FSRCNN's
    9×9 last layer (Dong et al., 2016), on half-pixel centres with the borders replicated.

    Input pixel ``i``'s kernel is centred on output pixel ``s·i + (s - 1)/2``, so the output is
    not shifted; that needs ``kernel - s`` even (9 at odd scales, 8 or 10 at even ones: a 9×9
    kernel at stride 2 would move the image by half an output pixel). The input is padded by
    replication far enough that every output pixel gets all of its taps, and the output is
    cropped to ``s·H × s·W``. The kernel starts as bilinear interpolation
    (:func:`bilinear_kernel`, zeros around it) times a channel projection, as ``"transposed"``
    does; the paper drew it from N(0, 0.001²).

    **Computed as its sub-pixel convolution.** A transposed convolution at stride ``s`` is a
    convolution at the input's resolution to ``s²`` times the channels followed by a pixel
    shuffle (Shi et al., 2016, "Is the deconvolution layer the same as a convolutional layer?"):
    output pixel ``s·m + r`` takes input pixel ``m + e`` through tap ``t = r + (kernel - s)/2 - s·e``,
    so phase ``r`` of the sub-pixel kernel at offset ``e`` is that tap of the transposed kernel
    (zero where ``t`` falls outside it). :meth:`forward` gathers that kernel from the transposed
    one every call (gradients flow back to it; checkpoints keep ``conv.weight`` as a transposed
    kernel) and runs one dense convolution on the replicated borders: the same outputs, several
    times faster than a transposed convolution on a CPU (measured in docs/superres.md).
    :meth:`transposed_forward` is the transposed convolution itself, kept as the reference.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int, kernel: int = 9) -> None:
        super().__init__()
        if not isinstance(scale, int) or scale < 2:
            raise InputError(f"upsampling scale must be an integer of at least 2, got {scale!r}")
        if kernel < scale or (kernel - scale) % 2:
            raise InputError(f"a {kernel}×{kernel} transposed convolution at stride {scale} cannot be centred on "
                             f"the output pixels: the kernel needs at least {scale} taps and kernel - scale even "
                             f"(e.g. {scale + 6})")
        self.scale, self.kernel = scale, kernel
        # Output o of the padded input's full transposed convolution takes input q's tap o - s·q,
        # 0 <= tap < kernel; the first output kept needs inputs from (pad - (kernel + s - 2)/2s) on.
        self.pad = math.ceil((kernel + scale - 2) / (2 * scale))
        start = self.pad * scale + (kernel - scale) // 2
        padding = min(start, kernel - 1)  # the conv crops what it can; forward slices the rest
        self.start = start - padding
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel, stride=scale, padding=padding)
        taps = torch.zeros(kernel, kernel)
        interpolation = bilinear_kernel(scale)
        offset = (kernel - interpolation.shape[-1]) // 2
        taps[offset:offset + interpolation.shape[-1], offset:offset + interpolation.shape[-1]] = interpolation
        with torch.no_grad():
            self.conv.weight.copy_(_projection(in_channels, out_channels).t()[:, :, None, None] * taps)
            self.conv.bias.zero_()
        # Sub-pixel form: phase r at offset e takes tap r + (kernel - s)/2 - s·e; kernel·kernel marks a zero.
        centre = (kernel - scale) // 2
        reach = max((scale - 1 + centre) // scale, (kernel - 1 - centre) // scale)  # largest |e| with a tap
        offsets = torch.arange(-reach, reach + 1)
        phase_taps = torch.arange(scale)[:, None] + centre - scale * offsets[None, :]  # (phase, offset)
        phase_taps = torch.where((phase_taps >= 0) & (phase_taps < kernel), phase_taps, kernel)
        flat = phase_taps[:, None, :, None] * (kernel + 1) + phase_taps[None, :, None, :]  # (ry, rx, ey, ex)
        self.reach = reach
        self.register_buffer("taps", flat.reshape(scale * scale, -1), persistent=False)

    def subpixel_weight(self) -> tuple[Tensor, Tensor]:
        """The equivalent convolution's kernel ``(out·s², in, 2·reach + 1, 2·reach + 1)`` and bias."""
        weight = self.conv.weight  # (in, out, kernel, kernel)
        inputs, outputs = weight.shape[0], weight.shape[1]
        padded = F.pad(weight, (0, 1, 0, 1)).flatten(2)  # row and column `kernel` are zeros
        gathered = padded[:, :, self.taps]  # (in, out, s², taps)
        side = 2 * self.reach + 1
        subpixel = gathered.permute(1, 2, 0, 3).reshape(outputs * self.scale ** 2, inputs, side, side)
        return subpixel, self.conv.bias.repeat_interleave(self.scale ** 2)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.subpixel_weight()
        reach = self.reach
        return F.pixel_shuffle(F.conv2d(replicate_pad(x, (reach, reach, reach, reach)), weight, bias), self.scale)

    def transposed_forward(self, x: Tensor) -> Tensor:
        """The same outputs through the transposed convolution (slower: the reference for tests)."""
        pad, start = self.pad, self.start
        out = self.conv(replicate_pad(x, (pad, pad, pad, pad)))
        height, width = self.scale * x.shape[-2], self.scale * x.shape[-1]
        return out[..., start:start + height, start:start + width]


class ResizeConv(nn.Module):
    """Resize (nearest or bilinear), then a 3×3 convolution. With a ``shift`` the resize is
    :func:`~pixelwise.layers.align.shifted_upsample` (output pixel ``j`` at input ``shift + j/scale``)."""

    def __init__(self, in_channels: int, out_channels: int, scale: int, mode: str,
                 shift: Number | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.mode = mode
        self.sampling = _checked_sampling(scale, shift)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        _init_conv_as_identity_or_default(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        if self.sampling is not None:
            return self.conv(shifted_upsample(x, self.scale, self.sampling[1], self.mode))
        kwargs = {"align_corners": False} if self.mode == "bilinear" else {}
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode=self.mode, **kwargs))


@UPSAMPLERS.register("nearest")
def _nearest_resize_conv(in_channels: int, out_channels: int, scale: int, shift: Number | None = None) -> ResizeConv:
    return ResizeConv(in_channels, out_channels, scale, "nearest", shift)


@UPSAMPLERS.register("bilinear")
def _bilinear_resize_conv(in_channels: int, out_channels: int, scale: int, shift: Number | None = None) -> ResizeConv:
    return ResizeConv(in_channels, out_channels, scale, "bilinear", shift)


@UPSAMPLERS.register("pixelshuffle")
class PixelShuffleUpsample(nn.Module):
    """Sub-pixel convolution with ICNR initialisation.

    With a ``shift`` the convolution pads by replication and starts as :func:`bilinear_icnr_`
    (linear interpolation at input coordinate ``shift + j/scale``).
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int, shift: Number | None = None) -> None:
        super().__init__()
        self.scale = scale
        # ICNR's nearest upsampling reads floor(j/scale), centred (on average) on half-pixel centres.
        self.sampling = (scale, half_pixel_shift(scale) if shift is None else _fraction(shift, "shift"))
        self.conv = nn.Conv2d(in_channels, out_channels * scale**2, 3, padding=1,
                              padding_mode="zeros" if shift is None else "replicate")
        self.shuffle = nn.PixelShuffle(scale)
        if shift is None:
            icnr_(self.conv, scale)
        else:
            bilinear_icnr_(self.conv, scale, self.sampling[1])

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.conv(x))


@UPSAMPLERS.register("resize")
class ResizeUpsample(nn.Module):
    """Bilinear interpolation with no parameters; a 1×1 convolution before it when the channel
    count changes. With a ``shift`` the resize is :func:`~pixelwise.layers.align.shifted_upsample`."""

    def __init__(self, in_channels: int, out_channels: int, scale: int, shift: Number | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.sampling = _checked_sampling(scale, shift)
        self.project = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.project(x)
        if self.sampling is not None:
            return shifted_upsample(x, self.scale, self.sampling[1])
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


class ShiftedResize(nn.Module):
    """A fixed (parameter-free) :func:`~pixelwise.layers.align.shifted_upsample`: what a decoder
    uses where two maps of one stride sit on different grids (``scale = 1``)."""

    def __init__(self, scale: int, shift: Number, mode: str = "bilinear") -> None:
        super().__init__()
        self.scale, self.mode = scale, mode
        self.sampling = (scale, _fraction(shift, "shift"))

    def forward(self, x: Tensor) -> Tensor:
        return shifted_upsample(x, self.scale, self.sampling[1], self.mode)


def icnr_(conv: nn.Conv2d, scale: int) -> None:
    """ICNR: every group of ``scale²`` output channels that pixel-shuffle into one channel gets
    the same kernel, so the shuffled output starts as nearest upsampling of that kernel's output."""
    out_channels = conv.out_channels // scale**2
    base = nn.Conv2d(conv.in_channels, out_channels, conv.kernel_size, padding=conv.padding)
    _init_conv_as_identity_or_default(base)
    with torch.no_grad():
        conv.weight.copy_(base.weight.repeat_interleave(scale**2, dim=0))
        conv.bias.copy_(base.bias.repeat_interleave(scale**2, dim=0))


def bilinear_icnr_(conv: nn.Conv2d, scale: int, shift: Number = 0) -> None:
    """Initialise a 3×3 conv feeding ``PixelShuffle(scale)`` as linear interpolation at input
    coordinate ``shift + j/scale``.

    Along each axis, sub-pixel ``r`` of input pixel ``m`` reads ``u = m + shift + r/scale``: taps
    ``1 - w`` at offset ``floor(shift + r/s)`` and ``w`` at the next offset (``w`` the fractional
    part), times the same for the other axis, times a channel map (identity when the channel
    counts match, else PyTorch's default 1×1 init); the bias starts at zero. With replicate
    padding the borders equal :func:`~pixelwise.layers.align.shifted_upsample` too.

    Raises:
        ValueError: the conv is not 3×3 with a multiple of ``scale²`` outputs, or the shift needs
            taps beyond the 3×3 window.
    """
    if conv.kernel_size != (3, 3) or conv.out_channels % scale**2:
        raise InputError(f"bilinear ICNR needs a 3×3 conv with a multiple of {scale**2} output channels, "
                         f"got kernel {conv.kernel_size} and {conv.out_channels} channels")
    shift = _fraction(shift, "shift")
    out_channels = conv.out_channels // scale**2
    taps = torch.zeros(scale, 3, dtype=torch.float64)  # (sub-pixel, tap offset -1/0/+1)
    for r in range(scale):
        position = shift + Fraction(r, scale)
        low = math.floor(position)
        weight = position - low
        if low < -1 or low + (weight > 0) > 1:
            raise InputError(f"a pixel-shuffle upsampler by {scale} with shift {shift} reads beyond its 3×3 window; "
                             f"the shift must lie in [-1, 1/{scale}]")
        taps[r, low + 1] += float(1 - weight)
        if weight:
            taps[r, low + 2] += float(weight)
    spatial = taps[:, None, :, None] * taps[None, :, None, :]  # (r, q, 3, 3)
    projection = _projection(conv.in_channels, out_channels).double()  # (out, in)
    weight = projection[:, None, None, :, None, None] * spatial[None, :, :, None]  # (out, r, q, in, 3, 3)
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(conv.out_channels, conv.in_channels, 3, 3))
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


UPSAMPLE_KINDS: tuple[str, ...] = tuple(UPSAMPLERS)


def make_upsampler(kind: str, in_channels: int, out_channels: int, scale: int,
                   shift: Number | None = None) -> nn.Module:
    """Build an upsampler.

    Args:
        kind: one of :data:`UPSAMPLE_KINDS` (an unknown kind raises
            :class:`~pixelwise.registry.UnknownNameError`).
        in_channels: channels of the input.
        out_channels: channels of the output.
        scale: integer upsampling factor; 1 gives identity (or a 1×1 conv to change channels).
        shift: place output pixel ``j`` at input coordinate ``shift + j/scale`` (0: input pixel
            ``m`` on output pixel ``scale·m``, for maps whose pixel ``y`` is centred on image pixel
            ``stride·y``); ``None``: half-pixel centres, ``(j + 1/2)/scale - 1/2``, with the
            layers as they always were. A decoder takes it from the grids of the two maps
            (:func:`upsampler_between`).

    Returns:
        A module mapping ``(N, in_channels, H, W)`` to ``(N, out_channels, scale·H, scale·W)``.
    """
    build = UPSAMPLERS[kind]
    if not isinstance(scale, int) or scale < 1:
        raise InputError(f"upsampling scale must be a positive integer, got {scale!r}")
    if shift is not None and _fraction(shift, "shift") == half_pixel_shift(scale):
        shift = None  # the half-pixel layers are that geometry exactly
    if scale == 1:
        projection = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        if not shift:
            return projection
        return nn.Sequential(ShiftedResize(1, shift), projection)
    if shift is None:
        return build(in_channels, out_channels, scale)
    return build(in_channels, out_channels, scale, shift=shift)


def upsampler_between(kind: str, in_channels: int, out_channels: int, source: Grid, target: Grid,
                      aligned: bool = True) -> nn.Module:
    """An upsampler from a map on grid ``source`` to one on the denser grid ``target``.

    Args:
        aligned: put the output's pixel centres on ``target``'s (the shift of
            :func:`~pixelwise.layers.align.upsampling_step`); ``False``: half-pixel centres
            whatever the grids (the geometry of models built before pixelwise aligned them).
    """
    scale, shift = upsampling_step(source, target)
    return make_upsampler(kind, in_channels, out_channels, scale, shift if aligned else None)
