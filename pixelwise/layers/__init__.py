"""Small reusable modules: conv-norm-act, separable conv, ASPP, upsamplers, padding, resizing,
aligned resampling between feature-map grids."""
from pixelwise.layers.align import (
    IMAGE_GRID,
    Grid,
    aligned_resize,
    aligned_upsample,
    half_pixel_shift,
    shifted_upsample,
    upsampling_step,
)
from pixelwise.layers.aspp import ASPP, ASPPPooling, aspp_rates
from pixelwise.layers.conv import (
    ConvNormAct,
    InstanceBatchNorm2d,
    LayerSpec,
    SeparableConv2d,
    make_act,
    make_conv_block,
    make_norm,
)
from pixelwise.layers.padding import mirror_pad, pad_to_multiple
from pixelwise.layers.resize import resize_bilinear, scaled_size
from pixelwise.layers.upsample import (
    UPSAMPLE_KINDS,
    PixelShuffleUpsample,
    ResizeConv,
    ShiftedResize,
    TransposedUpsample,
    WideTransposedUpsample,
    bilinear_icnr_,
    bilinear_kernel,
    icnr_,
    make_upsampler,
    upsampler_between,
)

__all__ = [
    "IMAGE_GRID", "Grid", "aligned_resize", "aligned_upsample", "bilinear_icnr_", "half_pixel_shift", "shifted_upsample",
    "upsampling_step", "ShiftedResize", "upsampler_between",
    "ASPP", "ASPPPooling", "aspp_rates", "ConvNormAct", "InstanceBatchNorm2d", "LayerSpec", "SeparableConv2d",
    "make_act", "make_conv_block", "make_norm", "mirror_pad", "pad_to_multiple", "resize_bilinear", "scaled_size",
    "UPSAMPLE_KINDS", "PixelShuffleUpsample", "ResizeConv", "TransposedUpsample", "WideTransposedUpsample", "bilinear_kernel", "icnr_",
    "make_upsampler",
]
