"""Backbones behind one contract: ``forward(x) -> list[Tensor]`` (highest resolution first),
``channels`` and ``reductions``. See :mod:`pixelwise.encoders.base`."""
from __future__ import annotations

import os

from pixelwise.encoders.base import Encoder, dilate_for_output_stride, dilate_stage
from pixelwise.encoders.timm_encoder import TimmEncoder
from pixelwise.encoders.torchvision_encoders import TORCHVISION_ENCODERS, ResNetEncoder, SlicedEncoder, VGGEncoder
from pixelwise.encoders.weights import (
    WeightsUnavailableError,
    download_torchvision_weights,
    is_weights_file,
    load_file,
    load_into,
)
from pixelwise.errors import InputError

EncoderWeights = str | os.PathLike[str] | None


def list_encoders() -> list[str]:
    """Names accepted by :func:`create_encoder` (plus ``"timm:NAME"`` for any timm model)."""
    return TORCHVISION_ENCODERS.names()


def create_encoder(name: str, weights: EncoderWeights = None, output_stride: int = 32, **kwargs) -> Encoder:
    """Build an encoder, optionally with pretrained weights.

    Args:
        name: one of :func:`list_encoders`, or ``"timm:NAME"``.
        weights: ``None`` (random init), ``"imagenet"`` (torchvision's ImageNet weights, fetched
            by torchvision), or a path to a local state-dict file (torchvision classifier keys or
            the encoder's own keys).
        output_stride: stride of the deepest feature: 32, or 16 / 8 with dilation.
        **kwargs: encoder-specific options (``fully_conv``, ``paper`` for VGG).

    Raises:
        UnknownNameError: ``name`` is not an encoder (the message suggests the closest).
        WeightsUnavailableError: ``"imagenet"`` was asked for and cannot be downloaded.
    """
    if name.startswith("timm:"):
        encoder = TimmEncoder(name.removeprefix("timm:"), output_stride=output_stride,
                              weights=None if weights is None else os.fspath(weights))
        _share_grids(encoder, (name, output_stride, ()))
        return encoder
    spec = TORCHVISION_ENCODERS[name]
    encoder = spec.builder(output_stride=output_stride, **kwargs)
    _share_grids(encoder, (name, output_stride, tuple(sorted(kwargs.items()))))
    if weights is None:
        return encoder
    if is_weights_file(weights):
        state, source = load_file(weights), repr(os.fspath(weights))
    elif weights == "imagenet":
        state, source = download_torchvision_weights(spec.weights, name), f"torchvision {spec.weights}"
    else:
        raise InputError(f"encoder weights must be None, 'imagenet' or a file path, got {weights!r}")
    if _looks_converted(encoder, state):
        load_into(encoder, state, source)
    else:
        load_into(encoder, state, source, convert=encoder.convert_state_dict)
    return encoder


# Grids depend on the architecture, not the weights: trace each configuration once per process.
_GRIDS: dict[tuple, list] = {}


def _share_grids(encoder: Encoder, key: tuple) -> None:
    if key not in _GRIDS:
        _GRIDS[key] = encoder.grids
    encoder._grids = list(_GRIDS[key])


def _looks_converted(encoder: Encoder, state: dict) -> bool:
    """A file saved from the encoder itself already has its keys (VGG's fc6 as a conv, say)."""
    own = encoder.state_dict()
    return all(k in own and own[k].shape == v.shape for k, v in state.items())


__all__ = [
    "Encoder", "EncoderWeights", "ResNetEncoder", "SlicedEncoder", "TimmEncoder", "VGGEncoder",
    "WeightsUnavailableError", "create_encoder", "dilate_for_output_stride", "dilate_stage",
    "list_encoders", "load_file", "load_into",
]
