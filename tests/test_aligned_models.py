"""Aligned decoders: every registered model × encoder × upsampler merges maps that sit on the
same grid and answers with logits centred on the pixels they label, and an impulse passed
through a whole network comes out where it went in.

The geometry is read by :func:`pixelwise.analysis.trace` on models built on the meta device (no
weights are allocated, so even VGG-16 traces in a fraction of a second); the impulse test runs
real networks whose weights pass a one-pixel impulse through.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch import nn

import pixelwise
from pixelwise.analysis import trace
from pixelwise.config import Config
from pixelwise.inference.loading import model_from_checkpoint
from pixelwise.training.loop import model_spec
from pixelwise.layers import UPSAMPLE_KINDS, Grid, make_upsampler
from pixelwise.layers.upsample import PixelShuffleUpsample, ResizeConv, TransposedUpsample
from pixelwise.models import saved_options, spec_options

DECODERS = ["fcn32s", "fcn16s", "fcn8s", "unet", "deeplabv3", "deeplabv3plus", "hypercolumn"]
# Offsets 0 (ResNet, MobileNet, timm's ResNet), (s - 1)/2 (VGG's pooling, ConvNeXt's patchify
# stem) and s - 1 (TensorFlow "same" padding): every kind of grid an encoder can have.
TIMM_ENCODERS = ["timm:resnet18", "timm:tf_efficientnet_b0", "timm:convnext_atto"]


def _encoders() -> list[str]:
    return pixelwise.list_encoders() + TIMM_ENCODERS


def _geometry(name: str, size: int = 64, **options) -> tuple[list, tuple]:
    """The merges and the logits' (height, width) axes of ``name`` traced at ``size``."""
    with torch.device("meta"):
        model = pixelwise.create_model(name, num_classes=3, **options)
    result = trace(model, size)
    return result.merges, result.outputs[0]


def _assert_aligned(merges: list, logits: tuple) -> None:
    misaligned = [(row.name, row.details.get("misalignment")) for row in merges if not row.aligned]
    assert not misaligned, f"merges of maps on different grids: {misaligned}"
    assert [(axis.stride, axis.center) for axis in logits] == [(1, 0), (1, 0)], logits


def _fast_cases() -> list[tuple[str, str | None, str]]:
    """Every decoder × every upsampler on ResNet-18, and every encoder under the U-Net and
    DeepLab v3+ decoders (bilinear): each fact once, in the default run."""
    cases = [(name, "resnet18", kind) for name in DECODERS for kind in UPSAMPLE_KINDS]
    cases += [(name, encoder, "bilinear") for name in ("unet", "deeplabv3plus") for encoder in _encoders()
              if encoder != "resnet18"]
    return cases


def _slow_cases() -> list[tuple[str, str | None, str]]:
    fast = set(_fast_cases())
    return [(name, encoder, kind) for name in DECODERS for encoder in _encoders() for kind in UPSAMPLE_KINDS
            if (name, encoder, kind) not in fast]


@pytest.mark.parametrize(("name", "encoder", "kind"), _fast_cases())
def test_every_merge_is_aligned_and_the_logits_are_centred(name: str, encoder: str, kind: str) -> None:
    _assert_aligned(*_geometry(name, encoder=encoder, upsample=kind))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "encoder", "kind"), _slow_cases())
def test_every_merge_is_aligned_for_the_whole_registry(name: str, encoder: str, kind: str) -> None:
    _assert_aligned(*_geometry(name, encoder=encoder, upsample=kind))


def test_the_cases_cover_every_registered_model() -> None:
    covered = set(DECODERS) | {"fcn_resnet50", "deeplabv3_resnet50"}
    assert covered == set(pixelwise.list_models())


@pytest.mark.parametrize("options", [{"padding": "valid"}, {"padding": "same"}])
@pytest.mark.parametrize("kind", UPSAMPLE_KINDS)
def test_the_paper_unet_is_aligned_by_construction(options: dict, kind: str) -> None:
    _assert_aligned(*_geometry("unet", base_channels=4, upsample=kind, **options))


