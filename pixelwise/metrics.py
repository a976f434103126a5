"""Streaming confusion matrix for semantic segmentation, every metric derived from it, and
boundary metrics (:class:`BoundaryMetric`: Boundary IoU and trimap accuracy near class edges).
Both are :class:`SummedCounts`: int64 counts that add up over batches, processes and runs.

:class:`ConfusionMatrix` counts pixels: ``matrix[i, j]`` is the number of pixels whose ground
truth is class ``i`` and whose prediction is class ``j`` (rows = ground truth, columns =
prediction), in int64. The metrics are functions of that matrix alone, so a matrix summed over
batches, processes or saved runs gives exactly the metric of all their pixels together.

The rules, stated once:

- **Ignore pixels never count.** A pixel whose target is ``ignore_index`` adds nothing to the
  matrix, whatever was predicted there. Predictions have no ignore value: every prediction must
  be a class in ``[0, num_classes)``. Any other target or prediction value is an error (a
  ``ValueError`` naming the values and their pixel counts), never silently dropped.
- **Absent classes are skipped, not scored.** A class is *present* when its union is non-zero,
  i.e. it occurs in the ground truth or in the prediction (of counted pixels). Per-class IoU and
  Dice are NaN for an absent class; mean IoU and mean Dice average over present classes only. A
  class that is predicted but absent from the ground truth is present: its IoU is 0 and it
  lowers the mean (those are real false positives). Mean class accuracy (mean recall) averages
  over the classes present in the *ground truth*, since recall has no denominator otherwise.
- **Nothing is NaN in a summary.** When no pixel has been counted (a fresh matrix, or only
  ignore pixels so far) the means and pixel accuracy are 0.0, and :meth:`summary` writes
  ``None`` (JSON ``null``) for undefined per-class values; ``num_pixels`` says how much was
  counted.
- **Background is an ordinary class.** Class 0 is averaged like any other; to leave a class out
  of training and evaluation, relabel it to the ignore index in the data.

Compared with torchmetrics 1.9 (``MulticlassJaccardIndex``, ``MulticlassAccuracy``,
``MulticlassF1Score`` with ``ignore_index=255``, which also drop ignore pixels entirely):

- ``average="macro"`` Jaccard and F1 also skip classes with ``tp + fp + fn == 0``: they equal
  our mean IoU and mean Dice. ``average="weighted"`` Jaccard equals our frequency-weighted IoU,
  and ``MulticlassAccuracy(average="micro")`` our pixel accuracy.
- ``average="none"`` gives 0 (``zero_division``) for an absent class where we give NaN, so a
  mean taken over its output counts absent classes as failures.
- ``MulticlassAccuracy(average="macro")`` averages recall over classes present in the ground
  truth *or the prediction*: a class that is only predicted counts as recall 0. Our mean class
  accuracy skips it (the FCN paper's definition, over ground-truth classes).
- With nothing counted, macro and weighted Jaccard return NaN; we return 0.0.
- An ``ignore_index`` inside ``[0, num_classes)`` makes torchmetrics drop that class's target
  pixels and leave it out of the Jaccard averages, while its predictions still count against
  other classes; here such an ``ignore_index`` is refused (as in
  :class:`~pixelwise.data.classes.ClassInfo`).

torchvision's ``references/segmentation/utils.ConfusionMatrix`` counts the same way but takes a
plain mean of per-class IoU, so one absent class makes its mean IoU NaN.

``update`` is built for speed on the CPU: the matrix cell of each pixel is
``target * num_classes + prediction`` and ``torch.bincount`` counts them, in cache-sized chunks
on one core (see ``CPU_CHUNK``). Ignore pixels
are not removed first (boolean-mask compaction copies both tensors); their index falls into
extra bins that are dropped afterwards, and out-of-range targets fall into bins that are checked
to be empty. See ``benchmarks/metrics.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Self, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from pixelwise.data.classes import IGNORE_INDEX, ClassInfo
from pixelwise.errors import InputError

# CPU updates go chunk by chunk, each chunk smaller than PyTorch's parallel grain size (32768
# elements; reductions of exactly that size still go parallel), so every op runs serially on one
# core with no OpenMP hand-off (which costs more than it saves on these memory-bound ops, and
# badly so on a loaded machine), and each chunk's index (248 KiB) stays in cache for bincount's
# own min/max passes. A multiple of 1024 keeps chunk starts aligned.
CPU_CHUNK = 31744

__all__ = [
    "SummedCounts", "ConfusionMatrix", "intersection_over_union", "mean_iou", "pixel_accuracy", "class_accuracy",
    "mean_class_accuracy", "frequency_weighted_iou", "dice", "mean_dice", "summarize", "MetricsTable",
    "metrics_table", "format_percent", "format_table", "BoundaryMetric",
]


class SummedCounts:
    """Integer pixel counts summed over batches, data loaders and processes; the base of
    :class:`ConfusionMatrix` and :class:`BoundaryMetric`.

    It holds ``counts`` (an int64 tensor), checks each batch of label maps, and adds, resets,
    merges and all-reduces the counts. A subclass says only how a batch becomes counts
    (``_batch_counts``) and what is derived from them. The counts live on the device of the
    inputs: they start on ``device`` (CPU by default) and move to the inputs' device on the first
    update from another device.

    Args:
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        ignore_index: target value of pixels that are never counted; ``None`` for none. It may
            not be a class index (negative values such as -100 are fine).
        shape: the shape of ``counts``.
        device: where the counts start.
    """

    # The fewest dimensions update_logits takes, and how its error message spells those after N x C.
    _LOGITS_DIMS, _LOGITS_SHAPE = 2, "..."

    def __init__(self, num_classes: int, ignore_index: int | None, shape: tuple[int, ...],
                 device: torch.device | str | None = None) -> None:
        _check_classes(num_classes, ignore_index)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(shape, dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        """Where the counts live."""
        return self.counts.device

    # -- counting -----------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, target: Tensor, prediction: Tensor) -> None:
        """Count a batch of label maps (the shapes each metric takes are in its class docstring).

        Args:
            target: ground-truth class indices, any integer dtype; ``ignore_index`` marks pixels
                not to count.
            prediction: predicted class indices, the same shape.

        Raises:
            ValueError: on a shape mismatch, non-integer labels, a prediction outside
                ``[0, num_classes)`` or a target outside it that is not ``ignore_index``.
        """
        self._check_maps(target, prediction)
        if target.numel() == 0:
            return
        if self.counts.device != target.device:
            self.counts = self.counts.to(target.device)
        self.counts += self._batch_counts(target, prediction)

    @torch.no_grad()
    def update_logits(self, target: Tensor, logits: Tensor) -> None:
        """Count a batch from scores: the prediction is the argmax over dimension 1.

        Args:
            target: ground truth ``N x H x W`` (the shape of ``logits`` without dimension 1).
            logits: scores or probabilities ``N x num_classes x H x W``.
        """
        if logits.dim() < self._LOGITS_DIMS or logits.shape[1] != self.num_classes:
            raise InputError(f"logits must be N x {self.num_classes} x {self._LOGITS_SHAPE}, "
                             f"got shape {tuple(logits.shape)}")
        expected = logits.shape[:1] + logits.shape[2:]
        if target.shape != expected:
            raise InputError(f"target shape {tuple(target.shape)} does not match logits shape "
                             f"{tuple(logits.shape)} (expected {tuple(expected)})")
        self.update(target, logits.argmax(dim=1))

    def _check_maps(self, target: Tensor, prediction: Tensor) -> None:
        """Raise a ValueError unless the label maps are a batch this metric takes."""
        _check_label_maps(target, prediction)

    def _batch_counts(self, target: Tensor, prediction: Tensor) -> Tensor:
        """The counts of one non-empty batch, shaped as ``counts``, on the batch's device."""
        raise NotImplementedError

    # -- combining, resetting -----------------------------------------------------------------

    def reset(self) -> None:
        """Forget every count (for example between evaluation epochs)."""
        self.counts.zero_()

    def merge(self, other: Self) -> Self:
        """Add another metric's counts to this one (e.g. from another data loader).

        Returns:
            This metric, for chaining.

        Raises:
            ValueError: when ``other`` is another kind of metric or has other settings.
        """
        if (type(other), other._settings()) != (type(self), self._settings()):
            raise InputError(f"cannot merge {other._describe()} into {self._describe()}")
        self.counts += other.counts.to(self.counts.device)
        return self

    def all_reduce(self) -> Self:
        """Sum the counts of every process (``torch.distributed``); a no-op when not initialised.

        The counts must be on a device the backend supports (CUDA for NCCL, CPU for Gloo).

        Returns:
            This metric, now holding the counts of all processes.
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts, op=dist.ReduceOp.SUM)
        return self

    def _settings(self) -> dict[str, Any]:
        """What two metrics must share to be merged."""
        return {"num_classes": self.num_classes, "ignore_index": self.ignore_index}

    def _describe(self, **results: Any) -> str:
        """``Name(setting=value, ..., result=value, ...)``."""
        fields = {**self._settings(), **results}
        return f"{type(self).__name__}({', '.join(f'{key}={value}' for key, value in fields.items())})"


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
                _raise_label_error(target, prediction, self.num_classes, self.ignore_index)
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
            _raise_label_error(target, prediction, self.num_classes, self.ignore_index)
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


# -- label checks ---------------------------------------------------------------------------------

def _check_classes(num_classes: int, ignore_index: int | None) -> None:
    """Raise a ValueError unless ``num_classes`` is a positive int and ``ignore_index`` no class."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"num_classes must be a positive int, got {num_classes!r}")
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        raise InputError(f"ignore_index {ignore_index} is a class index (num_classes={num_classes}); "
                         "use a value outside [0, num_classes), e.g. 255")


