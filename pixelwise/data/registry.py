"""Data set formats by name: ``create_dataset("camvid", root=..., split="train")``."""
from __future__ import annotations

import inspect
from typing import Callable

from pixelwise.data.base import SegmentationDataset
from pixelwise.errors import InputError
from pixelwise.registry import Registry

DatasetFactory = Callable[..., SegmentationDataset]
DATASETS: Registry[DatasetFactory] = Registry("data set format")


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Register a data set class (or factory) under ``name``; a duplicate name is an error."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    """Registered data set format names."""
    return DATASETS.names()


def dataset_factory(name: str) -> DatasetFactory:
    """The class (or factory) registered as ``name``; an unknown name raises
    :class:`~pixelwise.registry.UnknownNameError`."""
    return DATASETS[name]


def create_dataset(name: str, **options) -> SegmentationDataset:
    """Build a data set of format ``name`` (options: ``root``, ``split``, ``transform``, and the
    format's own); an unknown name or option is a clear error."""
    factory = dataset_factory(name)
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(f"data set format {name!r} does not take {unknown}; it takes {list(accepted)}")
    return factory(**options)
