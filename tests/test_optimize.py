"""optimize_for_inference: batch norms folded by data flow, same logits, original untouched."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pixelwise
from pixelwise.runtimes import conv_bn_pairs, fold_batch_norms, optimize_for_inference


def _randomise_batch_norms(model: nn.Module) -> nn.Module:
    """Non-trivial statistics, as after training, so folding has something to get wrong."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return model.eval()


def _count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize(("name", "options"), [
    ("unet", {"encoder": "resnet18", "upsample": "pixelshuffle"}),
    ("unet", {"base_channels": 4}),
    ("deeplabv3plus", {"encoder": "mobilenet_v3_large"}),
    ("fcn8s", {"encoder": "resnet18"}),
    ("hypercolumn", {"encoder": "resnet18", "upsample": "transposed"}),
])
def test_optimized_model_gives_the_same_logits_without_batch_norms(name: str, options: dict) -> None:
    model = _randomise_batch_norms(pixelwise.create_model(name, num_classes=5, **options))
    batch_norms = _count(model, nn.BatchNorm2d)
    optimized = optimize_for_inference(model)
    assert _count(optimized, nn.BatchNorm2d) == 0
    assert _count(model, nn.BatchNorm2d) == batch_norms, "the original must stay untouched"
    x = torch.randn(2, 3, 37, 50)
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), model(x), atol=1e-4, rtol=1e-4)


def test_torchvision_compatible_model_still_matches_torchvision_after_optimisation() -> None:
    from torchvision.models.segmentation import deeplabv3_resnet50

    reference = _randomise_batch_norms(deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False))
    ours = pixelwise.create_model("deeplabv3_resnet50", aux=False)
    ours.load_state_dict(reference.state_dict())
    optimized = optimize_for_inference(ours)
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), reference(x)["out"], atol=1e-4, rtol=1e-4)


def test_only_batch_norms_fed_directly_by_a_convolution_are_paired() -> None:
    class SharedInput(nn.Module):
        """bn_a follows conv, but conv's output also feeds a residual: folding must follow the
        data; bn_b normalises the sum, which no convolution produced."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn_b = nn.BatchNorm2d(3)  # registered next to conv, yet not its consumer
            self.bn_a = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn_a(y) + self.bn_b(x + 1)

    model = _randomise_batch_norms(SharedInput())
    assert conv_bn_pairs(model, torch.randn(1, 3, 8, 8)) == [("conv", "bn_a")]


def test_a_fold_that_would_change_the_output_is_refused() -> None:
    class Reused(nn.Module):
        """The conv's output is normalised and also used raw: folding would change the raw use."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    model = _randomise_batch_norms(Reused())
    with pytest.raises(RuntimeError, match="differs from the original"):
        optimize_for_inference(model, example=torch.randn(1, 3, 8, 8), channels_last=False)
    assert optimize_for_inference(model, example=torch.randn(1, 3, 8, 8), fold_batch_norm=False) is not model


def test_fold_batch_norms_counts_what_it_folded() -> None:
    model = _randomise_batch_norms(pixelwise.create_model("unet", num_classes=2, base_channels=2, depth=2))
    assert fold_batch_norms(model, torch.randn(1, 3, 64, 64)) == 10
    assert _count(model, nn.BatchNorm2d) == 0


def test_channels_last_inputs_are_converted() -> None:
    model = pixelwise.create_model("unet", num_classes=2, encoder="resnet18").eval()
    optimized = optimize_for_inference(model, fold_batch_norm=False)
    assert optimized.channels_last and not model.channels_last
    assert optimized.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
