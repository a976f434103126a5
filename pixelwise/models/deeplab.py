"""DeepLab v3 and v3+: an atrous encoder, Atrous Spatial Pyramid Pooling, and (v3+) a decoder.

- DeepLab v3: Chen, Papandreou, Schroff & Adam, "Rethinking Atrous Convolution for Semantic
  Image Segmentation", arXiv:1706.05587, 2017.
- DeepLab v3+: Chen, Zhu, Papandreou, Schroff & Adam, "Encoder-Decoder with Atrous Separable
  Convolution for Semantic Image Segmentation", ECCV 2018.

The encoder stops downsampling at output stride 8 or 16 and dilates its later convolutions
instead, so the deepest feature keeps detail without losing receptive field. ASPP then looks at
that feature at several rates plus a global image-pooling branch. v3 upsamples its logits
straight to the input size; v3+ first mixes the upsampled ASPP feature with a stride-4 encoder
feature, which sharpens object boundaries.

The heads keep torchvision's layouts (:class:`DeepLabHead` here, the auxiliary
:class:`~pixelwise.models.fcn.FCNHead`), so :mod:`pixelwise.models.torchvision_compat` rebuilds
torchvision's models from these same parts.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from pixelwise.encoders import Encoder, EncoderWeights, create_encoder
from pixelwise.errors import InputError
from pixelwise.layers import (
    ASPP,
    IMAGE_GRID,
    ConvNormAct,
    Grid,
    ShiftedResize,
    aspp_rates,
    make_conv_block,
    resize_bilinear,
    upsampler_between,
    upsampling_step,
)
from pixelwise.models.base import SegmentationModel
from pixelwise.models.fcn import FCNHead
from pixelwise.models.registry import register_model

OUTPUT_STRIDES: tuple[int, ...] = (8, 16)
LOW_LEVEL_STRIDE = 4  # v3+ decodes at a quarter of the input resolution


# --- building blocks -------------------------------------------------------------------------


class DeepLabHead(nn.Sequential):
    """DeepLab v3's head: ASPP, a 3×3 conv-norm-act, a 1×1 convolution to classes.

    Module indices match torchvision's ``DeepLabHead`` (0 ASPP, 1 conv, 2 norm, 4 classifier).

    Args:
        in_channels: channels of the encoder's deepest feature.
        num_classes: output channels.
        rates: ASPP's atrous rates; see :func:`pixelwise.layers.aspp_rates`.
        channels: width of ASPP and of the 3×3 block.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (12, 24, 36),
                 channels: int = 256) -> None:
        super().__init__(
            ASPP(in_channels, rates, channels),
            *ConvNormAct(channels, channels, 3),
            nn.Conv2d(channels, num_classes, 1),
        )


class DeepLabV3PlusDecoder(nn.Module):
    """v3+'s decoder: upsample the ASPP feature to stride 4, concatenate the stride-4 encoder
    feature reduced to 48 channels, refine with two 3×3 blocks.

    The low-level feature is reduced to few channels so it sharpens boundaries without
    outweighing the semantic ASPP feature (48 is the paper's choice).

    Args:
        channels: channels of the ASPP feature and of the output.
        low_level_channels: channels of the stride-4 encoder feature.
        source: the grid of the ASPP feature.
        target: the grid of the stride-4 encoder feature.
        upsample: upsampler kind for the ASPP feature.
        separable: depthwise-separable 3×3 blocks, as in the paper.
        reduced_channels: what the low-level feature is reduced to.
        aligned: upsample onto ``target``'s pixel centres (``False``: half-pixel centres).
    """

    def __init__(self, channels: int, low_level_channels: int, source: Grid, target: Grid, upsample: str,
                 separable: bool = True, reduced_channels: int = 48, aligned: bool = True) -> None:
        super().__init__()
        self.upsample = upsampler_between(upsample, channels, channels, source, target, aligned)
        self.reduce = ConvNormAct(low_level_channels, reduced_channels, 1)
        self.fuse = nn.Sequential(
            make_conv_block(channels + reduced_channels, channels, separable=separable),
            make_conv_block(channels, channels, separable=separable),
        )

    def forward(self, high_level: Tensor, low_level: Tensor) -> Tensor:
        return self.fuse(torch.cat([self.upsample(high_level), self.reduce(low_level)], dim=1))


