"""Segmentation losses: cross-entropy (also over hard pixels only, OHEM), Dice, focal, Lovász-Softmax,
their weighted sums, class weights.

Every loss is an ``nn.Module`` called as ``loss(logits, target)`` with logits ``(N, C, H, W)``
(any number of spatial dimensions works) and an int64 target ``(N, H, W)`` of class indices in
which ``ignore_index`` marks pixels that no loss counts. It returns a scalar.

A batch whose target is entirely ``ignore_index`` (a random crop of a void region, say) gives a
loss of exactly 0.0 that is still connected to ``logits``, so ``.backward()`` works and leaves zero
gradients. PyTorch's ``F.cross_entropy(reduction="mean")`` returns NaN there (0 / 0); here every
mean divides by a count that is replaced by 1 when it is 0, with the numerator then 0 as well.
This is done with tensor operations, not ``if count == 0``, so no loss synchronises a GPU with the
host, and the same code runs under ``torch.compile``.

References:
    Eigen & Fergus, "Predicting Depth, Surface Normals and Semantic Labels with a Common
    Multi-Scale Convolutional Architecture", ICCV 2015 (median frequency balancing).
    Milletari et al., "V-Net", 3DV 2016 (soft Dice loss).
    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
    Shrivastava et al., "Training Region-based Object Detectors with Online Hard Example
    Mining", CVPR 2016; Wu et al., "Bridging Category-level and Instance-level Semantic Image
    Segmentation", 2016 (OHEM over pixels, with a probability threshold and a minimum kept).
    Berman et al., "The Lovász-Softmax loss: A tractable surrogate for the optimization of the
    intersection-over-union measure in neural networks", CVPR 2018.
    Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017 (auxiliary loss weight 0.4).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.data.classes import IGNORE_INDEX
from pixelwise.errors import InputError
from pixelwise.layers.resize import resize_bilinear
from pixelwise.registry import Registry

ClassSelection = str | Sequence[int]
WeightsLike = Tensor | Sequence[float] | np.ndarray

# The losses :func:`create_loss` builds by name (case-insensitive).
LOSSES: Registry[type[nn.Module]] = Registry("loss", normalize=str.lower)


# --------------------------------------------------------------------------- shared helpers


def _check_inputs(logits: Tensor, target: Tensor) -> Tensor:
    """Validate shapes and return the target as int64 (uint8 masks are common on disk)."""
    if logits.dim() < 2:
        raise InputError(f"logits must be (N, C, H, W), got shape {tuple(logits.shape)}")
    expected = logits.shape[:1] + logits.shape[2:]
    if target.shape != expected:
        raise InputError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
                         f"expected {tuple(expected)} (are the logits at the input's resolution?)")
    if target.is_floating_point():
        raise InputError(f"target must hold integer class indices, got dtype {target.dtype}")
    return target.long()


def _upcast(logits: Tensor) -> Tensor:
    """Half-precision logits in float32: sums over millions of pixels lose the small classes."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, and 0 where ``denominator`` is 0 (numerator is then 0 too).

    The denominator is replaced before dividing, rather than the quotient afterwards, because
    ``torch.where`` over a NaN branch still back-propagates NaN.
    """
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return numerator / safe


def _masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` holds; 0 where nothing does."""
    mask = mask.to(values.dtype)
    if dim is None:
        return _safe_divide((values * mask).sum(), mask.sum())
    return _safe_divide((values * mask).sum(dim), mask.sum(dim))


