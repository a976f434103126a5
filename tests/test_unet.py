"""U-Net: the paper's valid-convolution network and its size arithmetic, overlap-tile inference,
same padding, the encoder-backed variant (plain and dilated), and gradients everywhere.

Logits at the input size for every upsampler, size and mode, with the paper's network and the
encoder-backed one, are the registry-wide contract: tests/test_models.py."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from pixelwise import create_model, model_info
from pixelwise.layers import UPSAMPLE_KINDS, mirror_pad
from pixelwise.models.unet import EncoderUNet, UNet, unet, unet_input_size, unet_margin, unet_output_size

SIZES = [(1, 1), (1, 17), (33, 47), (70, 101)]
SMALL_DECODER = (16, 16, 8, 8, 8)


@functools.cache
def paper_unet(upsample: str, norm: str | None = "batchnorm") -> UNet:
    # Channel counts don't change any size, so 4 base channels test the real arithmetic fast.
    # (The builder itself: create_model drops keyword arguments that are None, norm=None included.)
    return unet(num_classes=3, upsample=upsample, base_channels=4, norm=norm)


@functools.cache
def encoder_unet(upsample: str, output_stride: int = 32) -> EncoderUNet:
    return create_model("unet", num_classes=3, encoder="resnet18", upsample=upsample,
                        decoder_channels=SMALL_DECODER, output_stride=output_stride)


def simulated_output_size(size: int, depth: int) -> int | None:
    """Layer-by-layer size arithmetic of the paper's network; ``None`` where it breaks."""
    skips = []
    for level in range(depth + 1):
        if level:
            if size % 2:
                return None
            size //= 2
        size -= 4
        if size < 1:
            return None
        skips.append(size)
    for skip in reversed(skips[:-1]):
        size = 2 * size
        assert skip >= size  # crop-and-concatenate always has enough skip
        size -= 4
        if size < 1:
            return None
    return size


def assert_every_parameter_has_a_finite_gradient(model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    model.zero_grad()
    model(x).square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"


# The paper's network ---------------------------------------------------------------------------


def test_paper_core_maps_572_to_388() -> None:
    model = unet(num_classes=2, base_channels=4, norm=None).eval()
    with torch.no_grad():
        logits = model.forward_core(torch.randn(1, 3, 572, 572))
    assert logits.shape == (1, 2, 388, 388)
    widths = [level[0][0].out_channels for level in model.contracting]
    assert widths == [4, 8, 16, 32, 64]


def test_norm_none_is_the_papers_network_without_batch_norm() -> None:
    model = paper_unet("transposed", norm=None)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(conv.padding == (0, 0) for conv in convs), "the paper's convolutions are all valid"
    assert all(conv.bias is not None for conv in convs)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_size_functions_match_layer_by_layer_arithmetic(depth: int) -> None:
    for size in range(1, 700):
        expected = simulated_output_size(size, depth)
        if expected is None:
            with pytest.raises(ValueError, match="nearest valid sizes"):
                unet_output_size(size, depth)
        else:
            assert unet_output_size(size, depth) == expected
    for output_size in range(1, 200):
        smallest = unet_input_size(output_size, depth)
        assert unet_output_size(smallest, depth) >= output_size
        assert all(simulated_output_size(s, depth) is None or simulated_output_size(s, depth) < output_size
                   for s in range(1, smallest)), "not the smallest valid input"


@pytest.mark.parametrize(("depth", "height", "width"), [(4, 188, 220), (4, 572, 204), (2, 44, 60), (3, 92, 100)])
def test_size_functions_agree_with_the_real_forward(depth: int, height: int, width: int) -> None:
    model = create_model("unet", num_classes=2, base_channels=2, depth=depth).eval()
    with torch.no_grad():
        logits = model.forward_core(torch.randn(1, 3, height, width))
    assert logits.shape[-2:] == (unet_output_size(height, depth), unet_output_size(width, depth))
    assert (height - logits.shape[-2]) // 2 == unet_margin(depth)


def test_paper_formulas_for_depth_4() -> None:
    for bottom in range(4, 40):
        assert unet_output_size(16 * bottom + 124) == 16 * bottom - 60
    assert unet_input_size(388) == 572
    assert unet_input_size(389) == 588
    assert unet_input_size(1) == 188
    assert unet_margin() == 92


@pytest.mark.parametrize(("size", "message"), [
    (573, "odd size.*nearest valid sizes are 572 or 588"),
    (570, "odd size.*556 or 572"),
    (140, "nothing would be left.*nearest valid sizes are 188"),
    (100, "are 188"),
])
def test_invalid_sizes_raise_naming_the_nearest_valid_ones(size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        unet_output_size(size)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="output size"):
        unet_input_size(0)
    with pytest.raises(ValueError, match="depth"):
        unet_output_size(572, depth=0)
    with pytest.raises(ValueError, match="nearest valid sizes"):
        paper_unet("nearest").forward_core(torch.randn(1, 3, 572, 573))


@pytest.mark.parametrize("upsample", UPSAMPLE_KINDS)
def test_overlap_tile_is_the_core_on_the_mirrored_tile(upsample: str) -> None:
    model = paper_unet(upsample).eval()
    x = torch.randn(1, 3, 37, 50)
    bottom = unet_input_size(37) - 37 - 92
    right = unet_input_size(50) - 50 - 92
    with torch.no_grad():
        expected = model.forward_core(mirror_pad(x, 92, bottom, 92, right))[..., :37, :50]
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("upsample", UPSAMPLE_KINDS)
def test_tiles_at_multiples_of_the_pooling_stride_agree_away_from_their_borders(upsample: str) -> None:
    # Shifting the input by a multiple of 2^depth shifts the output by the same amount, which is
    # what lets the paper segment a large image tile by tile. The paper's 2×2 up-convolution
    # needs no context, so its tiles agree exactly; our upsamplers see one or two pixels past
    # each border of their input (padding), and that grows to a band of up to 30 output pixels
    # along a tile's edges (depth 4). Beyond the band, tile and whole image agree exactly.
    model = unet(num_classes=3, upsample=upsample, base_channels=4).eval().double()
    x = torch.randn(1, 3, 252 + 64, 252 + 48, dtype=torch.float64)
    with torch.no_grad():
        whole = model.forward_core(x)
        tile = model.forward_core(x[..., 64:64 + 252, 48:48 + 252])
    assert tile.shape[-2:] == (68, 68)
    band = 30
    torch.testing.assert_close(tile[..., band:-band, band:-band],
                               whole[..., 64 + band:64 + 68 - band, 48 + band:48 + 68 - band], rtol=0, atol=1e-12)


def test_paper_unet_without_norm_gets_gradients_everywhere() -> None:
    # With batch norm (the default) this is part of the contract in tests/test_models.py.
    model = unet(num_classes=3, base_channels=4, norm=None)
    assert_every_parameter_has_a_finite_gradient(model, torch.randn(1, 3, 9, 14))


# The encoder-backed variant --------------------------------------------------------------------


@pytest.mark.parametrize("output_stride", [32, 16])
def test_encoder_unet_blocks_follow_the_encoder_strides(output_stride: int) -> None:
    model = encoder_unet("transposed", output_stride)
    assert model.size_divisor == output_stride
    # Five blocks: four with skips (strides 16, 8, 4, 2) and one more to full resolution.
    assert len(model.decoder) == 5
    scales = [getattr(block.up, "scale", 1) for block in model.decoder]
    assert scales == ([2, 2, 2, 2, 2] if output_stride == 32 else [1, 2, 2, 2, 2])
    features = model.encoder(torch.randn(1, 3, 64, 64))
    assert features[-1].shape[-1] == 64 // output_stride
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 45, 61)).shape == (1, 3, 45, 61)


