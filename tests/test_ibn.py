"""IBN (instance + batch norm) and the ResNet-IBN-a encoders: the layer against PyTorch's
functional norms, the encoder against a torchvision ResNet whose shallow batch norms are
rewritten by hand, IBN-Net's key layout, training from the command line, ONNX export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_recipe
from torch import nn
from torchvision import models as tvm

import pixelwise
from pixelwise.cli import main
from pixelwise.encoders import create_encoder
from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.inference.loading import model_from_checkpoint
from pixelwise.runtimes.onnx_graph import onnx_proto
from pixelwise.layers import InstanceBatchNorm2d, make_norm


def _randomise_norms(model: nn.Module) -> None:
    """Batch-norm statistics and affines far from their defaults, so equality means something."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)) and module.affine:
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)


def test_ibn_normalises_half_the_channels_per_image_and_half_over_the_batch() -> None:
    ibn = InstanceBatchNorm2d(10)
    _randomise_norms(ibn)
    x = torch.randn(3, 10, 7, 9) * 4 + 2
    ins, bn = ibn.IN, ibn.BN
    for training in (True, False):
        ibn.train(training)
        running = bn.running_mean.clone(), bn.running_var.clone()
        expected = torch.cat([
            F.instance_norm(x[:, :5], weight=ins.weight, bias=ins.bias, eps=ins.eps),
            F.batch_norm(x[:, 5:], *running, bn.weight, bn.bias, training, bn.momentum, bn.eps),
        ], dim=1)
        torch.testing.assert_close(ibn(x), expected)
    # Scaling and shifting one image's channels leaves the instance-normalised half unchanged.
    ibn.eval()
    changed = x.clone()
    changed[1] = changed[1] * 3 - 5
    torch.testing.assert_close(ibn(changed)[1, :5], ibn(x)[1, :5], atol=1e-4, rtol=0)
    assert not torch.allclose(ibn(changed)[1, 5:], ibn(x)[1, 5:])


def test_ibn_is_a_norm_by_name_and_refuses_a_split_that_leaves_a_side_empty() -> None:
    assert isinstance(make_norm("ibn", 8), InstanceBatchNorm2d)
    block = pixelwise.layers.ConvNormAct(3, 8, 3, norm="ibn")
    assert block(torch.randn(2, 3, 9, 9)).shape == (2, 8, 9, 9)
    for ratio in (0.0, 1.0, 0.01):
        with pytest.raises(ValueError, match=r"IBN needs channels on both sides of its split: 8 channels"):
            InstanceBatchNorm2d(8, ratio)


def _hand_made_ibn(bn: nn.BatchNorm2d) -> nn.Module:
    """IBN-a written directly on a trained batch norm's tensors: instance norm with its first half
    of scale and shift, batch norm with the rest (eval mode)."""
    half = bn.num_features // 2

    class HandMade(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([
                F.instance_norm(x[:, :half], weight=bn.weight[:half], bias=bn.bias[:half], eps=bn.eps),
                F.batch_norm(x[:, half:], bn.running_mean[half:], bn.running_var[half:], bn.weight[half:],
                             bn.bias[half:], False, 0.0, bn.eps),
            ], dim=1)

    return HandMade()


@pytest.mark.parametrize(("name", "builder"), [("resnet18_ibn_a", tvm.resnet18), ("resnet50_ibn_a", tvm.resnet50)])
def test_ibn_encoder_from_torchvision_weights_is_the_resnet_with_ibn_in_layers_1_to_3(name: str, builder) -> None:
    reference = builder().eval()
    _randomise_norms(reference)
    encoder = create_encoder(name).eval()
    encoder.load_state_dict(encoder.convert_state_dict(reference.state_dict()))
    for layer in ("layer1", "layer2", "layer3"):  # layer4 and the stem keep batch norm, as in IBN-Net
        for block in getattr(reference, layer):
            block.bn1 = _hand_made_ibn(block.bn1)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        c3 = reference.layer3(reference.layer2(reference.layer1(reference.maxpool(
            reference.relu(reference.bn1(reference.conv1(x)))))))
        expected = reference.layer4(c3)
        features = encoder(x)
    torch.testing.assert_close(features[3], c3, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(features[4], expected, atol=1e-4, rtol=1e-4)
    plain = create_encoder(name.removesuffix("_ibn_a"))
    assert encoder.channels == plain.channels and encoder.reductions == plain.reductions
    assert encoder.grids == plain.grids


def test_a_file_with_ibn_nets_keys_loads_as_it_is(tmp_path: Path) -> None:
    """IBN-Net's resnet18_ibn_a files hold the encoder's keys plus the classifier's ``fc``."""
    source = create_encoder("resnet18_ibn_a")
    _randomise_norms(source)
    state = {**source.state_dict(), "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    assert "layer1.0.bn1.IN.weight" in state and "layer3.1.bn1.BN.running_var" in state
    torch.save(state, tmp_path / "resnet18_ibn_a.pth")
    loaded = create_encoder("resnet18_ibn_a", weights=tmp_path / "resnet18_ibn_a.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_the_cli_trains_an_ibn_encoder_and_its_checkpoint_rebuilds_it(tmp_path: Path) -> None:
    assert main(["train", *tiny_recipe(tmp_path, "model.name=fcn8s", "model.encoder=resnet18_ibn_a", "model.options={}",
                                       "data.options={size: [64, 64], length: 4}", "data.crop_size=[64, 64]")]) == 0
    state = load_checkpoint(tmp_path / "last.pt")
    model = model_from_checkpoint(state).model.eval()
    assert isinstance(model.encoder.layer2[0].bn1, InstanceBatchNorm2d)
    assert model.encoder.layer2[0].bn1.BN.num_batches_tracked.item() == 2, "the batch-norm half trained"


def test_an_ibn_model_exports_to_onnx_and_matches_pytorch_at_any_size() -> None:
    model = pixelwise.create_model("fcn8s", num_classes=3, encoder="resnet18_ibn_a").eval()
    _randomise_norms(model)
    session = ort.InferenceSession(onnx_proto(model, "fcn8s").SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64, 64), (2, 3, 45, 70)]:
        image = torch.randn(*shape)
        with torch.no_grad():
            expected = model(image).numpy()
        (actual,) = session.run(None, {"image": image.numpy()})
        assert actual.shape == expected.shape
        assert np.abs(actual - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())