def _one_hot(target: Tensor, valid: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """One-hot ``(N, C, *spatial)`` float target, all zeros at ignored pixels."""
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    one_hot = F.one_hot(safe_target, num_classes).movedim(-1, 1)
    return one_hot.to(dtype) * valid.unsqueeze(1)


def _check_classes(classes: ClassSelection) -> ClassSelection:
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise InputError(f"classes must be 'present', 'all' or a list of class indices, got {classes!r}")
        return classes
    return tuple(int(c) for c in classes)


def _class_mask(classes: ClassSelection, present: Tensor) -> Tensor:
    """Which classes a loss averages over.

    Args:
        classes: ``"present"`` (classes in the ground truth), ``"all"`` or a list of indices.
        present: boolean ``(..., C)``, whether each class occurs in the ground truth.
    """
    if classes == "present":
        return present
    if classes == "all":
        return torch.ones_like(present)
    chosen = torch.zeros(present.shape[-1], dtype=torch.bool, device=present.device)
    chosen[list(classes)] = True
    return chosen.expand_as(present)


def _as_weights(weights: WeightsLike | None) -> Tensor | None:
    if weights is None:
        return None
    weights = torch.as_tensor(weights)
    if weights.dim() != 1:
        raise InputError(f"class weights must be one value per class, got shape {tuple(weights.shape)}")
    return weights.detach().float().clone()


# --------------------------------------------------------------------------- losses


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
        self.register_buffer("class_weights", _as_weights(class_weights), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = _check_inputs(logits, target)
        logits = _upcast(logits)
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
        return _safe_divide(losses.sum(), denominator)

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
        target = _check_inputs(logits, target)
        valid = target != self.ignore_index
        with torch.no_grad():
            safe_target = torch.where(valid, target, torch.zeros_like(target))
            p_true = _upcast(logits).softmax(1).gather(1, safe_target.unsqueeze(1)).squeeze(1)
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
        self.classes = _check_classes(classes)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = _check_inputs(logits, target)
        valid = target != self.ignore_index
        probs = _upcast(logits).softmax(1) * valid.unsqueeze(1)
        truth = _one_hot(target, valid, logits.shape[1], probs.dtype)
        sum_dims = [0] + list(range(2, logits.dim()))
        intersection = (probs * truth).sum(sum_dims)
        cardinality = probs.sum(sum_dims) + truth.sum(sum_dims)
        denominator = cardinality + self.smooth
        dice = torch.where(denominator == 0, torch.ones_like(denominator),
                           _safe_divide(2 * intersection + self.smooth, denominator))
        chosen = _class_mask(self.classes, truth.sum(sum_dims) > 0)
        return _masked_mean(1 - dice, chosen)

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
        self.register_buffer("alpha", None if scalar else _as_weights(alpha), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = _check_inputs(logits, target)
        valid = target != self.ignore_index
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        log_probs = _upcast(logits).log_softmax(1)
        log_p_true = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        # expm1 keeps 1 - p accurate near p = 1; the clamp keeps the gradient of x**gamma
        # finite at x = 0 when gamma < 1 (it is exactly 0 there, so the value is unchanged).
        hardness = (-torch.expm1(log_p_true)).clamp_min(1e-12) ** self.gamma
        losses = -hardness * log_p_true * self.alpha_scale
        if self.alpha is not None:
            if self.alpha.numel() != logits.shape[1]:
                raise InputError(f"{self.alpha.numel()} alpha weights for {logits.shape[1]} classes")
            losses = losses * self.alpha.to(losses.device)[safe_target]
        return _masked_mean(losses, valid)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, ignore_index={self.ignore_index}"


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss with respect to sorted errors.

    Works along dimension 0 and independently for every other index, so ``(P, C)`` computes all
    classes (and ``(P, N, C)`` all images) at once.

    Args:
        gt_sorted: 0/1 ground truth, ordered by decreasing prediction error.

    Returns:
        ``g`` with ``g[i] = J(i) - J(i-1)``, where ``J(i)`` is the Jaccard loss of the set made of
        the ``i + 1`` largest errors (Berman et al., 2018, Eq. 9 and Algorithm 1).
    """
    gt_sorted = gt_sorted if gt_sorted.is_floating_point() else gt_sorted.float()
    total = gt_sorted.sum(0, keepdim=True)
    intersection = total - gt_sorted.cumsum(0)
    union = total + (1 - gt_sorted).cumsum(0)  # >= 1 everywhere: never divides by 0
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], 0)


def _lovasz_per_class(probs: Tensor, truth: Tensor) -> Tensor:
    """Lovász-Softmax loss of every class, computed over dimension 0.

    Args:
        probs: probabilities ``(P, ..., C)``, 0 at ignored pixels.
        truth: one-hot ground truth of the same shape, 0 at ignored pixels.

    Ignored pixels have error exactly 0, so they sort after every positive error, and they add
    nothing to the ground-truth total; the loss, a sum of error × gradient, is therefore the
    same as with those pixels removed (removal would need a data-dependent shape).
    """
    errors = (truth - probs).abs()
    errors_sorted, order = errors.sort(0, descending=True)
    grad = lovasz_grad(truth.gather(0, order))
    return (errors_sorted * grad).sum(0)


def _jaccard_loss(fg_in: Tensor, bg_in: Tensor, fg_total: Tensor) -> Tensor:
    """``J = 1 - |truth \\ taken| / |truth ∪ taken|`` once ``fg_in`` foreground and ``bg_in``
    background pixels are taken (0 when nothing is: Berman et al.'s ``J`` of the empty set)."""
    union = fg_total + bg_in
    return torch.where(union > 0, 1 - (fg_total - fg_in) / union.clamp(min=1), torch.zeros_like(union))


def _lovasz_binned(logits: Tensor, target: Tensor, valid: Tensor, bins: int,
                   per_image: bool) -> tuple[Tensor, Tensor]:
    """Lovász-Softmax loss of every class with the sort replaced by a histogram of the errors.

    The errors of each class fall into ``bins`` equal bins of [0, 1]; the bins are taken in
    decreasing order, as the sort takes the pixels, so the Jaccard loss is exact at every bin's
    edge. Inside a bin the pixels count as tied: its rise of the Jaccard loss is shared among its
    foreground pixels and among its background ones as the two orders, foreground first and
    background first, share it on average. Each pixel's gradient is thus within one bin's rise of
    the sort's. No pixel moves, so the work stays in the logits' layout: a few passes over the
    pixels and one count instead of a sort.

    Returns:
        The loss ``(groups, C)`` (one group per image, or one for the batch) and whether each
        class occurs in each group's ground truth.
    """
    num_images, num_classes = logits.shape[:2]
    groups = num_images if per_image else 1
    probs = _upcast(logits).softmax(1).reshape(num_images, num_classes, -1)
    classes = torch.arange(num_classes, device=logits.device).view(1, num_classes, 1)
    size = groups * num_classes * bins * 2
    index_type = torch.int32 if size < 2**31 - 1 else torch.int64
    with torch.no_grad():
        # Slot of each (pixel, class): its table row (group, class), then the bin of its
        # probability p, then whether the class is the pixel's. Error |truth - p| is p off the
        # class and 1 - p on it, so probability bin b is error bin b off the class, bins-1-b on it.
        group = torch.arange(num_images, device=logits.device).view(-1, 1, 1) if per_image else 0
        table_row = ((group * num_classes + classes) * bins * 2).to(index_type)
        slot = (probs * bins).to(index_type).clamp_(max=bins - 1).mul_(2)
        slot.add_(target.reshape(num_images, 1, -1) == classes).add_(table_row)  # ignored: no class
        if not bool(valid.all()):
            slot.masked_fill_(~valid.reshape(num_images, 1, -1), size)  # one slot past the table
        counts = torch.bincount(slot.reshape(-1), minlength=size + 1)[:size]
        counts = counts.view(groups, num_classes, bins, 2).double()
        bg, fg = counts[..., 0].flip(-1), counts[..., 1]  # both by decreasing error
        fg_before, bg_before = fg.cumsum(-1) - fg, bg.cumsum(-1) - bg
        fg_total = fg.sum(-1, keepdim=True)
        start = _jaccard_loss(fg_before, bg_before, fg_total)
        end = _jaccard_loss(fg_before + fg, bg_before + bg, fg_total)
        rise_fg = (_jaccard_loss(fg_before + fg, bg_before, fg_total) - start
                   + end - _jaccard_loss(fg_before, bg_before + bg, fg_total)) / 2
        grad_bg, grad_fg = _safe_divide(end - start - rise_fg, bg), _safe_divide(rise_fg, fg)
        # Σ error·grad = Σ p·(±grad) + Σ_on-class grad: the table holds -grad on the class, so
        # the backward pass is one product.
        constant = (grad_fg * fg).sum(-1)
        table = torch.stack([grad_bg.flip(-1), -grad_fg], -1)  # back to increasing probability
        table = torch.cat([table.reshape(-1), table.new_zeros(1)]).to(probs.dtype)
        grad = table.index_select(0, slot.reshape(-1)).view(slot.shape)  # faster than table[slot]
    losses = torch.linalg.vecdot(probs, grad)  # (N, C)
    if not per_image:
        losses = losses.sum(0, keepdim=True)
    return losses + constant.to(losses.dtype), fg_total.squeeze(-1) > 0


def _pixels_first(values: Tensor, per_image: bool) -> Tensor:
    """``(N, C, *spatial)`` to ``(pixels, groups, C)``: one group per image, or one for the batch."""
    num_images, num_classes = values.shape[:2]
    values = values.reshape(num_images, num_classes, -1).permute(2, 0, 1)  # (HW, N, C)
    return values if per_image else values.reshape(-1, 1, num_classes)


@LOSSES.register("lovasz")
class LovaszSoftmaxLoss(nn.Module):
    """Lovász-Softmax loss: a convex surrogate of ``1 - IoU`` on softmax probabilities.

    Args:
        ignore_index: target value of pixels that do not count.
        classes: ``"present"`` (default: classes in the ground truth), ``"all"``, or a list of
            class indices to average over.
        per_image: compute the loss per image and average over images that have at least one
            valid pixel (Berman et al. also count all-ignore images, as 0); otherwise over the
            whole batch as one set of pixels.
        bins: ``None`` (default) sorts the errors, as Berman et al.; a number (1024 is plenty)
            histograms them into that many bins instead, a close approximation that costs a
            few passes over the pixels and one count instead of a sort (see
            :func:`_lovasz_binned`), which on a CPU is what makes the loss affordable beside a
            network's training step.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, classes: ClassSelection = "present",
                 per_image: bool = False, bins: int | None = None) -> None:
        super().__init__()
        if bins is not None and (isinstance(bins, bool) or not isinstance(bins, int) or bins < 1):
            raise InputError(f"lovasz bins must be a positive integer or None (sort), got {bins!r}")
        self.ignore_index = ignore_index
        self.classes = _check_classes(classes)
        self.per_image = per_image
        self.bins = bins

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = _check_inputs(logits, target)
        valid = target != self.ignore_index
        if self.bins is None:
            probs = _upcast(logits).softmax(1) * valid.unsqueeze(1)
            truth = _one_hot(target, valid, logits.shape[1], probs.dtype)
            probs, truth = _pixels_first(probs, self.per_image), _pixels_first(truth, self.per_image)
            losses, present = _lovasz_per_class(probs, truth), truth.sum(0) > 0  # (groups, C) each
        else:
            losses, present = _lovasz_binned(logits, target, valid, self.bins, self.per_image)
        chosen = _class_mask(self.classes, present)
        per_group = _masked_mean(losses, chosen, dim=1)
        has_pixels = valid.reshape(valid.shape[0] if self.per_image else 1, -1).any(1)
        return _masked_mean(per_group, has_pixels)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, classes={self.classes!r}, per_image={self.per_image}, "
                f"bins={self.bins}")


class CombinedLoss(nn.Module):
    """Weighted sum of losses, ``Σ weight_i · loss_i(logits, target)``.

    Args:
        terms: ``(weight, loss)`` pairs.
    """

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise InputError("CombinedLoss needs at least one (weight, loss) pair")
        self.weights = [float(weight) for weight, _ in terms]
        self.losses = nn.ModuleList(loss for _, loss in terms)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for weight, loss in zip(self.weights, self.losses):
            total = total + weight * loss(logits, target)
        return total

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


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
                  aux_weight: float = 0.4) -> Tensor:
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
    """
    loss = loss_fn(logits, target)
    if aux_logits is None:
        return loss
    return loss + aux_weight * loss_fn(resize_bilinear(aux_logits, target.shape[1:]), target)


# --------------------------------------------------------------------------- class weights from data


class ClassPixelCounts(NamedTuple):
    """Per-class pixel statistics of a data set (ignored pixels excluded everywhere).

    Attributes:
        class_pixels: pixels labelled with each class.
        image_pixels: for each class, the labelled pixels of all images in which it occurs.
    """

    class_pixels: Tensor
    image_pixels: Tensor

    @classmethod
    def of(cls, image_class_pixels: Tensor) -> ClassPixelCounts:
        """The sums of a per-image table (:func:`image_class_pixels`)."""
        labelled = image_class_pixels.sum(1, keepdim=True)  # each image's pixels that are not ignored
        return cls(image_class_pixels.sum(0), ((image_class_pixels > 0) * labelled).sum(0))


def _masks(data: Iterable) -> Iterable[Tensor]:
    """Masks of a data set of ``(image, mask)`` pairs, or of an iterable of masks."""
    # A map-style Dataset need not be iterable, so index it when it can be indexed.
    indexable = hasattr(data, "__len__") and hasattr(data, "__getitem__")
    items = (data[index] for index in range(len(data))) if indexable else data
    for item in items:
        mask = item[1] if isinstance(item, (tuple, list)) else item
        yield torch.as_tensor(mask)


def image_class_pixels(data: Iterable, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Pixels of each class in each image: an ``(images, num_classes)`` int64 table.

    Pass a data set without random augmentation (crops change the counts).

    Args:
        data: a data set yielding ``(image, mask)`` pairs, or an iterable of masks.
        num_classes: number of classes.
        ignore_index: mask value that is not counted.

    Raises:
        ValueError: a mask value that is neither a class index nor ``ignore_index``.
    """
    rows = []
    for index, mask in enumerate(_masks(data)):
        labels = mask.reshape(-1).long().cpu()
        labels = labels[labels != ignore_index]
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)].unique()[:5].tolist()
            raise InputError(f"mask {index} holds values {bad} outside 0..{num_classes - 1} "
                             f"(and not ignore_index {ignore_index})")
        rows.append(torch.bincount(labels, minlength=num_classes))
    return torch.stack(rows) if rows else torch.zeros(0, num_classes, dtype=torch.int64)


def class_pixel_counts(data: Iterable, num_classes: int, ignore_index: int = IGNORE_INDEX) -> ClassPixelCounts:
    """Count pixels per class, and per class the pixels of the images it appears in.

    The sums of :func:`image_class_pixels` (its arguments, its errors). Use the result with
    ``median_frequency_weights(*counts)``.
    """
    return ClassPixelCounts.of(image_class_pixels(data, num_classes, ignore_index))


def _as_float64(values: WeightsLike) -> Tensor:
    values = torch.as_tensor(values).detach().cpu().double()
    if values.dim() != 1 or (values < 0).any():
        raise InputError(f"pixel counts must be one non-negative number per class, got {values.tolist()}")
    return values


def median_frequency_weights(class_pixel_counts: WeightsLike,
                             image_pixel_counts: WeightsLike | None = None) -> Tensor:
    """Median frequency balancing (Eigen & Fergus, 2015): ``weight(c) = median(freq) / freq(c)``.

    ``freq(c)`` is the pixels of class ``c`` divided by the total pixels of the images in which
    ``c`` is present (``image_pixel_counts``; without it, by all pixels). The median is taken over
    the classes that occur (the mean of the two middle values for an even number of them), so a
    class of median frequency gets weight 1. A class that never occurs gets weight 0: it cannot
    be learnt from this data, and a 0 keeps stray predictions of it from being rewarded.

    Args:
        class_pixel_counts: pixels per class (as from :func:`class_pixel_counts`).
        image_pixel_counts: per class, pixels of the images containing it.

    Returns:
        float32 weights, one per class, for :class:`CrossEntropyLoss`.
    """
    counts = _as_float64(class_pixel_counts)
    totals = counts.sum().expand_as(counts) if image_pixel_counts is None else _as_float64(image_pixel_counts)
    present = counts > 0
    if not present.any():
        raise InputError("no class has any pixel: cannot compute frequency weights")
    frequency = _safe_divide(counts, totals)
    median = frequency[present].quantile(0.5)
    weights = _safe_divide(median.expand_as(frequency), frequency) * present
    return weights.float()


def inverse_frequency_weights(class_pixel_counts: WeightsLike, power: float = 1.0) -> Tensor:
    """Inverse class-frequency weights ``freq(c) ** -power``, averaging 1 over occurring classes.

    ``power=0.5`` gives the milder inverse-square-root weighting. Classes that never occur get 0.

    Args:
        class_pixel_counts: pixels per class.
        power: exponent of the inverse frequency.

    Returns:
        float32 weights, one per class, for :class:`CrossEntropyLoss`.
    """
    counts = _as_float64(class_pixel_counts)
    present = counts > 0
    if not present.any():
        raise InputError("no class has any pixel: cannot compute frequency weights")
    frequency = counts / counts.sum()
    weights = torch.where(present, frequency.clamp_min(1e-300) ** -power, torch.zeros_like(frequency))
    return (weights / weights[present].mean()).float()


__all__ = [
    "ClassPixelCounts", "CombinedLoss", "CrossEntropyLoss", "DiceLoss", "FocalLoss", "LOSSES",
    "LovaszSoftmaxLoss", "class_pixel_counts", "create_loss", "image_class_pixels", "inverse_frequency_weights",
    "list_losses", "loss_with_aux", "lovasz_grad", "median_frequency_weights",
]
