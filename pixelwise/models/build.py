"""A model from a name given on the command line: a registered pixelwise model or a torchvision classifier."""
from __future__ import annotations

from typing import Any

from torch import nn

from pixelwise.errors import InputError
from pixelwise.models.registry import create_model


def build_model(spec: str, num_classes: int | None = None, **options: Any) -> nn.Module:
    """A model to trace: a registered pixelwise name, or ``torchvision:NAME`` (built without weights).

    Args:
        spec: ``"fcn8s"``, ``"unet"``, ... or ``"torchvision:vgg16"``.
        num_classes: classes; ``None`` keeps the builder's default (21, or ImageNet's 1000).
        **options: builder arguments (``paper=True``, ``encoder="resnet18"``).
    """
    if spec.startswith("torchvision:"):
        from torchvision import models as tvm

        name = spec.removeprefix("torchvision:")
        available = tvm.list_models(module=tvm)  # image classifiers only
        if name not in available:
            raise InputError(f"unknown torchvision classifier {name!r}; choose one of {', '.join(available)}")
        if options.pop("weights", None) is not None:
            raise InputError("shapes need no weights: torchvision models are built with weights=None")
        if num_classes is not None:
            options["num_classes"] = num_classes
        return tvm.get_model(name, weights=None, **options)

    return create_model(spec, **({"num_classes": num_classes} if num_classes is not None else {}), **options)
