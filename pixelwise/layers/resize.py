"""Bilinear resizing of feature maps and images, shared by models and inference."""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """``size`` (height, width) times ``scale``, rounded, at least 1×1."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def resize_bilinear(x: Tensor, size: Sequence[int], antialias: bool = False) -> Tensor:
    """``x`` resized to ``size`` with bilinear interpolation (``align_corners=False``, torchvision's
    rule); returned as is when it already has that size.

    Args:
        antialias: low-pass filter when shrinking, so thin structures fade instead of aliasing
            (for images; logits and features are resized without it).
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=antialias and shrinking)
