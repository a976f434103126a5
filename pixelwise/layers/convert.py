"""Turning fully connected layers into convolutions (the FCN paper's "convolutionalization")."""
from __future__ import annotations

from torch import Tensor, nn

from pixelwise.errors import InputError


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
        raise InputError(
            f"a Linear with {weight.shape[1]} inputs cannot become a {in_channels}×{kh}×{kw} convolution "
            f"({expected} inputs)"
        )
    return weight.reshape(weight.shape[0], in_channels, kh, kw)


def linear_to_conv2d(linear: nn.Linear, in_channels: int, kernel_size: tuple[int, int] | int) -> nn.Conv2d:
    """A valid (unpadded) ``kh×kw`` convolution computing ``linear`` at every place of a feature map.

    Over an ``in_channels×kh×kw`` map it returns ``linear``'s outputs as a ``1×1`` map; over a
    larger map, the same outputs for every ``kh×kw`` window: the classifier slid over the input.

    The convolution shares the linear layer's parameter storage (no copy of, say, VGG's 100M
    fc6 weights); deep-copy the linear layer first for an independent convolution.
    """
    weight = linear_to_conv2d_weight(linear.weight.detach(), in_channels, kernel_size)
    # On the meta device: a real Conv2d would first random-initialise weights thrown away at once.
    conv = nn.Conv2d(in_channels, linear.out_features, tuple(weight.shape[2:]), bias=linear.bias is not None,
                     device="meta")
    conv.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        conv.bias = nn.Parameter(linear.bias.detach(), requires_grad=linear.bias.requires_grad)
    return conv
