"""The streaming pixel confusion matrix (:class:`ConfusionMatrix`); the rules it counts by, and
how it compares with torchmetrics and torchvision, are in :mod:`pixelwise.metrics`."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from pixelwise.data.classes import IGNORE_INDEX, ClassInfo
from pixelwise.errors import InputError
from pixelwise.metrics.counts import SummedCounts, raise_label_error
from pixelwise.metrics.scores import (class_accuracy, dice, frequency_weighted_iou, intersection_over_union,
                                      mean_class_accuracy, mean_dice, mean_iou, pixel_accuracy, summarize)
from pixelwise.metrics.table import format_table

# CPU updates go chunk by chunk, each chunk smaller than PyTorch's parallel grain size (32768
# elements; reductions of exactly that size still go parallel), so every op runs serially on one
# core with no OpenMP hand-off (which costs more than it saves on these memory-bound ops, and
# badly so on a loaded machine), and each chunk's index (248 KiB) stays in cache for bincount's
# own min/max passes. A multiple of 1024 keeps chunk starts aligned.
CPU_CHUNK = 31744


class ConfusionMatrix(SummedCounts):
    """Streaming pixel counts over ``num_classes`` classes, with the metrics derived from them.

    ``matrix`` (the tensor ``counts``) is ``C x C``: rows ground truth, columns prediction. Label
    maps may have any shape. The matrix starts on ``device`` and moves to the inputs' device.

    Args:
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        ignore_index: target value of pixels that are never counted; ``None`` for none. It may
            not be a class index (negative values such as -100 are fine).
        device: where the matrix starts.

    Example:
        >>> cm = ConfusionMatrix(3)
        >>> cm.update(torch.tensor([[0, 1, 255]]), torch.tensor([[0, 2, 1]]))
        >>> cm.matrix.tolist()
        [[1, 0, 0], [0, 0, 1], [0, 0, 0]]
    """

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX,
                 device: torch.device | str | None = None) -> None:
        super().__init__(num_classes, ignore_index, (num_classes, num_classes), device)
        # Index rows run over every legal target value, from min(0, ignore) to max(C-1, ignore);
        # rows that are neither a class nor the ignore value must stay empty.
        legal = [0, num_classes - 1] + ([] if ignore_index is None else [ignore_index])
        self._low = min(legal)
        self._num_rows = max(legal) - self._low + 1

    @classmethod
    def for_classes(cls, info: ClassInfo, device: torch.device | str | None = None) -> "ConfusionMatrix":
        """A matrix for a data set's :class:`~pixelwise.data.classes.ClassInfo`."""
        return cls(info.num_classes, info.ignore_index, device)

    @property
    def matrix(self) -> Tensor:
        """The ``C x C`` int64 counts (rows: ground truth, columns: prediction); ``counts``."""
        return self.counts

    @matrix.setter
    def matrix(self, counts: Tensor) -> None:
        self.counts = counts

    @property
    def num_pixels(self) -> int:
        """Number of pixels counted so far (ignore pixels excluded)."""
        return int(self.counts.sum())

    # -- counting -----------------------------------------------------------------------------

    def _batch_counts(self, target: Tensor, prediction: Tensor) -> Tensor:
        """The ``C x C`` matrix of one batch."""
        counts = self._count(target.reshape(-1), prediction.reshape(-1))
        return self._class_block(counts, target, prediction)

    def _count(self, target: Tensor, prediction: Tensor) -> Tensor:
        """Counts of every ``(target row, prediction)`` index, flat, ``num_rows * C`` long."""
        num_bins = self._num_rows * self.num_classes
        # One pass on accelerators: they parallelise within each op, and chunks would serialise.
        chunk = min(CPU_CHUNK if target.device.type == "cpu" else target.numel(), target.numel())
        index = torch.empty(chunk, dtype=torch.int64, device=target.device)
        counts = torch.zeros(num_bins, dtype=torch.int64, device=target.device)
        for target_part, prediction_part in zip(target.split(chunk), prediction.split(chunk)):
            part = index[:target_part.numel()]
            if not self._index(target_part, prediction_part, part):
                raise_label_error(target, prediction, self.num_classes, self.ignore_index)
            counts += torch.bincount(part, minlength=num_bins)
        return counts

    def _index(self, target: Tensor, prediction: Tensor, out: Tensor) -> bool:
        """Write each pixel's bin into ``out``; False if a label is out of range."""
        prediction_low, prediction_high = torch.aminmax(prediction)
        # Widen before multiplying: uint8 * C would wrap around in uint8.
        wide_target = target if target.dtype == torch.int64 else target.long()
        torch.add(prediction, wide_target, alpha=self.num_classes, out=out)
        if self._low:
            out -= self._low * self.num_classes
        index_low, index_high = torch.aminmax(out)
        # One host sync per chunk. With predictions in range, the index range bounds the target
        # to [low, high], so bincount never allocates for garbage labels.
        bounds = torch.stack((prediction_low, prediction_high, index_low, index_high)).tolist()
        return (bounds[0] >= 0 and bounds[1] < self.num_classes
                and bounds[2] >= 0 and bounds[3] < self._num_rows * self.num_classes)

    def _class_block(self, counts: Tensor, target: Tensor, prediction: Tensor) -> Tensor:
        """The ``C x C`` class rows of ``counts``, after checking that no stray row is used."""
        table = counts.view(self._num_rows, self.num_classes)
        block = table[-self._low:self.num_classes - self._low]
        counted = block.sum()
        if self.ignore_index is not None:
            counted = counted + table[self.ignore_index - self._low].sum()
        if int(counted) != target.numel():  # a target value between the classes and the ignore index
            raise_label_error(target, prediction, self.num_classes, self.ignore_index)
        return block

    # -- saving -------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-able state: class count, ignore index and the matrix as nested lists."""
        return {"num_classes": self.num_classes, "ignore_index": self.ignore_index,
                "matrix": self.matrix.tolist()}

    @classmethod
    def from_dict(cls, state: dict, device: torch.device | str | None = None) -> "ConfusionMatrix":
        """Inverse of :meth:`to_dict`."""
        matrix = cls(int(state["num_classes"]), state["ignore_index"], device)
        counts = torch.tensor(state["matrix"], dtype=torch.int64, device=matrix.device)
        if counts.shape != matrix.counts.shape:
            raise InputError(f"saved matrix has shape {tuple(counts.shape)}, expected {tuple(matrix.counts.shape)}")
        matrix.counts = counts
        return matrix

    # -- derived metrics ----------------------------------------------------------------------

    @property
    def iou(self) -> Tensor:
        """Per-class IoU; NaN for classes absent from ground truth and prediction."""
        return intersection_over_union(self.matrix)

    @property
    def mean_iou(self) -> float:
        """Mean IoU over present classes (0.0 when nothing was counted)."""
        return mean_iou(self.matrix)

    @property
    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted correctly."""
        return pixel_accuracy(self.matrix)

    @property
    def class_accuracy(self) -> Tensor:
        """Per-class recall; NaN for classes absent from the ground truth."""
        return class_accuracy(self.matrix)

    @property
    def mean_class_accuracy(self) -> float:
        """Mean recall over the classes present in the ground truth."""
        return mean_class_accuracy(self.matrix)

    @property
    def frequency_weighted_iou(self) -> float:
        """IoU averaged with each class weighted by its ground-truth pixel count."""
        return frequency_weighted_iou(self.matrix)

    @property
    def dice(self) -> Tensor:
        """Per-class Dice (F1); NaN for classes absent from ground truth and prediction."""
        return dice(self.matrix)

    @property
    def mean_dice(self) -> float:
        """Mean Dice over present classes."""
        return mean_dice(self.matrix)

    def summary(self) -> dict:
        """Every metric, JSON-able and NaN-free; see :func:`summarize`."""
        return summarize(self.matrix)

    def table(self, class_names: Sequence[str] | None = None) -> str:
        """A plain-text table of per-class and mean metrics; see :func:`format_table`."""
        return format_table(self.matrix, class_names)

    def __repr__(self) -> str:
        return self._describe(num_pixels=self.num_pixels, mean_iou=f"{self.mean_iou:.4f}")
