"""FCN-32s, FCN-16s and FCN-8s: fully convolutional networks with skip fusion.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015
(https://arxiv.org/abs/1411.4038); reference implementation (Caffe):
https://github.com/shelhamer/fcn.berkeleyvision.org.

A classifier becomes a dense predictor: VGG16's fully connected fc6 and fc7 become a 7×7 and a
1×1 convolution (carrying their ImageNet weights), a 1×1 ``score_fr`` predicts class scores at
stride 32, and a learnable upsampler brings them back to the input size (FCN-32s). FCN-16s and
FCN-8s refine the coarse scores with finer ones: upsample ×2, *add* the scores of pool4 (stride
16), and for FCN-8s upsample ×2 again and add those of pool3 (stride 8), then upsample to the
input. The skip scores start at zero, so a fresh FCN-16s/8s predicts what its coarser parent does
and training only adds detail.

Two modes:

- default: any encoder (its deepest feature and those at half and a quarter of its stride play
  fc7, pool4 and pool3) and any upsampler; the input is padded to a multiple of the deepest
  stride, so every map lines up without cropping.
- ``paper=True``: the reference network exactly: 100 pixels of padding on conv1_1, ceil-mode
  pooling, unpadded fc6, bilinear-filled transposed convolutions without padding, and the
  reference's crop offsets (:data:`PAPER_CROP_OFFSETS`).

:class:`FCNHead` is torchvision's FCN head (a 3×3 block before the 1×1 classifier): the main head
of :func:`~pixelwise.models.torchvision_compat.fcn_resnet50` and the auxiliary head of the DeepLab
models and of torchvision's FCN.
"""
from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from pixelwise.encoders import Encoder, VGGEncoder, create_encoder
from pixelwise.errors import InputError
from pixelwise.layers import ConvNormAct
from pixelwise.layers.align import IMAGE_GRID, Grid, upsampling_step
from pixelwise.layers.upsample import bilinear_kernel, upsampler_between
from pixelwise.models.base import DesignedSizes, SegmentationModel
from pixelwise.models.registry import register_model

# How many skip connections each variant fuses (pool4, then pool3).
VARIANT_SKIPS: dict[str, int] = {"fcn32s": 0, "fcn16s": 1, "fcn8s": 2}

# Each skip, coarse to fine: (its 1×1 score layer, the ×2 upsampler of the running score that
# precedes the addition). The names are the reference's Caffe layer names.
SKIP_LAYERS: tuple[tuple[str, str], ...] = (("score_pool4", "upscore2"), ("score_pool3", "upscore_pool4"))

# The last upsampler, back to the input size, under the reference's name for each variant.
FINAL_UPSCORE: dict[str, str] = {"fcn32s": "upscore", "fcn16s": "upscore16", "fcn8s": "upscore8"}

# Encoders the reference set-up exists for (paper=True).
PAPER_ENCODERS: tuple[str, ...] = ("vgg16", "vgg16_bn")

# Crop offsets of the reference network, keyed by variant and by the layer whose output is
# cropped (score_pool4 and score_pool3 to the running score's size, the last upsampler to the
# input's). Each offset aligns the centre of that layer's grid with the input. Write each layer's
# output coordinate x in input pixels as a·x + b. conv1_1 (3×3, pad 100) gives b = 1 - 100 = -99;
# a 2×2 stride-2 pool maps x to 2x + 0.5; fc6 (7×7, no pad) adds 3 cells. Hence
#     pool3: 8x - 95.5    pool4: 16x - 91.5    fc7 / score_fr: 32x + 12.5.
# A transposed conv (kernel k, stride s, no pad) places output y at input (y - (k - 1) / 2) / s:
#     fcn32s: upscore (k64 s32) of score_fr: y - 31.5 + 12.5 = y - 19             -> crop 19
#     upscore2 (k4 s2) of score_fr: 16y - 11.5; pool4 at 16x - 91.5, so x = y + 5    -> crop 5
#     fcn16s: upscore16 (k32 s16): y - 15.5 - 11.5 = y - 27                          -> crop 27
#     fcn8s: upscore_pool4 (k4 s2): 8y - 23.5; pool3 at 8x - 95.5, so x = y + 9      -> crop 9
#            upscore8 (k16 s8): y - 7.5 - 23.5 = y - 31                              -> crop 31
PAPER_CROP_OFFSETS: dict[str, dict[str, int]] = {
    "fcn32s": {"upscore": 19},
    "fcn16s": {"score_pool4": 5, "upscore16": 27},
    "fcn8s": {"score_pool4": 5, "score_pool3": 9, "upscore8": 31},
}


