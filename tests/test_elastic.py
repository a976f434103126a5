"""data.elastic: U-Net's elastic deformation (Ronneberger et al., 2015). Image and mask are warped
along one field and stay aligned, the mask only copies its own values, the field comes from the
seed, and a recipe turns it on."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_recipe
from torch import Tensor
from torchvision import tv_tensors

from pixelwise.cli import main
from pixelwise.config import ConfigError, ElasticConfig, load_config
from pixelwise.data.elastic import ElasticDeformation, sampling_grid, warp
from pixelwise.data.transforms import train_transform
from pixelwise.errors import InputError
from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.training.loop import build_datasets


class WeightMap(tv_tensors.Mask):
    """A float per-pixel map carried as a Mask subclass (as a loss weight map is)."""


def _discs(size: int = 48) -> Tensor:
    """A smooth grey image of three discs, ``3 × size × size`` in [0, 1]."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    image = torch.zeros(size, size)
    for cy, cx, radius in ((0.3, 0.3, 0.2), (0.7, 0.6, 0.25), (0.25, 0.8, 0.12)):
        distance = ((ys - cy * size) ** 2 + (xs - cx * size) ** 2).sqrt()
        image = torch.maximum(image, (radius * size - distance).clamp(0, 1))
    return image.expand(3, size, size).clone()


def _boundary_band(mask: Tensor) -> Tensor:
    """Pixels within one pixel (8-neighbourhood) of a change of value in ``mask``."""
    values = mask.float()[None, None]
    padded = F.pad(values, (1, 1, 1, 1), mode="replicate")
    highest = F.max_pool2d(padded, 3, stride=1)
    lowest = -F.max_pool2d(-padded, 3, stride=1)
    return (highest != lowest)[0, 0]


def test_the_mask_of_the_image_stays_the_mask_of_the_warped_image() -> None:
    image = tv_tensors.Image(_discs())
    mask = tv_tensors.Mask((image[0] > 0.5).long())
    warped, warped_mask = ElasticDeformation(grid=3, sigma=4.0)(image, mask)
    assert isinstance(warped, tv_tensors.Image) and isinstance(warped_mask, tv_tensors.Mask)
    assert (warped_mask != mask).sum() > 20  # the deformation moved the discs
    disagree = (warped[0] > 0.5).long() != warped_mask
    # Bilinear and nearest sampling differ only where a sample lies between a boundary's pixels.
    assert not (disagree & ~_boundary_band(warped_mask)).any()
    assert disagree.float().mean() < 0.02


def test_the_mask_keeps_only_its_own_values_and_the_ignore_index() -> None:
    mask = torch.randint(0, 3, (40, 40))
    mask[mask == 2] = 7
    mask[15:25, 15:25] = 255  # an ignored block, larger than the displacements
    warped = ElasticDeformation(sigma=3.0)(tv_tensors.Mask(mask))
    assert warped.dtype == torch.int64 and isinstance(warped, tv_tensors.Mask)
    assert set(warped.unique().tolist()) <= {0, 1, 7, 255} and (warped == 255).any()
    weights = WeightMap(torch.rand(40, 40))
    warped_weights = ElasticDeformation(sigma=3.0)(weights)
    assert isinstance(warped_weights, WeightMap) and warped_weights.dtype == torch.float32
    assert torch.isin(warped_weights, weights).all()  # nearest neighbour: copied, not blended


def test_an_integer_image_keeps_its_dtype_and_a_plain_tensor_is_warped_as_an_image() -> None:
    image = tv_tensors.Image((255 * _discs(32)).round().to(torch.uint8))
    warped = ElasticDeformation(sigma=3.0)(image)
    assert warped.dtype == torch.uint8 and warped.shape == image.shape and not torch.equal(warped, image)
    plain = ElasticDeformation(sigma=3.0)(_discs(32))
    assert type(plain) is Tensor and plain.shape == (3, 32, 32)


def test_the_same_seed_gives_the_same_field_and_another_seed_another() -> None:
    image, mask = tv_tensors.Image(_discs(32)), tv_tensors.Mask(torch.randint(0, 4, (32, 32)))
    deform = ElasticDeformation(sigma=5.0)

    def draw(seed: int) -> tuple[Tensor, Tensor]:
        torch.manual_seed(seed)
        return deform(image, mask)

    first, again, other = draw(1), draw(1), draw(2)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.allclose(first[0], other[0])


