"""HyperColumn.

Paper: "Hypercolumns for Object Segmentation and Fine-grained Localization", Hariharan,
Arbeláez, Girshick and Malik, CVPR 2015 (https://arxiv.org/abs/1411.5752).

The *hypercolumn* of a pixel is the vector of the activations of every unit above it, across
several layers of a CNN: early layers say precisely *where*, deep layers say *what*. The paper
upsamples the feature maps of several layers to a common resolution, **concatenates** them per
pixel and classifies each pixel's column. Concatenation is the point of difference with FCN's
skips, which *add* per-layer score maps: a classifier over the concatenation can weigh and
combine the layers' features jointly (here a 3×3 convolution over the column) before deciding.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from pixelwise.encoders import Encoder, EncoderWeights, create_encoder
from pixelwise.errors import InputError
from pixelwise.layers import IMAGE_GRID, ConvNormAct, LayerSpec, upsampler_between
from pixelwise.models.base import SegmentationModel
from pixelwise.models.registry import register_model


def resolve_stages(stages: Sequence[int] | None, num_features: int) -> list[int]:
    """Validate stage indices into an encoder's feature list (negative counts from the end).

    Args:
        stages: indices of the features that form the hypercolumn; ``None`` for all of them.
        num_features: length of the encoder's feature list.

    Returns:
        Non-negative indices, in the order given.
    """
    if stages is None:
        return list(range(num_features))
    if len(stages) == 0:
        raise InputError("stages must name at least one encoder feature")
    if any(not -num_features <= s < num_features for s in stages):
        raise InputError(f"stages {list(stages)} out of range for an encoder with {num_features} features")
    resolved = [s % num_features for s in stages]
    if len(set(resolved)) != len(resolved):
        raise InputError(f"stages {list(stages)} name the same feature twice")
    return resolved


class HyperColumn(SegmentationModel):
    """Per-pixel classification of hypercolumns built from several encoder stages.

    Args:
        num_classes: number of classes.
        encoder: the CNN whose features form the columns.
        upsample: upsampler kind, for the columns and for the final logits.
        stages: indices into the encoder's features; ``None`` for all of them.
        column_channels: channels each stage contributes to the hypercolumn.
        norm: norm layer of the projections and the fusing convolution.
        aligned: every stage upsampled onto the grid of the finest selected stage, and the
            logits onto the input's pixels; ``False``: half-pixel upsampling (earlier versions).
    """

    def __init__(self, num_classes: int, encoder: Encoder, upsample: str = "resize",
                 stages: Sequence[int] | None = None, column_channels: int = 128,
                 norm: LayerSpec = "batchnorm", aligned: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = encoder
        self.size_divisor = encoder.reductions[-1]
        self.stages = resolve_stages(stages, len(encoder.channels))
        # The columns meet on the finest selected stage's grid.
        finest = min(self.stages, key=lambda i: encoder.reductions[i])
        self.column_reduction = encoder.reductions[finest]
        grids, column_grid = encoder.grids, encoder.grids[finest]
        # The paper classifies each pixel's raw hypercolumn with a linear map. Upsampling is
        # linear too, so a linear map of the upsampled concatenation equals each layer's share
        # of it applied at that layer's native resolution and upsampled afterwards (the paper's
        # own efficient form). The 1×1 projections are that: a linear map of the raw column,
        # computed before upsampling, where a 512-channel stride-32 map has 1/256 of the pixels
        # (the norm and ReLU after each projection are ours, for the 3×3 fusion that follows).
        self.projections = nn.ModuleList(
            [ConvNormAct(encoder.channels[i], column_channels, 1, norm=norm) for i in self.stages]
        )
        for i in self.stages:
            self._check_column_stride(encoder.reductions[i])
        self.upsamplers = nn.ModuleList(
            [upsampler_between(upsample, column_channels, column_channels, grids[i], column_grid, aligned)
             for i in self.stages]
        )
        self.fuse = ConvNormAct(len(self.stages) * column_channels, column_channels, 3, norm=norm)
        self.classifier = nn.Conv2d(column_channels, num_classes, 1)
        self.upsample_logits = upsampler_between(upsample, num_classes, num_classes, column_grid, IMAGE_GRID, aligned)

    def _check_column_stride(self, reduction: int) -> None:
        if reduction % self.column_reduction:
            raise InputError(f"stage stride {reduction} is not a multiple of the column stride {self.column_reduction}")

    def hypercolumn(self, x: Tensor) -> Tensor:
        """The hypercolumns: every selected stage's projected features, upsampled and concatenated.

        Args:
            x: images whose height and width are multiples of ``size_divisor``.

        Returns:
            ``(N, len(stages)·column_channels, H / r, W / r)`` with ``r = column_reduction``.
        """
        features = self.encoder(x)
        columns = [up(project(features[i])) for i, project, up in zip(self.stages, self.projections, self.upsamplers)]
        return torch.cat(columns, dim=1)

    def forward_padded(self, x: Tensor, return_aux: bool) -> tuple[Tensor, None]:
        logits = self.classifier(self.fuse(self.hypercolumn(x)))
        return self.upsample_logits(logits), None


@register_model(family="HyperColumn")
def hypercolumn(
    num_classes: int = 21,
    encoder: str = "vgg16",
    upsample: str = "resize",
    encoder_weights: EncoderWeights = None,
    stages: Sequence[int] | None = None,
    column_channels: int = 128,
    norm: str | None = "batchnorm",
    aligned: bool = True,
) -> HyperColumn:
    """HyperColumn (Hariharan et al., 2015): per-pixel classification of concatenated multi-layer features.

    Args:
        num_classes: number of classes.
        encoder: encoder name (VGG-16 as in the paper).
        upsample: ``"resize"`` (the paper's plain bilinear interpolation, which learns
            nothing), ``"bilinear"`` / ``"nearest"`` (resize, then a learned 3×3 convolution),
            ``"transposed"`` or ``"pixelshuffle"``.
        encoder_weights: ``None``, ``"imagenet"`` or a local file.
        stages: indices into the encoder's features (highest resolution first) that form the
            hypercolumn; ``None`` for all of them.
        column_channels: channels each stage contributes to the hypercolumn.
        norm: norm layer name, or ``None``.
        aligned: columns and logits on the grids they belong to (``False``: the half-pixel
            geometry of earlier versions, whose checkpoints load with it).
    """
    backbone = create_encoder(encoder, weights=encoder_weights)
    return HyperColumn(num_classes, backbone, upsample, stages, column_channels, norm, aligned)
