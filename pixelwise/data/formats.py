"""Data set formats on disk: a plain folder (here), and Pascal VOC, Cityscapes, ADE20K, CamVid and
ISBI 2012 (:mod:`pixelwise.data.benchmark_formats`).

Every format is a :class:`~pixelwise.data.pairing.PairedFileDataset`: it finds (image, mask) file
pairs, and :meth:`~pixelwise.data.pairing.PairedFileDataset.load` reads one pair with
:func:`pixelwise.data.io.read_pair`, which raises :class:`~pixelwise.data.io.DataError` on the
first problem (the same problems that ``pixelwise check-data`` lists in full). Construction checks
the pairing: an image with no mask, a mask with no image or an empty split is an error unless
``strict=False`` (the data checker's mode, which keeps them in ``problems``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from pixelwise.data.base import JointTransform
from pixelwise.data.benchmark_formats import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    ADE20K_SPLITS,
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    CAMVID_VOID,
    CITYSCAPES_TRAIN_CLASSES,
    VOC_CLASSES,
    ADE20KDataset,
    CamVidDataset,
    CityscapesDataset,
    VOCDataset,
    cityscapes_label_map,
    reduce_zero_label_map,
)
from pixelwise.data.classes import IGNORE_INDEX, ClassInfo, class_info
from pixelwise.data.io import DataError, parse_color_table
from pixelwise.data.pairing import (
    IMAGE_EXTENSIONS,
    LOSSY_EXTENSIONS,
    MASK_EXTENSIONS,
    SPLIT_NAMES,
    PairedFileDataset,
    Pairing,
    existing_dirs,
    index_files,
    pair_by_key,
    pair_listed,
    read_split_list,
    require_dir,
)
from pixelwise.data.registry import register_dataset
from pixelwise.errors import InputError

__all__ = [
    "ADE20K_CLASSES", "ADE20K_PALETTE", "ADE20K_SPLITS", "ADE20KDataset", "CAMVID_CLASSES", "CAMVID_PALETTE",
    "CAMVID_VOID", "CITYSCAPES_TRAIN_CLASSES", "CamVidDataset", "CityscapesDataset", "FolderDataset",
    "IMAGE_EXTENSIONS", "LOSSY_EXTENSIONS", "MASK_EXTENSIONS", "PairedFileDataset", "Pairing", "SPLIT_NAMES",
    "VOC_CLASSES", "VOCDataset", "cityscapes_label_map", "index_files", "pair_by_key", "pair_listed",
    "read_split_list", "reduce_zero_label_map",
]


# ---------------------------------------------------------------------------- folder

def _folder_classes(root: Path, classes: Sequence[str] | ClassInfo | None, num_classes: int | None,
                    ignore_index: int) -> ClassInfo:
    if isinstance(classes, ClassInfo):
        return classes
    if classes is not None:
        return class_info(classes, ignore_index=ignore_index)
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = read_split_list(names_file)
        if num_classes is not None and num_classes != len(names):
            raise InputError(f"{names_file} names {len(names)} classes but num_classes={num_classes}; drop "
                             f"num_classes (the file's names are used), or correct one of the two")
        return class_info(names, ignore_index=ignore_index)
    if num_classes is not None:
        return class_info([f"class {i}" for i in range(num_classes)], ignore_index=ignore_index)
    raise InputError(f"{root}: the folder format needs its classes: pass classes=[names] (or a ClassInfo), "
                     "num_classes=N, or write a classes.txt with one class name per line at the root")


@register_dataset("folder")
class FolderDataset(PairedFileDataset):
    """Images and masks in two folders, paired by file stem.

    Layout (``images/a.jpg`` pairs with ``masks/a.png``; any image format, masks lossless)::

        root/images/...   root/masks/...            one split ("all"; "train" is an alias)
        root/train.txt, root/val.txt                split lists, one stem per line
        root/images/train/, root/masks/train/, ...  split folders

    Args:
        root: the data set folder.
        split: a split list's or split folder's name, or ``"all"``.
        transform: joint image+mask transform.
        classes: class names, or a :class:`ClassInfo` (default: ``classes.txt`` at the root).
        num_classes: instead of ``classes``: that many unnamed classes.
        ignore_index: the mask value of pixels to ignore.
        mask_colors: for RGB colour masks: colour → class index (colours as (r, g, b),
            ``"r,g,b"`` or ``"#rrggbb"``; map a void colour to ``ignore_index``), or
            ``"palette"`` for the classes' own palette.
        strict: raise on pairing problems (``False`` keeps them in :attr:`problems`).
    """

    format_name = "folder"

    def __init__(self, root: str | Path, split: str = "train", transform: JointTransform | None = None,
                 classes: Sequence[str] | ClassInfo | None = None, num_classes: int | None = None,
                 ignore_index: int = IGNORE_INDEX, mask_colors: Mapping | str | None = None,
                 strict: bool = True) -> None:
        info = _folder_classes(Path(root), classes, num_classes, ignore_index)
        if mask_colors is not None:
            self.colors = parse_color_table(info if mask_colors == "palette" else mask_colors)
        super().__init__(root, split, transform, info, strict)

    @classmethod
    def available_splits(cls, root: str | Path, **options) -> list[str]:
        root = Path(root)
        lists = [name for name in SPLIT_NAMES if (root / f"{name}.txt").is_file()]
        if lists:
            return lists
        if existing_dirs(root / "images", SPLIT_NAMES):
            return sorted(p.name for p in (root / "images").iterdir() if p.is_dir() and not p.name.startswith("."))
        return ["all"]

    def find_pairs(self) -> Pairing:
        image_dir = require_dir(self.root / "images", "images/ holds the images")
        mask_dir = require_dir(self.root / "masks", "masks/ holds the masks")
        list_path = self.root / f"{self.split}.txt"
        if list_path.is_file():
            return self._pairs_from_list(image_dir, mask_dir, list_path)
        if self.split != "all" and (image_dir / self.split).is_dir():
            return self._pairs_in(image_dir / self.split, require_dir(mask_dir / self.split, "the split's masks"))
        splits = self.available_splits(self.root)
        if self.split == "all" or (self.split == "train" and splits == ["all"]):
            return self._pairs_in(image_dir, mask_dir)
        raise DataError(f"{self.root}: no split {self.split!r}: neither {list_path.name} nor images/{self.split}/ "
                        f"exists. Splits here: {splits}.", self.root, "layout")

    def _pairs_in(self, image_dir: Path, mask_dir: Path) -> Pairing:
        images, problems = index_files(image_dir, IMAGE_EXTENSIONS)
        masks, mask_problems = index_files(mask_dir, MASK_EXTENSIONS + LOSSY_EXTENSIONS)
        pairing = pair_by_key(images, masks, f"{mask_dir}/", f"{image_dir}/")
        lossy = [masks[key] for key in masks if masks[key].suffix.lower() in LOSSY_EXTENSIONS]
        pairing.problems[:0] = problems + mask_problems + [
            DataError(f"{path}: mask saved in a lossy format, which blurs class indices into wrong values. "
                      "Save masks as PNG.", path, "lossy-mask") for path in lossy]
        return pairing

    def _pairs_from_list(self, image_dir: Path, mask_dir: Path, list_path: Path) -> Pairing:
        images, problems = index_files(image_dir, IMAGE_EXTENSIONS)
        masks, mask_problems = index_files(mask_dir, MASK_EXTENSIONS)
        pairing = pair_listed(read_split_list(list_path), lambda s: images.get(s, image_dir / f"{s}.jpg"),
                              lambda s: masks.get(s, mask_dir / f"{s}.png"), list_path)
        pairing.problems[:0] = problems + mask_problems
        return pairing
