"""torchvision's FCN-ResNet50 and DeepLabV3-ResNet50, key for key and output for output.

- FCN: Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation",
  CVPR 2015 (torchvision's variant: a dilated ResNet-50 and a 3×3 head, not the paper's VGG).
- DeepLab v3: Chen, Papandreou, Schroff & Adam, "Rethinking Atrous Convolution for Semantic
  Image Segmentation", arXiv:1706.05587, 2017.

These reproduce ``torchvision.models.segmentation.fcn_resnet50`` and ``deeplabv3_resnet50``
(with ``aux_loss=True``): the same ``state_dict`` keys (``backbone``, ``classifier``,
``aux_classifier``), so ``model.load_state_dict(torchvision_model.state_dict())`` works as is,
and the same outputs. Use them to start from torchvision's COCO-trained weights. They take no
``upsample`` argument on purpose: torchvision resizes the logits with
``F.interpolate(mode="bilinear")`` and any learned upsampler would change the outputs. For the
same reason they do not pad (``size_divisor = 1``): torchvision runs on the input as given.
"""
from __future__ import annotations

from torch import Tensor, nn

from pixelwise.encoders import EncoderWeights, ResNetEncoder, create_encoder
from pixelwise.models.base import SegmentationModel
from pixelwise.models.deeplab import DeepLabHead, fixed_upsampler, logits_at_input
from pixelwise.models.fcn import FCNHead
from pixelwise.models.registry import register_model

# torchvision's segmentation ResNets: dilated at output stride 8, heads on layer4 (2048
# channels) and, for the auxiliary loss, layer3 (1024 channels).
BACKBONE = "resnet50"
OUTPUT_STRIDE = 8
LAYER4_CHANNELS, LAYER3_CHANNELS = 2048, 1024


class TorchvisionSegmentation(SegmentationModel):
    """torchvision's ``_SimpleSegmentationModel``: backbone, classifier on the deepest feature,
    bilinear resize to the input size; optional auxiliary classifier on the feature before it.

    Args:
        backbone: a ResNet-50 encoder (torchvision's module names, dilated to output stride 8).
        classifier: the main head.
        num_classes: output channels of the heads.
        aux_classifier: the auxiliary head, or ``None``.
        aligned: resize the logits from the backbone's grid onto the input's pixels (pixel ``y``
            of the stride-8 map is centred on input pixel ``8·y``); ``False`` (torchvision's
            geometry, exact output parity): a half-pixel bilinear resize, which shifts the
            logits by 3.5 pixels.
    """

    size_divisor = 1
    # torchvision itself fails on a training batch of one tiny image (a 1×1 map leaves batch
    # norm one value per channel); pad that case, and only that case, to a size that works.
    min_train_size = 16

    def __init__(self, backbone: ResNetEncoder, classifier: nn.Module, num_classes: int,
                 aux_classifier: nn.Module | None = None, aligned: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.upsample = fixed_upsampler(backbone.grids[-1], aligned)
        self.aux_upsample = fixed_upsampler(backbone.grids[-2], aligned)

    @property
    def encoder(self) -> ResNetEncoder:
        """The backbone under the name the other models use (not a second copy in the state dict)."""
        return self.backbone

    def forward_padded(self, x: Tensor, return_aux: bool) -> tuple[Tensor, Tensor | None]:
        *_, layer3, layer4 = self.backbone(x)
        logits = logits_at_input(self.classifier(layer4), x, self.upsample)
        aux = logits_at_input(self.aux_classifier(layer3), x, self.aux_upsample) if return_aux else None
        return logits, aux


def _resnet50_backbone(encoder_weights: EncoderWeights) -> ResNetEncoder:
    # ResNetEncoder keeps torchvision's names (conv1, bn1, layer1..4) and its dilation equals
    # replace_stride_with_dilation=[False, True, True], as IntermediateLayerGetter sees it.
    return create_encoder(BACKBONE, weights=encoder_weights, output_stride=OUTPUT_STRIDE)


@register_model(family="FCN", fixed_encoder=BACKBONE)
def fcn_resnet50(num_classes: int = 21, aux: bool = True,
                 encoder_weights: EncoderWeights = None, aligned: bool = False) -> TorchvisionSegmentation:
    """torchvision's FCN-ResNet50, with identical state-dict keys and outputs.

    No ``upsample`` argument: torchvision's bilinear resize of the logits is part of what is
    reproduced (the models of :mod:`pixelwise.models.fcn` offer every upsampler).

    Args:
        num_classes: number of classes (21 for torchvision's COCO-with-VOC-labels weights).
        aux: include the auxiliary head on layer3 (torchvision's ``aux_loss=True``; its
            pretrained weights hold one).
        encoder_weights: ``None``, ``"imagenet"`` or a local file for the ResNet-50 backbone.
        aligned: logits centred on the input's pixels instead of torchvision's half-pixel resize
            (3.5 pixels off); the weights are the same, the outputs no longer torchvision's.
    """
    aux_classifier = FCNHead(LAYER3_CHANNELS, num_classes) if aux else None
    return TorchvisionSegmentation(_resnet50_backbone(encoder_weights), FCNHead(LAYER4_CHANNELS, num_classes),
                                   num_classes, aux_classifier, aligned)


@register_model(family="DeepLab", fixed_encoder=BACKBONE)
def deeplabv3_resnet50(num_classes: int = 21, aux: bool = True,
                       encoder_weights: EncoderWeights = None, aligned: bool = False) -> TorchvisionSegmentation:
    """torchvision's DeepLabV3-ResNet50, with identical state-dict keys and outputs.

    No ``upsample`` argument: torchvision's bilinear resize of the logits is part of what is
    reproduced (``deeplabv3`` offers every upsampler).

    Args:
        num_classes: number of classes (21 for torchvision's COCO-with-VOC-labels weights).
        aux: include the auxiliary head on layer3 (torchvision's ``aux_loss=True``).
        encoder_weights: ``None``, ``"imagenet"`` or a local file for the ResNet-50 backbone.
        aligned: logits centred on the input's pixels instead of torchvision's half-pixel resize
            (3.5 pixels off); the weights are the same, the outputs no longer torchvision's.
    """
    classifier = DeepLabHead(LAYER4_CHANNELS, num_classes, rates=(12, 24, 36))
    aux_classifier = FCNHead(LAYER3_CHANNELS, num_classes) if aux else None
    backbone = _resnet50_backbone(encoder_weights)
    return TorchvisionSegmentation(backbone, classifier, num_classes, aux_classifier, aligned)
