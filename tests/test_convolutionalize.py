"""Convolutionalization: torchvision classifiers become fully convolutional networks that give
the same scores at the native size and score maps on larger inputs; what cannot be converted is
refused with the reason."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision import models as tvm

from pixelwise.analysis.convolutionalize import (
    ConvolutionalizeReport,
    FullyConvolutional,
    convolutionalize,
    convolutionalize_report,
)
from pixelwise.cli import main
from pixelwise.layers.convert import linear_to_conv2d


def _scores(model: nn.Module, size: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The same random image through ``model`` (eval, no grad), and the image."""
    height, width = (size, size) if isinstance(size, int) else size
    image = torch.randn(1, 3, height, width)
    with torch.no_grad():
        return model.eval()(image), image


@pytest.fixture(scope="module")
def vgg16() -> tuple[nn.Module, ConvolutionalizeReport]:
    """One VGG16 for the whole module: building it takes seconds."""
    torch.manual_seed(0)
    classifier = tvm.vgg16(weights=None).eval()
    return classifier, convolutionalize_report(classifier, native_size=224, test_size=384)


def test_vgg16_gives_the_classifier_scores_at_224(vgg16) -> None:
    classifier, report = vgg16
    assert report.classifier_shape == (1, 1000)
    assert report.native_score_shape == (1, 1000, 1, 1)
    assert report.max_abs_difference <= 1e-5
    expected, image = _scores(classifier, 224)  # another image than the check inside used
    with torch.no_grad():
        got = report.model(image)
    assert got.shape == (1, 1000, 1, 1)
    torch.testing.assert_close(got.flatten(1), expected, atol=1e-5, rtol=0)


def test_vgg16_at_384_gives_a_6x6_score_map(vgg16) -> None:
    _, report = vgg16
    assert report.score_map_shape == (1, 1000, 6, 6)  # pool5 12×12, fc6 a 7×7 valid convolution


def test_vgg16_fc_layers_become_the_fcn_convolutions(vgg16) -> None:
    classifier, report = vgg16
    conversions = {r.name: r.after for r in report.replacements}
    assert conversions == {"avgpool": "identity", "classifier.0": "Conv2d(512 → 4096, 7×7)",
                           "classifier.3": "Conv2d(4096 → 4096, 1×1)", "classifier.6": "Conv2d(4096 → 1000, 1×1)"}
    fc6 = report.model.head.classifier_0
    assert isinstance(fc6, nn.Conv2d) and fc6.kernel_size == (7, 7) and fc6.padding == (0, 0)
    assert torch.equal(fc6.weight, classifier.classifier[0].weight.reshape(4096, 512, 7, 7))
    assert fc6.weight.data_ptr() != classifier.classifier[0].weight.data_ptr(), "the result owns its weights"
    assert not any(isinstance(m, nn.Linear) for m in report.model.modules())


@pytest.mark.slow
def test_vgg16_conversion_is_the_fcn_encoders(vgg16, tmp_path: Path) -> None:
    """``convolutionalize`` and ``create_encoder("vgg16", fully_conv=True)`` carry fc6/fc7 alike."""
    from pixelwise.encoders import create_encoder

    classifier, report = vgg16
    path = tmp_path / "vgg16.pth"
    torch.save(classifier.state_dict(), path)
    encoder = create_encoder("vgg16", weights=path, fully_conv=True)
    for conv, converted in (("fc6", report.model.head.classifier_0), ("fc7", report.model.head.classifier_3)):
        assert torch.equal(getattr(encoder, conv).weight, converted.weight)
        assert torch.equal(getattr(encoder, conv).bias, converted.bias)


@pytest.mark.slow
def test_vgg16_bn_gives_the_classifier_scores() -> None:
    classifier = tvm.vgg16_bn(weights=None)
    assert convolutionalize_report(classifier, 224, 256).max_abs_difference <= 1e-5


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "mobilenet_v3_large"])  # AlexNet, ResNet-18: below
def test_torchvision_classifier_gives_the_same_scores_at_224(name: str) -> None:
    report = convolutionalize_report(getattr(tvm, name)(weights=None), native_size=224, test_size=224)
    assert report.classifier_shape == (1, 1000) and report.native_score_shape == (1, 1000, 1, 1)
    assert report.max_abs_difference <= 1e-5 * max(report.max_abs_score, 1.0)


def test_alexnet_pool5_is_kept_and_larger_inputs_give_a_map() -> None:
    report = convolutionalize_report(tvm.alexnet(weights=None), native_size=224, test_size=320)
    assert report.max_abs_difference <= 1e-5 * max(report.max_abs_score, 1.0)
    conversions = {r.name: r.after for r in report.replacements}
    assert conversions["avgpool"] == "identity"  # 6×6 → 6×6
    assert conversions["classifier.1"] == "Conv2d(256 → 4096, 6×6)"
    assert report.score_map_shape == (1, 1000, 4, 4)  # pool5 9×9 at 320, fc6 6×6 valid


def test_resnet18_global_pool_becomes_a_sliding_7x7_average() -> None:
    report = convolutionalize_report(tvm.resnet18(weights=None), native_size=224, test_size=448)
    assert report.max_abs_difference <= 1e-5 * max(report.max_abs_score, 1.0)
    assert {r.name: r.after for r in report.replacements} == {
        "avgpool": "AvgPool2d(7×7, stride 1)", "fc": "Conv2d(512 → 1000, 1×1)"}
    assert report.score_map_shape == (1, 1000, 8, 8)  # layer4 14×14, 7×7 stride-1 average


