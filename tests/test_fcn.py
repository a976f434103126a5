"""FCN-32s/16s/8s: the reference (paper) geometry, zero-initialised skips fused by addition, VGG
classifier weights carried into fc6/fc7, clear errors, gradients. (Logits at any input size with
any upsampler, in train and eval mode, are the registry-wide contract: tests/test_models.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

import pixelwise
from pixelwise.encoders import create_encoder
from pixelwise.layers import UPSAMPLE_KINDS
from pixelwise.models.fcn import FCN, PAPER_CROP_OFFSETS, SKIP_LAYERS, paper_upsampler, skip_feature_indices

VARIANTS = ["fcn32s", "fcn16s", "fcn8s"]


@pytest.fixture(scope="module")
def paper_encoder() -> torch.nn.Module:
    """One reference-geometry VGG16 (134M parameters) shared by the paper-mode tests."""
    return create_encoder("vgg16", fully_conv=True, paper=True).eval()


def test_builders_are_registered_as_fcn_family() -> None:
    for name in VARIANTS:
        info = pixelwise.model_info(name)
        assert (info.family, info.default_encoder) == ("FCN", "vgg16")
        assert {"num_classes", "encoder", "upsample", "encoder_weights", "paper"} <= set(info.parameters)


def test_other_encoders_use_features_at_half_and_quarter_stride() -> None:
    model = pixelwise.create_model("fcn8s", num_classes=3, encoder="mobilenet_v2").eval()
    assert [model.encoder.reductions[i] for i in model.skip_indices] == [16, 8]
    assert model.score_pool4.in_channels == 96 and model.score_pool3.in_channels == 32
    with torch.no_grad():
        assert model(torch.randn(2, 3, 19, 41)).shape == (2, 3, 19, 41)


def test_skip_feature_indices_follow_the_strides() -> None:
    assert skip_feature_indices([2, 4, 8, 16, 32], 2) == [3, 2]
    assert skip_feature_indices([4, 8, 16, 32], 1) == [2]
    with pytest.raises(ValueError, match="stride 8"):
        skip_feature_indices([4, 16, 32], 2)


def test_skip_score_layers_start_at_zero() -> None:
    model = pixelwise.create_model("fcn8s", encoder="resnet18")
    for score_name, _ in SKIP_LAYERS:
        layer = getattr(model, score_name)
        assert not layer.weight.any() and not layer.bias.any()
    assert model.score_fr.weight.any()


@pytest.mark.parametrize(("upsample", "aligned"), [("nearest", False), ("pixelshuffle", False), ("bilinear", True),
                                                  ("transposed", True), ("pixelshuffle", True)])
def test_fcn16s_and_fcn8s_start_as_fcn32s(upsample: str, aligned: bool) -> None:
    """Zero skips fused by adding change nothing, and the upsampling steps compose: half-pixel
    nearest ×2 ×2 ×8 is exactly nearest ×32, and aligned linear interpolation ×2 ×2 ×8 is linear
    interpolation ×32 (the knots of each step lie on the next one's line), so the whole outputs
    match. Half-pixel bilinear steps compose to a different interpolation than one ×32 step, and
    aligned nearest steps round twice."""
    encoder = create_encoder("resnet18").eval()
    models = {variant: FCN(encoder, 4, variant, upsample, aligned=aligned).eval() for variant in VARIANTS}
    for variant in ("fcn16s", "fcn8s"):
        models[variant].score_fr.load_state_dict(models["fcn32s"].score_fr.state_dict())
    images = torch.randn(2, 3, 45, 70)
    tolerance = 1e-5 if aligned else 0
    with torch.no_grad():
        coarse = models["fcn32s"](images)
        for variant in ("fcn16s", "fcn8s"):
            torch.testing.assert_close(models[variant](images), coarse, rtol=0, atol=tolerance)


@pytest.mark.parametrize("upsample", UPSAMPLE_KINDS)
def test_skips_add_nothing_at_initialisation(upsample: str) -> None:
    model = pixelwise.create_model("fcn8s", num_classes=4, encoder="resnet18", upsample=upsample).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        score = model.score_fr(model.encoder(images)[-1])
        without_skips = model.upscore8(model.upscore_pool4(model.upscore2(score)))
        torch.testing.assert_close(model(images), without_skips, rtol=0, atol=0)


def test_skips_are_added_once_trained() -> None:
    model = pixelwise.create_model("fcn16s", num_classes=4, encoder="resnet18", upsample="nearest").eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(images)
        features = model.encoder(images)
        model.score_pool4.bias.fill_(1.0)  # adds 1 to every pool4 score, hence to every pixel
        torch.testing.assert_close(model(images), before + 1.0)
    assert features[model.skip_indices[0]].shape[-1] == 64 // 16


def test_paper_crop_offsets_follow_from_the_receptive_field_alignment() -> None:
    """Recompute the offsets: track each layer's grid as input coordinate a·x + b."""
    def transposed(grid: tuple[float, float], kernel: int, stride: int) -> tuple[float, float]:
        scale, shift = grid
        return scale / stride, shift - scale * (kernel - 1) / 2 / stride

    def offset(cropped: tuple[float, float], reference: tuple[float, float]) -> int:
        assert cropped[0] == reference[0]
        return int((reference[1] - cropped[1]) / cropped[0])

    grid = (1.0, -99.0)  # conv1_1: 3×3 with 100 pixels of padding
    pools = []
    for _ in range(5):
        grid = (grid[0] * 2, grid[1] + grid[0] * 0.5)  # 2×2 stride-2 max pool
        pools.append(grid)
    score_fr = (pools[4][0], pools[4][1] + 3 * pools[4][0])  # fc6: 7×7, no padding
    data = (1.0, 0.0)
    assert offset(transposed(score_fr, 64, 32), data) == PAPER_CROP_OFFSETS["fcn32s"]["upscore"]
    upscore2 = transposed(score_fr, 4, 2)
    assert offset(pools[3], upscore2) == PAPER_CROP_OFFSETS["fcn16s"]["score_pool4"] == 5
    assert offset(transposed(upscore2, 32, 16), data) == PAPER_CROP_OFFSETS["fcn16s"]["upscore16"]
    upscore_pool4 = transposed(upscore2, 4, 2)
    assert offset(pools[2], upscore_pool4) == PAPER_CROP_OFFSETS["fcn8s"]["score_pool3"]
    assert offset(transposed(upscore_pool4, 16, 8), data) == PAPER_CROP_OFFSETS["fcn8s"]["upscore8"]


def test_paper_upsampler_is_the_reference_bilinear_deconvolution() -> None:
    """Kernel 2s, stride s, no padding, bilinear taps per class; frozen like the reference's."""
    upsampler = paper_upsampler(3, 2)
    assert (upsampler.kernel_size, upsampler.stride, upsampler.padding) == ((4, 4), (2, 2), (0, 0))
    assert upsampler.bias is None and not upsampler.weight.requires_grad
    assert not upsampler.weight[0, 1].any()  # classes do not mix
    expected = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(upsampler.weight[1, 1], expected[:, None] * expected[None, :])


@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_mode_any_small_size(variant: str, paper_encoder: torch.nn.Module) -> None:
    model = FCN(paper_encoder, 21, variant, paper=True).eval()
    assert model.size_divisor == 1
    sizes = [(37, 53), (1, 1)] if variant == "fcn8s" else [(37, 53)]  # each pass runs VGG16 at ≥199×199
    with torch.no_grad():
        for height, width in sizes:
            assert model(torch.randn(1, 3, height, width)).shape == (1, 21, height, width)


@pytest.mark.slow
def test_paper_mode_on_500x500(paper_encoder: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference's input size. The VGG16 pass at 698×698 dominates (seconds on one core), so
    FCN-32s runs it for real and FCN-16s/8s reuse its features for the same image."""
    image = torch.randn(1, 3, 500, 500)
    captured = []
    handle = paper_encoder.register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        assert FCN(paper_encoder, 21, "fcn32s", paper=True)(image).shape == (1, 21, 500, 500)
    handle.remove()
    assert captured[0][-1].shape[-2:] == (16, 16)  # fc7 as in the reference deploy net
    monkeypatch.setattr(paper_encoder, "forward", lambda x: captured[0])
    with torch.no_grad():
        for variant in ("fcn16s", "fcn8s"):
            assert FCN(paper_encoder, 21, variant, paper=True)(image).shape == (1, 21, 500, 500)


def test_paper_mode_refuses_other_encoders_and_upsamplers() -> None:
    with pytest.raises(ValueError, match="encoder must be one of.*resnet18"):
        pixelwise.create_model("fcn8s", encoder="resnet18", paper=True)
    with pytest.raises(ValueError, match="upsample='bilinear'"):
        pixelwise.create_model("fcn32s", upsample="bilinear", paper=True)
    with pytest.raises(ValueError, match="paper=True needs"):
        FCN(create_encoder("resnet18"), 21, "fcn16s", paper=True)


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="fcn4s"):
        FCN(create_encoder("resnet18"), 21, "fcn4s")


@pytest.mark.slow
def test_vgg16_file_carries_the_classifier_into_fc6_and_fc7(tmp_path: Path) -> None:
    """A torchvision VGG16 state dict (random here; ImageNet in practice) from a local file."""
    state = tvm.vgg16(weights=None).state_dict()
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    model = pixelwise.create_model("fcn32s", num_classes=2, encoder_weights=path)
    encoder = model.encoder
    # torch.equal, not assert_close: exact, and far cheaper on 100M-element tensors.
    assert torch.equal(encoder.fc6.weight, state["classifier.0.weight"].reshape(4096, 512, 7, 7))
    assert torch.equal(encoder.fc6.bias, state["classifier.0.bias"])
    assert torch.equal(encoder.fc7.weight, state["classifier.3.weight"].reshape(4096, 4096, 1, 1))
    assert torch.equal(encoder.features[28].weight, state["features.28.weight"])
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 20, 30)).shape == (1, 2, 20, 30)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_gets_a_finite_gradient(variant: str) -> None:
    model = pixelwise.create_model(variant, num_classes=3, encoder="resnet18", upsample="pixelshuffle").train()
    assert model.size_divisor == 32  # the encoder's stride: inputs are zero-padded to a multiple of it
    logits = model(torch.randn(2, 3, 35, 50))
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (2, 35, 50))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    if variant != "fcn32s":
        assert model.score_pool4.weight.grad.any(), "a zero-initialised skip must still learn"


def test_paper_mode_freezes_only_the_upsamplers(paper_encoder: torch.nn.Module) -> None:
    model = FCN(paper_encoder, 3, "fcn8s", paper=True)
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert frozen == {"upscore2.weight", "upscore_pool4.weight", "upscore8.weight"}
