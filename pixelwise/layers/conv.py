"""Convolution building blocks: conv-norm-act and depthwise-separable convolution.

Norm and activation layers are given by name (``"batchnorm"``, ``"relu"``), by class, or
``None`` to leave them out, as in ``timm.layers``.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

LayerSpec = str | type[nn.Module] | Callable[..., nn.Module] | None

_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "bn": nn.BatchNorm2d,
    "groupnorm": lambda channels: nn.GroupNorm(_group_count(channels), channels),
    "gn": lambda channels: nn.GroupNorm(_group_count(channels), channels),
    "instancenorm": lambda channels: nn.InstanceNorm2d(channels, affine=True),
}

_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
    "leakyrelu": lambda: nn.LeakyReLU(0.1, inplace=True),
}


def _group_count(channels: int, preferred: int = 32) -> int:
    """The largest group count up to ``preferred`` that divides ``channels``."""
    groups = min(preferred, channels)
    while channels % groups:
        groups -= 1
    return groups


def make_norm(norm: LayerSpec, channels: int) -> nn.Module:
    """A 2-D normalisation layer for ``channels`` channels; ``None`` gives ``nn.Identity``."""
    if norm is None:
        return nn.Identity()
    if isinstance(norm, str):
        key = norm.lower().replace("_", "")
        if key not in _NORMS:
            raise ValueError(f"unknown norm layer {norm!r}; choose one of {sorted(_NORMS)} or None")
        return _NORMS[key](channels)
    return norm(channels)


def make_act(act: LayerSpec) -> nn.Module:
    """An activation layer; ``None`` gives ``nn.Identity``."""
    if act is None:
        return nn.Identity()
    if isinstance(act, str):
        key = act.lower().replace("_", "")
        if key not in _ACTS:
            raise ValueError(f"unknown activation {act!r}; choose one of {sorted(_ACTS)} or None")
        return _ACTS[key]()
    return act()


class ConvNormAct(nn.Sequential):
    """Convolution, then normalisation, then activation.

    The convolution has no bias when a norm layer follows (the norm's shift replaces it).
    ``padding=None`` means "same" padding for odd kernels at any dilation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        norm: LayerSpec = "batchnorm",
        act: LayerSpec = "relu",
    ) -> None:
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=norm is None
        )
        super().__init__(conv, make_norm(norm, out_channels), make_act(act))


class SeparableConv2d(nn.Sequential):
    """Depthwise-separable convolution (Xception / DeepLab v3+): a depthwise ``k×k``
    convolution with norm and activation, then a pointwise ``1×1`` conv-norm-act."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        norm: LayerSpec = "batchnorm",
        act: LayerSpec = "relu",
    ) -> None:
        super().__init__(
            ConvNormAct(in_channels, in_channels, kernel_size, stride, None, dilation,
                        groups=in_channels, norm=norm, act=act),
            ConvNormAct(in_channels, out_channels, 1, norm=norm, act=act),
        )


def make_conv_block(
    in_channels: int,
    out_channels: int,
    separable: bool = False,
    dilation: int = 1,
    norm: LayerSpec = "batchnorm",
    act: LayerSpec = "relu",
) -> nn.Module:
    """A 3×3 conv-norm-act block, plain or depthwise-separable."""
    if separable:
        return SeparableConv2d(in_channels, out_channels, 3, dilation=dilation, norm=norm, act=act)
    return ConvNormAct(in_channels, out_channels, 3, dilation=dilation, norm=norm, act=act)