def test_mobilenet_v2_pooling_in_forward_code_becomes_a_layer() -> None:
    network = convolutionalize(tvm.mobilenet_v2(weights=None))
    assert isinstance(network.head.global_pool, nn.AvgPool2d)
    assert network.head.global_pool.kernel_size == (7, 7)
    assert isinstance(network.head.classifier_1, nn.Conv2d)
    with torch.no_grad():
        assert network(torch.randn(1, 3, 288, 288)).shape == (1, 1000, 3, 3)


class _Small(nn.Module):
    """A classifier without padding, so its score map is exactly it slid over the image."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, 5))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def test_score_map_is_the_classifier_slid_over_the_image() -> None:
    classifier = _Small().eval()
    network = convolutionalize(classifier, (10, 10))
    image = torch.randn(1, 3, 14, 16)
    with torch.no_grad():
        score_map = network(image)
        assert score_map.shape == (1, 5, 3, 4)  # conv 12×14, pool 6×7, fc 4×4 valid: one per 2 pixels
        for i in range(3):
            for j in range(4):
                window = classifier(image[..., 2 * i:2 * i + 10, 2 * j:2 * j + 10])
                torch.testing.assert_close(score_map[..., i, j], window)


def test_the_classifier_is_left_untouched() -> None:
    classifier = _Small().train()
    network = convolutionalize(classifier, 10)
    assert classifier.training and isinstance(classifier.classifier[1], nn.Linear)
    assert isinstance(network, FullyConvolutional) and not network.training
    assert all(a is not b for a, b in zip(classifier.parameters(), network.parameters()))


def test_linear_to_conv2d_computes_the_linear_layer_over_each_window() -> None:
    linear = nn.Linear(8 * 3 * 2, 5, bias=False)
    conv = linear_to_conv2d(linear, 8, (3, 2))
    assert conv.bias is None and conv.kernel_size == (3, 2)
    features = torch.randn(4, 8, 3, 2)
    torch.testing.assert_close(conv(features).flatten(1), linear(features.flatten(1)))
    with pytest.raises(ValueError, match="cannot become"):
        linear_to_conv2d(linear, 8, 3)


class _SkipAcrossChildren(nn.Module):
    """A residual connection in forward(): the children are no chain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        return self.fc((self.conv2(x) + x).flatten(1))


class _ChannelsLastFlatten(nn.Module):
    """Flattens position-major: the Linear's weights are not laid out for a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x).permute(0, 2, 3, 1).flatten(1))


class _Select(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x[:, :100]


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


def _conv() -> nn.Conv2d:
    return nn.Conv2d(3, 4, 3, padding=1)


@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda: nn.Sequential(_conv(), nn.ReLU(), nn.Conv2d(4, 2, 1)), ValueError, "no fully connected"),
    (_SkipAcrossChildren, RuntimeError, "not a chain"),
    (_ChannelsLastFlatten, RuntimeError, "not a chain"),
    (lambda: nn.Sequential(_conv(), nn.Flatten(), _Select(), nn.Linear(100, 2)), ValueError, "takes neither"),
    (lambda: nn.Sequential(_conv(), nn.Flatten(), nn.LayerNorm(256), nn.Linear(256, 2)), ValueError,
     "cannot run on"),
    (lambda: nn.Sequential(_conv(), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(36, 2)), ValueError,
     "does not divide"),
    (lambda: nn.Sequential(_conv(), nn.Flatten(), _MLP()), ValueError, "only in nn.Sequential heads"),
    (lambda: nn.Sequential(_conv(), _MLP()), ValueError, "sit inside 1"),
], ids=["no-linear", "skip", "channels-last", "select", "layernorm", "adaptive-8-to-3", "custom-head",
        "hidden-head"])
def test_classifiers_that_cannot_be_converted_are_refused_with_the_reason(make, error, message) -> None:
    with pytest.raises(error, match=message):
        convolutionalize(make(), (8, 8))


def test_cli_prints_conversions_check_and_score_map(capsys) -> None:
    assert main(["convolutionalize", "torchvision:resnet18", "--size", "448", "448"]) == 0
    printed = capsys.readouterr().out
    assert "Conv2d(512 → 1000, 1×1)" in printed and "equivalent at 224×224" in printed
    assert "resnet18 at 448×448 → score map 1×1000×8×8" in printed


def test_cli_loads_weights_and_takes_a_native_size(capsys, tmp_path: Path) -> None:
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(tvm.mobilenet_v2(weights=None).state_dict(), path)
    argv = ["convolutionalize", "torchvision:mobilenet_v2", "--weights", str(path), "--native", "256", "256",
            "--size", "320", "320"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "AvgPool2d(8×8, stride 1)" in printed and "score map 1×1000×3×3" in printed


@pytest.mark.parametrize(("argv", "message"), [
    (["convolutionalize", "torchvision:no_such_net"], "unknown classifier"),
    (["convolutionalize", "torchvision:squeezenet1_0"], "no fully connected"),
])
def test_cli_errors_are_clean(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().out
