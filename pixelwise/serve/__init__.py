"""The HTTP segmentation service (``pixelwise serve``): see :mod:`pixelwise.serve.app`."""
from pixelwise.serve.app import ServiceError, ServiceLimits, app_for_file, create_app

__all__ = ["ServiceError", "ServiceLimits", "app_for_file", "create_app"]
