"""The built-in synthetic data set: deterministic, split-separated, all classes, the data contract."""
from __future__ import annotations

import pytest
import torch

from pixelwise.data.classes import IGNORE_INDEX
from pixelwise.data.registry import create_dataset
from pixelwise.data.synthetic import CLASS_NAMES, PALETTE, SyntheticShapes
from pixelwise.data.transforms import train_transform


def test_same_index_gives_the_same_pair() -> None:
    dataset = SyntheticShapes("train", size=64)
    image, mask = dataset.load(3)
    again = SyntheticShapes("train", size=64).load(3)
    assert torch.equal(image, again[0]) and torch.equal(mask, again[1])
    assert torch.equal(dataset[3][0], dataset[3][0])


def test_different_seeds_and_indices_differ() -> None:
    first = SyntheticShapes("train", size=64, seed=0)
    other = SyntheticShapes("train", size=64, seed=1)
    assert not torch.equal(first.load(0)[0], other.load(0)[0])
    assert not torch.equal(first.load(0)[0], first.load(1)[0])


def test_train_and_val_never_share_an_image() -> None:
    train = SyntheticShapes("train", size=32)
    val = SyntheticShapes("val", size=32)
    train_images = [train.load(i)[0] for i in range(20)]
    for index in range(20):
        image = val.load(index)[0]
        assert not any(torch.equal(image, seen) for seen in train_images)


def test_all_classes_appear_and_values_are_in_range() -> None:
    dataset = SyntheticShapes("train", size=64)
    seen: set[int] = set()
    for index in range(12):
        mask = dataset.load(index)[1]
        assert 0 <= mask.min() and mask.max() < dataset.classes.num_classes
        seen |= set(mask.unique().tolist())
    assert seen == set(range(len(CLASS_NAMES)))


def test_fewer_classes_use_the_first_names() -> None:
    dataset = SyntheticShapes("train", size=48, num_classes=3)
    assert dataset.classes.names == CLASS_NAMES[:3]
    for index in range(10):
        assert dataset.load(index)[1].max() < 3


@pytest.mark.parametrize("num_classes", [1, 7])
def test_rejects_unknown_class_counts(num_classes: int) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(num_classes=num_classes)


def test_classes_metadata_travels_with_the_set() -> None:
    classes = SyntheticShapes().classes
    assert classes.names == CLASS_NAMES and classes.palette == PALETTE
    assert classes.num_classes == 6 and classes.ignore_index == IGNORE_INDEX


def test_data_contract_without_and_with_transform() -> None:
    dataset = SyntheticShapes("val", size=(40, 56), length=3)
    assert len(dataset) == 3
    image, mask = dataset[0]
    assert type(image) is torch.Tensor and image.shape == (3, 40, 56) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert mask.shape == (40, 56) and mask.dtype == torch.int64
    dataset.transform = train_transform(32)
    image, mask = dataset[1]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.int64
    with pytest.raises(IndexError):
        dataset[3]


def test_load_returns_uint8_tv_tensors() -> None:
    image, mask = SyntheticShapes(size=32).load(0)
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert mask.dtype == torch.int64 and mask.shape == (32, 32)


def test_create_dataset_by_name_ignores_root() -> None:
    dataset = create_dataset("synthetic", root="/nowhere", split="val", length=5, size=32)
    assert isinstance(dataset, SyntheticShapes) and len(dataset) == 5
    assert dataset.split == "val" and dataset.name(2) == "synthetic-val-0-2"


def test_default_lengths_per_split() -> None:
    assert len(SyntheticShapes("train")) > len(SyntheticShapes("val")) == len(SyntheticShapes("test")) > 0


def test_colours_do_not_encode_the_class() -> None:
    # Every class draws colours from one distribution, so class-mean colours come out alike.
    dataset = SyntheticShapes("train", size=64)
    sums = torch.zeros(6, 3, dtype=torch.float64)
    counts = torch.zeros(6, dtype=torch.float64)
    for index in range(60):
        image, mask = dataset.load(index)
        onehot = torch.nn.functional.one_hot(mask.flatten(), 6).double()
        sums += onehot.T @ image.flatten(1).T.double() / 255
        counts += onehot.sum(0)
    means = sums / counts[:, None]
    # Sampling spread over 60 images is about 0.1; a colour-coded class would sit far outside.
    assert (means.max(0).values - means.min(0).values).max() < 0.2