def test_dilated_encoder_unet_gets_gradients_everywhere() -> None:
    # At output stride 32 (the default) this is part of the contract in tests/test_models.py.
    model = create_model("unet", num_classes=3, encoder="resnet18", decoder_channels=SMALL_DECODER,
                         output_stride=16, upsample="pixelshuffle")
    assert_every_parameter_has_a_finite_gradient(model, torch.randn(1, 3, 33, 47))


def test_decoder_channels_must_cover_every_block() -> None:
    with pytest.raises(ValueError, match="needs 5 entries"):
        create_model("unet", encoder="resnet18", decoder_channels=(64, 32, 16))


# Registry --------------------------------------------------------------------------------------


def test_registry_defaults_to_the_papers_network() -> None:
    info = model_info("unet")
    assert info.family == "U-Net" and info.default_encoder is None
    assert isinstance(create_model("unet", base_channels=2), UNet)
    assert isinstance(create_model("unet", encoder="resnet18"), EncoderUNet)


def test_create_model_passes_norm_none_through() -> None:
    model = create_model("unet", base_channels=2, norm=None)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_paper_network_refuses_encoder_only_options() -> None:
    with pytest.raises(ValueError, match="no pretrained encoder weights"):
        create_model("unet", encoder_weights="imagenet")
    with pytest.raises(ValueError, match="output_stride"):
        create_model("unet", output_stride=16)


# The paper's network with same padding --------------------------------------------------------


@pytest.mark.parametrize("upsample", UPSAMPLE_KINDS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_same_padded_unet_gives_logits_at_any_input_size(upsample: str, size: tuple[int, int]) -> None:
    model = unet(num_classes=3, upsample=upsample, base_channels=4, depth=3, padding="same").train()
    logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 3, *size)
    assert torch.isfinite(logits).all()


def test_same_padding_keeps_the_papers_weights_and_runs_on_the_image_alone() -> None:
    valid = unet(num_classes=3, base_channels=4, depth=2, padding="valid")
    same = unet(num_classes=3, base_channels=4, depth=2, padding="same")
    # The same parameters: a checkpoint of one loads into the other.
    same.load_state_dict(valid.state_dict())
    convs = [m for m in same.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs and all(conv.padding == (1, 1) for conv in convs)
    assert same.size_divisor == 4 and valid.size_divisor == 1
    # At a multiple of 2^depth the core sees exactly the image: its logits are the forward's.
    same.eval()
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        torch.testing.assert_close(same(x), same.forward_core(x))
    assert_every_parameter_has_a_finite_gradient(same, torch.randn(2, 3, 20, 28))


def test_padding_choices_are_checked() -> None:
    with pytest.raises(ValueError, match="padding must be one of"):
        unet(num_classes=3, base_channels=4, padding="reflect")
    with pytest.raises(ValueError, match="always uses same-padded"):
        create_model("unet", encoder="resnet18", padding="valid")
    assert isinstance(create_model("unet", encoder="resnet18", decoder_channels=SMALL_DECODER, padding="same"),
                      EncoderUNet)
