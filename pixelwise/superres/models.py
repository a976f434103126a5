"""Super-resolution networks whose upsampling is one of pixelwise's upsamplers.

- **ESPCN** (Shi et al., 2016, "Real-Time Single Image and Video Super-Resolution Using an
  Efficient Sub-Pixel Convolutional Neural Network"): feature convolutions at low resolution
  (5×5 → 64, 3×3 → 32, tanh), then the upsampler to one channel at ``scale`` times the size.
  The paper's last layer is a 3×3 convolution to ``scale²`` channels and a pixel shuffle
  (``upsample="pixelshuffle"``, ICNR-initialised here); :func:`~pixelwise.layers.make_upsampler`
  makes the other kinds the last layer instead: a transposed convolution (bilinear-initialised)
  or a nearest / bilinear resize followed by a 3×3 convolution.
- **SRCNN** (Dong et al., 2014, "Learning a Deep Convolutional Network for Image
  Super-Resolution"): bicubic upscaling first, then 9×9 → 64, 5×5 → 32, 5×5 → 1 (the 9-5-5
  variant) at high resolution.
- **FSRCNN** (Dong, Loy and Tang, 2016, "Accelerating the Super-Resolution Convolutional Neural
  Network"): at low resolution, 5×5 feature extraction to ``d`` = 56 channels, 1×1 shrinking to
  ``s`` = 12, ``m`` = 4 3×3 mapping layers, 1×1 expanding back to ``d`` (PReLU after each), then
  the paper's learned upsampler, a 9×9 transposed convolution
  (:class:`~pixelwise.layers.WideTransposedUpsample`, ``upsample="transposed"``), or another
  kind as ESPCN's last layer.

All three map a luminance image ``N×1×H×W`` in [0, 1] to ``N×1×(scale·H)×(scale·W)``, for any H and W;
convolutions pad by replicating the border, so borders are not darkened.
"""
from __future__ import annotations

import inspect
from typing import Callable

from torch import Tensor, nn

from pixelwise.errors import InputError
from pixelwise.layers.upsample import UPSAMPLE_KINDS, WideTransposedUpsample, make_upsampler
from pixelwise.registry import Registry
from pixelwise.superres.images import bicubic_upscale

SuperResBuilder = Callable[..., nn.Module]
SR_MODELS: Registry[SuperResBuilder] = Registry("super-resolution model")
_CENTRE = 0.5  # inputs and outputs are centred on mid-grey inside the networks


def _conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, padding_mode="replicate")


class ESPCN(nn.Module):
    """Feature convolutions at low resolution, then an upsampler of kind ``upsample``.

    Attributes:
        upsampler: the last layer (scored by :func:`pixelwise.analysis.overlap.checkerboard_score`
            with ``upsampler_channels`` input channels).
    """

    in_channels = 1  # luminance (what an exporter's example input needs)

    def __init__(self, scale: int, upsample: str = "pixelshuffle", channels: tuple[int, ...] = (64, 32),
                 residual: bool = False) -> None:
        super().__init__()
        if upsample not in UPSAMPLE_KINDS:
            raise InputError(f"unknown upsample kind {upsample!r}; choose one of {', '.join(UPSAMPLE_KINDS)}")
        if len(channels) < 1 or min(channels) < 1:
            raise InputError(f"ESPCN needs one or more positive feature widths, got channels={list(channels)}")
        self.scale, self.upsample_kind, self.upsampler_channels = scale, upsample, channels[-1]
        self.residual = residual
        layers = [_conv(1, channels[0], 5), nn.Tanh()]
        for before, after in zip(channels, channels[1:]):
            layers += [_conv(before, after, 3), nn.Tanh()]
        self.features = nn.Sequential(*layers)
        self.upsampler = make_upsampler(upsample, channels[-1], 1, scale)

    def forward(self, image: Tensor) -> Tensor:
        base = bicubic_upscale(image, self.scale) if self.residual else _CENTRE
        return self.upsampler(self.features(image - _CENTRE)) + base