@pytest.mark.parametrize("variant", ["fcn32s", "fcn8s"])
def test_the_paper_fcn_is_aligned_by_its_crops(variant: str) -> None:
    _assert_aligned(*_geometry(variant, paper=True))


@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_resnet50"])
def test_torchvision_models_keep_torchvision_geometry_unless_asked(name: str) -> None:
    merges, logits = _geometry(name)
    assert [axis.center for axis in logits] == [Fraction(-7, 2)] * 2  # torchvision's half-pixel resize
    for size in (64, 61):  # any size: the aligned resize crops to the input
        _assert_aligned(*_geometry(name, size=size, aligned=True))


@pytest.mark.parametrize("name", ["unet", "deeplabv3plus", "fcn8s", "hypercolumn"])
def test_aligned_false_builds_the_half_pixel_geometry(name: str) -> None:
    merges, logits = _geometry(name, encoder="resnet18", aligned=False)
    assert logits[0].center < 0
    assert name == "deeplabv3" or not all(row.aligned for row in merges)


# --- an impulse through whole networks -----------------------------------------------------------

_UPSAMPLERS = (TransposedUpsample, ResizeConv, PixelShuffleUpsample)


def _kind(module: nn.Module) -> str:
    if isinstance(module, ResizeConv):
        return module.mode
    return "transposed" if isinstance(module, TransposedUpsample) else "pixelshuffle"


