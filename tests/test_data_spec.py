"""The typed data set spec: opening a split, its JSON form, and a checkpoint's record with overrides."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pixelwise.data import DataSpec, RecordedData
from pixelwise.data.transforms import val_transform

SMALL = {"size": 32, "length": 2}


def test_a_spec_opens_its_split_with_or_without_a_transform() -> None:
    spec = DataSpec("synthetic", None, "val", SMALL)
    plain = spec.create_dataset()
    assert len(plain) == 2 and plain[0][0].dtype == torch.float32
    normalised = spec.create_dataset(val_transform())
    assert normalised.transform is not None and len(normalised) == 2
    assert len(spec.with_split("train").create_dataset()) == 2
    assert spec.to_dict() == {"format": "synthetic", "root": None, "split": "val", "options": SMALL}
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.split = "train"  # type: ignore[misc]


def test_an_unknown_option_names_what_the_format_takes() -> None:
    with pytest.raises(ValueError, match="does not take"):
        DataSpec("synthetic", options={"colour": "red"}).create_dataset()


def test_recorded_data_resolves_against_the_record() -> None:
    recorded = {"format": "synthetic", "root": None, "options": SMALL, "val_split": "val"}
    assert RecordedData().resolve(recorded) == DataSpec("synthetic", None, "val", SMALL)
    assert RecordedData(split="test", options={"length": 1}).resolve(recorded).options == {"size": 32, "length": 1}
