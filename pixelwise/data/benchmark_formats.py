"""The public benchmark formats: Pascal VOC, Cityscapes, ADE20K, CamVid and the ISBI 2012 EM
membranes, each read from its released layout (see each class) as a :class:`~pixelwise.data.pairing.PairedFileDataset`."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pixelwise.data.base import JointTransform
from pixelwise.data.classes import IGNORE_INDEX, class_info
from pixelwise.data.io import DataError
from pixelwise.data.pairing import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
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


# ---------------------------------------------------------------------------- Pascal VOC

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


def _voc_root(root: Path) -> Path:
    """The VOC2012 folder, given it, its VOCdevkit parent, or the folder holding VOCdevkit."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    return root


@register_dataset("voc")
class VOCDataset(PairedFileDataset):
    """Pascal VOC 2012 segmentation: 21 classes (background included); 255 marks the object
    boundaries, which are ignored.

    Layout: ``JPEGImages/{id}.jpg``, palette PNGs ``SegmentationClass/{id}.png``, split lists
    ``ImageSets/Segmentation/{train,val,trainval}.txt``. The SBD-augmented training set is
    ``split="train_aug"``: the list ``ImageSets/Segmentation/train_aug.txt`` with grayscale
    masks from ``SegmentationClassAug/`` (when that folder exists).

    Args:
        root: the VOC2012 folder (or VOCdevkit, or the folder holding VOCdevkit).
        split: ``"train"``, ``"val"``, ``"trainval"`` or ``"train_aug"``.
        transform: joint image+mask transform.
        strict: raise on pairing problems (``False`` keeps them in :attr:`problems`).
    """

    format_name = "Pascal VOC"

    def __init__(self, root: str | Path, split: str = "train", transform: JointTransform | None = None,
                 strict: bool = True) -> None:
        super().__init__(_voc_root(Path(root)), split, transform, class_info(VOC_CLASSES), strict)

    @classmethod
    def available_splits(cls, root: str | Path, **options) -> list[str]:
        lists = _voc_root(Path(root)) / "ImageSets" / "Segmentation"
        return [name for name in ("train", "val", "train_aug") if (lists / f"{name}.txt").is_file()]

    def find_pairs(self) -> Pairing:
        image_dir = require_dir(self.root / "JPEGImages", "JPEGImages/ holds the VOC images")
        list_path = self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt"
        if not list_path.is_file():
            raise DataError(f"{list_path}: split list not found. VOC splits here: "
                            f"{self.available_splits(self.root)}.", list_path, "layout")
        mask_dir = self.root / "SegmentationClass"
        if self.split == "train_aug" and (self.root / "SegmentationClassAug").is_dir():
            mask_dir = self.root / "SegmentationClassAug"
        require_dir(mask_dir, "the VOC masks")
        return pair_listed(read_split_list(list_path), lambda s: image_dir / f"{s}.jpg",
                           lambda s: mask_dir / f"{s}.png", list_path)


# ---------------------------------------------------------------------------- Cityscapes

# The 19 evaluated classes of the cityscapesScripts label table: (label id, name, colour);
# their train ids are their positions. Every other id maps to the ignore index.
CITYSCAPES_TRAIN_CLASSES = (
    (7, "road", (128, 64, 128)), (8, "sidewalk", (244, 35, 232)), (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)), (13, "fence", (190, 153, 153)), (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)), (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)), (22, "terrain", (152, 251, 152)), (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)), (25, "rider", (255, 0, 0)), (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)), (28, "bus", (0, 60, 100)), (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)), (33, "bicycle", (119, 11, 32)),
)


def cityscapes_label_map() -> np.ndarray:
    """Look-up table label id → train id (255 for the ids that are not evaluated)."""
    table = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for train_id, (label_id, _, _) in enumerate(CITYSCAPES_TRAIN_CLASSES):
        table[label_id] = train_id
    return table


