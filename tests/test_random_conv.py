"""data.random_conv: an image mixed with a random convolution of itself (Xu et al., 2021): the
mask and the pixels' positions untouched, seeded as every augmentation is, from the CLI."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe
from torchvision import tv_tensors

from pixelwise.cli import main
from pixelwise.config import ConfigError, load_config
from pixelwise.data.transforms import RandomConvolution, train_transform
from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.training.loop import build_datasets


def _image(height: int = 24, width: int = 32) -> tv_tensors.Image:
    return tv_tensors.Image(torch.randn(3, height, width))


def test_a_changed_image_keeps_its_shape_and_channel_means_and_its_mask() -> None:
    image, mask = _image(), tv_tensors.Mask(torch.randint(0, 5, (24, 32)))
    changed, same_mask = RandomConvolution(1.0)(image, mask)
    assert isinstance(changed, tv_tensors.Image) and changed.shape == image.shape
    assert not torch.allclose(changed, image, atol=1e-3)
    # α·x + (1 − α)·(y standardised to x's mean and spread): the mean of each channel stays.
    torch.testing.assert_close(changed.mean((-2, -1)), image.mean((-2, -1)), atol=1e-5, rtol=0)
    assert torch.equal(same_mask, mask)


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_the_convolution_keeps_each_pixel_where_it_was(kernel: int) -> None:
    # An impulse: whatever the kernel, only the pixels within kernel // 2 of it may change
    # from the background's value; a one-pixel shift would leave that window.
    image = torch.zeros(3, 21, 25)
    image[:, 10, 12] = 5.0
    changed = RandomConvolution(1.0, kernel_sizes=(kernel,))(tv_tensors.Image(image))
    radius = kernel // 2
    window = torch.zeros(21, 25, dtype=torch.bool)
    window[10 - radius:10 + radius + 1, 12 - radius:12 + radius + 1] = True
    for channel in changed:
        outside = channel[~window]
        assert torch.allclose(outside, outside[0].expand_as(outside), atol=1e-5)
        assert not torch.allclose(channel[window], outside[0].expand(int(window.sum())), atol=1e-3)


def test_probability_zero_changes_nothing_and_a_seed_repeats_the_draw() -> None:
    image = _image()
    assert torch.equal(RandomConvolution(0.0)(image), image)
    torch.manual_seed(3)
    first = RandomConvolution(0.5)(image)
    torch.manual_seed(3)
    assert torch.equal(RandomConvolution(0.5)(image), first)
    draws = [not torch.equal(RandomConvolution(0.5)(image), image) for _ in range(40)]
    assert 8 < sum(draws) < 32


def test_bad_settings_and_an_integer_image_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"probability must be in \[0, 1\]"):
        RandomConvolution(1.5)
    with pytest.raises(ValueError, match="kernel sizes must be odd"):
        RandomConvolution(0.5, kernel_sizes=(2, 3))
    with pytest.raises(TypeError, match="after ToDtype/Normalize"):
        RandomConvolution(1.0)(tv_tensors.Image(torch.zeros(3, 8, 8, dtype=torch.uint8)))


def test_the_training_preset_runs_it_after_normalising() -> None:
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    mask = torch.randint(0, 4, (40, 48))
    torch.manual_seed(0)
    plain, plain_mask = train_transform((32, 32), (1.0, 1.0))(image, mask)
    torch.manual_seed(0)
    mixed, mixed_mask = train_transform((32, 32), (1.0, 1.0), random_conv=1.0)(image, mask)
    assert torch.equal(mixed_mask, plain_mask)  # the same crop and flip: drawn before it
    assert mixed.dtype == torch.float32 and not torch.allclose(mixed, plain, atol=1e-3)


def test_the_cli_trains_with_it_and_refuses_a_probability_that_cannot_work(tmp_path: Path) -> None:
    run = tiny_recipe(tmp_path, "data.options={size: [40, 40], length: 4}", "data.random_conv=0.5")
    assert main(["train", *run]) == 0
    assert load_checkpoint(tmp_path / "last.pt")["config"]["data"]["random_conv"] == 0.5
    train_set, _ = build_datasets(load_config(None, run))
    assert any(isinstance(step, RandomConvolution) for step in train_set.transform.pipeline.transforms)
    for probability in ("1.5", "-0.1"):
        with pytest.raises(ConfigError, match=r"data.random_conv = .* must be a probability in \[0, 1\]"):
            load_config(None, [f"data.random_conv={probability}"])
