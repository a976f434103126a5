"""Encoders built from torchvision's own classifier definitions: VGG, ResNet, MobileNet.

Each keeps torchvision's module names, so torchvision's ImageNet weights load unchanged (the
classifier head is dropped, or for VGG's fully connected layers, reshaped into convolutions).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torchvision import models as tvm

from pixelwise.encoders.base import Encoder, dilate_for_output_stride
from pixelwise.layers.conv import InstanceBatchNorm2d
from pixelwise.layers.convert import linear_to_conv2d_weight
from pixelwise.registry import Registry


@dataclass(frozen=True)
class TorchvisionSpec:
    """How to build one encoder and where the ImageNet weights of its torchvision classifier are."""

    builder: Callable[..., Encoder]
    weights: Any  # a torchvision WeightsEnum member


TORCHVISION_ENCODERS: Registry[TorchvisionSpec] = Registry("encoder", patterns=("timm:NAME",))


def register_encoder(weights: Any) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Register an encoder builder under its function name, with the torchvision ImageNet
    weights (a ``WeightsEnum`` member) its keys match."""

    def decorator(builder: Callable[..., Encoder]) -> Callable[..., Encoder]:
        TORCHVISION_ENCODERS.add(builder.__name__, TorchvisionSpec(builder, weights))
        return builder

    return decorator


