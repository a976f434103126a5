"""data.rare_classes: training samples drawn for a class, rare classes more often (DAFormer's
rare-class sampling): the class probabilities of the formula, the images drawn at the rates they
imply, crops redrawn until they hold the class, seeded as every sample is, from the CLI."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from pixelwise.cli import main
from pixelwise.config import ConfigError, load_config
from pixelwise.data import SegmentationDataset, class_info
from pixelwise.data.transforms import RareClassSampling, train_transform
from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.training.sampling import SeededSamples
from pixelwise.training.loop import build_datasets, training_samples
from pixelwise.losses import class_pixel_counts, image_class_pixels


class Masks(Dataset):
    """Fixed masks, each returned with an image that says which one it is."""

    def __init__(self, masks: list[Tensor]) -> None:
        self.masks = masks

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return torch.full((1,), float(index)), self.masks[index]


def _mask(pixels: dict[int, int], size: int = 100) -> Tensor:
    """A flat mask with ``pixels[c]`` pixels of class c (class 0 fills the rest)."""
    mask = torch.zeros(size, dtype=torch.int64)
    start = 0
    for c, count in pixels.items():
        mask[start:start + count] = c
        start += count
    return mask


# Class 0 everywhere, class 1 in images 0-2, class 2 (the rarest) only in image 3, class 3 in
# image 4 below min_pixels: it can never be drawn.
MASKS = [_mask({1: 30}), _mask({1: 40}), _mask({1: 20}), _mask({2: 10}), _mask({3: 2})]


def test_the_per_image_table_counts_each_mask_and_sums_to_the_data_set_counts() -> None:
    masks = [*MASKS, torch.full((100,), 255)]  # an all-ignored mask counts nothing
    table = image_class_pixels(masks, num_classes=4)
    assert table.shape == (6, 4) and table.dtype == torch.int64
    for row, mask in zip(table, masks):
        assert row.tolist() == [int((mask == c).sum()) for c in range(4)]
    counts = class_pixel_counts(masks, num_classes=4)
    assert counts.class_pixels.tolist() == table.sum(0).tolist()
    # Per class, the labelled pixels of the images holding it: class 1 is in three full images.
    assert counts.image_pixels.tolist() == [500, 300, 100, 100]
    assert image_class_pixels([], num_classes=3).shape == (0, 3)


def test_class_probabilities_follow_the_formula_and_skip_classes_no_image_can_give() -> None:
    table = image_class_pixels(MASKS, num_classes=4)
    sampling = RareClassSampling(Masks(MASKS), table, temperature=0.1, min_pixels=5)
    share = [int(table[:, c].sum()) / 500 for c in range(3)]
    weights = [math.exp((1 - f) / 0.1) for f in share]
    expected = [w / sum(weights) for w in weights] + [0.0]
    torch.testing.assert_close(sampling.class_probability, torch.tensor(expected, dtype=torch.float64))
    assert sampling.class_probability[2] > sampling.class_probability[1] > sampling.class_probability[0]
    # A high temperature draws every drawable class alike.
    flat = RareClassSampling(Masks(MASKS), table, temperature=1e6, min_pixels=5).class_probability
    torch.testing.assert_close(flat, torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0], dtype=torch.float64), atol=1e-5, rtol=0)


def test_images_are_drawn_at_the_rates_the_class_probabilities_imply() -> None:
    table = image_class_pixels(MASKS, num_classes=4)
    sampling = RareClassSampling(Masks(MASKS), table, temperature=0.1, min_pixels=5, min_crop_ratio=0)
    p = sampling.class_probability.tolist()
    # Class 0 is in every image, class 1 in images 0-2, class 2 only in image 3.
    expected = torch.tensor([p[0] / 5 + p[1] / 3] * 3 + [p[0] / 5 + p[2], p[0] / 5])
    draws = 6000
    samples = SeededSamples(sampling)
    drawn = torch.tensor([int(samples[(0, seed)][0]) for seed in range(draws)])
    observed = torch.bincount(drawn, minlength=5) / draws
    bound = 4 * (expected * (1 - expected) / draws).sqrt()  # four standard deviations
    assert ((observed - expected).abs() <= bound).all(), (observed, expected)
    assert observed[3] > 0.6  # the rare class's only image, against 1/5 in an epoch's order


def test_the_crop_is_redrawn_until_it_holds_the_class() -> None:
    # One 32×32 image whose class 1 is an 8×8 square in a corner: 33 of the 289 16×16 crops hold
    # 16 pixels of it or more.
    mask = torch.zeros(32, 32, dtype=torch.int64)
    mask[:8, :8] = 1
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)

    class Crops(SegmentationDataset):
        classes = class_info(["background", "square"])
        transform = train_transform((16, 16), (1.0, 1.0), hflip=0, color_jitter=None)
        loads = 0

        def __len__(self) -> int:
            return 1

        def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
            Crops.loads += 1
            return tv_tensors.Image(image), tv_tensors.Mask(mask)

    table = image_class_pixels([mask], num_classes=2)

    def share_holding_the_square(min_crop_ratio: float) -> float:
        samples = SeededSamples(RareClassSampling(Crops(), table, temperature=1e-3, min_pixels=32,
                                                  min_crop_ratio=min_crop_ratio, redraws=50))
        return sum(int((samples[(0, seed)][1] == 1).sum()) >= 16 for seed in range(200)) / 200

    assert share_holding_the_square(0.5) > 0.95  # class 1 drawn nearly always, its crop redrawn
    assert Crops.loads == 200  # the files read once per sample, however many crops are drawn
    assert share_holding_the_square(0.0) < 0.25  # the first crop taken: the square's odds, 11%


def test_a_sample_is_a_function_of_its_seed() -> None:
    table = image_class_pixels(MASKS, num_classes=4)
    samples = SeededSamples(RareClassSampling(Masks(MASKS), table, temperature=0.1, min_pixels=5))
    first = [int(samples[(0, seed)][0]) for seed in range(40)]
    assert first == [int(samples[(3, seed)][0]) for seed in range(40)]  # the index asked for is not used
    assert len(set(first)) > 1


def test_settings_that_cannot_work_are_refused() -> None:
    table = image_class_pixels(MASKS, num_classes=4)
    data = Masks(MASKS)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        RareClassSampling(data, table, temperature=0)
    with pytest.raises(ValueError, match="min_pixels >= 1"):
        RareClassSampling(data, table, min_pixels=0)
    with pytest.raises(ValueError, match=r"one row of class pixel counts per image: \(4, 4\) for 5 images"):
        RareClassSampling(data, table[:4])
    with pytest.raises(ValueError, match="no training image holds 500 pixels of any class: lower .* "
                                         "largest count is 98"):
        RareClassSampling(data, table, min_pixels=500)


def _tiny_run(tmp_path: Path, *extra: str) -> list[str]:
    return tiny_recipe(tmp_path, "data.options={size: [40, 40], length: 6}", *extra)


def test_the_cli_trains_with_it_and_the_recipe_checks_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = _tiny_run(tmp_path, "data.rare_classes={temperature: 0.05, min_pixels: 10}")
    with caplog.at_level(logging.INFO, logger="pixelwise"):
        assert main(["train", *run]) == 0
    recorded = load_checkpoint(tmp_path / "last.pt")["config"]["data"]["rare_classes"]
    assert recorded == {"temperature": 0.05, "min_pixels": 10, "min_crop_ratio": 0.5}
    assert "rare-class sampling draws background" in caplog.text
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [line["rare_class_sampling"] for line in lines if "rare_class_sampling" in line]
    assert len(logged) == 1 and sum(logged[0].values()) == pytest.approx(1.0)
    config = load_config(None, run)
    train_set, _ = build_datasets(config)
    samples = training_samples(config, train_set)
    assert isinstance(samples, RareClassSampling)
    assert samples.class_probability.sum().item() == pytest.approx(1.0)
    assert list(logged[0].values()) == pytest.approx(samples.class_probability.tolist())
    assert load_config(None, ["data.rare_classes={}"]).data.rare_classes.min_pixels == 3000
    assert load_config(None).data.rare_classes is None
    with pytest.raises(ConfigError, match="unknown key 'data.rare_classes.temprature'; valid keys"):
        load_config(None, ["data.rare_classes={temprature: 0.1}"])
    with pytest.raises(ConfigError, match="data.rare_classes = .* must be null, or temperature > 0"):
        load_config(None, ["data.rare_classes={temperature: 0}"])


def test_class_weights_and_rare_class_sampling_count_the_training_split_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pixelwise.training.recipe as train_module

    counted = []
    original = train_module.image_class_pixels
    monkeypatch.setattr(train_module, "image_class_pixels", lambda *args: counted.append(1) or original(*args))
    run = _tiny_run(tmp_path, "data.rare_classes={min_pixels: 10}", "class_weights=median_frequency")
    assert main(["train", *run]) == 0
    assert len(counted) == 1
