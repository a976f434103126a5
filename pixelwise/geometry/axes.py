"""The geometry of one axis of a feature map, and numbers written for people and for JSON.

Geometry of one axis, for output pixel 0 (input pixel centres are at integer coordinates):

- **stride** (the "jump"): input pixels between neighbouring output pixels;
- **rf**: receptive-field size, in input pixels;
- **center**: input coordinate of the receptive field's centre (fractional, or negative).

A convolution or pooling window of extent ``e = dilation·(kernel - 1) + 1``, stride ``t`` and
left padding ``p`` maps ``(j, r, c)`` to ``(j·t, r + (e - 1)·j, c + ((e - 1)/2 - p)·j)``; a
transposed convolution places output ``y`` at input ``(y + p - (e - 1)/2) / t``; resizing by
``s`` with half-pixel centres (``align_corners=False``, pixel shuffle) places output ``y`` at
``(y + 1/2)/s - 1/2``; a crop at ``a`` adds ``a·j`` and a padding of ``p`` subtracts ``p·j``.
Two feature maps merged (added, concatenated) are *aligned* when their strides and centres
agree: then every output pixel combines features of the same input location.

Reference values: Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural
Networks", Distill 2019 (VGG16 pool5: 212, AlexNet pool5: 195).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence, TypeVar


# --- geometry of one axis ----------------------------------------------------------------------

HALF = Fraction(1, 2)


@dataclass(frozen=True)
class Axis:
    """How one axis of a feature map sits on the input, seen from its pixel 0.

    Attributes:
        stride: input pixels between neighbouring pixels of the map (below 1 once upsampled).
        rf: receptive-field size in input pixels (the largest over the map's pixels).
        center: input coordinate of pixel 0's receptive-field centre.
    """

    stride: Fraction = Fraction(1)
    rf: Fraction = Fraction(1)
    center: Fraction = Fraction(0)

    def window(self, extent: int, stride: int, padding: int | Fraction) -> Axis:
        """A sliding window (convolution, pooling) ``extent`` pixels wide."""
        return Axis(self.stride * stride, self.rf + (extent - 1) * self.stride,
                    self.center + (Fraction(extent - 1, 2) - padding) * self.stride)

    def transposed(self, extent: int, stride: int, padding: int) -> Axis:
        """A transposed convolution: output ``y`` gathers the inputs ``x`` with
        ``0 ≤ y + padding - x·stride < extent``, so it sits at ``(y + padding - (extent - 1)/2) / stride``
        and at most ``ceil(extent / stride)`` inputs reach it."""
        reach = -(-extent // stride) - 1
        return Axis(self.stride / stride, self.rf + reach * self.stride,
                    self.center + (padding - Fraction(extent - 1, 2)) / stride * self.stride)

    def resample(self, scale: Fraction, reach: int = 0) -> Axis:
        """Half-pixel-centre resampling by ``scale``: output ``y`` reads input ``(y + 1/2)/scale - 1/2``.

        For nearest neighbour, which reads ``floor(y / scale)``, that is the best straight-line fit
        over a period of outputs. ``reach``: extra input pixels read (1 bilinear, 3 bicubic).
        """
        return Axis(self.stride / scale, self.rf + reach * self.stride,
                    self.center + (HALF / scale - HALF) * self.stride)

    def corner_resample(self, ratio: Fraction, reach: int = 0) -> Axis:
        """``align_corners=True``: output ``y`` reads input ``y·ratio``; the corners stay put."""
        return Axis(self.stride * ratio, self.rf + reach * self.stride, self.center)

    def shift(self, pixels: int) -> Axis:
        """Start ``pixels`` later on this axis (a crop; negative for padding)."""
        return replace(self, center=self.center + pixels * self.stride)

    def subsample(self, step: int) -> Axis:
        """Keep every ``step``-th pixel."""
        return replace(self, stride=self.stride * step)

    def adaptive(self, size: int, out: int) -> Axis:
        """Adaptive pooling of ``size`` pixels into ``out`` bins (PyTorch's floor/ceil bin edges)."""
        if size % out == 0:
            return self.window(size // out, size // out, 0)
        widths = [-(-(i + 1) * size // out) - i * size // out for i in range(out)]
        return Axis(self.stride * Fraction(size, out), self.rf + (max(widths) - 1) * self.stride,
                    self.center + Fraction(widths[0] - 1, 2) * self.stride)

    def interval(self) -> tuple[Fraction, Fraction]:
        """First and last input pixel centre of pixel 0's receptive field."""
        half = (self.rf - 1) / 2
        return self.center - half, self.center + half


def hull(axes: Sequence[Axis], grid: Axis) -> Axis:
    """``grid``'s stride and centre with a receptive field covering every one of ``axes``."""
    low = min(axis.interval()[0] for axis in axes)
    high = max(axis.interval()[1] for axis in axes)
    return replace(grid, rf=high - low + 1)


Axes = tuple[Axis, Axis]
INPUT_AXES: Axes = (Axis(), Axis())


# --- numbers -----------------------------------------------------------------------------------


def _number(value: Fraction) -> int | float:
    """A JSON-friendly number: an int when whole."""
    return int(value) if value.denominator == 1 else float(value)


def _text(value: Fraction) -> str:
    """Up to three decimals, trailing zeros dropped (``15.5``, ``-11.5``, ``0.333``)."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.3f}".rstrip("0").rstrip(".")


def pair_text(values: tuple[Fraction, Fraction], joiner: str = ",") -> str:
    return _text(values[0]) if values[0] == values[1] else joiner.join(map(_text, values))


def jsonable(value: Any) -> Any:
    """Details with Fractions and tuples, as JSON values."""
    if isinstance(value, Fraction):
        return _number(value)
    if isinstance(value, Mapping):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def human_count(count: int) -> str:
    """``1234567`` → ``1.23M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return str(count)


# --- height and width ----------------------------------------------------------------------------


T = TypeVar("T")


def per_axis(value: Callable[[int], T]) -> tuple[T, T]:
    """``(value(0), value(1))``: height, then width."""
    return value(0), value(1)


def as_pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])
    return value, value
