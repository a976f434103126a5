"""Output sizes of convolution, transposed convolution and pooling, and the inverse question.

The forward rules are PyTorch's own, checks included (a combination PyTorch refuses raises
``ValueError`` here, naming what is too small):

    conv:       out = floor((in + 2·padding - dilation·(kernel - 1) - 1) / stride) + 1
    transposed: out = (in - 1)·stride - 2·padding + dilation·(kernel - 1) + output_padding + 1
    pooling:    the conv rule, or with ``ceil_mode`` the ceiling, less one when the last window
                would start beyond the input and its left padding

The inverse functions answer "which input sizes give this output?": a convolution floors, so
``stride`` consecutive inputs share one output size; a transposed convolution does not, so
at most one input gives it.

Every function takes ints for one axis, or tuples such as ``(h, w)`` in any argument (mixed
with ints, as ``nn.Conv2d`` takes them) and then answers per axis with a tuple:
``conv_output_size((224, 160), kernel=3, stride=2, padding=1) == (112, 80)``.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar, Union

from pixelwise.errors import InputError

IntOrTuple = Union[int, tuple[int, ...]]
_Function = TypeVar("_Function", bound=Callable[..., Any])


def _per_axis(function: _Function) -> _Function:
    """Let a one-axis size function take tuples: a tuple in any argument maps it over the axes."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        arguments = signature.bind(*args, **kwargs).arguments
        lengths = {len(value) for value in arguments.values() if isinstance(value, (tuple, list))}
        if not lengths:
            return function(**arguments)
        if len(lengths) > 1:
            raise InputError(f"tuple arguments of different lengths: {dict(arguments)}")
        (num_axes,) = lengths
        return tuple(
            function(**{name: value[axis] if isinstance(value, (tuple, list)) else value
                        for name, value in arguments.items()})
            for axis in range(num_axes)
        )

    return wrapper  # type: ignore[return-value]


def _require(minimum: int, **values: int) -> None:
    """Raise ValueError for any named value below ``minimum``."""
    for name, value in values.items():
        if value < minimum:
            raise InputError(f"{name} must be at least {minimum}, got {value}")


def _extent(kernel: int, dilation: int) -> int:
    """How many input pixels one dilated kernel window spans."""
    return dilation * (kernel - 1) + 1


@_per_axis
def conv_output_size(size: IntOrTuple, kernel: IntOrTuple, stride: IntOrTuple = 1,
                     padding: IntOrTuple = 0, dilation: IntOrTuple = 1) -> IntOrTuple:
    """Output size of a convolution, as ``nn.Conv2d`` computes it.

    Example: ``conv_output_size(224, kernel=7, stride=2, padding=3) == 112``.

    Raises:
        ValueError: if the padded input is smaller than the dilated kernel (no window fits).
    """
    _require(1, size=size, kernel=kernel, stride=stride, dilation=dilation)
    _require(0, padding=padding)
    padded, extent = size + 2 * padding, _extent(kernel, dilation)
    if padded < extent:
        raise InputError(f"input size {size} is too small: padded by {padding} on each side it is {padded}, "
                         f"smaller than the kernel's extent {extent} (kernel {kernel}, dilation {dilation})")
    return (padded - extent) // stride + 1


@_per_axis
def conv_transpose_output_size(size: IntOrTuple, kernel: IntOrTuple, stride: IntOrTuple = 1,
                               padding: IntOrTuple = 0, output_padding: IntOrTuple = 0,
                               dilation: IntOrTuple = 1) -> IntOrTuple:
    """Output size of a transposed convolution, as ``nn.ConvTranspose2d`` computes it.

    Example: ``conv_transpose_output_size(16, kernel=3, stride=2, padding=1, output_padding=1) == 32``.

    Raises:
        ValueError: if ``output_padding`` is not smaller than stride or dilation, or if the
            padding crops the whole output away.
    """
    _check_transpose_arguments(kernel, stride, padding, output_padding, dilation)
    _require(1, size=size)
    uncropped = (size - 1) * stride + _extent(kernel, dilation) + output_padding
    if uncropped - 2 * padding < 1:
        raise InputError(f"padding {padding} is too large: it crops 2·{padding} pixels from an output of "
                         f"{uncropped} (input size {size} is too small for it)")
    return uncropped - 2 * padding


def _check_transpose_arguments(kernel: int, stride: int, padding: int, output_padding: int,
                               dilation: int) -> None:
    """PyTorch's checks on a transposed convolution's hyper-parameters."""
    _require(1, kernel=kernel, stride=stride, dilation=dilation)
    _require(0, padding=padding, output_padding=output_padding)
    # output_padding adds rows that no stride step reaches; PyTorch allows fewer than one step.
    if output_padding >= max(stride, dilation):
        raise InputError(f"output_padding {output_padding} must be smaller than stride ({stride}) "
                         f"or dilation ({dilation})")


@_per_axis
def pool_output_size(size: IntOrTuple, kernel: IntOrTuple, stride: IntOrTuple | None = None,
                     padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     ceil_mode: bool = False) -> IntOrTuple:
    """Output size of max or average pooling, as ``nn.MaxPool2d`` / ``nn.AvgPool2d`` compute it.

    Example: ``pool_output_size(5, kernel=2, stride=2, ceil_mode=True) == 3``.

    Args:
        size: input size.
        kernel: window size.
        stride: window step; ``None`` means ``kernel``, as in PyTorch.
        padding: implicit padding on each side; PyTorch allows at most ``kernel // 2``.
        dilation: spacing of the window's taps (average pooling has none: leave 1).
        ceil_mode: round up, keeping a last partial window if it starts inside the input or
            its left padding.

    Raises:
        ValueError: if the padding exceeds half the kernel or no window fits.
    """
    stride = kernel if stride is None else stride
    _check_pool_arguments(kernel, stride, padding, dilation)
    _require(1, size=size)
    span = size + 2 * padding - _extent(kernel, dilation)
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window would start in the right padding: PyTorch drops it
    if out < 1:
        raise InputError(f"input size {size} is too small: padded by {padding} on each side it is "
                         f"{size + 2 * padding}, smaller than the window's extent {_extent(kernel, dilation)}")
    return out


