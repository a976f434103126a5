"""Bilinear resizing of feature maps and images, shared by models and inference."""
from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """``size`` (height, width) times ``scale``, rounded half up, at least 1×1.

    Integer arithmetic on the scale as a fraction, so that under ``torch.export`` the sizes stay
    shape arithmetic (an exported model resizes every input size as eager does).
    """
    ratio = Fraction(scale).limit_denominator(1 << 16)
    num, den = ratio.numerator, ratio.denominator
    return tuple(torch.sym_max(1, (2 * side * num + den) // (2 * den)) for side in size[:2])


def resize_bilinear(x: Tensor, size: Sequence[int], antialias: bool = False) -> Tensor:
    """``x`` resized to ``size`` with bilinear interpolation (``align_corners=False``, torchvision's
    rule); returned as is when it already has that size.

    Args:
        antialias: low-pass filter when shrinking, so thin structures fade instead of aliasing
            (for images; logits and features are resized without it).
    """
    if torch.compiler.is_exporting():
        # No branch on sizes in a graph; antialiasing only filters where it shrinks anyway.
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=antialias and shrinking)
