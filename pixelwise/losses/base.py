"""The ground every loss stands on: the registry :data:`LOSSES`, the input checks and masked
arithmetic the losses share, and class weights computed from a data set's pixel counts.

See :mod:`pixelwise.losses` for the conventions every loss follows (shapes, ``ignore_index``,
all-ignore batches).

References:
    Eigen & Fergus, "Predicting Depth, Surface Normals and Semantic Labels with a Common
    Multi-Scale Convolutional Architecture", ICCV 2015 (median frequency balancing).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.data.classes import IGNORE_INDEX
from pixelwise.errors import InputError
from pixelwise.registry import Registry

ClassSelection = str | Sequence[int]
WeightsLike = Tensor | Sequence[float] | np.ndarray

# The losses :func:`~pixelwise.losses.create_loss` builds by name (case-insensitive).
LOSSES: Registry[type[nn.Module]] = Registry("loss", normalize=str.lower)


# --------------------------------------------------------------------------- shared helpers


def check_inputs(logits: Tensor, target: Tensor) -> Tensor:
    """Validate shapes and return the target as int64 (uint8 masks are common on disk)."""
    if logits.dim() < 2:
        raise InputError(f"logits must be (N, C, H, W), got shape {tuple(logits.shape)}")
    expected = logits.shape[:1] + logits.shape[2:]
    if target.shape != expected:
        raise InputError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
                         f"expected {tuple(expected)} (are the logits at the input's resolution?)")
    if target.is_floating_point():
        raise InputError(f"target must hold integer class indices, got dtype {target.dtype}")
    return target.long()


def upcast(logits: Tensor) -> Tensor:
    """Half-precision logits in float32: sums over millions of pixels lose the small classes."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, and 0 where ``denominator`` is 0 (numerator is then 0 too).

    The denominator is replaced before dividing, rather than the quotient afterwards, because
    ``torch.where`` over a NaN branch still back-propagates NaN.
    """
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return numerator / safe


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` holds; 0 where nothing does."""
    mask = mask.to(values.dtype)
    if dim is None:
        return safe_divide((values * mask).sum(), mask.sum())
    return safe_divide((values * mask).sum(dim), mask.sum(dim))