class ResNetEncoder(Encoder):
    """ResNet (He et al., 2016) features at strides 2, 4, 8, 16, 32.

    ``output_stride`` 8 or 16 replaces the last strides by dilation exactly as torchvision's
    ``replace_stride_with_dilation`` does, for every depth (torchvision itself refuses it for
    ResNet-18/34).
    """

    def __init__(self, builder: Callable[..., nn.Module], output_stride: int = 32) -> None:
        super().__init__()
        net = builder(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        last_block = self.layer4[-1]
        width = last_block.conv3.out_channels if hasattr(last_block, "conv3") else last_block.conv2.out_channels
        self.channels = [64, width // 8, width // 4, width // 2, width]
        stages = [nn.ModuleList([self.conv1]), nn.ModuleList([self.maxpool, self.layer1]),
                  self.layer2, self.layer3, self.layer4]
        self.reductions = dilate_for_output_stride(stages, [2, 4, 8, 16, 32], output_stride)

    def forward(self, x: Tensor) -> list[Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        c1 = self.layer1(self.maxpool(stem))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [stem, c1, c2, c3, self.layer4(c3)]

    def convert_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """torchvision classifier keys → encoder keys: drop the ``fc`` head."""
        return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}


class IBNResNetEncoder(ResNetEncoder):
    """ResNet-IBN-a (Pan et al., ECCV 2018): a :class:`ResNetEncoder` whose blocks in ``layer1``
    to ``layer3`` normalise their first convolution with
    :class:`~pixelwise.layers.InstanceBatchNorm2d` (half the channels instance-normalised), the
    shallow layers where appearance (light, colour cast, contrast) lives; the stem and ``layer4``
    keep batch norm. Same channels, strides and grids as the plain ResNet.

    Weights: IBN-Net's released ``resnet*_ibn_a`` files load as they are (same keys). A
    torchvision ResNet state dict (``encoder_weights: imagenet``) loads too: each converted layer's
    instance-norm half takes the scale and shift of its batch norm's first channels and the
    batch-norm half the rest, with their running statistics; the network then differs from the
    plain one only by normalising those channels per image.
    """

    IBN_LAYERS = ("layer1", "layer2", "layer3")

    def __init__(self, builder: Callable[..., nn.Module], output_stride: int = 32) -> None:
        super().__init__(builder, output_stride)
        for layer in self.IBN_LAYERS:
            for block in getattr(self, layer):
                block.bn1 = InstanceBatchNorm2d(block.bn1.num_features)

    def convert_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """torchvision ResNet keys → these keys: drop ``fc``; split each converted ``bn1``."""
        state = super().convert_state_dict(state_dict)
        for layer in self.IBN_LAYERS:
            for index, block in enumerate(getattr(self, layer)):
                prefix, half = f"{layer}.{index}.bn1.", block.bn1.half
                if f"{prefix}weight" not in state:
                    continue  # not a torchvision key set: load_into reports what is missing
                for name in ("weight", "bias"):
                    value = state.pop(f"{prefix}{name}")
                    state[f"{prefix}IN.{name}"], state[f"{prefix}BN.{name}"] = value[:half], value[half:]
                for name in ("running_mean", "running_var"):
                    state[f"{prefix}BN.{name}"] = state.pop(f"{prefix}{name}")[half:]
                if f"{prefix}num_batches_tracked" in state:
                    state[f"{prefix}BN.num_batches_tracked"] = state.pop(f"{prefix}num_batches_tracked")
        return state


class SlicedEncoder(Encoder):
    """An encoder over one ``features`` Sequential cut into stages at given bounds
    (VGG, MobileNet). Keys stay ``features.N.*`` as in torchvision."""

    def __init__(self, features: nn.Sequential, bounds: list[tuple[int, int]], channels: list[int],
                 output_stride: int = 32) -> None:
        super().__init__()
        self.features = features
        self.bounds = bounds
        self.channels = channels
        stages = [features[start:end] for start, end in bounds]
        self.reductions = dilate_for_output_stride(stages, [2, 4, 8, 16, 32], output_stride)

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for start, end in self.bounds:
            x = self.features[start:end](x)
            outputs.append(x)
        return outputs

    def convert_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """torchvision classifier keys → encoder keys: keep ``features.*`` only."""
        return {k: v for k, v in state_dict.items() if k.startswith("features.")}


class VGGEncoder(SlicedEncoder):
    """VGG (Simonyan & Zisserman, 2015) features after each of the five poolings.

    Args:
        batch_norm: VGG16-BN instead of the plain VGG16.
        fully_conv: append the classifier's fully connected layers as convolutions, as the FCN
            paper does: fc6 becomes a 7×7 convolution over pool5, fc7 a 1×1 convolution; the
            last feature is then fc7's 4096 channels at stride 32 instead of pool5.
        output_stride: 8, 16 or 32; poolings past it become 3×3 stride-1 pools and later
            convolutions are dilated (DeepLab-LargeFOV).
        paper: the FCN reference set-up: 100 pixels of zero padding on the first convolution,
            ceil-mode pooling (Caffe's) and an unpadded fc6.
    """

    def __init__(self, batch_norm: bool = False, fully_conv: bool = False, output_stride: int = 32,
                 paper: bool = False) -> None:
        # Only the convolutional trunk: building all of tvm.vgg16() would initialise its
        # 120M-parameter classifier just to discard it.
        features = tvm.vgg.make_layers(tvm.vgg.cfgs["D"], batch_norm=batch_norm)
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        bounds = list(zip([0] + [p + 1 for p in pools[:-1]], [p + 1 for p in pools]))
        channels = [_last_conv_channels(features[start:end]) for start, end in bounds]
        if paper:
            features[0].padding = (100, 100)
            for index in pools:
                features[index].ceil_mode = True
        super().__init__(features, bounds, channels, output_stride)
        self.fully_conv = fully_conv
        if fully_conv:
            dilation = 32 // output_stride
            self.fc6 = nn.Conv2d(512, 4096, 7, padding=0 if paper else 3 * dilation, dilation=dilation)
            self.fc7 = nn.Conv2d(4096, 4096, 1)
            self.channels[-1] = 4096
            self.drop6, self.drop7 = nn.Dropout(0.5), nn.Dropout(0.5)

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = super().forward(x)
        if self.fully_conv:
            fc6 = self.drop6(torch.relu(self.fc6(outputs[-1])))
            outputs[-1] = self.drop7(torch.relu(self.fc7(fc6)))
        return outputs

    def convert_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """torchvision VGG keys → encoder keys, reshaping fc6/fc7 into convolutions."""
        converted = super().convert_state_dict(state_dict)
        if self.fully_conv and "classifier.0.weight" in state_dict:
            for conv, linear in (("fc6", "classifier.0"), ("fc7", "classifier.3")):
                layer = getattr(self, conv)
                converted[f"{conv}.weight"] = linear_to_conv2d_weight(state_dict[f"{linear}.weight"],
                                                                      layer.in_channels, layer.kernel_size)
                converted[f"{conv}.bias"] = state_dict[f"{linear}.bias"]
        return converted


def _last_conv_channels(stage: nn.Sequential) -> int:
    return [m for m in stage if isinstance(m, nn.Conv2d)][-1].out_channels


@register_encoder(tvm.VGG16_Weights.IMAGENET1K_V1)
def vgg16(output_stride: int = 32, fully_conv: bool = False, paper: bool = False) -> VGGEncoder:
    """VGG-16 features after each pooling (64, 128, 256, 512, 512 channels); see :class:`VGGEncoder`."""
    return VGGEncoder(batch_norm=False, fully_conv=fully_conv, output_stride=output_stride, paper=paper)


@register_encoder(tvm.VGG16_BN_Weights.IMAGENET1K_V1)
def vgg16_bn(output_stride: int = 32, fully_conv: bool = False, paper: bool = False) -> VGGEncoder:
    """VGG-16 with batch norm; see :class:`VGGEncoder`."""
    return VGGEncoder(batch_norm=True, fully_conv=fully_conv, output_stride=output_stride, paper=paper)


@register_encoder(tvm.ResNet18_Weights.IMAGENET1K_V1)
def resnet18(output_stride: int = 32) -> ResNetEncoder:
    """ResNet-18 features at strides 2…32 (64, 64, 128, 256, 512 channels)."""
    return ResNetEncoder(tvm.resnet18, output_stride)


@register_encoder(tvm.ResNet34_Weights.IMAGENET1K_V1)
def resnet34(output_stride: int = 32) -> ResNetEncoder:
    """ResNet-34 features at strides 2…32 (64, 64, 128, 256, 512 channels)."""
    return ResNetEncoder(tvm.resnet34, output_stride)


@register_encoder(tvm.ResNet50_Weights.IMAGENET1K_V1)
def resnet50(output_stride: int = 32) -> ResNetEncoder:
    """ResNet-50 features at strides 2…32 (64, 256, 512, 1024, 2048 channels)."""
    return ResNetEncoder(tvm.resnet50, output_stride)


@register_encoder(tvm.ResNet101_Weights.IMAGENET1K_V1)
def resnet101(output_stride: int = 32) -> ResNetEncoder:
    """ResNet-101 features at strides 2…32 (64, 256, 512, 1024, 2048 channels)."""
    return ResNetEncoder(tvm.resnet101, output_stride)


@register_encoder(tvm.ResNet18_Weights.IMAGENET1K_V1)
def resnet18_ibn_a(output_stride: int = 32) -> IBNResNetEncoder:
    """ResNet-18-IBN-a: ResNet-18 with IBN in layers 1–3; see :class:`IBNResNetEncoder`."""
    return IBNResNetEncoder(tvm.resnet18, output_stride)


@register_encoder(tvm.ResNet34_Weights.IMAGENET1K_V1)
def resnet34_ibn_a(output_stride: int = 32) -> IBNResNetEncoder:
    """ResNet-34-IBN-a: ResNet-34 with IBN in layers 1–3; see :class:`IBNResNetEncoder`."""
    return IBNResNetEncoder(tvm.resnet34, output_stride)


@register_encoder(tvm.ResNet50_Weights.IMAGENET1K_V1)
def resnet50_ibn_a(output_stride: int = 32) -> IBNResNetEncoder:
    """ResNet-50-IBN-a: ResNet-50 with IBN in layers 1–3; see :class:`IBNResNetEncoder`."""
    return IBNResNetEncoder(tvm.resnet50, output_stride)


@register_encoder(tvm.MobileNet_V2_Weights.IMAGENET1K_V1)
def mobilenet_v2(output_stride: int = 32) -> SlicedEncoder:
    """MobileNetV2 (Sandler et al., 2018) features at strides 2…32 (16, 24, 32, 96, 320 channels)."""
    features = tvm.mobilenet_v2(weights=None).features
    return SlicedEncoder(features, [(0, 2), (2, 4), (4, 7), (7, 14), (14, 18)], [16, 24, 32, 96, 320],
                         output_stride)


@register_encoder(tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1)
def mobilenet_v3_large(output_stride: int = 32) -> SlicedEncoder:
    """MobileNetV3-Large (Howard et al., 2019) features at strides 2…32 (16, 24, 40, 112, 960)."""
    features = tvm.mobilenet_v3_large(weights=None).features
    return SlicedEncoder(features, [(0, 2), (2, 4), (4, 7), (7, 13), (13, 17)], [16, 24, 40, 112, 960],
                         output_stride)
