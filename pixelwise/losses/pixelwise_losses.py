"""Losses computed pixel by pixel: cross-entropy (also over hard pixels only, OHEM), Dice and focal.

References:
    Milletari et al., "V-Net", 3DV 2016 (soft Dice loss).
    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
    Shrivastava et al., "Training Region-based Object Detectors with Online Hard Example
    Mining", CVPR 2016; Wu et al., "Bridging Category-level and Instance-level Semantic Image
    Segmentation", 2016 (OHEM over pixels, with a probability threshold and a minimum kept).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.data.classes import IGNORE_INDEX
from pixelwise.errors import InputError
from pixelwise.losses.base import (LOSSES, ClassSelection, WeightsLike, as_weights, check_classes, check_inputs,
                                   class_mask, masked_mean, one_hot_target, safe_divide, upcast)


@LOSSES.register("ce")
class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy, mean over the pixels that are not ``ignore_index``.

    Equal to ``F.cross_entropy(..., reduction="mean")`` (with class weights, the weighted mean:
    divided by the summed weights of the valid pixels' classes), except that an all-ignore
    batch gives 0 instead of NaN.

    Args:
        ignore_index: target value of pixels that do not count.
        class_weights: one weight per class (see :func:`median_frequency_weights`); moved to the
            logits' device and dtype on each call.
        label_smoothing: as in ``F.cross_entropy``.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, class_weights: WeightsLike | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        # A non-persistent buffer follows ``.to(device)`` but stays out of model checkpoints.
        self.register_buffer("class_weights", as_weights(class_weights), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = check_inputs(logits, target)
        logits = upcast(logits)
        weights = None if self.class_weights is None else self.class_weights.to(logits.device, logits.dtype)
        if weights is not None and weights.numel() != logits.shape[1]:
            raise InputError(f"{weights.numel()} class weights for {logits.shape[1]} classes")
        losses = F.cross_entropy(logits, target, weight=weights, ignore_index=self.ignore_index,
                                 reduction="none", label_smoothing=self.label_smoothing)
        valid = target != self.ignore_index
        if weights is None:
            denominator = valid.sum().to(losses.dtype)
        else:
            safe_target = torch.where(valid, target, torch.zeros_like(target))
            denominator = (weights[safe_target] * valid).sum()
        return safe_divide(losses.sum(), denominator)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}"


@LOSSES.register("weighted_ce")
class WeightedCrossEntropyLoss(nn.Module):
    """Cross-entropy weighted pixel by pixel: ``Σ w(x)·CE(x) / Σ w(x)`` over the pixels that are
    not ``ignore_index`` (U-Net's weighted loss, its weights the border weight map of
    :func:`pixelwise.data.weight_map.border_weight_map`).

    The weighted mean, not the paper's plain sum, keeps the loss on cross-entropy's scale whatever
    the batch and crop size. Without weights every pixel weighs 1 (plain cross-entropy). Pixels
    of weight 0 count for nothing; a batch whose weights sum to 0 gives 0.

    Args:
        ignore_index: target value of pixels that do not count.
        label_smoothing: as in ``F.cross_entropy``.
    """

    takes_pixel_weights = True

    def __init__(self, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        target = check_inputs(logits, target)
        logits = upcast(logits)
        valid = target != self.ignore_index
        if weights is None:
            weights = torch.ones_like(target, dtype=logits.dtype)
        elif weights.shape != target.shape:
            raise InputError(f"pixel weights of shape {tuple(weights.shape)} for a target of shape "
                             f"{tuple(target.shape)}: give one weight per pixel")
        weights = torch.where(valid, weights.to(logits.dtype), torch.zeros_like(logits[:, 0]))
        losses = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none",
                                 label_smoothing=self.label_smoothing)
        return safe_divide((weights * losses).sum(), weights.sum())

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}"


@LOSSES.register("ohem")
class OhemCrossEntropyLoss(CrossEntropyLoss):
    """Cross-entropy over the hard pixels only: online hard example mining (OHEM).

    A valid pixel counts when the predicted probability of its true class is below ``thresh``;
    when fewer than ``min_kept`` pixels are that hard, the ``min_kept`` hardest count (all valid
    pixels, if there are fewer). The loss is the cross-entropy (class-weighted like
    :class:`CrossEntropyLoss`) averaged over the pixels that count, so the pixels the network
    already gets right stop diluting the gradient of the thin and rare ones. The selection is
    made without a gradient and without synchronising with the host. ``thresh=1`` is plain
    cross-entropy (every pixel is below 1 unless it is already certain).

    Args:
        thresh: probability of the true class under which a pixel is hard.
        min_kept: at least this many of the hardest valid pixels count, per batch.
        ignore_index, class_weights, label_smoothing: as for :class:`CrossEntropyLoss`.
    """

    def __init__(self, thresh: float = 0.7, min_kept: int = 100_000, ignore_index: int = IGNORE_INDEX,
                 class_weights: WeightsLike | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__(ignore_index, class_weights, label_smoothing)
        if not 0 < thresh <= 1:
            raise InputError(f"thresh must be a probability in (0, 1], got {thresh}")
        if isinstance(min_kept, bool) or not isinstance(min_kept, int) or min_kept < 1:
            raise InputError(f"min_kept must be a positive whole number of pixels, got {min_kept!r}")
        self.thresh, self.min_kept = thresh, min_kept

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = check_inputs(logits, target)
        valid = target != self.ignore_index
        with torch.no_grad():
            safe_target = torch.where(valid, target, torch.zeros_like(target))
            p_true = upcast(logits).softmax(1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
            p_true = torch.where(valid, p_true, torch.full_like(p_true, 2.0))  # ignored pixels sort last
            kth = p_true.flatten().kthvalue(min(self.min_kept, p_true.numel())).values
            hard = valid & ((p_true < self.thresh) | (p_true <= kth))
        masked = torch.where(hard, target, torch.full_like(target, self.ignore_index))
        return super().forward(logits, masked)

    def extra_repr(self) -> str:
        return f"thresh={self.thresh}, min_kept={self.min_kept}, {super().extra_repr()}"


@LOSSES.register("dice")
class DiceLoss(nn.Module):
    """Soft multi-class Dice loss on softmax probabilities, ``1 - mean_c Dice_c``.

    For each class, over the whole batch, ``Dice_c = (2 Σ p·g + smooth) / (Σ p + Σ g + smooth)``
    with ``p`` the predicted probability and ``g`` the one-hot ground truth; ignored pixels are
    left out of every sum (numerator and denominator). A class whose sums are all empty with
    ``smooth=0`` counts as a perfect match.

    Args:
        ignore_index: target value of pixels that do not count.
        smooth: added to numerator and denominator; keeps absent classes finite and gradients smooth.
        classes: which classes are averaged: ``"present"`` (default: those in the batch's ground
            truth, so a class absent from a crop neither helps nor hurts), ``"all"`` (absent
            classes then push their probabilities down), or a list of class indices.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0,
                 classes: ClassSelection = "present") -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.classes = check_classes(classes)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = check_inputs(logits, target)
        valid = target != self.ignore_index
        probs = upcast(logits).softmax(1) * valid.unsqueeze(1)
        truth = one_hot_target(target, valid, logits.shape[1], probs.dtype)
        sum_dims = [0] + list(range(2, logits.dim()))
        intersection = (probs * truth).sum(sum_dims)
        cardinality = probs.sum(sum_dims) + truth.sum(sum_dims)
        denominator = cardinality + self.smooth
        dice = torch.where(denominator == 0, torch.ones_like(denominator),
                           safe_divide(2 * intersection + self.smooth, denominator))
        chosen = class_mask(self.classes, truth.sum(sum_dims) > 0)
        return masked_mean(1 - dice, chosen)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, smooth={self.smooth}, classes={self.classes!r}"