def _check_label_maps(target: Tensor, prediction: Tensor) -> None:
    """Raise a ValueError unless target and prediction are integer maps of one shape and device."""
    if target.shape != prediction.shape:
        raise InputError(f"target shape {tuple(target.shape)} != prediction shape {tuple(prediction.shape)}"
                         " (for N x C x H x W scores use update_logits)")
    for name, labels in (("target", target), ("prediction", prediction)):
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise InputError(f"{name} must hold integer class indices, got dtype {labels.dtype}"
                             + (" (for scores use update_logits)" if name == "prediction" else ""))
    if target.device != prediction.device:
        raise InputError(f"target is on {target.device} but prediction on {prediction.device}")


def _raise_label_error(target: Tensor, prediction: Tensor, num_classes: int, ignore_index: int | None) -> None:
    """Raise a ValueError naming the out-of-range labels and how many pixels hold each."""
    problems = []
    bad_prediction = (prediction < 0) | (prediction >= num_classes)
    if bad_prediction.any():
        problems.append(f"prediction has values outside [0, {num_classes}): "
                        + _describe_values(prediction[bad_prediction]))
    bad_target = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad_target &= target != ignore_index
    if bad_target.any():
        allowed = "" if ignore_index is None else f" other than ignore_index {ignore_index}"
        problems.append(f"target has values outside [0, {num_classes}){allowed}: "
                        + _describe_values(target[bad_target]))
    raise InputError("; ".join(problems) or "labels out of range")


