"""Turning fully connected layers into convolutions (the FCN paper's "convolutionalization")."""
from __future__ import annotations

from torch import Tensor


def linear_to_conv2d_weight(weight: Tensor, in_channels: int, kernel_size: tuple[int, int] | int) -> Tensor:
    """Reshape a ``Linear`` weight ``(out, in_channels·kh·kw)`` into a ``Conv2d`` weight
    ``(out, in_channels, kh, kw)``.

    A linear layer over a flattened ``C×kh×kw`` feature map computes, for each output, a dot
    product with one ``C×kh×kw`` block: exactly a ``kh×kw`` convolution evaluated at one place.
    Flattening in PyTorch is channel-major, so a plain ``view`` maps every weight to its tap.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    expected = in_channels * kh * kw
    if weight.shape[1] != expected:
        raise ValueError(
            f"a Linear with {weight.shape[1]} inputs cannot become a {in_channels}×{kh}×{kw} convolution "
            f"({expected} inputs)"
        )
    return weight.reshape(weight.shape[0], in_channels, kh, kw)
