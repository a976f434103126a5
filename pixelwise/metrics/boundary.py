"""Boundary metrics (:class:`BoundaryMetric`): Boundary IoU and trimap accuracy, how well class
edges are placed."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pixelwise.data.classes import IGNORE_INDEX, ClassInfo
from pixelwise.errors import InputError
from pixelwise.metrics.counts import SummedCounts, raise_label_error
from pixelwise.metrics.scores import as_list, mean_defined

# Rows of BoundaryMetric.counts.
_INTERSECTION, _GT_BAND, _PREDICTED_BAND, _TRIMAP, _TRIMAP_CORRECT = range(5)


class BoundaryMetric(SummedCounts):
    """Streaming Boundary IoU and trimap accuracy: how well class edges are placed.

    Whole-image IoU barely moves when a thin object (a pole, a sign) is shifted by a few pixels;
    these two metrics look only at a band of ``width`` pixels along the edges, where the shift
    shows.

    **Boundary band.** For a binary mask ``G``, ``G_d`` is ``G`` minus its erosion by ``d``
    pixels, the erosion being ``d`` passes of a 3 x 3 square with everything outside the image
    taken as background. This is the convention of the official Boundary IoU code (Cheng et al.,
    CVPR 2021, ``boundary_iou/utils/boundary_utils.py`` ``mask_to_boundary``, which zero-pads the
    mask by one pixel and calls ``cv2.erode`` with a 3 x 3 kernel ``d`` times), except that ``d``
    is a fixed pixel count here, not ``dilation_ratio`` times the image diagonal. So ``G_d`` holds
    the pixels of ``G`` within Chebyshev distance ``d`` of a pixel outside ``G``, and those in
    the ``d`` outermost rows and columns of the image are boundary too (a 7 x 7 square has 24
    boundary pixels at ``d = 1`` and 48 at ``d = 3``, wherever it lies). ``G_d`` is a subset of
    ``G`` (the paper's ``G_d ∩ G``).

    **Boundary IoU** of class ``c``: with ``G`` the ground-truth pixels of ``c`` and ``P`` the
    predicted ones, ``|G_d ∩ P_d| / |G_d ∪ P_d|``, the pixel counts summed over every image
    before dividing (like :class:`ConfusionMatrix`, not a mean of per-image scores).

    **Trimap accuracy**: pixel accuracy over the pixels within ``d`` (Chebyshev) of a
    ground-truth pixel of another label, the band around class edges that DeepLab's papers call
    the trimap. The image border is not an edge here.

    **Ignore pixels.** A ground-truth ``ignore_index`` pixel is "not class c" for every ``c``: a
    class pixel next to an ignored region is an edge pixel (on VOC the void ring *is* the object
    edge). The prediction is taken as it is everywhere, ignored pixels included, so its edges are
    where it puts them. Then, as in :class:`ConfusionMatrix`, pixels whose target is
    ``ignore_index`` never count: not in an intersection, a union or the trimap, whatever the
    prediction there.

    **Absent classes.** Boundary IoU is NaN (``None`` in :meth:`summary`) for a class whose
    union is empty: absent from the ground truth and the prediction (outside ignored pixels) of
    every image. Mean Boundary IoU averages the other classes; a class only predicted scores 0.
    With nothing counted the mean and the trimap accuracy are 0.0.

    The bands come from comparisons of shifted views of the label map, on the inputs' device, so
    one pass serves every class (no per-class mask). ``counts`` is an int64 ``5 x num_classes``
    tensor: per class, the intersection, ``|G_d|``, ``|P_d|``, the trimap pixels of that
    ground-truth class and how many of them were predicted correctly.

    Label maps are ``N x H x W`` (or ``H x W``, or ``... x H x W``: leading dimensions are images).

    Args:
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        ignore_index: target value of pixels that are never counted; ``None`` for none. It may
            not be a class index.
        width: the band width ``d`` in pixels, at least 1.
        device: where the counts start; they move to the inputs' device on the first update.

    Example:
        >>> metric = BoundaryMetric(2, width=1)
        >>> target = torch.zeros(1, 5, 5, dtype=torch.long)
        >>> target[0, 1:4, 1:4] = 1
        >>> metric.update(target, target)
        >>> metric.summary()["boundary_iou"], metric.summary()["trimap_accuracy"]
        ([1.0, 1.0], 1.0)
    """

    _LOGITS_DIMS, _LOGITS_SHAPE = 3, "H x W"

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX, width: int = 3,
                 device: torch.device | str | None = None) -> None:
        super().__init__(num_classes, ignore_index, (5, num_classes), device)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise InputError(f"width must be a positive int (pixels), got {width!r}")
        self.width = width

    @classmethod
    def for_classes(cls, info: ClassInfo, width: int = 3,
                    device: torch.device | str | None = None) -> "BoundaryMetric":
        """A metric for a data set's :class:`~pixelwise.data.classes.ClassInfo`."""
        return cls(info.num_classes, info.ignore_index, width, device)

    # -- counting -----------------------------------------------------------------------------

    def _check_maps(self, target: Tensor, prediction: Tensor) -> None:
        """Raise a ValueError unless the label maps have one shape and at least two dimensions."""
        super()._check_maps(target, prediction)
        if target.dim() < 2:
            raise InputError(f"label maps must be H x W or N x H x W, got shape {tuple(target.shape)}")

    def _batch_counts(self, target: Tensor, prediction: Tensor) -> Tensor:
        """The ``5 x C`` counts of one batch."""
        # int64 before comparing: uint8 == -100 would compare against -100 wrapped to 156.
        height, width = target.shape[-2:]
        target = target.long().reshape(-1, height, width)
        prediction = prediction.long().reshape(-1, height, width)
        valid = self._check_range(target, prediction)

        frame = _near_border(height, width, self.width, target.device)
        target_edge = _near_other_label(target, self.width)
        gt_band = target_edge | frame
        predicted_band = _near_other_label(prediction, self.width) | frame
        trimap = target_edge
        if valid is not None:
            gt_band &= valid  # an ignored pixel is in no class's G: its target is no class
            predicted_band &= valid
            trimap &= valid
        correct = target == prediction
        rows = [None] * 5
        rows[_INTERSECTION] = _count_classes(target, gt_band & predicted_band & correct, self.num_classes)
        rows[_GT_BAND] = _count_classes(target, gt_band, self.num_classes)
        rows[_PREDICTED_BAND] = _count_classes(prediction, predicted_band, self.num_classes)
        rows[_TRIMAP] = _count_classes(target, trimap, self.num_classes)
        rows[_TRIMAP_CORRECT] = _count_classes(target, trimap & correct, self.num_classes)
        return torch.stack(rows)

    def _check_range(self, target: Tensor, prediction: Tensor) -> Tensor | None:
        """The mask of counted pixels (``None``: all), after checking every label is legal."""
        valid = None if self.ignore_index is None else target != self.ignore_index
        bad_target = (target < 0) | (target >= self.num_classes)
        if valid is not None:
            bad_target &= valid
        bad = bad_target.any() | (prediction < 0).any() | (prediction >= self.num_classes).any()
        if bad:
            raise_label_error(target, prediction, self.num_classes, self.ignore_index)
        return valid

    def _settings(self) -> dict[str, Any]:
        """What two metrics must share to be merged: the classes and the band width."""
        return {**super()._settings(), "width": self.width}

    # -- derived metrics ----------------------------------------------------------------------

    @property
    def intersection(self) -> Tensor:
        """Per class, the counted pixels in both ``G_d`` and ``P_d``."""
        return self.counts[_INTERSECTION]

    @property
    def union(self) -> Tensor:
        """Per class, the counted pixels in ``G_d`` or ``P_d``."""
        return self.counts[_GT_BAND] + self.counts[_PREDICTED_BAND] - self.counts[_INTERSECTION]

    @property
    def iou(self) -> Tensor:
        """Per-class Boundary IoU (CPU float64); NaN where the union is empty (absent class)."""
        counts = self.counts.detach().to("cpu", torch.float64)
        return counts[_INTERSECTION] / (counts[_GT_BAND] + counts[_PREDICTED_BAND] - counts[_INTERSECTION])

    @property
    def mean_iou(self) -> float:
        """Mean Boundary IoU over present classes (0.0 when nothing was counted)."""
        return mean_defined(self.iou)

    @property
    def trimap_pixels(self) -> int:
        """Counted pixels within ``width`` of a ground-truth class edge."""
        return int(self.counts[_TRIMAP].sum())

    @property
    def trimap_accuracy(self) -> float:
        """Fraction of trimap pixels predicted correctly (0.0 when there are none)."""
        total = self.trimap_pixels
        return int(self.counts[_TRIMAP_CORRECT].sum()) / total if total else 0.0

    def summary(self) -> dict:
        """The metrics, JSON-able and NaN-free.

        Returns:
            ``boundary_iou`` (per class, None for absent classes), ``mean_boundary_iou``,
            ``trimap_accuracy``, ``trimap_pixels`` and ``width`` (the band width ``d``).
        """
        iou = self.iou
        return {"boundary_iou": as_list(iou), "mean_boundary_iou": mean_defined(iou),
                "trimap_accuracy": self.trimap_accuracy, "trimap_pixels": self.trimap_pixels,
                "width": self.width}

    def __repr__(self) -> str:
        return self._describe(mean_iou=f"{self.mean_iou:.4f}", trimap_accuracy=f"{self.trimap_accuracy:.4f}")


def _near_other_label(labels: Tensor, width: int) -> Tensor:
    """Pixels of ``N x H x W`` labels with another label within Chebyshev distance ``width``.

    Outside the image counts as nothing: the border is no edge here. A pixel has another label
    within ``width`` exactly when it lies within ``width - 1`` of a pixel whose 8-neighbourhood
    holds two labels (walk the king's path to the other label: the step where the label first
    changes starts at such a pixel), so this finds those pixels by comparing shifted views,
    then dilates them: boolean ops on slices, with no float copy and no pooling.
    """
    edge = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    # (rows, columns) offsets of the neighbours right, down, down-right and down-left
    for here, there in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
                        ((slice(None, -1), slice(None, -1)), (slice(1, None), slice(1, None))),
                        ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1)))):
        differs = labels[(..., *here)] != labels[(..., *there)]
        edge[(..., *here)] |= differs
        edge[(..., *there)] |= differs
    return _dilate(_dilate(edge, width - 1, dim=-1), width - 1, dim=-2)


