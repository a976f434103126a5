"""Golden parity with torchvision: its segmentation models' state dicts load into ours unchanged
and give the same outputs (random weights; nothing is downloaded)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import segmentation as tv_segmentation

from pixelwise.models import create_model, model_info
from pixelwise.models.deeplab import deeplabv3
from pixelwise.models.torchvision_compat import deeplabv3_resnet50, fcn_resnet50

PAIRS = {
    "fcn_resnet50": (fcn_resnet50, tv_segmentation.fcn_resnet50),
    "deeplabv3_resnet50": (deeplabv3_resnet50, tv_segmentation.deeplabv3_resnet50),
}


def torchvision_model(name: str, num_classes: int) -> nn.Module:
    model = PAIRS[name][1](weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=True)
    _randomise_norm_statistics(model)
    return model.eval()


def _randomise_norm_statistics(model: nn.Module) -> None:
    """Fresh batch norms are identities in eval mode (mean 0, var 1, weight 1, bias 0); random
    statistics make the parity check see every norm's parameters and buffers."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("num_classes", [21, 7])
def test_torchvision_state_dict_loads_and_outputs_match(name: str, num_classes: int) -> None:
    theirs = torchvision_model(name, num_classes)
    ours = PAIRS[name][0](num_classes=num_classes).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())  # strict: every key, every shape
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        expected = theirs(x)
        logits, aux = ours(x, return_aux=True)
        plain = ours(x)
    assert logits.shape == (1, num_classes, 97, 131)
    assert (logits - expected["out"]).abs().max() <= 1e-5
    assert torch.equal(plain, logits)
    assert torch.equal(aux, expected["aux"])


@pytest.mark.parametrize("name", PAIRS)
def test_parameter_counts_equal(name: str) -> None:
    theirs = torchvision_model(name, 21)
    ours = PAIRS[name][0]()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("name", PAIRS)
def test_without_aux_loads_torchvision_without_aux(name: str) -> None:
    theirs = PAIRS[name][1](weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    ours = PAIRS[name][0](aux=False)
    assert not ours.has_aux
    ours.load_state_dict(theirs.state_dict())


@pytest.mark.parametrize("name", PAIRS)
def test_train_mode_at_batch_size_one(name: str) -> None:
    # torchvision's ASPP pooling branch fails here ("Expected more than 1 value per channel");
    # ours normalises the pooled map with running statistics instead.
    model = PAIRS[name][0](num_classes=5).train()
    logits, aux = model(torch.randn(1, 3, 97, 131), return_aux=True)
    assert logits.shape == aux.shape == (1, 5, 97, 131)


@pytest.mark.parametrize("name", PAIRS)
def test_registered_without_upsample_or_encoder(name: str) -> None:
    info = model_info(name)
    assert info.default_encoder == "resnet50"
    assert info.family == ("FCN" if name.startswith("fcn") else "DeepLab")
    assert "upsample" not in info.parameters
    with pytest.raises(ValueError, match="does not take"):
        create_model(name, upsample="transposed")


def test_general_deeplabv3_starts_as_torchvision() -> None:
    """``deeplabv3`` shares torchvision's heads, and with torchvision's half-pixel geometry
    (``aligned=False``) its bilinear upsampler starts as a plain bilinear resize: with
    torchvision's weights (renamed) it gives torchvision's outputs."""
    theirs = torchvision_model("deeplabv3_resnet50", 21)
    ours = deeplabv3(encoder="resnet50", output_stride=8, aux=True, aligned=False).eval()
    missing, unexpected = ours.load_state_dict(_rename_for_deeplabv3(theirs.state_dict()), strict=False)
    assert not unexpected and all(k.startswith("upsample.") for k in missing)
    x = torch.randn(1, 3, 64, 96)  # a multiple of the output stride: no padding
    with torch.no_grad():
        expected = theirs(x)
        logits, aux = ours(x, return_aux=True)
    assert (logits - expected["out"]).abs().max() <= 1e-5
    assert torch.equal(aux, expected["aux"])


def _rename_for_deeplabv3(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's ``backbone`` / ``classifier`` are ``encoder`` / ``head`` in ``deeplabv3``."""
    prefixes = {"backbone.": "encoder.", "classifier.": "head.", "aux_classifier.": "aux_classifier."}
    renamed = {}
    for key, value in state.items():
        prefix = next(p for p in prefixes if key.startswith(p))
        renamed[prefixes[prefix] + key.removeprefix(prefix)] = value
    return renamed