class FCNHead(nn.Sequential):
    """3×3 conv-norm-act to a quarter of the channels, dropout 0.1, 1×1 convolution to classes.

    The auxiliary head of torchvision's FCN and DeepLab models (and FCN-ResNet's main head);
    the module indices (0 conv, 1 norm, 3 dropout, 4 classifier) are torchvision's, so its
    weights load unchanged.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        inter_channels = max(in_channels // 4, 1)
        super().__init__(
            *ConvNormAct(in_channels, inter_channels, 3),
            nn.Dropout(dropout),
            nn.Conv2d(inter_channels, num_classes, 1),
        )


def paper_upsampler(num_classes: int, scale: int) -> nn.ConvTranspose2d:
    """The reference's upsampler: a transposed convolution (kernel ``2·scale``, stride ``scale``,
    no padding, no bias) whose filters interpolate each class bilinearly on its own.

    Frozen, as in the reference (``lr_mult: 0``); ``requires_grad_(True)`` makes it learnable.
    """
    upsampler = nn.ConvTranspose2d(num_classes, num_classes, 2 * scale, stride=scale, bias=False)
    with torch.no_grad():
        upsampler.weight.zero_()
        # Diagonal only: class c's scores interpolate into class c (the reference's surgery.interp).
        classes = torch.arange(num_classes)
        upsampler.weight[classes, classes] = bilinear_kernel(scale)
    return upsampler.requires_grad_(False)


def zero_score_layer(in_channels: int, num_classes: int) -> nn.Conv2d:
    """A 1×1 score layer with zero weights and bias, so a new skip adds nothing at first."""
    score = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(score.weight)
    nn.init.zeros_(score.bias)
    return score


def skip_feature_indices(reductions: list[int], num_skips: int) -> list[int]:
    """Indices of the features at half, then a quarter, ... of the deepest stride.

    Args:
        reductions: the encoder's strides, highest resolution first.
        num_skips: how many finer features to fuse (1 for FCN-16s, 2 for FCN-8s).

    Raises:
        ValueError: the encoder has no feature at one of those strides.
    """
    deepest = reductions[-1]
    indices = []
    for level in range(1, num_skips + 1):
        wanted = deepest / 2**level
        matches = [i for i, reduction in enumerate(reductions[:-1]) if reduction == wanted]
        if not matches:
            raise InputError(
                f"FCN with {num_skips} skip(s) needs encoder features at stride {wanted:g} (half the deepest "
                f"stride {deepest}, and so on); this encoder has strides {reductions}"
            )
        indices.append(matches[-1])
    return indices


class FCN(SegmentationModel):
    """A fully convolutional network: encoder, 1×1 class scores, skip fusion by addition, upsampling.

    Args:
        encoder: any encoder; for ``paper=True``, ``create_encoder("vgg16", fully_conv=True,
            paper=True)`` (or ``"vgg16_bn"``).
        num_classes: number of classes predicted.
        variant: ``"fcn32s"``, ``"fcn16s"`` or ``"fcn8s"``.
        upsample: one of ``pixelwise.layers.UPSAMPLE_KINDS``; ``"transposed"`` for ``paper=True``.
        paper: the reference network's geometry: no input padding to a multiple, reference
            upsamplers (bilinear and frozen, as there) and crop offsets (:data:`PAPER_CROP_OFFSETS`).
        aligned: (default mode) each upsampled score lands on the grid of the skip score it is
            added to, and the logits on the input's pixels; ``False``: half-pixel upsampling, the
            geometry of earlier versions. The paper's crops align it by construction.
    """

    def __init__(self, encoder: Encoder, num_classes: int, variant: str = "fcn8s", upsample: str = "transposed",
                 paper: bool = False, aligned: bool = True) -> None:
        super().__init__()
        if variant not in VARIANT_SKIPS:
            raise InputError(f"unknown FCN variant {variant!r}; choose one of {list(VARIANT_SKIPS)}")
        if paper:
            _check_paper_upsample(upsample)
            _check_paper_encoder(encoder)
        self.encoder, self.num_classes, self.variant, self.paper = encoder, num_classes, variant, paper
        # The reference's 100-pixel padding lets it take any size; otherwise pad to the deepest stride.
        self.size_divisor = 1 if paper else encoder.reductions[-1]
        self.crop_offsets = dict(PAPER_CROP_OFFSETS[variant]) if paper else {}
        self.skip_indices = skip_feature_indices(encoder.reductions, VARIANT_SKIPS[variant])
        self.score_fr = nn.Conv2d(encoder.channels[-1], num_classes, 1)
        grids = encoder.grids
        source = grids[-1]
        for (score_name, upscore_name), index in zip(SKIP_LAYERS, self.skip_indices):
            setattr(self, upscore_name, self._upsampler(upsample, source, grids[index], aligned))
            setattr(self, score_name, zero_score_layer(encoder.channels[index], num_classes))
            source = grids[index]
        self.final_upscore = FINAL_UPSCORE[variant]
        setattr(self, self.final_upscore, self._upsampler(upsample, source, IMAGE_GRID, aligned))

    def _upsampler(self, kind: str, source: Grid, target: Grid, aligned: bool) -> nn.Module:
        if self.paper:
            return paper_upsampler(self.num_classes, upsampling_step(source, target)[0])
        return upsampler_between(kind, self.num_classes, self.num_classes, source, target, aligned)

    def forward_padded(self, x: Tensor, return_aux: bool) -> tuple[Tensor, None]:
        """Logits at the (padded) input size; FCN has no auxiliary head."""
        features = self.encoder(x)
        score = self.score_fr(features[-1])
        for (score_name, upscore_name), index in zip(SKIP_LAYERS, self.skip_indices):
            score = getattr(self, upscore_name)(score)
            skip_score = getattr(self, score_name)(features[index])
            score = score + self._crop(skip_score, score_name, score.shape[-2:])
        logits = getattr(self, self.final_upscore)(score)
        return self._crop(logits, self.final_upscore, x.shape[-2:]), None

    def _crop(self, scores: Tensor, layer: str, size: torch.Size) -> Tensor:
        """The reference's crop of ``layer``'s output to ``size``; the default mode needs none
        (padding made every size exact, and a mismatch should fail loudly, not be cropped away)."""
        if not self.paper:
            return scores
        offset, (height, width) = self.crop_offsets[layer], size
        if scores.shape[-2] < offset + height or scores.shape[-1] < offset + width:
            raise RuntimeError(f"{layer} output {tuple(scores.shape[-2:])} too small to crop {tuple(size)} "
                               f"at offset {offset}")
        return scores[..., offset:offset + height, offset:offset + width]

    def designed_sizes(self, min_size: int, max_size: int) -> DesignedSizes | None:
        """The paper network takes every size as it is; the default mode pads to ``size_divisor``."""
        if not self.paper:
            return super().designed_sizes(min_size, max_size)
        crops = ", ".join(f"{layer} {offset}" for layer, offset in self.crop_offsets.items())
        return DesignedSizes(tuple(range(min_size, max_size + 1)), (
            f"The paper {self.variant.upper()} takes every size as it is: conv1_1's 100 pixels of padding keep "
            f"fc6 valid even for tiny inputs, ceil-mode pooling keeps partial windows, and the crops "
            f"({crops}) cut the output back onto the input."), period=1)


def _check_paper_upsample(upsample: str) -> None:
    """``paper=True`` means the reference geometry; refuse anything else rather than misalign."""
    if upsample != "transposed":
        raise InputError(f"paper=True uses the reference's transposed convolutions; got upsample={upsample!r} "
                         f"(use upsample='transposed', or paper=False for other upsamplers)")


def _check_paper_encoder(encoder: Encoder) -> None:
    """The crop offsets hold only for the reference VGG16 geometry (padding 100, ceil pooling)."""
    is_paper_vgg = (isinstance(encoder, VGGEncoder) and encoder.fully_conv
                    and encoder.features[0].padding == (100, 100))
    if not is_paper_vgg:
        raise InputError(f"paper=True needs create_encoder('vgg16', fully_conv=True, paper=True) (or 'vgg16_bn'); "
                         f"got {type(encoder).__name__}")


def _build(variant: str, num_classes: int, encoder: str, upsample: str,
           encoder_weights: str | os.PathLike[str] | None, paper: bool, aligned: bool) -> FCN:
    """Make the encoder the variant needs, then the FCN around it."""
    if paper and encoder not in PAPER_ENCODERS:
        raise InputError(f"paper=True reproduces the reference VGG16 network; encoder must be one of "
                         f"{list(PAPER_ENCODERS)}, got {encoder!r} (use paper=False for other encoders)")
    if paper:
        _check_paper_upsample(upsample)  # before building a 134M-parameter encoder for nothing
    options: dict = {"fully_conv": True} if encoder in PAPER_ENCODERS else {}
    if paper:
        options["paper"] = True
    trunk = create_encoder(encoder, weights=encoder_weights, output_stride=32, **options)
    return FCN(trunk, num_classes, variant, upsample, paper, aligned)


@register_model(family="FCN")
def fcn32s(num_classes: int = 21, encoder: str = "vgg16", upsample: str = "transposed",
           encoder_weights: str | os.PathLike[str] | None = None, paper: bool = False,
           aligned: bool = True) -> FCN:
    """FCN-32s: stride-32 class scores upsampled ×32 (Long et al., 2015).

    Arguments as for :func:`fcn8s`.
    """
    return _build("fcn32s", num_classes, encoder, upsample, encoder_weights, paper, aligned)


@register_model(family="FCN")
def fcn16s(num_classes: int = 21, encoder: str = "vgg16", upsample: str = "transposed",
           encoder_weights: str | os.PathLike[str] | None = None, paper: bool = False,
           aligned: bool = True) -> FCN:
    """FCN-16s: FCN-32s scores ×2 plus pool4 scores, upsampled ×16 (Long et al., 2015).

    Arguments as for :func:`fcn8s`.
    """
    return _build("fcn16s", num_classes, encoder, upsample, encoder_weights, paper, aligned)


@register_model(family="FCN")
def fcn8s(num_classes: int = 21, encoder: str = "vgg16", upsample: str = "transposed",
          encoder_weights: str | os.PathLike[str] | None = None, paper: bool = False,
          aligned: bool = True) -> FCN:
    """FCN-8s: FCN-16s scores ×2 plus pool3 scores, upsampled ×8 (Long et al., 2015).

    Args:
        num_classes: number of classes.
        encoder: encoder name; VGG encoders bring fc6/fc7 as convolutions (ImageNet weights carry over).
        upsample: ``"transposed"`` (bilinear-initialised, learnable), ``"nearest"``, ``"bilinear"``
            or ``"pixelshuffle"``.
        encoder_weights: ``None``, ``"imagenet"`` or a local file.
        paper: the reference Caffe network exactly (VGG16, 100-pixel padding, crop offsets).
        aligned: upsampled scores on the grids of the skips they meet and logits on the input's
            pixels, for any encoder (``False``: the half-pixel geometry of earlier versions,
            whose checkpoints load with it).
    """
    return _build("fcn8s", num_classes, encoder, upsample, encoder_weights, paper, aligned)
