"""Joint image+mask transforms: masks never interpolated, padding ignored, pairs stay aligned."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from pixelwise.data.classes import IGNORE_INDEX
from pixelwise.data.synthetic import SyntheticShapes
from pixelwise.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, RandomScale, denormalize, train_transform,
                                       val_transform)

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def blocky_mask(height: int, width: int, values: list[int], block: int = 8, seed: int = 0) -> torch.Tensor:
    """An int64 mask of random ``block``-sized cells holding ``values``."""
    generator = torch.Generator().manual_seed(seed)
    cells = torch.randint(len(values), (1, 1, -(-height // block), -(-width // block)), generator=generator)
    picks = torch.tensor(values)[cells]
    return F.interpolate(picks.float(), scale_factor=block, mode="nearest")[0, 0, :height, :width].long()


def image_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """A grey uint8 image whose intensity encodes the class: 20 + 60 * class."""
    return (20 + 60 * mask).to(torch.uint8).expand(3, -1, -1).clone()


def test_output_types_shapes_and_dtypes() -> None:
    image = torch.randint(0, 256, (3, 45, 70), dtype=torch.uint8)
    mask = blocky_mask(45, 70, [0, 1, 2])
    out_image, out_mask = train_transform((32, 48))(image, mask)
    assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
    assert out_image.shape == (3, 32, 48) and out_image.dtype == torch.float32
    assert out_mask.shape == (32, 48) and out_mask.dtype == torch.int64


def test_accepts_pil_and_uint8_and_channel_masks() -> None:
    mask = blocky_mask(30, 40, [0, 5])
    image = image_from_mask(mask)
    pil_image = PILImage.fromarray(image.permute(1, 2, 0).numpy())
    pil_mask = PILImage.fromarray(mask.numpy().astype(np.uint8))
    reference = val_transform()(image, mask)
    for candidate in [(pil_image, pil_mask), (image, mask.to(torch.uint8)), (image, mask[None])]:
        out_image, out_mask = val_transform()(*candidate)
        assert torch.equal(out_image, reference[0]) and torch.equal(out_mask, reference[1])
        assert out_mask.dtype == torch.int64 and out_mask.shape == (30, 40)


@pytest.mark.parametrize("seed", range(6))
def test_mask_values_never_interpolated(seed: int) -> None:
    values = [0, 3, 7, 11]
    mask = blocky_mask(50, 60, values, block=5, seed=seed)
    torch.manual_seed(seed)
    _, out_mask = train_transform(40, scale_range=(0.3, 2.5))(image_from_mask(mask), mask)
    assert set(out_mask.unique().tolist()) <= set(values) | {IGNORE_INDEX}


@pytest.mark.parametrize("interpolation", [v2.InterpolationMode.BILINEAR, v2.InterpolationMode.BICUBIC])
def test_v2_resizes_masks_with_nearest_neighbour(interpolation: v2.InterpolationMode) -> None:
    # The guarantee the presets rely on (torchvision coerces masks to nearest); guard it.
    mask = tv_tensors.Mask(blocky_mask(21, 33, [1, 4, 9], block=3))
    resized = v2.Resize((50, 17), interpolation=interpolation)(mask)
    assert set(resized.unique().tolist()) <= {1, 4, 9}


def test_crop_padding_is_ignore_for_mask_and_zero_for_image() -> None:
    mask = blocky_mask(20, 30, [0, 1, 2])
    image = image_from_mask(mask)
    out_image, out_mask = train_transform(64, scale_range=(1.0, 1.0), hflip=0.0, color_jitter=None,
                                          **IDENTITY)(image, mask)
    padded = out_mask == IGNORE_INDEX
    assert padded.sum() == 64 * 64 - 20 * 30
    assert torch.all(out_image[:, padded] == 0.0)
    assert torch.all(out_image[:, ~padded] > 0.0)  # the image's own pixels are all >= 20/255


def test_custom_ignore_index_pads_the_mask() -> None:
    mask = blocky_mask(10, 10, [0, 1])
    _, out_mask = train_transform(16, scale_range=(1.0, 1.0), ignore_index=99)(image_from_mask(mask), mask)
    assert (out_mask == 99).sum() == 16 * 16 - 10 * 10


def _near_boundary(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels within ``radius`` of a change of value, or of the crop's edge (the edge may cut
    a class boundary that lies just outside)."""
    values = F.pad(mask[None, None].float(), (radius,) * 4, mode="replicate")
    size = 2 * radius + 1
    high = F.max_pool2d(values, size, stride=1)
    low = -F.max_pool2d(-values, size, stride=1)
    near = (high != low)[0, 0]
    near[:radius], near[-radius:], near[:, :radius], near[:, -radius:] = True, True, True, True
    return near


