"""Image conventions of the super-resolution literature, so PSNR and SSIM compare with papers.

- **Luminance**: ITU-R BT.601 Y as MATLAB's ``rgb2ycbcr`` computes it (Y in [16, 235] for RGB in
  [0, 255]); scores are measured on Y, chroma is upscaled by bicubic interpolation.
- **Degradation**: the high-resolution image is cropped to a multiple of the scale ("modcrop"),
  then downscaled by bicubic interpolation with antialiasing (Keys' a = -0.5, as MATLAB's
  ``imresize`` and PIL) and rounded to 8 bits, as a saved low-resolution PNG would be.
- **Fixed upscaling rules**: nearest, bilinear and bicubic with half-pixel centres, and
  Lanczos-3 (PIL). Bicubic is Keys' a = -0.5 as in MATLAB and PIL (:func:`bicubic_upscale`;
  PyTorch's plain ``mode="bicubic"`` uses a = -0.75: sharper, and on CamVid val ×3 0.07 dB
  above the papers' baseline rule). For an integer upscale, an area or antialiased resize is the same as its plain
  rule (antialiasing widens a kernel only when shrinking), so those are not listed twice.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from pixelwise.errors import InputError

FIXED_METHODS = ("nearest", "bilinear", "bicubic", "lanczos")
# Rows of MATLAB's rgb2ycbcr for RGB in [0, 1]: offsets in [0, 255].
_YCBCR = torch.tensor([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]],
                      dtype=torch.float64)
_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64)


def to_tensor(pixels: np.ndarray) -> Tensor:
    """uint8 H×W×3 RGB as float32 1×3×H×W in [0, 1]."""
    return torch.tensor(pixels).permute(2, 0, 1)[None].float().div(255.0)  # a copy: the array may be read-only


def to_pixels(image: Tensor) -> np.ndarray:
    """1×3×H×W RGB in [0, 1] as uint8 H×W×3 (rounded, clipped)."""
    return image[0].clamp(0, 1).mul(255.0).round().byte().permute(1, 2, 0).numpy()


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """N×3×H×W RGB in [0, 1] → N×3×H×W YCbCr in [0, 255] (BT.601, MATLAB's ``rgb2ycbcr``)."""
    matrix, offset = _YCBCR.to(rgb), _OFFSET.to(rgb)
    return torch.einsum("ij,njhw->nihw", matrix, rgb) + offset[None, :, None, None]


def ycbcr_to_rgb(ycbcr: Tensor) -> Tensor:
    """The inverse of :func:`rgb_to_ycbcr` (not clipped)."""
    inverse, offset = torch.linalg.inv(_YCBCR).to(ycbcr), _OFFSET.to(ycbcr)
    return torch.einsum("ij,njhw->nihw", inverse, ycbcr - offset[None, :, None, None])


def luminance(rgb: Tensor) -> Tensor:
    """N×1×H×W Y in [0, 255] of N×3×H×W RGB in [0, 1]."""
    return rgb_to_ycbcr(rgb)[:, :1]


def modcrop(image: Tensor, scale: int) -> Tensor:
    """Crop the bottom and right so height and width are multiples of ``scale``."""
    height, width = image.shape[-2:]
    if height < scale or width < scale:
        raise InputError(f"a {height}×{width} image is smaller than the scale {scale}")
    return image[..., :height - height % scale, :width - width % scale]


def quantize(image: Tensor) -> Tensor:
    """Round [0, 1] values to 8 bits (what a saved image holds)."""
    return image.clamp(0, 1).mul(255.0).round().div(255.0)


def downscale(image: Tensor, scale: int) -> Tensor:
    """The low-resolution image of a high-resolution one (a multiple of ``scale`` in size): bicubic
    with antialiasing, rounded to 8 bits."""
    height, width = image.shape[-2:]
    if height % scale or width % scale:
        raise InputError(f"a {height}×{width} image is not a multiple of the scale {scale}: modcrop it first")
    small = F.interpolate(image, size=(height // scale, width // scale), mode="bicubic", antialias=True,
                          align_corners=False)
    return quantize(small)


def shrink(image: Tensor, factor: float) -> Tensor:
    """``image`` resized by ``factor`` (0 < factor <= 1; sides rounded, at least 1 pixel): bicubic with
    antialiasing, rounded to 8 bits, as a smaller copy of a photograph would be saved (FSRCNN's
    scale augmentation of its training images)."""
    if not 0 < factor <= 1:
        raise InputError(f"a shrinking factor is in (0, 1], got {factor}")
    if factor == 1:
        return image
    height, width = image.shape[-2:]
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    return quantize(F.interpolate(image, size=size, mode="bicubic", antialias=True, align_corners=False))


def bicubic_upscale(image: Tensor, scale: int) -> Tensor:
    """Bicubic upscaling with Keys' a = -0.5 (MATLAB's ``imresize``, PIL), not clamped.

    PyTorch's antialiased bicubic path uses that kernel; when enlarging it does not widen it, so
    this is plain bicubic interpolation with the literature's coefficient.
    """
    return F.interpolate(image, scale_factor=scale, mode="bicubic", align_corners=False, antialias=True)


def upscale_fixed(image: Tensor, scale: int, method: str) -> Tensor:
    """Upscale N×C×H×W by ``scale`` with a fixed interpolation rule (:data:`FIXED_METHODS`),
    clamped to [0, 1]."""
    if method == "lanczos":
        return _lanczos(image, scale)
    if method not in FIXED_METHODS:
        raise InputError(f"unknown interpolation {method!r}; choose one of {', '.join(FIXED_METHODS)}")
    if method == "bicubic":
        return bicubic_upscale(image, scale).clamp(0, 1)
    align = None if method == "nearest" else False
    return F.interpolate(image, scale_factor=scale, mode=method, align_corners=align).clamp(0, 1)


def _lanczos(image: Tensor, scale: int) -> Tensor:
    """Lanczos-3 through PIL, channel by channel in 32-bit float (no 8-bit rounding)."""
    height, width = image.shape[-2:]
    planes = [torch.from_numpy(np.array(Image.fromarray(plane.numpy(), mode="F").resize(
        (width * scale, height * scale), Image.Resampling.LANCZOS))) for plane in image.float().flatten(0, 1)]
    return torch.stack(planes).reshape(*image.shape[:2], height * scale, width * scale).to(image).clamp(0, 1)
