"""Output-size arithmetic, checked against the shapes PyTorch's own layers produce."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pixelwise.geometry.sizes import (
    conv_input_sizes,
    conv_output_size,
    conv_transpose_input_size,
    conv_transpose_output_size,
    exact_input_sizes,
    pool_input_sizes,
    pool_output_size,
)

SIZES = st.integers(1, 64)
KERNELS = st.integers(1, 7)
STRIDES = st.integers(1, 4)
PADDINGS = st.integers(0, 3)
DILATIONS = st.integers(1, 3)
PROPERTY = settings(max_examples=150, deadline=None)


def torch_shape(make_layer, height: int, width: int) -> tuple[int, int] | None:
    """The (H, W) a layer outputs for a 1-channel input, or None where PyTorch refuses.

    An empty output counts as refused: for a transposed convolution computing size 0, some of
    PyTorch's CPU kernels raise "Output size is too small" while others return an empty tensor.
    """
    try:
        with torch.no_grad():
            shape = tuple(make_layer()(torch.zeros(1, 1, height, width)).shape[-2:])
    except (RuntimeError, ValueError):
        return None
    return shape if min(shape) >= 1 else None


def ours_or_none(function, *args, **kwargs):
    """Our function's answer, or None where it raises ValueError."""
    try:
        return function(*args, **kwargs)
    except ValueError:
        return None


@PROPERTY
@given(SIZES, SIZES, KERNELS, STRIDES, PADDINGS, DILATIONS)
def test_conv_output_size_matches_conv2d(height, width, kernel, stride, padding, dilation):
    expected = torch_shape(lambda: nn.Conv2d(1, 1, kernel, stride, padding, dilation), height, width)
    assert ours_or_none(conv_output_size, (height, width), kernel, stride, padding, dilation) == expected


@PROPERTY
@given(SIZES, SIZES, KERNELS, STRIDES, PADDINGS, st.integers(0, 3), DILATIONS)
def test_conv_transpose_output_size_matches_conv_transpose2d(height, width, kernel, stride, padding,
                                                              output_padding, dilation):
    expected = torch_shape(lambda: nn.ConvTranspose2d(1, 1, kernel, stride, padding, output_padding,
                                                      dilation=dilation), height, width)
    ours = ours_or_none(conv_transpose_output_size, (height, width), kernel, stride, padding,
                        output_padding, dilation)
    assert ours == expected


@PROPERTY
@given(SIZES, SIZES, KERNELS, STRIDES, PADDINGS, DILATIONS, st.booleans())
def test_pool_output_size_matches_max_pool2d(height, width, kernel, stride, padding, dilation, ceil_mode):
    expected = torch_shape(lambda: nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode),
                           height, width)
    ours = ours_or_none(pool_output_size, (height, width), kernel, stride, padding, dilation, ceil_mode)
    assert ours == expected


@PROPERTY
@given(SIZES, SIZES, KERNELS, STRIDES, PADDINGS, st.booleans())
def test_pool_output_size_matches_avg_pool2d(height, width, kernel, stride, padding, ceil_mode):
    expected = torch_shape(lambda: nn.AvgPool2d(kernel, stride, padding, ceil_mode=ceil_mode), height, width)
    assert ours_or_none(pool_output_size, (height, width), kernel, stride, padding, ceil_mode=ceil_mode) == expected