@pytest.mark.parametrize("deform", [ElasticDeformation(p=0.0), ElasticDeformation(sigma=0.0)],
                         ids=["p=0", "sigma=0"])
def test_no_chance_or_no_spread_is_the_identity(deform: ElasticDeformation) -> None:
    image, mask = tv_tensors.Image(_discs(32)), tv_tensors.Mask(torch.randint(0, 4, (32, 32)))
    warped, warped_mask = deform(image, mask)
    assert torch.equal(warped, image) and torch.equal(warped_mask, mask)


def test_a_zero_field_samples_every_pixel_where_it_is() -> None:
    image = _discs(20)[:, :, :17]
    grid = sampling_grid(20, 17, torch.zeros(2, 3, 3))
    torch.testing.assert_close(warp(image, grid, "bilinear"), image, atol=1e-6, rtol=0)
    labels = torch.arange(20 * 17).view(20, 17)
    assert torch.equal(warp(labels, grid, "nearest"), labels)


def test_the_field_is_the_bicubic_upsampling_of_the_coarse_displacements() -> None:
    displacements = torch.randn(2, 3, 4) * 10
    grid = sampling_grid(30, 41, displacements)[0]
    expected = F.interpolate(displacements[None], size=(30, 41), mode="bicubic", align_corners=True)[0]
    torch.testing.assert_close((grid[..., 0] - torch.linspace(-1, 1, 41)) * 40 / 2, expected[0], atol=1e-4, rtol=0)
    torch.testing.assert_close((grid[..., 1] - torch.linspace(-1, 1, 30)[:, None]) * 29 / 2, expected[1],
                               atol=1e-4, rtol=0)


def test_settings_that_cannot_work_are_refused() -> None:
    for options in ({"grid": 1}, {"sigma": -1.0}, {"p": 1.5}):
        with pytest.raises(InputError):
            ElasticDeformation(**options)
    with pytest.raises(TypeError, match="BoundingBoxes"):
        ElasticDeformation()(tv_tensors.BoundingBoxes([[1, 1, 5, 5]], format="XYXY", canvas_size=(8, 8)))


def test_the_training_preset_deforms_before_the_crop_and_is_unchanged_without_it() -> None:
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    mask = torch.randint(0, 4, (40, 48))
    deformed, deformed_mask = train_transform((32, 32), (1.0, 1.0), elastic=ElasticDeformation())(image, mask)
    assert deformed.shape == (3, 32, 32) and deformed_mask.shape == (32, 32) and deformed_mask.dtype == torch.int64
    steps = train_transform((32, 32), (1.0, 1.0), elastic=ElasticDeformation()).pipeline.transforms
    assert isinstance(steps[1], ElasticDeformation) and type(steps[2]).__name__ == "RandomCrop"
    assert not any(isinstance(step, ElasticDeformation) for step in train_transform(32).pipeline.transforms)


def test_the_recipe_key_round_trips_and_names_itself_when_wrong() -> None:
    assert load_config(None, []).data.elastic is None
    assert load_config(None, ["data.elastic={grid: 3, sigma: 10}"]).data.elastic == ElasticConfig(3, 10.0, 1.0)
    assert load_config(None, ["data.elastic={}"]).data.elastic == ElasticConfig()
    assert load_config(None, ["data.elastic=null"]).data.elastic is None
    for bad in ("{grid: 1}", "{sigma: -2}", "{p: 1.5}", "{sigma: .inf}"):
        with pytest.raises(ConfigError, match=r"data\.elastic = .* cannot work"):
            load_config(None, [f"data.elastic={bad}"])
    with pytest.raises(ConfigError, match=r"data\.elastic\.sigmaa"):
        load_config(None, ["data.elastic={sigmaa: 3}"])
    with pytest.raises(ConfigError, match=r"data\.elastic\.grid"):
        load_config(None, ["data.elastic={grid: three}"])


def test_a_tiny_run_trains_with_it(tmp_path: Path) -> None:
    run = tiny_recipe(tmp_path, "data.elastic={grid: 3, sigma: 2.0, p: 0.5}")
    assert main(["train", *run]) == 0
    assert load_checkpoint(tmp_path / "last.pt")["config"]["data"]["elastic"] == {"grid": 3, "sigma": 2.0, "p": 0.5}
    train_set, _ = build_datasets(load_config(None, run))
    assert any(isinstance(step, ElasticDeformation) for step in train_set.transform.pipeline.transforms)
