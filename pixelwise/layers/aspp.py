"""Atrous Spatial Pyramid Pooling (Chen et al., 2017, "Rethinking Atrous Convolution").

Parallel branches see the same feature map at several rates: a 1×1 convolution, three dilated
3×3 convolutions and a global image-pooling branch; their outputs are concatenated and
projected. Attribute names (``convs``, ``project``) follow torchvision's ``ASPP`` so its
``state_dict`` loads unchanged.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.layers.conv import ConvNormAct, LayerSpec, SeparableConv2d
from pixelwise.layers.resize import resize_bilinear


class ASPPPooling(nn.Sequential):
    """Global average pooling, 1×1 conv-norm-act, broadcast back to the input size.

    A pooled map holds one value per channel and image, so batch norm cannot compute batch
    statistics when training on a single image; that case uses the running statistics
    instead of failing ("Expected more than 1 value per channel").
    """

    def __init__(self, in_channels: int, out_channels: int, norm: LayerSpec = "batchnorm") -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *ConvNormAct(in_channels, out_channels, 1, norm=norm))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        for module in self:
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and self.training and x.shape[0] == 1:
                x = F.batch_norm(x, module.running_mean, module.running_var, module.weight, module.bias,
                                 training=False, eps=module.eps)
            else:
                x = module(x)
        return resize_bilinear(x, size)


class ASPP(nn.Module):
    """The ASPP module.

    Args:
        in_channels: channels of the encoder feature.
        rates: dilation rates of the three 3×3 branches ((6, 12, 18) at output stride 16,
            (12, 24, 36) at output stride 8).
        out_channels: channels of every branch and of the output.
        separable: depthwise-separable 3×3 branches, as in DeepLab v3+.
        dropout: dropout after the projection.
        norm: norm layer of every branch.
    """

    def __init__(
        self,
        in_channels: int,
        rates: Sequence[int] = (6, 12, 18),
        out_channels: int = 256,
        separable: bool = False,
        dropout: float = 0.5,
        norm: LayerSpec = "batchnorm",
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvNormAct(in_channels, out_channels, 1, norm=norm)]
        for rate in rates:
            if separable:
                branches.append(SeparableConv2d(in_channels, out_channels, 3, dilation=rate, norm=norm))
            else:
                branches.append(ConvNormAct(in_channels, out_channels, 3, dilation=rate, norm=norm))
        branches.append(ASPPPooling(in_channels, out_channels, norm=norm))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *ConvNormAct(len(branches) * out_channels, out_channels, 1, norm=norm), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """The paper's atrous rates for an output stride (rates scale inversely with it)."""
    return tuple(int(rate * 16 / output_stride) for rate in (6, 12, 18))  # type: ignore[return-value]