@register_dataset("cityscapes")
class CityscapesDataset(PairedFileDataset):
    """Cityscapes fine annotations, as the 19 evaluated classes (train ids; all else ignored).

    Layout: ``leftImg8bit/{split}/{city}/{frame}_leftImg8bit.png`` with
    ``gtFine/{split}/{city}/{frame}_gtFine_labelIds.png``.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"``, ``"val"`` or ``"test"`` (the test masks hold no labels).
        transform: joint image+mask transform.
        labels: ``"labelIds"`` (mapped to train ids here) or ``"labelTrainIds"`` (masks made by
            cityscapesScripts' createTrainIdLabelImgs, used as they are).
        strict: raise on pairing problems (``False`` keeps them in :attr:`problems`).
    """

    format_name = "Cityscapes"

    def __init__(self, root: str | Path, split: str = "train", transform: JointTransform | None = None,
                 labels: str = "labelIds", strict: bool = True) -> None:
        if labels not in ("labelIds", "labelTrainIds"):
            raise InputError(f"labels must be 'labelIds' or 'labelTrainIds', not {labels!r}")
        self.labels = labels
        self.label_map = cityscapes_label_map() if labels == "labelIds" else None
        names = [name for _, name, _ in CITYSCAPES_TRAIN_CLASSES]
        palette = [colour for _, _, colour in CITYSCAPES_TRAIN_CLASSES]
        super().__init__(root, split, transform, class_info(names, palette), strict)

    @classmethod
    def available_splits(cls, root: str | Path, **options) -> list[str]:
        return existing_dirs(Path(root) / "leftImg8bit", ("train", "val", "test"))

    def find_pairs(self) -> Pairing:
        image_dir = require_dir(self.root / "leftImg8bit" / self.split, "the Cityscapes images of this split")
        mask_dir = require_dir(self.root / "gtFine" / self.split, "the Cityscapes fine masks of this split")
        images, problems = index_files(image_dir, (), suffix="_leftImg8bit.png")
        masks, mask_problems = index_files(mask_dir, (), suffix=f"_gtFine_{self.labels}.png")
        pairing = pair_by_key(images, masks, f"{mask_dir}/", f"{image_dir}/")
        pairing.problems[:0] = problems + mask_problems
        return pairing


# ---------------------------------------------------------------------------- ADE20K

# The 150 classes of the ADE20K SceneParsing benchmark (objectInfo150, first name of each).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# The benchmark's colours (as in the SceneParsing toolkit and mmsegmentation).
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

ADE20K_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


def reduce_zero_label_map() -> np.ndarray:
    """Look-up table v → v − 1, with 0 ("other", no class) → the ignore index."""
    table = np.arange(-1, 255, dtype=np.int64)
    table[0] = IGNORE_INDEX
    return table


@register_dataset("ade20k")
class ADE20KDataset(PairedFileDataset):
    """ADE20K SceneParsing (ADEChallengeData2016): 150 classes; mask value 0 ("other") is
    ignored and the rest shift down by one ("reduce zero label").

    Layout: ``images/{training,validation}/*.jpg`` with ``annotations/{training,validation}/*.png``.

    Args:
        root: the ADEChallengeData2016 folder (or its parent).
        split: ``"train"`` or ``"val"`` (``"training"``, ``"validation"`` too).
        transform: joint image+mask transform.
        strict: raise on pairing problems (``False`` keeps them in :attr:`problems`).
    """

    format_name = "ADE20K"

    def __init__(self, root: str | Path, split: str = "train", transform: JointTransform | None = None,
                 strict: bool = True) -> None:
        if split not in ADE20K_SPLITS:
            raise InputError(f"ADE20K split {split!r} does not exist; use 'train' or 'val'")
        root = Path(root)
        if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        self.label_map = reduce_zero_label_map()
        super().__init__(root, split, transform, class_info(ADE20K_CLASSES, ADE20K_PALETTE), strict)

    @classmethod
    def available_splits(cls, root: str | Path, **options) -> list[str]:
        root = Path(root)
        if not (root / "images").is_dir():
            root = root / "ADEChallengeData2016"
        return [split for split in ("train", "val") if (root / "images" / ADE20K_SPLITS[split]).is_dir()]

    def find_pairs(self) -> Pairing:
        folder = ADE20K_SPLITS[self.split]
        image_dir = require_dir(self.root / "images" / folder, "the ADE20K images of this split")
        mask_dir = require_dir(self.root / "annotations" / folder, "the ADE20K annotations of this split")
        images, problems = index_files(image_dir, IMAGE_EXTENSIONS)
        masks, mask_problems = index_files(mask_dir, (".png",))
        pairing = pair_by_key(images, masks, f"{mask_dir}/", f"{image_dir}/")
        pairing.problems[:0] = problems + mask_problems
        return pairing


