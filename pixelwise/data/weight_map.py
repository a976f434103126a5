"""The U-Net paper's border weight map for binary membrane data, and training samples that carry it.

For a label mask of cell interior (class 1) and membrane (class 0), as the ISBI 2012 data
(255 in the label PNG = cell = class 1), the paper weights each pixel's loss by

    w(x) = w_c(x) + w0 · exp(−(d1(x) + d2(x))² / (2σ²))

so that the thin membranes between touching cells, which a network easily paints over, cost as
much as the large interiors. ``d1`` and ``d2`` are the distances to the nearest and second
nearest cell, a cell being a 4-connected component of the interior (``scipy.ndimage.label``);
the distances come from ``scipy.ndimage.distance_transform_edt``.

References:
    Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
    Segmentation", MICCAI 2015 (section 3, equation 2; w0 = 10, σ ≈ 5 pixels).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from pixelwise.data.base import SegmentationDataset
from pixelwise.data.classes import IGNORE_INDEX
from pixelwise.data.io import DataError, open_decoded
from pixelwise.data.transforms import SegmentationTransform
from pixelwise.errors import InputError

MEMBRANE, CELL = 0, 1
DEFAULT_W0, DEFAULT_SIGMA = 10.0, 5.0
# Border terms below w0 · NEGLIGIBLE are 0: past that d1 + d2 no distance needs computing, so each
# cell's distance transform is restricted to its bounding box widened by that reach.
NEGLIGIBLE = 1e-7

__all__ = ["CELL", "DEFAULT_SIGMA", "DEFAULT_W0", "MEMBRANE", "NEGLIGIBLE", "WeightMap", "WeightMapSamples",
           "border_reach", "border_weight_map", "class_balance_weights", "read_binary_mask",
           "save_weight_map_npy", "save_weight_map_png"]


class WeightMap(tv_tensors.Mask):
    """Per-pixel loss weights (float32 H×W) that torchvision v2 transforms treat as a mask.

    As a ``tv_tensors.Mask`` subclass it is resized by nearest neighbour, cropped, flipped and
    deformed with the image and mask, and left alone by colour jitter, ``ToDtype`` and
    ``Normalize``. Padding fills it with 0 (a crop's fill table names only images and masks).
    """


def class_balance_weights(mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``w_c``: the inverse frequency of each pixel's class in this mask, normalised to average 1.

    ``w_c(x) = n / (K · n_c)`` for a pixel of class ``c``, with ``n`` the mask's labelled pixels
    (not ``ignore_index``), ``n_c`` those of class ``c`` and ``K`` the number of classes present;
    so ``Σ w_c = n`` and each present class carries the same total weight. Ignored pixels get 0.

    Args:
        mask: H×W class indices (0 membrane, 1 cell) and ``ignore_index``.
        ignore_index: value of pixels that carry no label.
    """
    weights = np.zeros(mask.shape, dtype=np.float64)
    labelled = mask != ignore_index
    present = [c for c in (MEMBRANE, CELL) if (mask == c).any()]
    total = int(labelled.sum())
    for c in present:
        chosen = mask == c
        weights[chosen] = total / (len(present) * int(chosen.sum()))
    return weights


def border_reach(sigma: float) -> float:
    """The ``d1 + d2`` beyond which the border term ``w0 · exp(−(d1 + d2)² / 2σ²)`` falls below
    ``w0 · NEGLIGIBLE`` and is taken as 0."""
    return sigma * math.sqrt(2.0 * math.log(1.0 / NEGLIGIBLE))


def _nearest_two(cells: np.ndarray, count: int, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the distances to the nearest and second-nearest cell, each cell's measured only
    within its bounding box widened by ``reach`` (``inf`` beyond it).

    A pixel outside that box is farther than ``reach`` from the cell, and all of the cell lies
    inside it, so every distance up to ``reach`` is exact.
    """
    first = np.full(cells.shape, np.inf)
    second = np.full(cells.shape, np.inf)
    margin = math.ceil(reach)
    for label, box in enumerate(ndimage.find_objects(cells, count), start=1):
        window = tuple(slice(max(0, s.start - margin), min(size, s.stop + margin))
                       for s, size in zip(box, cells.shape))
        distance = ndimage.distance_transform_edt(cells[window] != label)
        near, next_near = first[window], second[window]  # views: updated in place
        np.minimum(next_near, np.maximum(near, distance), out=next_near)
        np.minimum(near, distance, out=near)
    return first, second


def _checked_mask(mask: np.ndarray | Tensor, ignore_index: int) -> np.ndarray:
    """The mask as a 2-D integer array of 0, 1 and ``ignore_index``, or an error saying what it holds."""
    array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if array.ndim != 2:
        raise InputError(f"the border weight map needs one H×W mask, got shape {array.shape}")
    if array.dtype.kind not in "biu":
        raise InputError(f"the border weight map needs integer class indices, got dtype {array.dtype}")
    bad = np.setdiff1d(np.unique(array), (MEMBRANE, CELL, ignore_index))
    if bad.size:
        raise InputError(f"the border weight map needs a binary mask (0 membrane, 1 cell, {ignore_index} "
                         f"ignored), but it holds {bad[:5].tolist()}")
    return array


def border_weight_map(mask: np.ndarray | Tensor, w0: float = DEFAULT_W0, sigma: float = DEFAULT_SIGMA,
                      ignore_index: int = IGNORE_INDEX, class_balance: bool = True) -> np.ndarray:
    """The U-Net paper's weight map ``w = w_c + w0 · exp(−(d1 + d2)² / 2σ²)`` of a binary mask.

    ``w_c`` is :func:`class_balance_weights`, or 1 at every labelled pixel without
    ``class_balance``. The border term is added at membrane pixels only
    (the paper's "background pixels"), where ``d1``/``d2`` are the Euclidean distances in pixels
    from the pixel's centre to the nearest pixel of the nearest and second-nearest cell (a
    4-connected component of class 1); it is 0 where the mask has fewer than two cells and where
    ``d1 + d2`` exceeds :func:`border_reach` (the term is then below ``w0 · NEGLIGIBLE``).
    Ignored pixels get weight 0.

    Args:
        mask: H×W class indices: 0 membrane, 1 cell interior, ``ignore_index``.
        w0: height of the border term (the paper: 10).
        sigma: its width in pixels (the paper: about 5).
        ignore_index: value of pixels that carry no label.
        class_balance: ``w_c`` as the paper has it (each present class the same total weight);
            ``False``: 1 at every labelled pixel.

    Returns:
        float32 H×W weights.

    Raises:
        InputError: a mask that is not 2-D and binary, or ``w0 < 0`` or ``sigma <= 0``.
    """
    if not (0 <= w0 < math.inf and 0 < sigma < math.inf):
        raise InputError(f"the border weight map needs w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    mask = _checked_mask(mask, ignore_index)
    if class_balance:
        weights = class_balance_weights(mask, ignore_index)
    else:
        weights = (mask != ignore_index).astype(np.float64)
    cells, count = ndimage.label(mask == CELL)
    if count >= 2 and w0 > 0:
        reach = border_reach(sigma)
        first, second = _nearest_two(cells, count, reach)
        total = first + second
        border = (mask == MEMBRANE) & (total <= reach)
        weights[border] += w0 * np.exp(-np.square(total[border]) / (2.0 * sigma * sigma))
    return weights.astype(np.float32)


def read_binary_mask(path: str | Path) -> np.ndarray:
    """Read a binary membrane label image as H×W int64 class indices (0 membrane, 1 cell).

    The file holds 0 for membrane and one other value for cell interior: 255 (the ISBI 2012
    labels) or 1. A grey image stored as RGB is read from its first channel.

    Raises:
        DataError: naming the file: it is missing, not an image, in colour, or not binary.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (give a label image such as isbi2012/label/0.png)", path, "unreadable")
    try:
        array = np.asarray(open_decoded(path))
    except DataError as error:  # its advice is about data set pairs; say it plainly for one file
        raise DataError(f"{path}: not a readable image ({error.__cause__ or error})", path, "unreadable") from error
    if array.ndim == 3:
        if not (array[..., :3] == array[..., :1]).all():
            raise DataError(f"{path}: a colour image, not a binary mask (0 membrane, 255 or 1 cell)", path,
                            "bad-labels")
        array = array[..., 0]
    values = np.unique(array)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        shown = ", ".join(str(v) for v in values[:6]) + (", …" if values.size > 6 else "")
        raise DataError(f"{path}: not a binary mask (values {shown}; expected 0 = membrane, 255 or 1 = cell)",
                        path, "bad-labels")
    return (array != 0).astype(np.int64)


def save_weight_map_png(weights: np.ndarray, path: str | Path, colormap: str = "magma") -> None:
    """Write a weight map as a colour-mapped RGB PNG, 0 at the colour map's low end and the
    map's largest weight at its high end.

    Raises:
        InputError: the file cannot be written (naming it), or an unknown colour map.
    """
    # Imported here: matplotlib is slow to import and only this function needs it.
    from matplotlib import colormaps

    if colormap not in colormaps:
        raise InputError(f"unknown colour map {colormap!r}; try magma, viridis, inferno or gray")
    peak = float(weights.max()) if weights.size else 0.0
    scaled = weights / peak if peak > 0 else np.zeros_like(weights)
    rgb = np.ascontiguousarray(colormaps[colormap](scaled, bytes=True)[..., :3])
    _write(path, lambda target: Image.fromarray(rgb).save(target, format="PNG"))


def save_weight_map_npy(weights: np.ndarray, path: str | Path) -> None:
    """Write a weight map's raw float32 values as a NumPy ``.npy`` file.

    Raises:
        InputError: the file cannot be written (naming it).
    """
    _write(path, lambda target: np.save(target, np.asarray(weights, dtype=np.float32)))


def _write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Run ``write`` on ``path`` (its folder created), an OS error becoming one line naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    except OSError as error:
        raise InputError(f"{path}: cannot write the weight map ({error})") from error


class WeightMapSamples(Dataset):
    """A binary training set's samples with each mask's border weight map: ``(image, mask, weights)``.

    Each index's map is computed from its unaugmented mask by :func:`border_weight_map` the first
    time the index is read and kept in memory (:attr:`cache`; :meth:`fill_cache` computes them all,
    which a loader's worker processes then inherit instead of each computing its own). The map
    then goes through the set's joint transform as a :class:`WeightMap`, so it is scaled,
    cropped, flipped and deformed exactly as the mask, and is set to 0 wherever the transformed
    mask is ``ignore_index`` (padding included).

    Args:
        dataset: a two-class :class:`SegmentationDataset` (0 membrane, 1 cell) whose transform,
            if any, is a :class:`~pixelwise.data.transforms.SegmentationTransform`.
        w0, sigma: the border term's height and width (:func:`border_weight_map`).
        class_balance: whether ``w_c`` balances the classes (:func:`border_weight_map`).

    Raises:
        InputError: a data set of other than two classes, or a transform that cannot carry the map.
    """

    def __init__(self, dataset: SegmentationDataset, w0: float = DEFAULT_W0, sigma: float = DEFAULT_SIGMA,
                 class_balance: bool = True) -> None:
        classes = dataset.classes
        if classes.num_classes != 2:
            raise InputError(f"the border weight map (data.weight_map) needs binary masks, 0 membrane and 1 cell; "
                             f"this data set has {classes.num_classes} classes ({', '.join(classes.names)})")
        if dataset.transform is not None and not isinstance(dataset.transform, SegmentationTransform):
            raise InputError(f"the border weight map is carried through a SegmentationTransform's pipeline, "
                             f"not {type(dataset.transform).__name__}")
        self.dataset, self.classes = dataset, classes
        self.w0, self.sigma, self.class_balance = w0, sigma, class_balance
        self.cache: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def weight_map(self, index: int, mask: Tensor) -> Tensor:
        """The map of sample ``index`` (whose unaugmented mask is ``mask``), computed once."""
        if index not in self.cache:
            weights = border_weight_map(mask.as_subclass(Tensor), self.w0, self.sigma, self.classes.ignore_index,
                                        self.class_balance)
            self.cache[index] = torch.from_numpy(weights)
        return self.cache[index]

    def fill_cache(self) -> None:
        """Compute every sample's map now."""
        for index in range(len(self)):
            if index not in self.cache:
                self.weight_map(index, self.dataset.load(index)[1])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image, mask = self.dataset.load(index)
        weights = WeightMap(self.weight_map(index, mask))
        transform = self.dataset.transform
        if transform is None:
            image = TF.to_dtype(image, torch.float32, scale=True)
        else:
            image, mask, weights = transform.pipeline(image, mask, weights)
        mask = mask.as_subclass(Tensor).to(torch.int64)
        weights = weights.as_subclass(Tensor).to(torch.float32)
        weights = torch.where(mask == self.classes.ignore_index, torch.zeros_like(weights), weights)
        return image.as_subclass(Tensor), mask, weights
