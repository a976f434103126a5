"""Convolution building blocks: conv-norm-act and depthwise-separable convolution.

Norm and activation layers are given by name (``"batchnorm"``, ``"relu"``; see :data:`NORMS` and
:data:`ACTIVATIONS`), by class, or ``None`` to leave them out, as in ``timm.layers``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from pixelwise.errors import InputError
from pixelwise.registry import Registry

LayerSpec = str | type[nn.Module] | Callable[..., nn.Module] | None


def _layer_name(name: str) -> str:
    """Layer names are case-insensitive and ignore underscores: ``"Batch_Norm"`` is ``"batchnorm"``."""
    return name.lower().replace("_", "")


NORMS: Registry[Callable[[int], nn.Module]] = Registry("norm layer", normalize=_layer_name)
ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation", normalize=_layer_name)


def _group_count(channels: int, preferred: int = 32) -> int:
    """The largest group count up to ``preferred`` that divides ``channels``."""
    groups = min(preferred, channels)
    while channels % groups:
        groups -= 1
    return groups


@NORMS.register("batchnorm", "bn")
def _batch_norm(channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels)


@NORMS.register("groupnorm", "gn")
def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(_group_count(channels), channels)


@NORMS.register("instancenorm")
def _instance_norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True)


def standardize_per_image(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Each image's channels to zero mean and unit variance over its pixels (instance
    normalisation without learned parameters; a constant channel becomes 0).

    ``F.instance_norm`` refuses a 1×1 image, which the any-size contract accepts.
    """
    variance, mean = torch.var_mean(x, dim=(-2, -1), correction=0, keepdim=True)
    return (x - mean) * torch.rsqrt(variance + eps)


class InstanceBatchNorm2d(nn.Module):
    """IBN-Net's IBN layer (Pan et al., "Two at Once: Enhancing Learning and Generalization
    Capacities via IBN-Net", ECCV 2018): instance normalisation on the first ``ratio`` of the
    channels, batch normalisation on the rest.

    Instance normalisation takes each image's own contrast and colour cast out of those
    channels, so the features after it vary less between scenes lit differently; batch
    normalisation keeps the rest discriminative. The submodules are named ``IN`` and ``BN``, as
    in IBN-Net's code, so its released ResNet-IBN-a files load with their keys as they are.

    Args:
        channels: channels of the input.
        ratio: share of the channels instance-normalised (IBN-Net: 0.5).
    """

    def __init__(self, channels: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(channels * ratio)
        if not 0 < self.half < channels:
            raise InputError(f"IBN needs channels on both sides of its split: {channels} channels at ratio "
                             f"{ratio} put {self.half} under instance norm; use a ratio strictly between "
                             f"{1 / channels:.3g} and 1")
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: Tensor) -> Tensor:
        instance, batch = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        # Instance norm written out: F.instance_norm's export fixes the batch size of the ONNX graph.
        shape = (1, self.half, 1, 1)
        instance = standardize_per_image(instance, self.IN.eps) * self.IN.weight.view(shape) + self.IN.bias.view(shape)
        return torch.cat([instance, self.BN(batch)], dim=1)


@NORMS.register("ibn")
def _instance_batch_norm(channels: int) -> nn.Module:
    return InstanceBatchNorm2d(channels)


@ACTIVATIONS.register("relu")
def _relu() -> nn.Module:
    return nn.ReLU(inplace=True)


@ACTIVATIONS.register("relu6")
def _relu6() -> nn.Module:
    return nn.ReLU6(inplace=True)


@ACTIVATIONS.register("gelu")
def _gelu() -> nn.Module:
    return nn.GELU()


@ACTIVATIONS.register("silu")
def _silu() -> nn.Module:
    return nn.SiLU(inplace=True)


@ACTIVATIONS.register("hardswish")
def _hardswish() -> nn.Module:
    return nn.Hardswish(inplace=True)


@ACTIVATIONS.register("leakyrelu")
def _leaky_relu() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


def make_norm(norm: LayerSpec, channels: int) -> nn.Module:
    """A 2-D normalisation layer for ``channels`` channels; ``None`` gives ``nn.Identity``."""
    if norm is None:
        return nn.Identity()
    factory = NORMS[norm] if isinstance(norm, str) else norm
    return factory(channels)


def make_act(act: LayerSpec) -> nn.Module:
    """An activation layer; ``None`` gives ``nn.Identity``."""
    if act is None:
        return nn.Identity()
    factory = ACTIVATIONS[act] if isinstance(act, str) else act
    return factory()


class ConvNormAct(nn.Sequential):
    """Convolution, then normalisation, then activation.

    The convolution has no bias when a norm layer follows (the norm's shift replaces it), and
    starts from He initialisation (``fan_out``, ReLU gain, as torchvision's ResNets) instead of
    PyTorch's default, whose weights are about 2.4× smaller: with a norm after the convolution,
    smaller weights make each step of an Adam-style optimiser relatively larger.
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
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
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
