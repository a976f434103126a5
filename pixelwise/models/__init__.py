"""Architectures, one file each, registered by name. Importing this package registers them all."""
from pixelwise.models import deeplab, fcn, hypercolumn, torchvision_compat, unet  # noqa: F401  (registration)
from pixelwise.models.base import SegmentationModel
from pixelwise.models.registry import (
    ModelInfo,
    create_model,
    list_models,
    model_info,
    register_model,
    saved_options,
    spec_options,
)

__all__ = ["ModelInfo", "SegmentationModel", "create_model", "list_models", "model_info", "register_model",
           "saved_options", "spec_options"]