def _dilate(mask: Tensor, distance: int, dim: int) -> Tensor:
    """``mask`` grown by ``distance`` pixels both ways along ``dim`` (nothing beyond the edges)."""
    grown = mask.clone()
    for step in range(1, min(distance, mask.shape[dim] - 1) + 1):
        grown.narrow(dim, step, mask.shape[dim] - step).logical_or_(mask.narrow(dim, 0, mask.shape[dim] - step))
        grown.narrow(dim, 0, mask.shape[dim] - step).logical_or_(mask.narrow(dim, step, mask.shape[dim] - step))
    return grown


def _near_border(height: int, width: int, distance: int, device: torch.device) -> Tensor:
    """``H x W`` mask of the ``distance`` outermost rows and columns of the image."""
    rows = torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    near_rows = (rows < distance) | (rows >= height - distance)
    near_columns = (columns < distance) | (columns >= width - distance)
    return near_rows[:, None] | near_columns[None, :]


def _count_classes(labels: Tensor, mask: Tensor, num_classes: int) -> Tensor:
    """Per class, how many pixels under ``mask`` have that label (labels there are in range)."""
    index = torch.where(mask, labels, num_classes)  # unmasked pixels go to an extra bin
    return torch.bincount(index.reshape(-1), minlength=num_classes + 1)[:num_classes]