def _describe_values(values: Tensor, limit: int = 10) -> str:
    """'20 (130 pixels), -1 (3 pixels), ... in 133 pixels', most frequent first."""
    unique, counts = torch.unique(values, return_counts=True)
    order = counts.argsort(descending=True)
    listed = ", ".join(f"{int(unique[i])} ({int(counts[i])} pixels)" for i in order[:limit])
    more = f" and {len(unique) - limit} more values" if len(unique) > limit else ""
    return f"{listed}{more}; {values.numel()} pixels in all"


# -- metrics of a matrix --------------------------------------------------------------------------
# Computed on the CPU in float64: the matrix is tiny, float64 keeps counts up to 2**53 exact, and
# not every accelerator has float64.

def _counts(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """True positives, ground-truth totals and prediction totals per class, as CPU float64."""
    matrix = matrix.detach().to("cpu", torch.float64)
    return matrix.diagonal(), matrix.sum(dim=1), matrix.sum(dim=0)


def _mean_defined(values: Tensor) -> float:
    """Mean of the non-NaN values; 0.0 when there are none (nothing counted)."""
    defined = values[~values.isnan()]
    return float(defined.mean()) if defined.numel() else 0.0


def intersection_over_union(matrix: Tensor) -> Tensor:
    """Per-class IoU ``tp / (gt + predicted - tp)``; NaN where the union is 0 (absent class)."""
    true_positive, ground_truth, predicted = _counts(matrix)
    return true_positive / (ground_truth + predicted - true_positive)


def mean_iou(matrix: Tensor) -> float:
    """Mean IoU over present classes (union > 0); absent classes are skipped, not counted as 0."""
    return _mean_defined(intersection_over_union(matrix))


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
    return _mean_defined(class_accuracy(matrix))


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
    return _mean_defined(dice(matrix))


def _as_list(values: Tensor) -> list[float | None]:
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
        "iou": _as_list(iou),
        "dice": _as_list(dice(matrix)),
        "class_accuracy": _as_list(class_accuracy(matrix)),
        "gt_pixels": [int(count) for count in ground_truth.tolist()],
        "predicted_pixels": [int(count) for count in predicted.tolist()],
    }


