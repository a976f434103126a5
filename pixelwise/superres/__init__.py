"""The upsamplers put to the test as super-resolution networks.

- :mod:`~pixelwise.superres.images`: luminance, degradation and fixed interpolation rules.
- :mod:`~pixelwise.superres.quality`: PSNR, SSIM and the periodic (checkerboard) part of an error.
- :mod:`~pixelwise.superres.models`: ESPCN and FSRCNN with any :func:`~pixelwise.layers.make_upsampler`
  kind as their last layer (FSRCNN's own: a 9×9 transposed convolution), and SRCNN.
- :mod:`~pixelwise.superres.train`: recipes, training with a time budget, checkpoints, resume.
- :mod:`~pixelwise.superres.compare`: every method on the same images, one table and a figure;
  upscaling images with a trained network.
"""
from pixelwise.superres.images import FIXED_METHODS, downscale, luminance, upscale_fixed
from pixelwise.superres.models import SR_MODELS, create_sr_model
from pixelwise.superres.quality import PeriodicError, psnr, ssim

__all__ = ["FIXED_METHODS", "SR_MODELS", "PeriodicError", "create_sr_model", "downscale", "luminance", "psnr",
           "ssim", "upscale_fixed"]