def one_hot_target(target: Tensor, valid: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """One-hot ``(N, C, *spatial)`` float target, all zeros at ignored pixels."""
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    one_hot = F.one_hot(safe_target, num_classes).movedim(-1, 1)
    return one_hot.to(dtype) * valid.unsqueeze(1)


def check_classes(classes: ClassSelection) -> ClassSelection:
    """A loss's ``classes`` option checked: ``"present"``, ``"all"``, or a tuple of class indices."""
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise InputError(f"classes must be 'present', 'all' or a list of class indices, got {classes!r}")
        return classes
    return tuple(int(c) for c in classes)


def class_mask(classes: ClassSelection, present: Tensor) -> Tensor:
    """Which classes a loss averages over.

    Args:
        classes: ``"present"`` (classes in the ground truth), ``"all"`` or a list of indices.
        present: boolean ``(..., C)``, whether each class occurs in the ground truth.
    """
    if classes == "present":
        return present
    if classes == "all":
        return torch.ones_like(present)
    chosen = torch.zeros(present.shape[-1], dtype=torch.bool, device=present.device)
    chosen[list(classes)] = True
    return chosen.expand_as(present)


def as_weights(weights: WeightsLike | None) -> Tensor | None:
    """Per-class weights as a detached float32 copy of shape ``(C,)``, or ``None``."""
    if weights is None:
        return None
    weights = torch.as_tensor(weights)
    if weights.dim() != 1:
        raise InputError(f"class weights must be one value per class, got shape {tuple(weights.shape)}")
    return weights.detach().float().clone()


# --------------------------------------------------------------------------- class weights from data


class ClassPixelCounts(NamedTuple):
    """Per-class pixel statistics of a data set (ignored pixels excluded everywhere).

    Attributes:
        class_pixels: pixels labelled with each class.
        image_pixels: for each class, the labelled pixels of all images in which it occurs.
    """

    class_pixels: Tensor
    image_pixels: Tensor

    @classmethod
    def of(cls, image_class_pixels: Tensor) -> ClassPixelCounts:
        """The sums of a per-image table (:func:`image_class_pixels`)."""
        labelled = image_class_pixels.sum(1, keepdim=True)  # each image's pixels that are not ignored
        return cls(image_class_pixels.sum(0), ((image_class_pixels > 0) * labelled).sum(0))


def _masks(data: Iterable) -> Iterable[Tensor]:
    """Masks of a data set of ``(image, mask)`` pairs, or of an iterable of masks."""
    # A map-style Dataset need not be iterable, so index it when it can be indexed.
    indexable = hasattr(data, "__len__") and hasattr(data, "__getitem__")
    items = (data[index] for index in range(len(data))) if indexable else data
    for item in items:
        mask = item[1] if isinstance(item, (tuple, list)) else item
        yield torch.as_tensor(mask)


def image_class_pixels(data: Iterable, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Pixels of each class in each image: an ``(images, num_classes)`` int64 table.

    Pass a data set without random augmentation (crops change the counts).

    Args:
        data: a data set yielding ``(image, mask)`` pairs, or an iterable of masks.
        num_classes: number of classes.
        ignore_index: mask value that is not counted.

    Raises:
        ValueError: a mask value that is neither a class index nor ``ignore_index``.
    """
    rows = []
    for index, mask in enumerate(_masks(data)):
        labels = mask.reshape(-1).long().cpu()
        labels = labels[labels != ignore_index]
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)].unique()[:5].tolist()
            raise InputError(f"mask {index} holds values {bad} outside 0..{num_classes - 1} "
                             f"(and not ignore_index {ignore_index})")
        rows.append(torch.bincount(labels, minlength=num_classes))
    return torch.stack(rows) if rows else torch.zeros(0, num_classes, dtype=torch.int64)


def class_pixel_counts(data: Iterable, num_classes: int, ignore_index: int = IGNORE_INDEX) -> ClassPixelCounts:
    """Count pixels per class, and per class the pixels of the images it appears in.

    The sums of :func:`image_class_pixels` (its arguments, its errors). Use the result with
    ``median_frequency_weights(*counts)``.
    """
    return ClassPixelCounts.of(image_class_pixels(data, num_classes, ignore_index))


def _as_float64(values: WeightsLike) -> Tensor:
    values = torch.as_tensor(values).detach().cpu().double()
    if values.dim() != 1 or (values < 0).any():
        raise InputError(f"pixel counts must be one non-negative number per class, got {values.tolist()}")
    return values


def median_frequency_weights(class_pixel_counts: WeightsLike,
                             image_pixel_counts: WeightsLike | None = None) -> Tensor:
    """Median frequency balancing (Eigen & Fergus, 2015): ``weight(c) = median(freq) / freq(c)``.

    ``freq(c)`` is the pixels of class ``c`` divided by the total pixels of the images in which
    ``c`` is present (``image_pixel_counts``; without it, by all pixels). The median is taken over
    the classes that occur (the mean of the two middle values for an even number of them), so a
    class of median frequency gets weight 1. A class that never occurs gets weight 0: it cannot
    be learnt from this data, and a 0 keeps stray predictions of it from being rewarded.

    Args:
        class_pixel_counts: pixels per class (as from :func:`class_pixel_counts`).
        image_pixel_counts: per class, pixels of the images containing it.

    Returns:
        float32 weights, one per class, for :class:`CrossEntropyLoss`.
    """
    counts = _as_float64(class_pixel_counts)
    totals = counts.sum().expand_as(counts) if image_pixel_counts is None else _as_float64(image_pixel_counts)
    present = counts > 0
    if not present.any():
        raise InputError("no class has any pixel: cannot compute frequency weights")
    frequency = safe_divide(counts, totals)
    median = frequency[present].quantile(0.5)
    weights = safe_divide(median.expand_as(frequency), frequency) * present
    return weights.float()


def inverse_frequency_weights(class_pixel_counts: WeightsLike, power: float = 1.0) -> Tensor:
    """Inverse class-frequency weights ``freq(c) ** -power``, averaging 1 over occurring classes.

    ``power=0.5`` gives the milder inverse-square-root weighting. Classes that never occur get 0.

    Args:
        class_pixel_counts: pixels per class.
        power: exponent of the inverse frequency.

    Returns:
        float32 weights, one per class, for :class:`CrossEntropyLoss`.
    """
    counts = _as_float64(class_pixel_counts)
    present = counts > 0
    if not present.any():
        raise InputError("no class has any pixel: cannot compute frequency weights")
    frequency = counts / counts.sum()
    weights = torch.where(present, frequency.clamp_min(1e-300) ** -power, torch.zeros_like(frequency))
    return (weights / weights[present].mean()).float()


__all__ = [
    "LOSSES", "ClassPixelCounts", "ClassSelection", "WeightsLike", "as_weights", "check_classes", "check_inputs",
    "class_mask", "class_pixel_counts", "image_class_pixels", "inverse_frequency_weights", "masked_mean",
    "median_frequency_weights", "one_hot_target", "safe_divide", "upcast",
]
