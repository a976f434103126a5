"""DeepLab v3 and v3+: both output strides, the auxiliary head and its gradients, other encoders.
ResNet-18 keeps these fast. (Logits at any input size with any upsampler, in train and eval
mode, and gradients without the aux head are the registry-wide contract: tests/test_models.py.)"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.encoders import Encoder
from pixelwise.models import create_model, list_models, model_info
from pixelwise.models.deeplab import DeepLabV3Plus, deeplabv3, deeplabv3plus

BUILDERS = {"deeplabv3": deeplabv3, "deeplabv3plus": deeplabv3plus}
NUM_CLASSES = 5


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride(name: str, output_stride: int) -> None:
    model = BUILDERS[name](num_classes=NUM_CLASSES, encoder="resnet18", output_stride=output_stride).eval()
    assert model.encoder.reductions[-1] == output_stride
    assert model.size_divisor == output_stride
    with torch.no_grad():
        assert model(torch.randn(2, 3, 37, 29)).shape == (2, NUM_CLASSES, 37, 29)


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("output_stride", [4, 12, 32])
def test_invalid_output_stride_is_a_clear_error(name: str, output_stride: int) -> None:
    with pytest.raises(ValueError, match=r"output_stride must be one of \(8, 16\)"):
        BUILDERS[name](encoder="resnet18", output_stride=output_stride)


@pytest.mark.parametrize("name", BUILDERS)
def test_aux_head_shapes(name: str) -> None:
    model = BUILDERS[name](num_classes=NUM_CLASSES, encoder="resnet18", aux=True).train()
    assert model.has_aux
    logits, aux = model(torch.randn(1, 3, 45, 30), return_aux=True)
    assert logits.shape == aux.shape == (1, NUM_CLASSES, 45, 30)
    assert model(torch.randn(1, 3, 45, 30)).shape == (1, NUM_CLASSES, 45, 30)  # plain call: logits only


@pytest.mark.parametrize("name", BUILDERS)
def test_without_aux_head_return_aux_raises(name: str) -> None:
    model = BUILDERS[name](num_classes=NUM_CLASSES, encoder="resnet18")
    assert not model.has_aux
    with pytest.raises(ValueError, match="aux=True"):
        model(torch.randn(1, 3, 16, 16), return_aux=True)


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("encoder", ["mobilenet_v2", "mobilenet_v3_large", "vgg16"])
def test_other_encoders(name: str, encoder: str) -> None:
    model = BUILDERS[name](num_classes=NUM_CLASSES, encoder=encoder, aux=True).train()
    logits, aux = model(torch.randn(1, 3, 35, 21), return_aux=True)
    assert logits.shape == aux.shape == (1, NUM_CLASSES, 35, 21)


@pytest.mark.parametrize("name", BUILDERS)
def test_timm_encoder(name: str) -> None:
    pytest.importorskip("timm")
    model = BUILDERS[name](num_classes=NUM_CLASSES, encoder="timm:resnet18").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 35, 21)).shape == (1, NUM_CLASSES, 35, 21)


@pytest.mark.parametrize("name", BUILDERS)
def test_every_parameter_gets_a_finite_gradient_with_the_aux_head(name: str) -> None:
    # The aux head resizes its own logits (bilinear), whatever the upsampler; without it, every
    # upsampler's gradients are the registry-wide contract (tests/test_models.py).
    model = BUILDERS[name](num_classes=NUM_CLASSES, encoder="resnet18", aux=True).train()
    logits, aux = model(torch.randn(2, 3, 29, 34), return_aux=True)
    target = torch.randint(0, NUM_CLASSES, (2, 29, 34))
    (F.cross_entropy(logits, target) + 0.4 * F.cross_entropy(aux, target)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    broken = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not broken, f"non-finite gradient for {broken}"


def test_v3plus_plain_convolutions() -> None:
    model = deeplabv3plus(num_classes=NUM_CLASSES, encoder="resnet18", separable=False)
    assert not any(m.groups > 1 for m in model.modules() if isinstance(m, nn.Conv2d))
    separable = deeplabv3plus(num_classes=NUM_CLASSES, encoder="resnet18")
    assert any(m.groups > 1 for m in separable.decoder.modules() if isinstance(m, nn.Conv2d))
    assert any(m.groups > 1 for m in separable.aspp.modules() if isinstance(m, nn.Conv2d))


class _NoStride4Encoder(Encoder):
    """An encoder that skips stride 4 (as a ViT does), for the v3+ error message."""

    def __init__(self) -> None:
        super().__init__()
        self.channels, self.reductions = [8, 16], [8, 16]

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - never called
        raise NotImplementedError


def test_v3plus_needs_a_stride4_feature() -> None:
    with pytest.raises(ValueError, match=r"feature at stride 4.*\[8, 16\]"):
        DeepLabV3Plus(_NoStride4Encoder(), NUM_CLASSES)


def test_unknown_upsampler_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown upsample kind"):
        deeplabv3(encoder="resnet18", upsample="bicubic")


def test_registered() -> None:
    assert {"deeplabv3", "deeplabv3plus"} <= set(list_models())
    assert model_info("deeplabv3plus").family == "DeepLab"
    assert model_info("deeplabv3").default_encoder == "resnet50"
    model = create_model("deeplabv3plus", num_classes=3, encoder="resnet18", upsample="nearest",
                         output_stride=8)
    assert model.num_classes == 3 and model.size_divisor == 8
