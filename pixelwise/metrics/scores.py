"""Every metric of a confusion matrix (rows ground truth, columns prediction), as functions of
the matrix alone, and :func:`summarize`, all of them JSON-able; the rules are in
:mod:`pixelwise.metrics`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# Computed on the CPU in float64: the matrix is tiny, float64 keeps counts up to 2**53 exact, and
# not every accelerator has float64.

def _counts(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """True positives, ground-truth totals and prediction totals per class, as CPU float64."""
    matrix = matrix.detach().to("cpu", torch.float64)
    return matrix.diagonal(), matrix.sum(dim=1), matrix.sum(dim=0)


def mean_defined(values: Tensor) -> float:
    """Mean of the non-NaN values; 0.0 when there are none (nothing counted)."""
    defined = values[~values.isnan()]
    return float(defined.mean()) if defined.numel() else 0.0


def intersection_over_union(matrix: Tensor) -> Tensor:
    """Per-class IoU ``tp / (gt + predicted - tp)``; NaN where the union is 0 (absent class)."""
    true_positive, ground_truth, predicted = _counts(matrix)
    return true_positive / (ground_truth + predicted - true_positive)


def mean_iou(matrix: Tensor) -> float:
    """Mean IoU over present classes (union > 0); absent classes are skipped, not counted as 0."""
    return mean_defined(intersection_over_union(matrix))


def pixel_accuracy(matrix: Tensor) -> float:
    """Correct pixels over counted pixels; 0.0 when nothing was counted."""
    true_positive, ground_truth, _ = _counts(matrix)
    total = ground_truth.sum()
    return float(true_positive.sum() / total) if total > 0 else 0.0


def class_accuracy(matrix: Tensor) -> Tensor:
    """Per-class recall ``tp / gt``; NaN for classes absent from the ground truth."""
    true_positive, ground_truth, _ = _counts(matrix)
    return true_positive / ground_truth


def mean_class_accuracy(matrix: Tensor) -> float:
    """Mean recall over classes present in the ground truth (a class only predicted is skipped)."""
    return mean_defined(class_accuracy(matrix))


def frequency_weighted_iou(matrix: Tensor) -> float:
    """Sum of per-class IoU weighted by ground-truth frequency (FCN paper); 0.0 when empty."""
    _, ground_truth, _ = _counts(matrix)
    total = ground_truth.sum()
    if total == 0:
        return 0.0
    iou = intersection_over_union(matrix)
    present = ground_truth > 0  # IoU is defined there: union >= gt > 0
    return float((ground_truth[present] * iou[present]).sum() / total)


def dice(matrix: Tensor) -> Tensor:
    """Per-class Dice / F1 ``2 tp / (gt + predicted)``; NaN for absent classes."""
    true_positive, ground_truth, predicted = _counts(matrix)
    return 2 * true_positive / (ground_truth + predicted)


def mean_dice(matrix: Tensor) -> float:
    """Mean Dice over present classes (union > 0)."""
    return mean_defined(dice(matrix))


def as_list(values: Tensor) -> list[float | None]:
    """Per-class values with NaN written as None (JSON null)."""
    return [None if math.isnan(value) else value for value in values.tolist()]


def summarize(matrix: Tensor) -> dict:
    """Every metric of ``matrix``: JSON-able, with no NaN.

    Returns:
        Means (``mean_iou``, ``pixel_accuracy``, ``mean_class_accuracy``,
        ``frequency_weighted_iou``, ``mean_dice``; 0.0 when nothing was counted), per-class lists
        (``iou``, ``dice``, ``class_accuracy``, with None where undefined; ``gt_pixels``,
        ``predicted_pixels``), ``num_pixels``, ``num_classes`` and ``present_classes`` (how many
        classes the means average over).
    """
    _, ground_truth, predicted = _counts(matrix)
    iou = intersection_over_union(matrix)
    return {
        "num_classes": int(matrix.shape[0]),
        "num_pixels": int(ground_truth.sum()),
        "present_classes": int((~iou.isnan()).sum()),
        "mean_iou": mean_iou(matrix),
        "pixel_accuracy": pixel_accuracy(matrix),
        "mean_class_accuracy": mean_class_accuracy(matrix),
        "frequency_weighted_iou": frequency_weighted_iou(matrix),
        "mean_dice": mean_dice(matrix),
        "iou": as_list(iou),
        "dice": as_list(dice(matrix)),
        "class_accuracy": as_list(class_accuracy(matrix)),
        "gt_pixels": [int(count) for count in ground_truth.tolist()],
        "predicted_pixels": [int(count) for count in predicted.tolist()],
    }