@LOSSES.register("focal")
class FocalLoss(nn.Module):
    """Multi-class focal loss ``-α_t (1 - p_t)^γ log p_t``, mean over valid pixels.

    With ``gamma=0`` and no ``alpha`` it equals cross-entropy. Unlike weighted cross-entropy,
    the mean is over valid pixels, not over their summed ``alpha``, as in Lin et al.

    Args:
        gamma: focusing parameter; larger values down-weight well-classified pixels more.
        alpha: ``None``, one number multiplying every pixel, or one weight per class.
        ignore_index: target value of pixels that do not count.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | WeightsLike | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if gamma < 0:
            raise InputError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.ignore_index = ignore_index
        scalar = isinstance(alpha, (int, float))
        self.alpha_scale = float(alpha) if scalar else 1.0
        self.register_buffer("alpha", None if scalar else as_weights(alpha), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = check_inputs(logits, target)
        valid = target != self.ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        log_probs = upcast(logits).log_softmax(1)
        log_p_true = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        # expm1 keeps 1 - p accurate near p = 1; the clamp keeps the gradient of x**gamma
        # finite at x = 0 when gamma < 1 (it is exactly 0 there, so the value is unchanged).
        hardness = (-torch.expm1(log_p_true)).clamp_min(1e-12) ** self.gamma
        losses = -hardness * log_p_true * self.alpha_scale
        if self.alpha is not None:
            if self.alpha.numel() != logits.shape[1]:
                raise InputError(f"{self.alpha.numel()} alpha weights for {logits.shape[1]} classes")
            losses = losses * self.alpha.to(losses.device)[safe_target]
        return masked_mean(losses, valid)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, ignore_index={self.ignore_index}"


__all__ = ["CrossEntropyLoss", "DiceLoss", "FocalLoss", "OhemCrossEntropyLoss", "WeightedCrossEntropyLoss"]
