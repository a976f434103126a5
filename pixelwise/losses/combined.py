"""Losses built from a recipe: weighted sums of registered losses, and the auxiliary-head loss.

References:
    Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017 (auxiliary loss weight 0.4).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pixelwise.data.classes import IGNORE_INDEX
from pixelwise.errors import InputError
from pixelwise.layers.resize import resize_bilinear
from pixelwise.losses.base import LOSSES, WeightsLike
from pixelwise.losses.pixelwise_losses import CrossEntropyLoss, FocalLoss


class CombinedLoss(nn.Module):
    """Weighted sum of losses, ``Σ weight_i · loss_i(logits, target)``.

    Per-pixel weights, when given, go to the terms that take them (:func:`takes_pixel_weights`);
    the other terms count every pixel alike.

    Args:
        terms: ``(weight, loss)`` pairs.
    """

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise InputError("CombinedLoss needs at least one (weight, loss) pair")
        self.weights = [float(weight) for weight, _ in terms]
        self.losses = nn.ModuleList(loss for _, loss in terms)

    @property
    def takes_pixel_weights(self) -> bool:
        """Whether some term takes per-pixel weights."""
        return any(takes_pixel_weights(loss) for loss in self.losses)

    def forward(self, logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for weight, loss in zip(self.weights, self.losses):
            value = loss(logits, target, weights) if weights is not None and takes_pixel_weights(loss) \
                else loss(logits, target)
            total = total + weight * value
        return total

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


def takes_pixel_weights(loss: nn.Module) -> bool:
    """Whether ``loss`` is called as ``loss(logits, target, weights)`` with per-pixel weights
    (``weighted_ce``, or a weighted sum holding it)."""
    return bool(getattr(loss, "takes_pixel_weights", False))


# --------------------------------------------------------------------------- factory and auxiliary heads

def list_losses() -> list[str]:
    """Names that :func:`create_loss` accepts."""
    return LOSSES.names()


def _parse_terms(spec: Any) -> list[tuple[str, float, dict]]:
    """Normalise a loss spec to ``(name, weight, options)`` triples."""
    if isinstance(spec, str):
        return [(spec, 1.0, {})]
    if isinstance(spec, Mapping):
        terms = []
        for name, value in spec.items():
            if isinstance(value, Mapping):
                options = dict(value)
                terms.append((name, options.pop("weight", 1.0), options))
            else:
                terms.append((name, value, {}))
        return terms
    if isinstance(spec, Sequence) and len(spec) == 2 and isinstance(spec[0], str) and not isinstance(spec[1], str):
        return [(spec[0], spec[1], {})]  # a (name, weight) pair
    if isinstance(spec, Sequence) and spec:
        return [term for item in spec for term in _parse_terms(item)]
    raise InputError(f"cannot read loss spec {spec!r}: give a name ({', '.join(list_losses())}), "
                     "a mapping such as {'ce': 1.0, 'dice': 0.5}, or a list of those")


def _build_term(name: str, options: dict, ignore_index: int, class_weights: WeightsLike | None) -> nn.Module:
    loss_class = LOSSES[name]
    options = {"ignore_index": ignore_index, **options}
    if class_weights is not None and issubclass(loss_class, CrossEntropyLoss):
        options.setdefault("class_weights", class_weights)
    if class_weights is not None and loss_class is FocalLoss:
        options.setdefault("alpha", class_weights)
    try:
        return loss_class(**options)
    except TypeError as error:
        raise InputError(f"bad options {options} for loss {name!r}: {error}") from error


def create_loss(spec: str | Mapping | Sequence, ignore_index: int = IGNORE_INDEX,
                class_weights: WeightsLike | None = None) -> nn.Module:
    """Build a loss from a name or a config entry.

    Examples of ``spec``: ``"ce"``; ``{"ce": 1.0, "dice": 0.5}``; ``["ce", "lovasz"]`` (weights 1);
    ``[("ce", 1.0), ("dice", 0.5)]``; ``{"focal": {"weight": 1.0, "gamma": 3.0}}`` (options passed
    to the loss's constructor).

    Args:
        spec: a loss name, a mapping of names to weights (or to option mappings), or a list.
        ignore_index: given to every loss.
        class_weights: given to cross-entropy and OHEM (``class_weights``) and focal (``alpha``)
            unless the spec sets them; Dice and Lovász do not take class weights.

    Returns:
        The loss module for a single name; a :class:`CombinedLoss` for a mapping or list.

    Raises:
        ~pixelwise.registry.UnknownNameError: an unknown name (a ``ValueError`` suggesting the
            closest valid one).
        ValueError: a bad weight or bad options.
    """
    terms = _parse_terms(spec)
    built = []
    for name, weight, options in terms:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise InputError(f"weight of loss {name!r} must be a finite number, got {weight!r}")
        built.append((float(weight), _build_term(name, options, ignore_index, class_weights)))
    if isinstance(spec, str):
        return built[0][1]
    return CombinedLoss(built)


def loss_with_aux(loss_fn: nn.Module, logits: Tensor, target: Tensor, aux_logits: Tensor | None = None,
                  aux_weight: float = 0.4, weights: Tensor | None = None) -> Tensor:
    """Main loss plus a weighted auxiliary-head loss, ``loss(logits) + aux_weight · loss(aux_logits)``.

    The default weight 0.4 is PSPNet's (Zhao et al., 2017, also mmsegmentation's); torchvision's
    reference training script uses 0.5. Auxiliary logits at a lower resolution than the target
    are resized bilinearly to it first.

    Args:
        loss_fn: the loss applied to both heads.
        logits: main-head logits ``(N, C, H, W)``.
        target: class indices ``(N, H, W)``.
        aux_logits: auxiliary-head logits, or ``None`` for the main loss alone.
        aux_weight: weight of the auxiliary loss.
        weights: per-pixel weights ``(N, H, W)`` for both heads, or ``None``.

    Raises:
        InputError: ``weights`` given to a loss that does not take them.
    """
    if weights is not None and not takes_pixel_weights(loss_fn):
        raise InputError(f"per-pixel weights given to {type(loss_fn).__name__}, which does not take them: "
                         "use loss: weighted_ce")
    pixel_weights = () if weights is None else (weights,)
    loss = loss_fn(logits, target, *pixel_weights)
    if aux_logits is None:
        return loss
    return loss + aux_weight * loss_fn(resize_bilinear(aux_logits, target.shape[1:]), target, *pixel_weights)


__all__ = ["CombinedLoss", "create_loss", "list_losses", "loss_with_aux", "takes_pixel_weights"]