def _check_pool_arguments(kernel: int, stride: int, padding: int, dilation: int) -> None:
    """PyTorch's checks on a pooling layer's hyper-parameters."""
    _require(1, kernel=kernel, stride=stride, dilation=dilation)
    _require(0, padding=padding)
    if padding > kernel // 2:
        raise InputError(f"pooling padding {padding} is too large for kernel {kernel}: "
                         f"PyTorch allows at most kernel // 2 = {kernel // 2}")


@_per_axis
def conv_input_sizes(output_size: IntOrTuple, kernel: IntOrTuple, stride: IntOrTuple = 1,
                     padding: IntOrTuple = 0, dilation: IntOrTuple = 1) -> range | tuple[range, ...]:
    """Every input size a convolution maps to ``output_size``: ``stride`` consecutive sizes,
    fewer where they would go below 1 (empty when the padding alone already gives more).

    Example: ``conv_input_sizes(112, kernel=7, stride=2, padding=3) == range(223, 225)``.
    """
    _require(1, output_size=output_size, kernel=kernel, stride=stride, dilation=dilation)
    _require(0, padding=padding)
    # out - 1 = floor(span / stride) holds for span in [(out - 1)·stride, out·stride).
    smallest = (output_size - 1) * stride + _extent(kernel, dilation) - 2 * padding
    return range(max(1, smallest), max(1, smallest + stride))


@_per_axis
def pool_input_sizes(output_size: IntOrTuple, kernel: IntOrTuple, stride: IntOrTuple | None = None,
                     padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     ceil_mode: bool = False) -> range | tuple[range, ...]:
    """Every input size a pooling layer maps to ``output_size`` (consecutive sizes, maybe none).

    Example: ``pool_input_sizes(3, kernel=2, stride=2, ceil_mode=True) == range(5, 7)``.
    """
    stride = kernel if stride is None else stride
    _check_pool_arguments(kernel, stride, padding, dilation)
    floor_sizes = conv_input_sizes(output_size, kernel, stride, padding, dilation)
    if not ceil_mode:
        return floor_sizes
    # Ceil mode yields the floor size or one more, so its inputs for ``out`` lie among the floor
    # inputs for ``out - 1`` and ``out``: a window of 2·stride sizes, searched exhaustively.
    candidates = range(max(1, floor_sizes.stop - 2 * stride), floor_sizes.stop)
    matches = [size for size in candidates
               if _pool_output_or_none(size, kernel, stride, padding, dilation) == output_size]
    return range(matches[0], matches[-1] + 1) if matches else range(0)


def _pool_output_or_none(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int | None:
    """Ceil-mode pooling output size, or None where no window fits (arguments already checked)."""
    try:
        return pool_output_size(size, kernel, stride, padding, dilation, ceil_mode=True)
    except ValueError:
        return None


def _conv_transpose_input_size_1d(output_size: int, kernel: int, stride: int = 1, padding: int = 0,
                                  output_padding: int = 0, dilation: int = 1) -> int | None:
    """One axis of :func:`conv_transpose_input_size`."""
    _check_transpose_arguments(kernel, stride, padding, output_padding, dilation)
    _require(1, output_size=output_size)
    steps, remainder = divmod(output_size + 2 * padding - _extent(kernel, dilation) - output_padding, stride)
    return steps + 1 if remainder == 0 and steps >= 0 else None


def conv_transpose_input_size(output_size: IntOrTuple, kernel: IntOrTuple, stride: IntOrTuple = 1,
                              padding: IntOrTuple = 0, output_padding: IntOrTuple = 0,
                              dilation: IntOrTuple = 1) -> IntOrTuple | None:
    """The one input size a transposed convolution maps to ``output_size``, or None if none does
    with this ``output_padding`` (another ``output_padding`` may reach it).

    Example: ``conv_transpose_input_size(32, kernel=3, stride=2, padding=1, output_padding=1) == 16``.

    With tuples, None unless every axis has its input size.
    """
    sizes = _per_axis(_conv_transpose_input_size_1d)(output_size, kernel, stride, padding,
                                                      output_padding, dilation)
    if isinstance(sizes, tuple) and None in sizes:
        return None
    return sizes


@_per_axis
def exact_input_sizes(output_size: IntOrTuple, kernel: IntOrTuple, stride: IntOrTuple = 1,
                      padding: IntOrTuple = 0, dilation: IntOrTuple = 1) -> IntOrTuple:
    """The input size a convolution maps to ``output_size`` with nothing dropped by the floor:
    the last window ends exactly on the last (padded) pixel. It is the smallest of
    :func:`conv_input_sizes`; the larger ones differ only by pixels no window reads.

    Example: ``exact_input_sizes(7, kernel=3, stride=2, padding=1) == 13`` (13 → 7, 14 → 7).

    Raises:
        ValueError: if that size would be below 1 (the padding alone gives more outputs).
    """
    _require(1, output_size=output_size, kernel=kernel, stride=stride, dilation=dilation)
    _require(0, padding=padding)
    size = (output_size - 1) * stride + _extent(kernel, dilation) - 2 * padding
    if size < 1:
        raise InputError(f"no input size gives {output_size} exactly: padding {padding} alone gives more "
                         f"(the exact size would be {size})")
    return size
