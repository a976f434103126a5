"""Which input sizes a model takes as they are: nothing padded, nothing floored away."""
from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from pixelwise.errors import InputError
from pixelwise.geometry.propagation import propagates
from pixelwise.geometry.report import Trace
from pixelwise.geometry.tracer import trace
from pixelwise.models.base import SegmentationModel, size_listing


@dataclass(frozen=True)
class ValidSizes:
    """Input sizes a model takes as they are: nothing padded, nothing floored away.

    Attributes:
        heights: valid heights in the range asked about.
        widths: valid widths (the same as ``heights`` for every model with square kernels).
        period: the sizes repeat every ``period`` pixels from ``offset`` on (None when they do not).
        offset: the smallest valid size of that progression.
        explanation: the rule, in a sentence.
    """

    heights: tuple[int, ...]
    widths: tuple[int, ...]
    period: int | None
    offset: int | None
    explanation: str

    @property
    def sizes(self) -> tuple[int, ...]:
        """The valid sizes, where heights and widths agree."""
        if self.heights != self.widths:
            raise InputError("valid heights and widths differ for this model; read .heights and .widths")
        return self.heights

    def __contains__(self, size: object) -> bool:
        return size in self.heights and size in self.widths


def valid_input_sizes(model: nn.Module, max_size: int = 1024, min_size: int = 1, *, traced: Trace | None = None,
                      probe_size: int | tuple[int, int] = 224) -> ValidSizes:
    """Which input sizes need no padding?

    Pixelwise models answer from their design
    (:meth:`~pixelwise.models.base.SegmentationModel.designed_sizes`): models that pad to a
    multiple of ``size_divisor`` need none at its multiples; the paper FCN takes every size (its 100-pixel padding, ceil-mode pooling and crops);
    the paper U-Net always mirrors its margin outward, and needs nothing more at the sizes its
    valid network maps onto. For any other module, sizes are re-propagated through the traced
    operations (no forward pass per size): a size is valid when every strided window tiles its
    input exactly (no remainder left to the floor), every merge gets equal sizes, and any
    flattened map keeps its traced size.

    Args:
        model: the model.
        max_size: largest size considered.
        min_size: smallest size considered.
        traced: a trace of ``model`` to reuse (generic modules only).
        probe_size: the size to trace at when ``traced`` is not given.
    """
    if max_size < min_size:
        raise InputError(f"max_size {max_size} is below min_size {min_size}")
    known = _designed_sizes(model, min_size, max_size)
    if known is not None:
        return known
    traced = traced or trace(model, probe_size)
    heights, widths = (tuple(n for n in range(min_size, max_size + 1) if propagates(traced.graph, axis, n))
                       for axis in range(2))
    return _described(type(model).__name__, heights, widths, min_size, max_size)


def _designed_sizes(model: nn.Module, min_size: int, max_size: int) -> ValidSizes | None:
    """The sizes a pixelwise model declares by its design, or None for a generic analysis."""
    if not isinstance(model, SegmentationModel):
        return None
    designed = model.designed_sizes(min_size, max_size)
    if designed is None:
        return None
    if designed.period is None:
        return _progression(designed.sizes, designed.sizes, designed.explanation)
    offset = designed.sizes[0] if designed.sizes else None
    return ValidSizes(designed.sizes, designed.sizes, designed.period, offset, designed.explanation)


def _progression(heights: tuple[int, ...], widths: tuple[int, ...], explanation: str) -> ValidSizes:
    """Attach the period and offset when the heights are evenly spaced."""
    gaps = {b - a for a, b in zip(heights, heights[1:])}
    period = gaps.pop() if len(gaps) == 1 else None
    return ValidSizes(heights, widths, period, heights[0] if period else None, explanation)


def _described(name: str, heights: tuple[int, ...], widths: tuple[int, ...], low: int, high: int) -> ValidSizes:
    result = _progression(heights, widths, "")
    if not heights:
        text = f"No size from {low} to {high} passes {name}'s strided layers exactly"
    elif result.period:
        rule = (f"multiples of {result.period}" if result.offset % result.period == 0
                else f"sizes {result.offset} + {result.period}·k")
        text = (f"{name} keeps every pixel (each strided window tiles its input exactly) at {rule}: "
                f"{size_listing(heights)}")
    else:
        text = (f"{name} keeps every pixel (each strided window tiles its input exactly) at sizes "
                f"{size_listing(heights)}")
    if widths != heights:
        text += f"; widths: {size_listing(widths)}"
    return replace(result, explanation=text + ".")
