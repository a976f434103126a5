"""The base of every streaming metric here (:class:`SummedCounts`: int64 counts that add up
over batches, processes and runs) and the label checks they share; the rules are in
:mod:`pixelwise.metrics`.
"""
from __future__ import annotations

from typing import Any, Self

import torch
import torch.distributed as dist
from torch import Tensor

from pixelwise.errors import InputError


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


def raise_label_error(target: Tensor, prediction: Tensor, num_classes: int, ignore_index: int | None) -> None:
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