def conv1d_output(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int | None:
    """The output length of a real convolution (via Conv2d with a 1-pixel-wide input), or None."""
    shape = torch_shape(lambda: nn.Conv2d(1, 1, (kernel, 1), (stride, 1), (padding, 0), (dilation, 1)), size, 1)
    return None if shape is None else shape[0]


def maxpool1d_output(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int | None:
    """The output length of a real max pooling, or None."""
    shape = torch_shape(lambda: nn.MaxPool2d((kernel, 1), (stride, 1), (padding, 0), (dilation, 1),
                                             ceil_mode=ceil_mode), size, 1)
    return None if shape is None else shape[0]


def assert_exact_preimage(sizes: range, output_size: int, real_output) -> None:
    """Every size in ``sizes`` gives ``output_size``, the neighbours just outside do not."""
    for size in sizes:
        assert real_output(size) == output_size
    below = (sizes.start if sizes else 1) - 1
    above = sizes.stop if sizes else 1
    if below >= 1:
        assert real_output(below) != output_size
    assert real_output(above) != output_size


@PROPERTY
@given(st.integers(1, 32), KERNELS, STRIDES, PADDINGS, DILATIONS)
def test_conv_input_sizes_are_exactly_the_preimage(output_size, kernel, stride, padding, dilation):
    sizes = conv_input_sizes(output_size, kernel, stride, padding, dilation)
    assert len(sizes) == stride or sizes.start == 1 or not sizes  # only clipping at 1 shortens it
    assert_exact_preimage(sizes, output_size, lambda n: conv1d_output(n, kernel, stride, padding, dilation))


@PROPERTY
@given(st.integers(1, 32), KERNELS, STRIDES, PADDINGS, DILATIONS, st.booleans())
def test_pool_input_sizes_are_exactly_the_preimage(output_size, kernel, stride, padding, dilation, ceil_mode):
    padding = min(padding, kernel // 2)  # PyTorch's own limit on pooling padding
    sizes = pool_input_sizes(output_size, kernel, stride, padding, dilation, ceil_mode)
    assert_exact_preimage(sizes, output_size,
                          lambda n: maxpool1d_output(n, kernel, stride, padding, dilation, ceil_mode))


@PROPERTY
@given(SIZES, KERNELS, STRIDES, PADDINGS, st.integers(0, 3), DILATIONS)
def test_conv_transpose_input_size_inverts_the_real_layer(size, kernel, stride, padding, output_padding, dilation):
    shape = torch_shape(lambda: nn.ConvTranspose2d(1, 1, (kernel, 1), (stride, 1), (padding, 0),
                                                   (output_padding, 0), dilation=(dilation, 1)), size, 1)
    if shape is None:
        return  # covered by the forward test: there is no output to invert
    output_size = shape[0]
    assert conv_transpose_input_size(output_size, kernel, stride, padding, output_padding, dilation) == size
    # The next output size is reached by no input (stride > 1) or by the next input (stride 1).
    next_input = conv_transpose_input_size(output_size + 1, kernel, stride, padding, output_padding, dilation)
    assert next_input == (size + 1 if stride == 1 else None)


@PROPERTY
@given(st.integers(1, 32), KERNELS, STRIDES, PADDINGS, DILATIONS)
def test_exact_input_size_drops_nothing(output_size, kernel, stride, padding, dilation):
    sizes = conv_input_sizes(output_size, kernel, stride, padding, dilation)
    size = ours_or_none(exact_input_sizes, output_size, kernel, stride, padding, dilation)
    if size is None:
        assert not sizes or sizes.start == 1  # clipped: the unclipped smallest size is below 1
        return
    assert size == sizes.start
    assert conv1d_output(size, kernel, stride, padding, dilation) == output_size
    assert (size + 2 * padding - dilation * (kernel - 1) - 1) % stride == 0  # the floor dropped nothing


def test_documented_examples():
    assert conv_output_size(224, kernel=7, stride=2, padding=3) == 112
    assert conv_output_size((224, 160), kernel=3, stride=2, padding=1) == (112, 80)
    assert conv_output_size((33, 17), kernel=(3, 1), padding=(1, 0)) == (33, 17)
    assert conv_transpose_output_size(16, kernel=3, stride=2, padding=1, output_padding=1) == 32
    assert pool_output_size(5, kernel=2, stride=2, ceil_mode=True) == 3
    assert conv_input_sizes(112, kernel=7, stride=2, padding=3) == range(223, 225)
    assert pool_input_sizes(3, kernel=2, stride=2, ceil_mode=True) == range(5, 7)
    assert conv_transpose_input_size(32, kernel=3, stride=2, padding=1, output_padding=1) == 16
    assert conv_transpose_input_size(31, kernel=3, stride=2, padding=1, output_padding=1) is None
    assert conv_transpose_input_size((32, 31), kernel=3, stride=2, padding=1, output_padding=1) is None
    assert exact_input_sizes(7, kernel=3, stride=2, padding=1) == 13


def test_errors_name_what_is_too_small():
    with pytest.raises(ValueError, match="input size 2 is too small"):
        conv_output_size(2, kernel=5)
    with pytest.raises(ValueError, match="output_padding 2 must be smaller"):
        conv_transpose_output_size(4, kernel=3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="padding 2 is too large"):
        pool_output_size(8, kernel=3, padding=2)
    with pytest.raises(ValueError, match="stride must be at least 1"):
        conv_output_size(8, kernel=3, stride=0)
    with pytest.raises(ValueError, match="different lengths"):
        conv_output_size((8, 8), kernel=(3, 3, 3))
