"""The model registry: ``create_model(name, ...)`` and ``list_models()``.

Builders are typed functions registered by :func:`register_model`; the function name is the
model name and a duplicate is an error, so every name maps to exactly one place in the code.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Callable

from pixelwise.encoders.weights import is_weights_file, load_file, load_into
from pixelwise.models.base import SegmentationModel
from pixelwise.naming import lookup

Builder = Callable[..., SegmentationModel]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of one model."""

    name: str
    family: str
    default_encoder: str | None
    description: str
    builder: Builder

    @property
    def parameters(self) -> list[str]:
        """Names of the builder's keyword arguments."""
        return list(inspect.signature(self.builder).parameters)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(family: str, default_encoder: str | None) -> Callable[[Builder], Builder]:
    """Register a builder under its function name.

    Args:
        family: architecture family shown in listings ("FCN", "U-Net", ...).
        default_encoder: the encoder used when none is given (``None`` for built-in trunks).
    """

    def decorator(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].builder.__module__})")
        description = (inspect.getdoc(builder) or "").split("\n")[0]
        _REGISTRY[name] = ModelInfo(name, family, default_encoder, description, builder)
        return builder

    return decorator


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; an unknown name raises with the closest matches."""
    return lookup(_REGISTRY, name, "model")


def create_model(
    name: str,
    num_classes: int = 21,
    encoder: str | None = None,
    upsample: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    encoder_weights: str | os.PathLike[str] | None = None,
    input_scale: float = 1.0,
    **kwargs,
) -> SegmentationModel:
    """Build a registered model.

    Args:
        name: one of :func:`list_models`.
        num_classes: number of classes the model predicts.
        encoder: encoder name (see ``pixelwise.list_encoders()``); ``None`` keeps the model's default.
        upsample: ``"transposed"``, ``"nearest"``, ``"bilinear"`` or ``"pixelshuffle"``;
            ``None`` keeps the model's default.
        weights: ``None``; ``"imagenet"`` (shorthand for ``encoder_weights="imagenet"``); or a
            local file holding the whole model's state dict (or a checkpoint with a ``"model"`` key).
        encoder_weights: ``None``, ``"imagenet"`` or a local file for the encoder alone.
        input_scale: run the network on the input resized by this factor and resize its logits
            back (0.5: about a quarter of the compute, logits still at the input's size).
        **kwargs: builder-specific options; see ``model_info(name).parameters``.
    """
    info = model_info(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if not 0 < input_scale <= 4:
        raise ValueError(f"input_scale must be in (0, 4], got {input_scale}")
    if weights == "imagenet":
        weights, encoder_weights = None, "imagenet"
    # None for these three means "the builder's default"; any other option passes as given
    # (norm=None, for one, is a real choice: no normalisation).
    defaults = {"encoder": encoder, "upsample": upsample, "encoder_weights": encoder_weights}
    options = {**{k: v for k, v in defaults.items() if v is not None}, **kwargs}
    unknown = sorted(set(options) - set(info.parameters))
    if unknown:
        raise ValueError(f"model {name!r} does not take {unknown}; it takes {info.parameters}")
    model = info.builder(num_classes=num_classes, **options)
    model.input_scale = float(input_scale)
    if weights is not None:
        if not is_weights_file(weights):
            raise ValueError(f"weights must be None, 'imagenet' or a file path, got {weights!r}")
        load_into(model, load_file(weights), repr(os.fspath(weights)))
    return model
