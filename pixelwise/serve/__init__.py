"""The HTTP segmentation service (``pixelwise serve``): see :mod:`pixelwise.serve.app`."""
from pixelwise.serve.app import ServiceError, ServiceLimits, create_app

__all__ = ["ServiceError", "ServiceLimits", "create_app"]
