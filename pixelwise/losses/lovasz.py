"""Lovász-Softmax loss, exact (sorting the errors) or binned (a histogram of them).

References:
    Berman et al., "The Lovász-Softmax loss: A tractable surrogate for the optimization of the
    intersection-over-union measure in neural networks", CVPR 2018.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pixelwise.data.classes import IGNORE_INDEX
from pixelwise.errors import InputError
from pixelwise.losses.base import (LOSSES, ClassSelection, check_classes, check_inputs, class_mask, masked_mean,
                                   one_hot_target, safe_divide, upcast)


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
    probs = upcast(logits).softmax(1).reshape(num_images, num_classes, -1)
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
        grad_bg, grad_fg = safe_divide(end - start - rise_fg, bg), safe_divide(rise_fg, fg)
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
        self.classes = check_classes(classes)
        self.per_image = per_image
        self.bins = bins

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = check_inputs(logits, target)
        valid = target != self.ignore_index
        if self.bins is None:
            probs = upcast(logits).softmax(1) * valid.unsqueeze(1)
            truth = one_hot_target(target, valid, logits.shape[1], probs.dtype)
            probs, truth = _pixels_first(probs, self.per_image), _pixels_first(truth, self.per_image)
            losses, present = _lovasz_per_class(probs, truth), truth.sum(0) > 0  # (groups, C) each
        else:
            losses, present = _lovasz_binned(logits, target, valid, self.bins, self.per_image)
        chosen = class_mask(self.classes, present)
        per_group = masked_mean(losses, chosen, dim=1)
        has_pixels = valid.reshape(valid.shape[0] if self.per_image else 1, -1).any(1)
        return masked_mean(per_group, has_pixels)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, classes={self.classes!r}, per_image={self.per_image}, "
                f"bins={self.bins}")


__all__ = ["LovaszSoftmaxLoss", "lovasz_grad"]
