"""Understanding tools: output sizes, strides and receptive fields (``trace``, from
:mod:`pixelwise.geometry`), the input sizes a model takes without padding, the overlap and
checkerboard problem of upsamplers, and turning a classifier fully convolutional."""
from pixelwise.analysis.convolutionalize import (
    ConvolutionalizeReport,
    FullyConvolutional,
    Replacement,
    convolutionalize,
    convolutionalize_report,
    torchvision_classifier,
)
from pixelwise.analysis.overlap import (
    OverlapMap,
    ScoreRow,
    checkerboard_score,
    compare_upsamplers,
    overlap_counts_1d,
    overlap_map,
)
from pixelwise.geometry import (
    Axis,
    Row,
    Trace,
    TraceError,
    conv_input_sizes,
    conv_output_size,
    conv_transpose_input_size,
    conv_transpose_output_size,
    exact_input_sizes,
    feature_geometry,
    pool_input_sizes,
    pool_output_size,
    trace,
)
from pixelwise.analysis.valid_sizes import ValidSizes, valid_input_sizes
from pixelwise.models.build import build_model

__all__ = [
    "Axis", "ConvolutionalizeReport", "FullyConvolutional", "OverlapMap", "Replacement", "Row", "ScoreRow",
    "Trace", "TraceError", "ValidSizes", "build_model", "checkerboard_score", "compare_upsamplers",
    "conv_input_sizes", "conv_output_size", "conv_transpose_input_size", "conv_transpose_output_size",
    "convolutionalize", "convolutionalize_report", "exact_input_sizes", "feature_geometry", "overlap_counts_1d",
    "overlap_map",
    "pool_input_sizes", "pool_output_size", "torchvision_classifier", "trace", "valid_input_sizes",
]
