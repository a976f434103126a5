"""Every registered model × every upsampling kind × odd input sizes: the model contract.

Models are built small (ResNet-18 encoders, narrow paper U-Net) so the whole matrix runs in
seconds; each model file has its own tests of what is special about it.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

import pixelwise
from pixelwise.layers import UPSAMPLE_KINDS
from pixelwise.models.registry import register_model

NUM_CLASSES = 3
# 64×96 is a multiple of every model's size_divisor (no zero padding to add); the others are not.
SIZES = [(1, 1), (1, 17), (64, 96), (33, 47)]
# Builder options that make each model small; every model not named here is built as it is.
SMALL = {
    "fcn32s": {"encoder": "resnet18"},
    "fcn16s": {"encoder": "resnet18"},
    "fcn8s": {"encoder": "resnet18"},
    "unet": {"base_channels": 4},
    "unet_resnet18": {"encoder": "resnet18"},
    "deeplabv3": {"encoder": "resnet18"},
    "deeplabv3plus": {"encoder": "resnet18"},
    "hypercolumn": {"encoder": "resnet18"},
}


def _cases() -> list[tuple[str, dict, str | None]]:
    cases = []
    for name in pixelwise.list_models():
        takes_upsample = "upsample" in pixelwise.model_info(name).parameters
        for kind in UPSAMPLE_KINDS if takes_upsample else [None]:
            cases.append((name, SMALL.get(name, {}), kind))
    cases += [("unet", SMALL["unet_resnet18"], kind) for kind in UPSAMPLE_KINDS]
    return cases


def _build(name: str, options: dict, kind: str | None) -> pixelwise.models.SegmentationModel:
    return pixelwise.create_model(name, num_classes=NUM_CLASSES, upsample=kind, **options)


def test_registry_lists_the_whole_zoo() -> None:
    expected = {"fcn32s", "fcn16s", "fcn8s", "unet", "deeplabv3", "deeplabv3plus", "hypercolumn",
                "fcn_resnet50", "deeplabv3_resnet50"}
    assert expected <= set(pixelwise.list_models())


@pytest.mark.parametrize(("name", "options", "kind"), _cases())
def test_logits_at_input_size_for_any_size_and_gradients_reach_every_parameter(
        name: str, options: dict, kind: str | None) -> None:
    model = _build(name, options, kind)
    for height, width in SIZES:
        model.train()
        # A model with an auxiliary head trains it too, so ask for it: that is how its
        # parameters get their gradient.
        outputs = model(torch.randn(1, 3, height, width), return_aux=model.has_aux)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        for logits in outputs:
            assert logits.shape == (1, NUM_CLASSES, height, width)
            assert torch.isfinite(logits).all()
    model.zero_grad()
    sum((logits**2).mean() for logits in outputs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    model.eval()
    with torch.no_grad():
        for height, width in SIZES:
            logits = model(torch.randn(1, 3, height, width))
            assert logits.shape == (1, NUM_CLASSES, height, width)
            assert torch.isfinite(logits).all()
        assert model(torch.randn(2, 3, 29, 35)).shape == (2, NUM_CLASSES, 29, 35)


@pytest.mark.parametrize("name", ["fcn8s", "unet", "deeplabv3plus", "hypercolumn"])
def test_each_encoder_family_works_with_each_decoder(name: str) -> None:
    for encoder in ["mobilenet_v3_large", "vgg16_bn", "timm:resnet18"]:
        if name == "fcn8s" and encoder == "vgg16_bn":
            continue  # the fully connected fc6/fc7 head is 119M parameters: covered in test_fcn
        model = pixelwise.create_model(name, num_classes=NUM_CLASSES, encoder=encoder).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 37, 41)).shape == (1, NUM_CLASSES, 37, 41)


def test_whole_model_weights_file_round_trips(tmp_path: Path) -> None:
    model = pixelwise.create_model("deeplabv3plus", num_classes=4, encoder="resnet18").eval()
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    loaded = pixelwise.create_model("deeplabv3plus", num_classes=4, encoder="resnet18", weights=path).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ValueError, match="do not fit"):
        pixelwise.create_model("deeplabv3plus", num_classes=5, encoder="resnet18", weights=path)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="did you mean 'fcn8s'"):
        pixelwise.create_model("fcn8")


def test_unknown_option_lists_what_the_builder_takes() -> None:
    with pytest.raises(ValueError, match=r"does not take \['widht'\]"):
        pixelwise.create_model("unet", widht=3)


def test_duplicate_registration_is_an_error() -> None:
    def fcn8s(num_classes: int = 21) -> None:  # same name as the real builder
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="already registered"):
        register_model("FCN")(fcn8s)


def test_wrong_input_shapes_are_clear_errors() -> None:
    model = pixelwise.create_model("unet", num_classes=2, encoder="resnet18")
    with pytest.raises(ValueError, match="expects 3-channel images, got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="no auxiliary head"):
        model(torch.randn(1, 3, 32, 32), return_aux=True)


def test_every_builder_is_typed_and_documented() -> None:
    for name in pixelwise.list_models():
        builder = pixelwise.model_info(name).builder
        assert inspect.getdoc(builder), f"{name} has no docstring"
        signature = inspect.signature(builder)
        untyped = [p for p in signature.parameters.values() if p.annotation is inspect.Parameter.empty]
        assert not untyped, f"{name}: untyped parameters {untyped}"
        assert "num_classes" in signature.parameters


@pytest.mark.parametrize("name", ["unet", "deeplabv3plus"])
def test_input_scale_runs_the_network_on_the_resized_image_and_answers_at_full_size(name: str) -> None:
    options = {"encoder": "resnet18"}
    scaled = pixelwise.create_model(name, num_classes=NUM_CLASSES, input_scale=0.5, **options).eval()
    plain = pixelwise.create_model(name, num_classes=NUM_CLASSES, **options).eval()
    plain.load_state_dict(scaled.state_dict())
    x = torch.randn(2, 3, 67, 90)
    with torch.no_grad():
        logits = scaled(x)
        shrunk = torch.nn.functional.interpolate(x, size=(34, 45), mode="bilinear", antialias=True)
        expected = torch.nn.functional.interpolate(plain(shrunk), size=(67, 90), mode="bilinear")
    assert logits.shape == (2, NUM_CLASSES, 67, 90)
    torch.testing.assert_close(logits, expected)


def test_input_scale_trains_with_aux_logits_at_full_size() -> None:
    model = pixelwise.create_model("deeplabv3", num_classes=NUM_CLASSES, encoder="resnet18", aux=True,
                                   input_scale=0.25)
    logits, aux = model(torch.randn(2, 3, 64, 96), return_aux=True)
    assert logits.shape == aux.shape == (2, NUM_CLASSES, 64, 96)
    (logits.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["unet", "deeplabv3plus"])
def test_input_norm_makes_logits_independent_of_each_channels_brightness_and_contrast(name: str) -> None:
    normed = pixelwise.create_model(name, num_classes=NUM_CLASSES, encoder="resnet18", input_norm="instance").eval()
    plain = pixelwise.create_model(name, num_classes=NUM_CLASSES, encoder="resnet18").eval()
    plain.load_state_dict(normed.state_dict())
    x = torch.randn(2, 3, 67, 90)
    gain = torch.tensor([0.4, 1.7, 3.0]).view(1, 3, 1, 1)
    offset = torch.tensor([-1.0, 0.3, 2.0]).view(1, 3, 1, 1)
    standardised = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), correction=0, keepdim=True)
    with torch.no_grad():
        logits = normed(x)
        torch.testing.assert_close(normed(x * gain + offset), logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(logits, plain(standardised), atol=1e-4, rtol=1e-4)
        assert (plain(x * gain + offset) - plain(x)).abs().max() > 1e-2  # 100× the tolerance: not nothing
        assert normed(torch.randn(1, 3, 1, 1)).shape == (1, NUM_CLASSES, 1, 1)  # any size, 1×1 included


def test_input_norm_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"input_norm must be null .* or 'instance' .*got 'batch'"):
        pixelwise.create_model("unet", num_classes=2, input_norm="batch")


def test_input_scale_out_of_range_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"input_scale must be in \(0, 4\], got 0"):
        pixelwise.create_model("unet", num_classes=2, input_scale=0)