# -- tables --------------------------------------------------------------------------------------

# The per-class score columns: summary key of the values, summary key of their mean, heading. The
# Boundary IoU column shows where the summary holds a BoundaryMetric's values too.
_SCORE_COLUMNS = (("iou", "mean_iou", "IoU"), ("dice", "mean_dice", "Dice"),
                  ("class_accuracy", "mean_class_accuracy", "Acc"), ("boundary_iou", "mean_boundary_iou", "BIoU"))
# The means under the plain-text table: summary key, label.
_MEAN_LINES = (("mean_iou", "mean IoU"), ("mean_dice", "mean Dice"), ("mean_class_accuracy", "mean class accuracy"),
               ("pixel_accuracy", "pixel accuracy"), ("frequency_weighted_iou", "frequency-weighted IoU"))


def format_percent(value: float | None) -> str:
    """A table cell: percent with two decimals, '-' for an undefined value."""
    return "-" if value is None else f"{100 * value:.2f}"


@dataclass(frozen=True)
class MetricsTable:
    """The cells of a per-class metrics table, for any rendering (plain text in
    :func:`format_table`, a rich table in ``pixelwise.inference.evaluation``).

    Attributes:
        scores: the headings of the score columns (percentages), between the class name and the
            pixel counts.
        rows: per class: name, scores (``-`` where undefined), ground-truth and predicted pixels.
        mean_row: ``mean``, the mean of each score column, the pixels counted and an empty cell.
    """

    scores: tuple[str, ...]
    rows: list[tuple[str, ...]]
    mean_row: tuple[str, ...]

    def header(self, unit: str = "") -> tuple[str, ...]:
        """The column headings, ``unit`` after each score heading."""
        return ("class", *(f"{heading}{unit}" for heading in self.scores), "gt px", "pred px")


def metrics_table(stats: dict, class_names: Sequence[str] | None = None) -> MetricsTable:
    """The cells of the per-class table of a summary.

    Args:
        stats: a :func:`summarize` result; with a :meth:`BoundaryMetric.summary` merged in, the
            table has a Boundary IoU column too.
        class_names: one name per class; indices when omitted.
    """
    num_classes = stats["num_classes"]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise InputError(f"{len(names)} class names for {num_classes} classes")
    columns = [column for column in _SCORE_COLUMNS if column[0] in stats]
    rows = [(name, *(format_percent(stats[key][index]) for key, _, _ in columns),
             str(stats["gt_pixels"][index]), str(stats["predicted_pixels"][index]))
            for index, name in enumerate(names)]
    mean_row = ("mean", *(format_percent(stats[mean]) for _, mean, _ in columns), str(stats["num_pixels"]), "")
    return MetricsTable(tuple(heading for _, _, heading in columns), rows, mean_row)


def format_table(matrix: Tensor, class_names: Sequence[str] | None = None) -> str:
    """Per-class IoU, Dice, accuracy and pixel counts, then the means, as fixed-width text.

    Args:
        matrix: a ``C x C`` confusion matrix.
        class_names: one name per class; indices when omitted. Absent classes show ``-``.
    """
    stats = summarize(matrix)
    table = metrics_table(stats, class_names)
    widths = [max([len(row[0]) for row in table.rows] + [24])] + [7] * len(table.scores) + [12, 12]
    lines = [_fixed_width(table.header(), widths)]
    lines.append("-" * len(lines[0]))
    lines += [_fixed_width(row, widths) for row in table.rows]
    lines.append("-" * len(lines[0]))
    lines += [_fixed_width((label, format_percent(stats[key])), widths) for key, label in _MEAN_LINES]
    lines.append(f"over {stats['present_classes']} present classes, {stats['num_pixels']} pixels "
                 "(values in %; '-' = undefined, the class is absent)")
    return "\n".join(lines)


def _fixed_width(cells: Sequence[str], widths: Sequence[int]) -> str:
    """One line of cells padded to their widths: the first left-aligned, the others right-aligned."""
    first, *others = cells
    return " ".join([f"{first:<{widths[0]}}", *(f"{cell:>{width}}" for cell, width in zip(others, widths[1:]))])


# -- boundary metrics -----------------------------------------------------------------------------

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
            _raise_label_error(target, prediction, self.num_classes, self.ignore_index)
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
        return _mean_defined(self.iou)

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
        return {"boundary_iou": _as_list(iou), "mean_boundary_iou": _mean_defined(iou),
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
