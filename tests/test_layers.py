"""The upsampler factory, conv blocks, ASPP and padding helpers, checked against PyTorch's own ops."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.layers import (
    ASPP,
    UPSAMPLE_KINDS,
    ConvNormAct,
    SeparableConv2d,
    aspp_rates,
    bilinear_kernel,
    make_norm,
    make_upsampler,
    mirror_pad,
    pad_to_multiple,
)

SCALES = [2, 3, 4, 8, 16, 32]


@pytest.mark.parametrize("kind", UPSAMPLE_KINDS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("channels", [(4, 4), (4, 7)])
def test_upsampler_output_shape_is_exact(kind: str, scale: int, channels: tuple[int, int]) -> None:
    upsampler = make_upsampler(kind, channels[0], channels[1], scale)
    y = upsampler(torch.randn(2, channels[0], 5, 3))
    assert y.shape == (2, channels[1], 5 * scale, 3 * scale)


@pytest.mark.parametrize("scale", SCALES)
def test_transposed_at_init_equals_bilinear_interpolation_everywhere(scale: int) -> None:
    x = torch.randn(2, 3, 7, 10)
    y = make_upsampler("transposed", 3, 3, scale)(x)
    expected = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["nearest", "bilinear"])
@pytest.mark.parametrize("scale", [2, 3, 8])
def test_resize_then_conv_starts_as_plain_resize(kind: str, scale: int) -> None:
    x = torch.randn(1, 5, 6, 9)
    y = make_upsampler(kind, 5, 5, scale)(x)
    options = {"align_corners": False} if kind == "bilinear" else {}
    torch.testing.assert_close(y, F.interpolate(x, scale_factor=scale, mode=kind, **options), atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale", [2, 3, 8])
def test_resize_kind_is_torch_bilinear_resize_and_learns_nothing(scale: int) -> None:
    x = torch.randn(2, 5, 6, 9)
    upsampler = make_upsampler("resize", 5, 5, scale)
    assert not list(upsampler.parameters())
    torch.testing.assert_close(upsampler(x), F.interpolate(x, scale_factor=scale, mode="bilinear",
                                                           align_corners=False), atol=0, rtol=0)


def test_resize_kind_changes_channels_with_a_1x1_conv_before_the_resize() -> None:
    x = torch.randn(2, 6, 5, 7)
    upsampler = make_upsampler("resize", 6, 3, 4)
    conv = upsampler.project
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
    # Both maps are linear and bilinear weights sum to one, so projecting after the resize is the same map.
    after = conv(F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False))
    torch.testing.assert_close(upsampler(x), after, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("channels", [(6, 6), (6, 3)])
def test_icnr_pixelshuffle_equals_nearest_upsampling_of_its_convolution(scale: int, channels: tuple[int, int]) -> None:
    in_channels, out_channels = channels
    upsampler = make_upsampler("pixelshuffle", in_channels, out_channels, scale)
    x = torch.randn(2, in_channels, 5, 7)
    base_weight = upsampler.conv.weight[:: scale**2]
    base_bias = upsampler.conv.bias[:: scale**2]
    base_output = F.conv2d(x, base_weight, base_bias, padding=1)
    expected = F.interpolate(base_output, scale_factor=scale, mode="nearest")
    torch.testing.assert_close(upsampler(x), expected, atol=1e-6, rtol=0)


def test_bilinear_kernel_matches_fcn_filler() -> None:
    torch.testing.assert_close(bilinear_kernel(2)[0], torch.tensor([0.0625, 0.1875, 0.1875, 0.0625]))
    assert bilinear_kernel(3).shape == (5, 5)
    assert bilinear_kernel(3)[2, 2] == 1.0


def test_upsampler_rejects_unknown_kind_and_bad_scale() -> None:
    with pytest.raises(ValueError, match="unknown upsample kind 'cubic'"):
        make_upsampler("cubic", 3, 3, 2)
    with pytest.raises(ValueError, match="positive integer"):
        make_upsampler("nearest", 3, 3, 1.5)  # type: ignore[arg-type]


def test_scale_one_is_identity_or_projection() -> None:
    assert isinstance(make_upsampler("transposed", 4, 4, 1), nn.Identity)
    assert make_upsampler("transposed", 4, 2, 1)(torch.randn(1, 4, 3, 3)).shape == (1, 2, 3, 3)


def test_conv_norm_act_has_no_bias_before_norm_and_same_padding() -> None:
    block = ConvNormAct(3, 8, 3, dilation=4)
    assert block[0].bias is None and block[0].padding == (4, 4)
    assert ConvNormAct(3, 8, norm=None)[0].bias is not None
    assert block(torch.randn(1, 3, 9, 11)).shape == (1, 8, 9, 11)


def test_separable_conv_is_depthwise_then_pointwise() -> None:
    block = SeparableConv2d(8, 16, dilation=2)
    assert block[0][0].groups == 8 and block[1][0].kernel_size == (1, 1)
    assert block(torch.randn(2, 8, 7, 5)).shape == (2, 16, 7, 5)


def test_norm_factory_accepts_names_classes_and_none() -> None:
    assert isinstance(make_norm("gn", 48), nn.GroupNorm)
    assert isinstance(make_norm(nn.BatchNorm2d, 4), nn.BatchNorm2d)
    assert isinstance(make_norm(None, 4), nn.Identity)
    with pytest.raises(ValueError, match="unknown norm layer"):
        make_norm("layernorm3d", 4)


def test_aspp_pooling_branch_trains_at_batch_size_one() -> None:
    aspp = ASPP(16, rates=aspp_rates(16), out_channels=8).train()
    y = aspp(torch.randn(1, 16, 5, 7))
    y.sum().backward()
    assert y.shape == (1, 8, 5, 7)
    assert all(p.grad is not None for p in aspp.parameters())


def test_aspp_rates_scale_with_output_stride() -> None:
    assert aspp_rates(16) == (6, 12, 18)
    assert aspp_rates(8) == (12, 24, 36)


def test_pad_to_multiple_pads_bottom_right_only() -> None:
    x = torch.arange(6.0).view(1, 1, 2, 3)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (1, 1, 4, 4)
    torch.testing.assert_close(padded[..., :2, :3], x)
    assert pad_to_multiple(x, 4, min_size=8).shape == (1, 1, 8, 8)


def test_mirror_pad_reflects_beyond_the_image_size() -> None:
    row = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    assert mirror_pad(row, 0, 0, 4, 4)[0, 0, 0].tolist() == [1, 2, 3, 2, 1, 2, 3, 2, 1, 2, 3]
    tile = torch.randn(1, 2, 30, 1)
    padded = mirror_pad(tile, 92, 93, 92, 92)
    assert padded.shape == (1, 2, 215, 185)
    # A small pad is exactly PyTorch's reflect padding.
    square = torch.randn(1, 1, 6, 6)
    torch.testing.assert_close(mirror_pad(square, 2, 3, 1, 4), F.pad(square, (1, 4, 2, 3), mode="reflect"))


def test_conv_norm_act_starts_from_he_initialisation() -> None:
    torch.manual_seed(0)
    block = ConvNormAct(64, 128, 3)
    fan_out = 128 * 3 * 3
    assert block[0].bias is None
    assert block[0].weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
