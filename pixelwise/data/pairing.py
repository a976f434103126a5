"""Finding (image, mask) file pairs, and the base class of every format read from files.

:class:`PairedFileDataset` finds pairs with :meth:`~PairedFileDataset.find_pairs` and reads one
with :func:`pixelwise.data.io.read_pair`, which raises :class:`~pixelwise.data.io.DataError` on
the first problem (the same problems that ``pixelwise check-data`` lists in full). Construction
checks the pairing: an image with no mask, a mask with no image or an empty split is an error
unless ``strict=False`` (the data checker's mode, which keeps them in
:attr:`PairedFileDataset.problems`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from torchvision import tv_tensors

from pixelwise.data.base import JointTransform, SegmentationDataset
from pixelwise.data.classes import ClassInfo
from pixelwise.data.io import Color, DataError, read_pair

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".webp")
SPLIT_NAMES = ("train", "val", "test", "trainval")


@dataclass
class Pairing:
    """The result of matching images with masks.

    Attributes:
        pairs: (image file, mask file), sorted.
        problems: unpaired files, duplicates and other layout problems found on the way.
    """

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    problems: list[DataError] = field(default_factory=list)


# ---------------------------------------------------------------------------- finding files

def index_files(folder: Path, extensions: Sequence[str], suffix: str = "") -> tuple[dict[str, Path], list[DataError]]:
    """Files under ``folder`` (recursively) keyed by relative path without extension (or ``suffix``).

    Hidden files (``.DS_Store``, macOS ``._x.jpg``) are skipped. Two files with one key (``a.jpg``
    and ``a.png``) are a problem: which one is meant is unknowable.
    """
    files: dict[str, Path] = {}
    problems: list[DataError] = []
    for path in sorted(folder.rglob("*")):
        name = path.name
        if name.startswith(".") or not path.is_file():
            continue
        if suffix:
            if not name.endswith(suffix):
                continue
            key = path.relative_to(folder).as_posix()[: -len(suffix)]
        elif path.suffix.lower() in extensions:
            key = path.relative_to(folder).with_suffix("").as_posix()
        else:
            continue
        if key in files:
            problems.append(DataError(f"{path}: another file has the same name stem ({files[key].name}); "
                                      "keep one of them, or rename one.", path, "duplicate"))
            continue
        files[key] = path
    return files, problems


def pair_by_key(images: Mapping[str, Path], masks: Mapping[str, Path], mask_place: str,
                image_place: str) -> Pairing:
    """Pair images and masks that share a key; the rest become problems.

    Args:
        images: key → image file.
        masks: key → mask file.
        mask_place: where a mask was looked for, for the message (``"masks/train/"``).
        image_place: where an image was looked for.
    """
    pairing = Pairing(pairs=[(images[key], masks[key]) for key in sorted(images.keys() & masks.keys())])
    for key in sorted(images.keys() - masks.keys()):
        pairing.problems.append(DataError(f"{images[key]}: image with no mask (looked in {mask_place} for "
                                          f"{key!r}). Add its mask, or remove the image.", images[key],
                                          "unpaired-image"))
    for key in sorted(masks.keys() - images.keys()):
        pairing.problems.append(DataError(f"{masks[key]}: mask with no image (looked in {image_place} for "
                                          f"{key!r}). Add its image, or remove the mask.", masks[key],
                                          "unpaired-mask"))
    return pairing


def read_split_list(path: Path) -> list[str]:
    """Stems listed in a split file, one per line (blank lines and ``#`` comments skipped).

    A line may hold a path or an extension (``images/a.jpg``): only its stem counts.
    """
    stems = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            stems.append(Path(line.split()[0]).stem if "." in line or "/" in line else line.split()[0])
    return stems


def pair_listed(stems: Iterable[str], image_for: Callable[[str], Path], mask_for: Callable[[str], Path],
                list_path: Path) -> Pairing:
    """Pair the files of the stems that a split list names; missing files become problems."""
    pairing = Pairing()
    for stem in stems:
        image, mask = image_for(stem), mask_for(stem)
        if not image.is_file():
            pairing.problems.append(DataError(f"{image}: listed in {list_path} but the image is missing. "
                                              "Restore it, or remove the line.", image, "missing-file"))
        elif not mask.is_file():
            pairing.problems.append(DataError(f"{image}: image with no mask ({mask} is missing). Add the mask, "
                                              f"or remove the line from {list_path}.", image, "unpaired-image"))
        else:
            pairing.pairs.append((image, mask))
    return pairing


def require_dir(path: Path, what: str) -> Path:
    """``path``, when it is a folder; else a layout error saying what it should hold."""
    if not path.is_dir():
        raise DataError(f"{path}: folder not found ({what}). Check the data set root and the format.", path, "layout")
    return path


# ---------------------------------------------------------------------------- the common base

class PairedFileDataset(SegmentationDataset):
    """A data set of image files paired with mask files; formats only differ in finding them.

    Subclasses set their own attributes, then call ``super().__init__``, and implement
    :meth:`find_pairs` and :meth:`available_splits`.

    Attributes:
        root: the data set folder.
        split: the split read.
        pairs: (image file, mask file) of every sample.
        problems: pairing problems (kept only with ``strict=False``).
        label_map: look-up table raw mask value → class index, or ``None`` (values as stored).
        colors: colour → raw value table for colour masks, or ``None`` (index masks).
    """

    label_map: np.ndarray | None = None
    colors: dict[Color, int] | None = None
    format_name = "paired files"

    def __init__(self, root: str | Path, split: str, transform: JointTransform | None, classes: ClassInfo,
                 strict: bool = True) -> None:
        self.root = require_dir(Path(root), f"root of the {self.format_name} data set")
        self.split = split
        self.transform = transform
        self.classes = classes
        pairing = self.find_pairs()
        self.pairs, self.problems = pairing.pairs, pairing.problems
        if not self.pairs and not any(p.kind == "empty" for p in self.problems):
            self.problems.append(DataError(f"{self.root}: split {split!r} of the {self.format_name} data set has "
                                           "no image/mask pairs. Check the root, the split name and the "
                                           "layout (see the format's docstring).", self.root, "empty"))
        if strict and self.problems:
            raise self._summary()

    def _summary(self) -> DataError:
        if len(self.problems) == 1:
            return self.problems[0]
        shown = "\n  - ".join(str(p) for p in self.problems[:5])
        more = f"\n  ... and {len(self.problems) - 5} more" if len(self.problems) > 5 else ""
        return DataError(f"{self.root}: {len(self.problems)} problems in split {self.split!r}:\n  - {shown}{more}\n"
                         "Run `pixelwise check-data` on this root for the full report.",
                         self.root, self.problems[0].kind)

    def find_pairs(self) -> Pairing:
        """Find the (image, mask) pairs of ``self.split``."""
        raise NotImplementedError

    @classmethod
    def available_splits(cls, root: str | Path, **options) -> list[str]:
        """Names of the splits found under ``root`` (what the data checker scans)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        image = self.pairs[index][0]
        return image.relative_to(self.root).as_posix() if image.is_relative_to(self.root) else str(image)

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image_path, mask_path = self.pairs[index]
        return read_pair(image_path, mask_path, self.classes.num_classes, self.classes.ignore_index,
                         self.colors, self.label_map)


def existing_dirs(root: Path, names: Iterable[str]) -> list[str]:
    """Those of ``names`` that are folders under ``root``."""
    return [name for name in names if (root / name).is_dir()]
