"""The HTTP segmentation service (``pixelwise serve``): see :mod:`pixelwise.serve.app`."""
from pixelwise.serve.app import ServiceLimits, app_for_file, create_app
from pixelwise.serve.http import ServiceError

__all__ = ["ServiceError", "ServiceLimits", "app_for_file", "create_app"]