def test_image_and_mask_stay_aligned() -> None:
    transform = train_transform((48, 64), scale_range=(0.5, 2.0), hflip=0.5, color_jitter=None, **IDENTITY)
    for seed in range(40):
        mask = blocky_mask(60, 80, [0, 1, 2, 3], block=10, seed=seed)
        torch.manual_seed(seed)
        out_image, out_mask = transform(image_from_mask(mask), mask)
        decoded = ((out_image[0] * 255 - 20) / 60).round().long()
        valid = out_mask != IGNORE_INDEX
        mismatched = valid & (decoded != out_mask)
        # Bilinear (antialiased when shrinking) blends across a class edge; nothing else may differ.
        assert not (mismatched & ~_near_boundary(out_mask, radius=1)).any(), f"seed {seed}"
        assert mismatched.sum() <= 0.1 * valid.sum()


def test_val_transform_keeps_the_full_image() -> None:
    mask = blocky_mask(37, 53, [0, 2])
    image = image_from_mask(mask)
    out_image, out_mask = val_transform()(image, mask)
    assert out_image.shape == (3, 37, 53) and torch.equal(out_mask, mask)
    expected = (image.float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(out_image, expected, atol=1e-6)


def test_denormalize_inverts_normalisation() -> None:
    image = torch.randint(0, 256, (3, 9, 11), dtype=torch.uint8)
    normalised, _ = val_transform()(image, torch.zeros(9, 11, dtype=torch.long))
    assert torch.allclose(denormalize(normalised), image.float() / 255, atol=1e-6)
    batch = torch.stack([normalised, normalised])
    assert denormalize(batch).shape == (2, 3, 9, 11)


def test_same_seed_gives_same_output() -> None:
    mask = blocky_mask(50, 70, [0, 1, 2], seed=3)
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    transform = train_transform(40)
    outputs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outputs.append(transform(image, mask))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    assert not torch.equal(outputs[0][0], outputs[2][0])


def test_seeded_dataloader_with_workers_repeats_its_stream() -> None:
    dataset = SyntheticShapes("train", size=32, length=4, transform=train_transform(24))

    def epoch(seed: int) -> list[torch.Tensor]:
        loader = DataLoader(dataset, batch_size=2, shuffle=True, num_workers=2,
                            generator=torch.Generator().manual_seed(seed))
        return [image for image, _ in loader]

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_random_scale_relative_and_base_size() -> None:
    image = tv_tensors.Image(torch.zeros(3, 50, 80, dtype=torch.uint8))
    for _ in range(20):
        scaled = RandomScale((0.5, 2.0))(image)
        factor = scaled.shape[-2] / 50
        assert 0.5 <= factor <= 2.0 and abs(scaled.shape[-1] - 80 * factor) <= 1
        short = min(RandomScale((0.5, 2.0), base_size=100)(image).shape[-2:])
        assert 50 <= short <= 200


def test_random_scale_rejects_bad_range() -> None:
    with pytest.raises(ValueError):
        RandomScale((2.0, 0.5))


def test_color_jitter_changes_only_the_image() -> None:
    mask = blocky_mask(40, 40, [0, 1])
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    torch.manual_seed(0)
    plain = train_transform(40, scale_range=(1.0, 1.0), hflip=0.0, color_jitter=None)(image, mask)
    torch.manual_seed(0)
    jittered = train_transform(40, scale_range=(1.0, 1.0), hflip=0.0, color_jitter=0.5)(image, mask)
    assert torch.equal(plain[1], jittered[1]) and torch.equal(plain[1], mask)
    assert not torch.allclose(plain[0], jittered[0])