def low_level_index(encoder: Encoder, stride: int = LOW_LEVEL_STRIDE) -> int:
    """Index of the deepest encoder feature at ``stride`` (the decoder's skip connection).

    Raises:
        ValueError: the encoder has no feature at that stride.
    """
    matches = [i for i, reduction in enumerate(encoder.reductions) if reduction == stride]
    if not matches:
        raise InputError(
            f"DeepLab v3+ needs an encoder feature at stride {stride}, but {type(encoder).__name__} "
            f"returns strides {encoder.reductions}; use deeplabv3 or another encoder"
        )
    return matches[-1]


def atrous_encoder(name: str, weights: EncoderWeights, output_stride: int) -> Encoder:
    """Build encoder ``name`` with its last strides replaced by dilation.

    Raises:
        ValueError: ``output_stride`` is not 8 or 16, or the encoder cannot reach it.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise InputError(f"DeepLab's output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    encoder = create_encoder(name, weights=weights, output_stride=output_stride)
    if encoder.reductions[-1] != output_stride:
        raise InputError(
            f"encoder {name!r} ends at stride {encoder.reductions[-1]}, not the requested "
            f"output_stride {output_stride} (it may not support dilation)"
        )
    return encoder


def fixed_upsampler(source: Grid, aligned: bool) -> ShiftedResize | None:
    """A parameter-free bilinear upsampling from grid ``source`` onto the input's pixels;
    ``None`` when not ``aligned`` (the half-pixel resize of earlier versions and of torchvision)."""
    return ShiftedResize(*upsampling_step(source, IMAGE_GRID)) if aligned else None


def logits_at_input(logits: Tensor, image: Tensor, upsample: nn.Module | None) -> Tensor:
    """``logits`` at ``image``'s size: the half-pixel bilinear resize when ``upsample`` is
    ``None``, else that aligned upsampling cropped to the image (a stride-``s`` map of
    ``ceil(H/s)`` pixels upsamples to at least ``H``)."""
    if upsample is None:
        return resize_bilinear(logits, image.shape[-2:])
    return upsample(logits)[..., :image.shape[-2], :image.shape[-1]]


# --- models ----------------------------------------------------------------------------------


class DeepLabV3(SegmentationModel):
    """DeepLab v3: encoder → ASPP head → upsample to the input size.

    Args:
        encoder: an atrous encoder; its deepest stride is the output stride.
        num_classes: number of classes.
        upsample: upsampler kind for the logits (``pixelwise.layers.UPSAMPLE_KINDS``).
        aux: add an FCN-style auxiliary head on the second-deepest feature (training loss only).
        aligned: upsample the logits onto the input's pixels from the encoder's grid
            (``False``: half-pixel centres, as earlier versions and torchvision do).
    """

    def __init__(self, encoder: Encoder, num_classes: int, upsample: str = "resize",
                 aux: bool = False, aligned: bool = True) -> None:
        super().__init__()
        output_stride = encoder.reductions[-1]
        self.num_classes = num_classes
        self.size_divisor = output_stride
        self.encoder = encoder
        self.head = DeepLabHead(encoder.channels[-1], num_classes, aspp_rates(output_stride))
        self.upsample = upsampler_between(upsample, num_classes, num_classes, encoder.grids[-1], IMAGE_GRID, aligned)
        self.aux_classifier = FCNHead(encoder.channels[-2], num_classes) if aux else None
        self.aux_upsample = fixed_upsampler(encoder.grids[-2], aux and aligned)

    def forward_padded(self, x: Tensor, return_aux: bool) -> tuple[Tensor, Tensor | None]:
        features = self.encoder(x)
        logits = self.upsample(self.head(features[-1]))
        aux = logits_at_input(self.aux_classifier(features[-2]), x, self.aux_upsample) if return_aux else None
        return logits, aux


class DeepLabV3Plus(SegmentationModel):
    """DeepLab v3+: encoder → ASPP → decoder with a stride-4 skip → upsample ×4.

    Args:
        encoder: an atrous encoder with a feature at stride 4.
        num_classes: number of classes.
        upsample: upsampler kind, used for the ASPP feature and for the logits.
        separable: depthwise-separable ASPP branches and decoder blocks, as in the paper.
        aux: add an FCN-style auxiliary head on the second-deepest feature (training loss only).
        channels: width of ASPP and of the decoder.
        aligned: the decoder's upsampling lands on the stride-4 feature's grid and the logits' on
            the input's pixels (``False``: half-pixel centres, as earlier versions).
    """

    def __init__(self, encoder: Encoder, num_classes: int, upsample: str = "resize", separable: bool = True,
                 aux: bool = False, channels: int = 256, aligned: bool = True) -> None:
        super().__init__()
        output_stride = encoder.reductions[-1]
        self.low_level_index = low_level_index(encoder)
        self.num_classes = num_classes
        self.size_divisor = output_stride
        self.encoder = encoder
        self.aspp = ASPP(encoder.channels[-1], aspp_rates(output_stride), channels, separable=separable)
        low_level_grid = encoder.grids[self.low_level_index]
        self.decoder = DeepLabV3PlusDecoder(channels, encoder.channels[self.low_level_index], encoder.grids[-1],
                                            low_level_grid, upsample, separable, aligned=aligned)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.upsample = upsampler_between(upsample, num_classes, num_classes, low_level_grid, IMAGE_GRID, aligned)
        self.aux_classifier = FCNHead(encoder.channels[-2], num_classes) if aux else None
        self.aux_upsample = fixed_upsampler(encoder.grids[-2], aux and aligned)

    def forward_padded(self, x: Tensor, return_aux: bool) -> tuple[Tensor, Tensor | None]:
        features = self.encoder(x)
        decoded = self.decoder(self.aspp(features[-1]), features[self.low_level_index])
        logits = self.upsample(self.classifier(decoded))
        aux = logits_at_input(self.aux_classifier(features[-2]), x, self.aux_upsample) if return_aux else None
        return logits, aux


# --- builders --------------------------------------------------------------------------------


@register_model(family="DeepLab")
def deeplabv3(
    num_classes: int = 21,
    encoder: str = "resnet50",
    upsample: str = "resize",
    encoder_weights: EncoderWeights = None,
    output_stride: int = 16,
    aux: bool = False,
    aligned: bool = True,
) -> DeepLabV3:
    """DeepLab v3 (Chen et al., 2017): atrous encoder + ASPP, logits upsampled to the input size.

    Args:
        num_classes: number of classes.
        encoder: encoder name (``pixelwise.list_encoders()`` or ``"timm:NAME"``).
        upsample: how the logits reach the input size (``pixelwise.layers.UPSAMPLE_KINDS``);
            ``"resize"``, the paper's bilinear resize, learns nothing.
        encoder_weights: ``None``, ``"imagenet"`` or a local file.
        output_stride: 16 (the paper's training setting) or 8 (denser, about 4× the compute).
        aux: add the auxiliary FCN head (``forward(x, return_aux=True)``).
        aligned: logits centred on the input's pixels (``False``: the half-pixel geometry of
            earlier versions, whose checkpoints load with it).
    """
    return DeepLabV3(atrous_encoder(encoder, encoder_weights, output_stride), num_classes, upsample, aux, aligned)


@register_model(family="DeepLab")
def deeplabv3plus(
    num_classes: int = 21,
    encoder: str = "resnet50",
    upsample: str = "resize",
    encoder_weights: EncoderWeights = None,
    output_stride: int = 16,
    separable: bool = True,
    aux: bool = False,
    aligned: bool = True,
) -> DeepLabV3Plus:
    """DeepLab v3+ (Chen et al., 2018): v3's ASPP plus a decoder with a stride-4 skip connection.

    Args:
        num_classes: number of classes.
        encoder: encoder name; it must return a feature at stride 4.
        upsample: upsampler kind for the ASPP feature and the logits; ``"resize"``, the paper's
            bilinear resize, learns nothing (a learned kind at the stride-4 merge costs a dense 3×3
            convolution of the 256-channel feature there).
        encoder_weights: ``None``, ``"imagenet"`` or a local file.
        output_stride: 16 or 8.
        separable: depthwise-separable 3×3 convolutions in ASPP and the decoder.
        aux: add the auxiliary FCN head (``forward(x, return_aux=True)``).
        aligned: the decoder's merge and the logits on the grids they belong to (``False``: the
            half-pixel geometry of earlier versions, whose checkpoints load with it).
    """
    encoder_module = atrous_encoder(encoder, encoder_weights, output_stride)
    return DeepLabV3Plus(encoder_module, num_classes, upsample, separable, aux, aligned=aligned)