class SRCNN(nn.Module):
    """Bicubic upscaling, then three convolutions at high resolution (9-5-5)."""

    in_channels = 1

    def __init__(self, scale: int, channels: tuple[int, int] = (64, 32)) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(_conv(1, channels[0], 9), nn.ReLU(inplace=True),
                                  _conv(channels[0], channels[1], 5), nn.ReLU(inplace=True), _conv(channels[1], 1, 5))

    def forward(self, image: Tensor) -> Tensor:
        return self.body(bicubic_upscale(image, self.scale) - _CENTRE) + _CENTRE


class FSRCNN(nn.Module):
    """Shrink, map and expand at low resolution, then the upsampler.

    Attributes:
        upsampler: the last layer (``upsampler_channels`` input channels), as ESPCN's.
    """

    in_channels = 1

    def __init__(self, scale: int, upsample: str = "transposed", d: int = 56, s: int = 12, m: int = 4,
                 kernel: int | None = None) -> None:
        super().__init__()
        if upsample not in UPSAMPLE_KINDS:
            raise InputError(f"unknown upsample kind {upsample!r}; choose one of {', '.join(UPSAMPLE_KINDS)}")
        if min(d, s) < 1 or m < 0:
            raise InputError(f"FSRCNN needs d >= 1, s >= 1 and m >= 0, got d={d}, s={s}, m={m}")
        self.scale, self.upsample_kind, self.upsampler_channels = scale, upsample, d
        layers = [_conv(1, d, 5), nn.PReLU(d), nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [_conv(s, s, 3), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.features = nn.Sequential(*layers)
        if upsample == "transposed":
            self.upsampler = WideTransposedUpsample(d, 1, scale, scale + 6 if kernel is None else kernel)
        elif kernel is not None:
            raise InputError(f"kernel sets the transposed convolution's size; upsample={upsample!r} has none")
        else:
            self.upsampler = make_upsampler(upsample, d, 1, scale)

    def forward(self, image: Tensor) -> Tensor:
        return self.upsampler(self.features(image - _CENTRE)) + _CENTRE


@SR_MODELS.register("espcn")
def espcn(scale: int, upsample: str = "pixelshuffle", channels: tuple[int, ...] = (64, 32),
          residual: bool = False) -> ESPCN:
    """ESPCN with the given upsampler as its last layer (``residual``: added to bicubic upscaling)."""
    return ESPCN(scale, upsample, tuple(channels), residual)


@SR_MODELS.register("srcnn")
def srcnn(scale: int, channels: tuple[int, int] = (64, 32)) -> SRCNN:
    """SRCNN (9-5-5) after bicubic upscaling."""
    return SRCNN(scale, tuple(channels))


@SR_MODELS.register("fsrcnn")
def fsrcnn(scale: int, upsample: str = "transposed", d: int = 56, s: int = 12, m: int = 4,
           kernel: int | None = None) -> FSRCNN:
    """FSRCNN(d, s, m); ``upsample="transposed"`` is the paper's last layer, ``kernel`` wide
    (default ``scale + 6``: the paper's 9 at ×3, 8 at ×2 and 10 at ×4, so it stays centred)."""
    return FSRCNN(scale, upsample, d, s, m, kernel)


def create_sr_model(name: str, scale: int, **options: object) -> nn.Module:
    """Build a registered super-resolution network (:data:`SR_MODELS`) for an integer ``scale`` ≥ 2."""
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 2:
        raise InputError(f"a super-resolution scale must be an integer of at least 2, got {scale!r}")
    builder = SR_MODELS[name]
    accepted = [key for key in inspect.signature(builder).parameters if key != "scale"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(f"{name} has no option {', '.join(map(repr, unknown))}; its options are "
                         f"{', '.join(accepted)} (model.options in a recipe)")
    return builder(scale, **options)


def method_name(name: str, options: dict) -> str:
    """How tables name a network: ``espcn-pixelshuffle``, ``fsrcnn-transposed``, ``srcnn``."""
    defaults = {"espcn": "pixelshuffle", "fsrcnn": "transposed"}
    upsample = options.get("upsample", defaults[name]) if name in defaults else None
    return f"{name}-{upsample}" if upsample else name