def pass_impulses(model: nn.Module) -> nn.Module:
    """Weights that pass a positive impulse through unchanged in place: every convolution
    outside the upsamplers averages its input channels at its centre tap only, batch norm is the
    identity, and every upsampler keeps its initial resize rule with its channels averaged."""
    upsamplers = [m for m in model.modules() if isinstance(m, _UPSAMPLERS)]
    inside = {id(p) for m in upsamplers for p in m.parameters()}
    with torch.no_grad():
        for module in upsamplers:
            half_pixel = module.sampling is None or (isinstance(module, PixelShuffleUpsample)
                                                     and module.conv.padding_mode == "zeros")
            single = make_upsampler(_kind(module), 1, 1, module.scale, None if half_pixel else module.sampling[1])
            w1, weight = single.conv.weight, module.conv.weight
            in_channels = weight.shape[0] if isinstance(module, TransposedUpsample) else weight.shape[1]
            weight.copy_(w1.repeat(weight.shape[0] // w1.shape[0], weight.shape[1] // w1.shape[1], 1, 1) / in_channels)
            if module.conv.bias is not None:
                module.conv.bias.zero_()
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and id(module.weight) not in inside:
                module.weight.zero_()
                height, width = module.weight.shape[-2:]
                module.weight[:, :, height // 2, width // 2] = 1 / module.weight.shape[1]
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_()
                module.running_var.fill_(1 - module.eps)
                module.weight.fill_(1)
                module.bias.zero_()
    return model.eval()


def _peak(y: torch.Tensor) -> tuple[float, float]:
    """Centre of the output's maximum (the middle of a plateau, as nearest upsampling makes)."""
    rows, cols = torch.nonzero(y >= y.max() * (1 - 1e-5), as_tuple=True)
    return rows.float().mean().item(), cols.float().mean().item()


IMPULSE = (64, 96)


def _impulse_response(name: str, **options) -> torch.Tensor:
    model = pass_impulses(pixelwise.create_model(name, num_classes=1, **options))
    x = torch.zeros(1, 3, 128, 160)
    x[..., IMPULSE[0], IMPULSE[1]] = 1
    with torch.no_grad():
        return model(x)[0, 0]


@pytest.mark.parametrize("kind", UPSAMPLE_KINDS)
@pytest.mark.parametrize(("name", "encoder"), [("unet", "resnet18"), ("deeplabv3plus", "resnet18"),
                                               ("fcn8s", "mobilenet_v2"), ("hypercolumn", "resnet18"),
                                               ("deeplabv3", "resnet18")])
def test_an_impulse_comes_out_on_the_input_pixel(name: str, encoder: str, kind: str) -> None:
    # Even-padded encoders map input pixel 64 (a multiple of every stride) onto a pixel of every
    # feature map; the aligned decoder brings each back onto pixel 64. Nearest upsampling by an
    # even factor makes a plateau [s·m - s/2, s·m + s/2), whose middle is half a pixel early.
    peak = _peak(_impulse_response(name, encoder=encoder, upsample=kind))
    tolerance = 0.5 if kind == "nearest" else 1e-6
    assert abs(peak[0] - IMPULSE[0]) <= tolerance and abs(peak[1] - IMPULSE[1]) <= tolerance, peak


@pytest.mark.parametrize(("name", "offset"), [("unet", 11), ("deeplabv3plus", 7.5), ("hypercolumn", 15)])
def test_the_half_pixel_geometry_moves_the_impulse(name: str, offset: float) -> None:
    peak = _peak(_impulse_response(name, encoder="resnet18", upsample="bilinear", aligned=False))
    assert peak == pytest.approx((IMPULSE[0] + offset, IMPULSE[1] + offset), abs=0.5)


# --- old checkpoints ----------------------------------------------------------------------------


def test_a_spec_saved_before_alignment_rebuilds_the_half_pixel_model(tmp_path: Path) -> None:
    old = pixelwise.create_model("unet", num_classes=2, encoder="resnet18", aligned=False).eval()
    state = {"model": old.state_dict(), "model_spec": {"name": "unet", "num_classes": 2,
                                                       "options": {"encoder": "resnet18"}},
             "classes": {"names": ["a", "b"]}, "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    loaded = model_from_checkpoint(state, "cpu", "old.pt").model
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), old(x), rtol=0, atol=0)
    assert saved_options("unet", {"encoder": "resnet18"})["aligned"] is False
    assert saved_options("unet", {"aligned": True})["aligned"] is True
    assert spec_options("unet", {"encoder": "resnet18"})["aligned"] is True
    assert spec_options("fcn_resnet50", {})["aligned"] is False  # torchvision's geometry by default


@pytest.mark.parametrize(("name", "upsampler"), [("deeplabv3", "upsample"), ("deeplabv3plus", "upsample"),
                                                  ("hypercolumn", "upsample_logits")])
def test_a_spec_saved_before_the_resize_default_rebuilds_its_learned_upsamplers(name: str, upsampler: str) -> None:
    old = pixelwise.create_model(name, num_classes=2, encoder="resnet18", upsample="bilinear").eval()
    assert any(p.requires_grad for p in getattr(old, upsampler).parameters())
    state = {"model": old.state_dict(), "model_spec": {"name": name, "num_classes": 2,
                                                       "options": {"encoder": "resnet18", "aligned": True}},
             "classes": {"names": ["a", "b"]}, "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    loaded = model_from_checkpoint(state, "cpu", "old.pt").model
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), old(x), rtol=0, atol=0)
    assert spec_options(name, {})["upsample"] == "resize"
    assert not list(getattr(pixelwise.create_model(name, num_classes=2, encoder="resnet18"), upsampler).parameters())
    assert "upsample" not in saved_options("unet", {})  # other models' defaults are unchanged


def test_new_checkpoints_record_the_geometry_they_were_built_with() -> None:
    config = Config()
    assert model_spec(config, 3)["options"]["aligned"] is True
    config.model.options["aligned"] = False
    assert model_spec(config, 3)["options"]["aligned"] is False


def test_encoder_grids_are_traced_not_tabulated() -> None:
    grids = pixelwise.encoders.create_encoder("timm:tf_efficientnet_b0").grids
    assert grids == [Grid(s, s - 1) for s in (2, 4, 8, 16, 32)]
    assert pixelwise.encoders.create_encoder("vgg16").grids == [Grid(s, Fraction(s - 1, 2)) for s in (2, 4, 8, 16, 32)]