# ---------------------------------------------------------------------------- CamVid

CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))
CAMVID_VOID = 11


@register_dataset("camvid")
class CamVidDataset(PairedFileDataset):
    """CamVid as released with SegNet: 11 classes at 480×360; value 11 (Unlabelled) is ignored.

    Layout: ``{train,val,test}/*.png`` with the same names in ``{train,val,test}annot/``. File
    names start with the video sequence the frame comes from (``0016E5_08640.png``).

    **Cross-sequence validation.** The released val split is 101 frames of 0016E5, the sequence
    of 204 of the 367 training frames, so it rewards remembering that sequence; the test split's
    frames come from later in 0001TP and from Seq05VD, which training never sees. With
    ``holdout="0006R0"`` (or a list of sequences) the ``"train"`` split is every train and val
    frame of the other sequences and the ``"val"`` split every train and val frame of the
    held-out ones: a validation on a sequence training never saw. In a recipe:
    ``data.options: {holdout: 0006R0}``.

    **Train and val together.** Split ``"trainval"`` is the 468 frames of both, for a final
    model measured on the test split (``data.train_split: trainval``, ``data.val_split: test``).

    Args:
        root: the folder holding ``train/``, ``trainannot/``, ...
        split: ``"train"``, ``"val"``, ``"trainval"`` or ``"test"``.
        transform: joint image+mask transform.
        strict: raise on pairing problems (``False`` keeps them in :attr:`problems`).
        holdout: sequences (file-name prefixes such as ``"0006R0"``) to validate on instead of
            the released val split; see above.
    """

    format_name = "CamVid"

    def __init__(self, root: str | Path, split: str = "train", transform: JointTransform | None = None,
                 strict: bool = True, holdout: str | Sequence[str] | None = None) -> None:
        self.label_map = np.arange(256, dtype=np.int64)
        self.label_map[CAMVID_VOID] = IGNORE_INDEX
        self.holdout = (holdout,) if isinstance(holdout, str) else tuple(holdout or ())
        if self.holdout and split not in ("train", "val"):
            raise InputError(f"CamVid holdout={list(self.holdout)} redraws the train and val splits; split "
                             f"{split!r} is not one of them (the test split is never redrawn)")
        super().__init__(root, split, transform, class_info(CAMVID_CLASSES, CAMVID_PALETTE), strict)

    @classmethod
    def available_splits(cls, root: str | Path, **options) -> list[str]:
        root = Path(root)
        return [split for split in ("train", "val", "test")
                if (root / split).is_dir() or (root / f"{split}annot").is_dir()]

    def find_pairs(self) -> Pairing:
        if not self.holdout and self.split != "trainval":
            return self._released_pairs(self.split)
        both = [self._released_pairs(split) for split in ("train", "val")]
        pairs = sorted(pair for pairing in both for pair in pairing.pairs)
        problems = [problem for pairing in both for problem in pairing.problems]
        if not self.holdout:
            return Pairing(pairs, problems)
        present = {_camvid_sequence(image) for image, _ in pairs}
        unknown = sorted(set(self.holdout) - present)
        if unknown:
            raise InputError(f"{self.root}: CamVid holdout {unknown} names no sequence of the train and val frames; "
                             f"the sequences there are {sorted(present)}")
        keep = (lambda image: _camvid_sequence(image) in self.holdout) if self.split == "val" else (
            lambda image: _camvid_sequence(image) not in self.holdout)
        return Pairing([pair for pair in pairs if keep(pair[0])], problems)

    def _released_pairs(self, split: str) -> Pairing:
        image_dir = require_dir(self.root / split, f"the CamVid {split} images")
        mask_dir = require_dir(self.root / f"{split}annot", f"the CamVid {split} masks")
        images, problems = index_files(image_dir, IMAGE_EXTENSIONS)
        masks, mask_problems = index_files(mask_dir, MASK_EXTENSIONS)
        pairing = pair_by_key(images, masks, f"{mask_dir}/", f"{image_dir}/")
        pairing.problems[:0] = problems + mask_problems
        return pairing


