"""Which data set to read, as one typed value: a registered format, its folder, a split and the
format's options (:class:`DataSpec`); and the data set a checkpoint's recipe records, with
overrides (:class:`RecordedData`)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from pixelwise.data.base import JointTransform, SegmentationDataset
from pixelwise.data.registry import create_dataset
from pixelwise.errors import InputError


def _path_text(root: str | Path | None) -> str | None:
    return None if root is None else str(root)


@dataclass(frozen=True)
class DataSpec:
    """A split of a data set.

    Attributes:
        format: a registered data set format (``"camvid"``, ``"folder"``, ``"synthetic"``…).
        root: the data set folder (``None``: the format needs none, e.g. the synthetic set).
        split: the split read.
        options: the format's own keyword arguments (``num_classes``, ``mask_colors``…).
    """

    format: str
    root: str | None = None
    split: str = "val"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", _path_text(self.root))
        object.__setattr__(self, "options", dict(self.options))

    def with_split(self, split: str) -> DataSpec:
        """The same data set, another split."""
        return replace(self, split=split)

    def create_dataset(self, transform: JointTransform | None = None) -> SegmentationDataset:
        """Open the split (see :func:`~pixelwise.data.registry.create_dataset`), with ``transform``
        applied to each sample when given."""
        extra: dict[str, Any] = {} if self.root is None else {"root": self.root}
        if transform is not None:
            extra["transform"] = transform
        return create_dataset(self.format, split=self.split, **extra, **self.options)

    def to_dict(self) -> dict[str, Any]:
        """``format``, ``root``, ``split`` and ``options``, JSON-able as the options are."""
        return {"format": self.format, "root": self.root, "split": self.split, "options": dict(self.options)}


@dataclass(frozen=True)
class RecordedData:
    """The data set a checkpoint's recipe records (its ``config["data"]``), validation split,
    with overrides: a field left at ``None`` keeps the recorded value. Another format drops the
    recorded root and options (they belong to the recorded format).

    Attributes:
        format: another format.
        root: another data set folder.
        split: the split (default: the recorded validation split, else ``"val"``).
        options: format options, added over the recorded ones.
    """

    format: str | None = None
    root: str | None = None
    split: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", _path_text(self.root))
        object.__setattr__(self, "options", dict(self.options or {}))

    def resolve(self, recorded: Mapping[str, Any] | None) -> DataSpec:
        """The data set to read, given the recorded ``config["data"]`` (``None``: none recorded).

        Raises:
            InputError: nothing recorded and no format given.
        """
        recorded = recorded or {}
        if self.format is None and "format" not in recorded:
            raise InputError("the checkpoint records no data set; pass the format and root (--format, --root)")
        same_format = self.format is None or self.format == recorded.get("format")
        root = self.root if self.root is not None or not same_format else recorded.get("root")
        options = {**((recorded.get("options") or {}) if same_format else {}), **self.options}
        return DataSpec(self.format or recorded["format"], root, self.split or recorded.get("val_split") or "val",
                        options)
