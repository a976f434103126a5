"""The model registry: ``create_model(name, ...)`` and ``list_models()``.

Builders are typed functions registered by :func:`register_model`; the function name is the
model name and a duplicate is an error, so every name maps to exactly one place in the code. A
builder's ``encoder`` parameter default is the model's default encoder.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pixelwise.encoders.weights import is_weights_file, load_file, load_into
from pixelwise.errors import InputError
from pixelwise.models.base import SegmentationModel
from pixelwise.registry import Registry

Builder = Callable[..., SegmentationModel]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of one model."""

    name: str
    family: str
    description: str
    builder: Builder
    fixed_encoder: str | None = None

    @property
    def parameters(self) -> list[str]:
        """Names of the builder's keyword arguments."""
        return list(inspect.signature(self.builder).parameters)

    @property
    def default_encoder(self) -> str | None:
        """The encoder built when none is given: the default of the builder's ``encoder``
        parameter, else the one it always builds (``None``: the architecture's own trunk)."""
        parameter = inspect.signature(self.builder).parameters.get("encoder")
        return self.fixed_encoder if parameter is None else parameter.default


MODELS: Registry[ModelInfo] = Registry("model")


def register_model(family: str, fixed_encoder: str | None = None) -> Callable[[Builder], Builder]:
    """Register a builder under its function name.

    Args:
        family: architecture family shown in listings ("FCN", "U-Net", ...).
        fixed_encoder: the encoder a builder without an ``encoder`` parameter always builds;
            a builder with one states its default there (its signature's default).
    """

    def decorator(builder: Builder) -> Builder:
        if fixed_encoder is not None and "encoder" in inspect.signature(builder).parameters:
            raise InputError(f"builder {builder.__name__!r} takes an encoder parameter: its default, not "
                             f"fixed_encoder={fixed_encoder!r}, is the default encoder")
        description = (inspect.getdoc(builder) or "").split("\n")[0]
        MODELS.add(builder.__name__, ModelInfo(builder.__name__, family, description, builder, fixed_encoder))
        return builder

    return decorator


#: Builder options whose default has changed, with the value they had before. A saved model spec
#: (a checkpoint's, an ONNX file's metadata) that does not name one was written when it had that
#: value. ``aligned``: decoders upsample onto the grids of the maps they meet; before, they used
#: half-pixel centres whatever the encoder.
EARLIER_DEFAULTS: dict[str, Any] = {"aligned": False}

#: The same for one model's options. ``upsample`` of DeepLab v3/v3+ and HyperColumn: the papers'
#: fixed bilinear resize (``"resize"``); before, a resize followed by a learned 3×3 convolution
#: (``"bilinear"``), which at v3+'s stride-4 merge cost a fifth of a training step.
MODEL_EARLIER_DEFAULTS: dict[str, dict[str, Any]] = {
    "deeplabv3": {"upsample": "bilinear"},
    "deeplabv3plus": {"upsample": "bilinear"},
    "hypercolumn": {"upsample": "bilinear"},
}


def _earlier_defaults(name: str) -> dict[str, Any]:
    """The earlier default of every option of model ``name`` whose default has changed."""
    parameters = model_info(name).parameters
    common = {key: value for key, value in EARLIER_DEFAULTS.items() if key in parameters}
    return {**common, **MODEL_EARLIER_DEFAULTS.get(name, {})}


def spec_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` as a model spec saves them: with the builder's current default of every option
    whose default has changed (:data:`EARLIER_DEFAULTS`, :data:`MODEL_EARLIER_DEFAULTS`), so the
    spec rebuilds this model whatever later defaults become."""
    parameters = inspect.signature(model_info(name).builder).parameters
    return {**{key: parameters[key].default for key in _earlier_defaults(name)}, **options}


def saved_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The builder options of a saved model spec: with the earlier default of every option whose
    default has changed and that the spec does not name (it was written before the change), so an
    old checkpoint rebuilds the model its weights belong to."""
    return {**_earlier_defaults(name), **options}


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; an unknown name raises :class:`~pixelwise.registry.UnknownNameError`."""
    return MODELS[name]


def create_model(
    name: str,
    num_classes: int = 21,
    encoder: str | None = None,
    upsample: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    encoder_weights: str | os.PathLike[str] | None = None,
    input_scale: float = 1.0,
    input_norm: str | None = None,
    **kwargs,
) -> SegmentationModel:
    """Build a registered model.

    Args:
        name: one of :func:`list_models`.
        num_classes: number of classes the model predicts.
        encoder: encoder name (see ``pixelwise.list_encoders()``); ``None`` keeps the model's default.
        upsample: ``"transposed"``, ``"nearest"``, ``"bilinear"``, ``"pixelshuffle"`` or
            ``"resize"`` (``pixelwise.layers.UPSAMPLE_KINDS``); ``None`` keeps the model's default.
        weights: ``None``; ``"imagenet"`` (shorthand for ``encoder_weights="imagenet"``); or a
            local file holding the whole model's state dict (or a checkpoint with a ``"model"`` key).
        encoder_weights: ``None``, ``"imagenet"`` or a local file for the encoder alone.
        input_scale: run the network on the input resized by this factor and resize its logits
            back (0.5: about a quarter of the compute, logits still at the input's size).
        input_norm: ``"instance"`` standardises each image per channel over its own pixels
            before the network, which makes the logits independent of per-channel brightness,
            contrast and white balance; ``None`` (default) feeds the input as given.
        **kwargs: builder-specific options; see ``model_info(name).parameters``.
    """
    info = model_info(name)
    if num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}")
    if weights == "imagenet":
        weights, encoder_weights = None, "imagenet"
    # None for these three means "the builder's default"; any other option passes as given
    # (norm=None, for one, is a real choice: no normalisation).
    defaults = {"encoder": encoder, "upsample": upsample, "encoder_weights": encoder_weights}
    options = {**{k: v for k, v in defaults.items() if v is not None}, **kwargs}
    unknown = sorted(set(options) - set(info.parameters))
    if unknown:
        raise InputError(f"model {name!r} does not take {unknown}; it takes {info.parameters}")
    model = info.builder(num_classes=num_classes, **options).set_input_scale(input_scale).set_input_norm(input_norm)
    if weights is not None:
        if not is_weights_file(weights):
            raise InputError(f"weights must be None, 'imagenet' or a file path, got {weights!r}")
        load_into(model, load_file(weights), repr(os.fspath(weights)))
    return model