def _camvid_sequence(image: Path) -> str:
    """The video sequence of a CamVid frame: its file name up to the first underscore."""
    return image.stem.split("_", 1)[0]


# ---------------------------------------------------------------------------- ISBI 2012

ISBI2012_CLASSES = ("membrane", "cell")
ISBI2012_PALETTE = ((0, 0, 0), (255, 255, 255))
ISBI2012_SPLITS = {"train": range(0, 20), "val": range(20, 25), "all": range(0, 25)}
"""The documented split of the 25 released slices: the first 20 to train on, the last 5 (a
contiguous stretch of the volume, so neighbouring training slices are as close as any) to
validate on; ``all`` for a final model."""


@register_dataset("isbi2012")
class ISBI2012Dataset(PairedFileDataset):
    """The ISBI 2012 EM segmentation challenge's training volume (Drosophila ventral nerve cord,
    serial-section TEM, 512×512 grayscale), the U-Net paper's data set.

    Layout: ``image/N.png`` and ``label/N.png`` (N = 0, 1, …), labels 255 for cell interior and
    0 for membrane, read as class 1 (``cell``) and class 0 (``membrane``); any other label
    value is an error naming the file. Images are grayscale, given to models as three equal
    channels. Splits: slices 0–19 ``train``, 20–24 ``val``, 0–24 ``all``
    (:data:`ISBI2012_SPLITS`); slices beyond those are not in any split.

    Args:
        root: the folder holding ``image/`` and ``label/``.
        split: ``"train"``, ``"val"`` or ``"all"``.
        transform: joint image+mask transform.
        strict: raise on pairing problems (``False`` keeps them in :attr:`problems`).
    """

    format_name = "ISBI 2012"

    def __init__(self, root: str | Path, split: str = "train", transform: JointTransform | None = None,
                 strict: bool = True) -> None:
        if split not in ISBI2012_SPLITS:
            raise InputError(f"the ISBI 2012 split must be one of {', '.join(ISBI2012_SPLITS)}, got {split!r}")
        self.label_map = np.arange(256, dtype=np.int64)
        self.label_map[255] = 1
        self.label_map[1] = 2  # neither membrane nor cell: refused as out of range
        super().__init__(root, split, transform, class_info(ISBI2012_CLASSES, ISBI2012_PALETTE), strict)

    @classmethod
    def available_splits(cls, root: str | Path, **options) -> list[str]:
        return list(ISBI2012_SPLITS) if (Path(root) / "image").is_dir() else []

    def find_pairs(self) -> Pairing:
        image_dir = require_dir(self.root / "image", "the ISBI 2012 slices")
        mask_dir = require_dir(self.root / "label", "the ISBI 2012 labels")
        stems = [str(index) for index in ISBI2012_SPLITS[self.split]]
        return pair_listed(stems, lambda stem: image_dir / f"{stem}.png", lambda stem: mask_dir / f"{stem}.png",
                           image_dir)
