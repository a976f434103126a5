"""The geometry the models stand on: output sizes of convolutions and pools, and the tracer of
strides, offsets and receptive fields through one forward pass of any module (``trace``).

Every model build reads its encoder's feature grids from here
(:func:`~pixelwise.geometry.tracer.feature_geometry`), so this package sits below the encoders and
imports nothing of pixelwise; :mod:`pixelwise.analysis` builds its reports and tools on it.
"""
from pixelwise.geometry.axes import Axis
from pixelwise.geometry.report import Row, Trace
from pixelwise.geometry.sizes import (
    conv_input_sizes,
    conv_output_size,
    conv_transpose_input_size,
    conv_transpose_output_size,
    exact_input_sizes,
    pool_input_sizes,
    pool_output_size,
)
from pixelwise.geometry.tracer import TraceError, feature_geometry, trace

__all__ = [
    "Axis", "Row", "Trace", "TraceError", "conv_input_sizes", "conv_output_size", "conv_transpose_input_size",
    "conv_transpose_output_size", "exact_input_sizes", "feature_geometry", "pool_input_sizes", "pool_output_size",
    "trace",
]
