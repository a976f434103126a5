"""Losses: exact agreement with PyTorch and with plain reference formulas, ignore pixels, no NaN."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.losses import (
    CombinedLoss, CrossEntropyLoss, DiceLoss, FocalLoss, LovaszSoftmaxLoss, OhemCrossEntropyLoss,
    WeightedCrossEntropyLoss, class_pixel_counts, create_loss,
    inverse_frequency_weights, list_losses, loss_with_aux, lovasz_grad, median_frequency_weights,
)

IGNORE = 255
NUM_CLASSES = 4


def _batch(shape: tuple[int, ...] = (2, NUM_CLASSES, 5, 6), ignore_fraction: float = 0.25,
           dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Random logits and a target with some ignore pixels."""
    logits = torch.randn(shape, dtype=dtype, requires_grad=True)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    target[torch.rand(target.shape) < ignore_fraction] = IGNORE
    return logits, target


def _perfect_logits(target: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """Huge logits on the right class (any class at ignored pixels)."""
    safe = torch.where(target == IGNORE, torch.zeros_like(target), target)
    return (F.one_hot(safe, num_classes).movedim(-1, 1).float() * 60.0).requires_grad_()


def _every_loss() -> dict[str, nn.Module]:
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5])
    return {
        "ce": CrossEntropyLoss(), "ce_weighted_smoothed": CrossEntropyLoss(class_weights=weights, label_smoothing=0.1),
        "dice": DiceLoss(), "dice_all": DiceLoss(classes="all"), "dice_no_smooth": DiceLoss(smooth=0.0),
        "ohem": OhemCrossEntropyLoss(thresh=0.5, min_kept=8),
        "ohem_weighted": OhemCrossEntropyLoss(thresh=0.3, min_kept=3, class_weights=weights),
        "focal": FocalLoss(), "focal_alpha": FocalLoss(gamma=0.5, alpha=weights),
        "lovasz": LovaszSoftmaxLoss(), "lovasz_all": LovaszSoftmaxLoss(classes="all"),
        "lovasz_per_image": LovaszSoftmaxLoss(per_image=True), "lovasz_binned": LovaszSoftmaxLoss(bins=256),
        "lovasz_binned_all_per_image": LovaszSoftmaxLoss(classes="all", per_image=True, bins=64),
        "combined": create_loss({"ce": 1.0, "dice": 0.5}), "weighted_ce": WeightedCrossEntropyLoss(),
    }


EVERY_LOSS = list(_every_loss())


# --------------------------------------------------------------------------- every loss


@pytest.mark.parametrize("name", EVERY_LOSS)
def test_all_ignore_batch_gives_zero_with_zero_gradients(name: str) -> None:
    logits, _ = _batch()
    target = torch.full((2, 5, 6), IGNORE)
    loss = _every_loss()[name](logits, target)
    assert loss.dim() == 0 and loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("name", EVERY_LOSS)
def test_ignored_pixels_change_neither_value_nor_gradient(name: str) -> None:
    logits, target = _batch()
    loss_fn = _every_loss()[name]
    loss = loss_fn(logits, target)
    loss.backward()
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[ignored], torch.zeros_like(logits.grad[ignored]))
    changed = torch.where(ignored, torch.randn_like(logits) * 50, logits.detach())
    torch.testing.assert_close(loss_fn(changed, target), loss.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", EVERY_LOSS)
def test_half_precision_logits_give_a_finite_float32_loss(name: str) -> None:
    logits, target = _batch(dtype=torch.bfloat16)
    loss = _every_loss()[name](logits, target)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", list_losses())
def test_shape_mismatch_is_a_clear_error(name: str) -> None:
    with pytest.raises(ValueError, match="does not match logits"):
        create_loss(name)(torch.randn(2, 4, 8, 8), torch.zeros(2, 16, 16, dtype=torch.long))


@pytest.mark.parametrize("name", list_losses())
def test_gradients_match_finite_differences(name: str) -> None:
    logits, target = _batch((1, 3, 3, 4), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: create_loss(name)(x, target), (logits,))


# --------------------------------------------------------------------------- cross-entropy


def test_cross_entropy_equals_pytorch_with_ignore_pixels() -> None:
    logits, target = _batch()
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(CrossEntropyLoss()(logits, target), expected)


def test_cross_entropy_equals_pytorch_with_class_weights_and_smoothing() -> None:
    logits, target = _batch()
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    for smoothing in (0.0, 0.2):
        expected = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE, label_smoothing=smoothing)
        loss = CrossEntropyLoss(class_weights=weights.tolist(), label_smoothing=smoothing)(logits, target)
        torch.testing.assert_close(loss, expected)


def test_cross_entropy_accepts_uint8_masks_and_other_ignore_values() -> None:
    logits, target = _batch()
    target[target == IGNORE] = -100
    expected = F.cross_entropy(logits, target)  # PyTorch's own default ignore_index is -100
    torch.testing.assert_close(CrossEntropyLoss(ignore_index=-100)(logits, target), expected)
    small = target.clamp_min(0).to(torch.uint8)
    torch.testing.assert_close(CrossEntropyLoss()(logits, small), F.cross_entropy(logits, small.long()))


def test_cross_entropy_rejects_wrong_number_of_class_weights() -> None:
    logits, target = _batch()
    with pytest.raises(ValueError, match="3 class weights for 4 classes"):
        CrossEntropyLoss(class_weights=[1.0, 1.0, 1.0])(logits, target)


# --------------------------------------------------------------------------- dice


def _dice_reference(logits: Tensor, target: Tensor, smooth: float, classes: str) -> float:
    """Per-class loop in numpy over the valid pixels only."""
    probs = logits.detach().double().softmax(1).movedim(1, -1).numpy()
    labels = target.numpy()
    valid = labels != IGNORE
    probs, labels = probs[valid], labels[valid]
    losses = []
    for c in range(probs.shape[1]):
        truth = (labels == c).astype(float)
        if classes == "present" and truth.sum() == 0:
            continue
        dice = (2 * (probs[:, c] * truth).sum() + smooth) / (probs[:, c].sum() + truth.sum() + smooth)
        losses.append(1 - dice)
    return float(np.mean(losses))


def _ohem_reference(logits: Tensor, target: Tensor, thresh: float, min_kept: int,
                    weights: Tensor | None = None) -> Tensor:
    """Sort the valid pixels by the probability of their class, keep those under ``thresh`` or
    among the ``min_kept`` lowest, and take PyTorch's cross-entropy over them."""
    flat_logits = logits.detach().movedim(1, -1).reshape(-1, logits.shape[1]).double()
    flat_target = target.reshape(-1)
    valid = (flat_target != IGNORE).nonzero().squeeze(1)
    p_true = flat_logits[valid].softmax(1)[torch.arange(len(valid)), flat_target[valid]]
    order = p_true.argsort()
    kept = valid[order[:min_kept]].tolist() + valid[(p_true < thresh).nonzero().squeeze(1)].tolist()
    kept = sorted(set(kept))
    return F.cross_entropy(flat_logits[kept], flat_target[kept], weight=None if weights is None else weights.double())


@pytest.mark.parametrize("thresh, min_kept", [(0.5, 1), (0.3, 20), (0.9, 5), (0.05, 40)])
def test_ohem_equals_cross_entropy_over_the_pixels_it_keeps(thresh: float, min_kept: int) -> None:
    torch.manual_seed(3)
    logits, target = _batch((2, NUM_CLASSES, 6, 7))
    logits = (logits * 2).detach()
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5])
    for class_weights in (None, weights):
        loss = OhemCrossEntropyLoss(thresh=thresh, min_kept=min_kept, ignore_index=IGNORE, class_weights=class_weights)
        assert loss(logits, target).item() == pytest.approx(
            _ohem_reference(logits, target, thresh, min_kept, class_weights).item(), rel=1e-5)


def test_ohem_leaves_easy_pixels_without_gradient_and_can_be_plain_cross_entropy() -> None:
    torch.manual_seed(4)
    target = torch.randint(0, NUM_CLASSES, (1, 4, 4))
    logits = _perfect_logits(target).detach() / 10  # p(true) of about 0.998: easy
    logits[0, :, 0, :] = torch.randn(NUM_CLASSES, 4)  # the first row hard
    logits.requires_grad_()
    OhemCrossEntropyLoss(thresh=0.7, min_kept=2)(logits, target).backward()
    assert logits.grad[0, :, 1:].abs().max() == 0 and logits.grad[0, :, 0].abs().max() > 0
    everything = OhemCrossEntropyLoss(thresh=1.0, min_kept=1)  # every pixel is below 1
    plain = CrossEntropyLoss()
    hard_logits, hard_target = _batch()
    assert everything(hard_logits, hard_target).item() == pytest.approx(plain(hard_logits, hard_target).item())
    few_valid = torch.full_like(hard_target, IGNORE)
    few_valid[0, 0, :3] = hard_target[0, 0, :3].clamp(max=NUM_CLASSES - 1)
    strict = OhemCrossEntropyLoss(thresh=1e-6, min_kept=100)  # more kept than there are valid pixels
    assert strict(hard_logits, few_valid).item() == pytest.approx(plain(hard_logits, few_valid).item())


def test_ohem_options_are_checked_and_read_from_a_recipe() -> None:
    with pytest.raises(ValueError, match="thresh must be a probability"):
        OhemCrossEntropyLoss(thresh=0.0)
    with pytest.raises(ValueError, match="min_kept must be a positive whole number"):
        OhemCrossEntropyLoss(min_kept=0)
    loss = create_loss({"ohem": {"thresh": 0.6, "min_kept": 50}}, class_weights=[1.0, 3.0])
    ohem = loss.losses[0]
    assert isinstance(ohem, OhemCrossEntropyLoss) and (ohem.thresh, ohem.min_kept) == (0.6, 50)
    assert ohem.class_weights.tolist() == [1.0, 3.0]


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_dice_equals_reference(classes: str, smooth: float) -> None:
    logits, target = _batch()
    target[target == 3] = 2  # class 3 absent: "present" and "all" then differ
    loss = DiceLoss(smooth=smooth, classes=classes)(logits, target)
    assert loss.item() == pytest.approx(_dice_reference(logits, target, smooth, classes), rel=1e-5)


def test_dice_of_a_perfect_prediction_is_zero() -> None:
    _, target = _batch()
    assert DiceLoss()(_perfect_logits(target), target).item() == pytest.approx(0.0, abs=1e-6)
    assert DiceLoss(smooth=0.0)(_perfect_logits(target), target).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_with_a_list_of_classes_averages_only_those() -> None:
    logits, target = _batch()
    per_class = [DiceLoss(classes=[c])(logits, target) for c in range(NUM_CLASSES)]
    torch.testing.assert_close(DiceLoss(classes=[0, 2])(logits, target), (per_class[0] + per_class[2]) / 2)
    with pytest.raises(ValueError, match="present"):
        DiceLoss(classes="some")


# --------------------------------------------------------------------------- focal


def test_focal_with_gamma_zero_equals_cross_entropy() -> None:
    logits, target = _batch()
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target), expected)


def test_focal_equals_its_formula_with_class_alpha() -> None:
    logits, target = _batch()
    alpha = torch.tensor([0.25, 1.0, 0.5, 2.0])
    valid = target != IGNORE
    log_p = logits.log_softmax(1).movedim(1, -1)[valid].gather(1, target[valid][:, None]).squeeze(1)
    expected = (-alpha[target[valid]] * (1 - log_p.exp()) ** 2 * log_p).mean()
    torch.testing.assert_close(FocalLoss(gamma=2.0, alpha=alpha)(logits, target), expected)
    torch.testing.assert_close(FocalLoss(alpha=0.5)(logits, target), 0.5 * FocalLoss()(logits, target))


def test_focal_gradient_is_finite_for_confident_pixels_and_small_gamma() -> None:
    _, target = _batch()
    logits = _perfect_logits(target)
    loss = FocalLoss(gamma=0.5)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# --------------------------------------------------------------------------- lovasz


def _lovasz_class_reference(errors: np.ndarray, truth: np.ndarray) -> float:
    """Lovász extension of the Jaccard loss of one class, from the set definitions (Berman et al.).

    With pixels sorted by decreasing error and M_i the first i of them (the mispredicted set),
    Δ(M) = |M| / |{y = c} ∪ M|, and the loss is Σ_i e_i (Δ(M_i) - Δ(M_{i-1})).
    """
    order = np.argsort(-errors, kind="stable")
    truth_set = set(np.flatnonzero(truth).tolist())
    loss, previous, mispredicted = 0.0, 0.0, set()
    for pixel in order:
        mispredicted.add(int(pixel))
        jaccard_loss = len(mispredicted) / len(truth_set | mispredicted)
        loss += errors[pixel] * (jaccard_loss - previous)
        previous = jaccard_loss
    return loss


def _lovasz_reference(logits: Tensor, target: Tensor, classes: str, per_image: bool) -> float:
    probs = logits.detach().double().softmax(1).movedim(1, -1).numpy()
    labels = target.numpy()
    groups = [(probs[i], labels[i]) for i in range(len(labels))] if per_image else [(probs, labels)]
    group_losses = []
    for group_probs, group_labels in groups:
        valid = group_labels != IGNORE
        if not valid.any():
            continue
        group_probs, group_labels = group_probs[valid], group_labels[valid]
        losses = []
        for c in range(group_probs.shape[1]):
            truth = (group_labels == c).astype(float)
            if classes == "present" and truth.sum() == 0:
                continue
            losses.append(_lovasz_class_reference(np.abs(truth - group_probs[:, c]), truth))
        group_losses.append(np.mean(losses))
    return float(np.mean(group_losses)) if group_losses else 0.0


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_equals_reference(classes: str, per_image: bool) -> None:
    logits, target = _batch((3, NUM_CLASSES, 4, 5))
    target[target == 3] = 1  # one class absent
    target[2] = IGNORE  # one image with no valid pixel
    loss = LovaszSoftmaxLoss(classes=classes, per_image=per_image)(logits, target)
    assert loss.item() == pytest.approx(_lovasz_reference(logits, target, classes, per_image), rel=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_binned_finely_equals_reference(classes: str, per_image: bool) -> None:
    # 2**16 bins for 20 pixels an image: ties are rare, and a tie's error is within 2**-16.
    logits, target = _batch((3, NUM_CLASSES, 4, 5))
    target[target == 3] = 1
    target[2] = IGNORE
    loss = LovaszSoftmaxLoss(classes=classes, per_image=per_image, bins=2**16)(logits, target)
    assert loss.item() == pytest.approx(_lovasz_reference(logits, target, classes, per_image), rel=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_binned_follows_the_sort_at_a_training_size(per_image: bool) -> None:
    # 1024 bins for 6,144 pixels an image and many ties: value and gradient stay the sort's.
    logits, target = _batch((2, 6, 64, 96), ignore_fraction=0.2)
    exact_logits = logits.detach().mul(3).requires_grad_()
    binned_logits = exact_logits.detach().clone().requires_grad_()
    exact = LovaszSoftmaxLoss(per_image=per_image)(exact_logits, target)
    binned = LovaszSoftmaxLoss(per_image=per_image, bins=1024)(binned_logits, target)
    exact.backward()
    binned.backward()
    assert binned.item() == pytest.approx(exact.item(), rel=1e-3)
    similarity = F.cosine_similarity(binned_logits.grad.flatten(), exact_logits.grad.flatten(), dim=0)
    assert similarity.item() > 0.999
    coarse = LovaszSoftmaxLoss(per_image=per_image, bins=2)(exact_logits, target)  # the test can fail
    assert coarse.item() != pytest.approx(exact.item(), rel=1e-3)


def test_lovasz_bins_are_checked_and_read_from_a_recipe() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="lovasz bins must be a positive integer or None"):
            LovaszSoftmaxLoss(bins=bad)
    loss = create_loss({"ce": 1.0, "lovasz": {"weight": 0.5, "bins": 1024}})
    assert loss.weights == [1.0, 0.5] and loss.losses[1].bins == 1024


@pytest.mark.parametrize("bins", [None, 128])
def test_lovasz_of_a_perfect_prediction_is_zero(bins: int | None) -> None:
    _, target = _batch()
    for per_image in (False, True):
        loss = LovaszSoftmaxLoss(per_image=per_image, bins=bins)(_perfect_logits(target), target)
        assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_lovasz_grad_by_hand() -> None:
    # Sorted ground truth [1, 0, 1]: Jaccard losses of the growing sets 1/2, 2/3, 3/3.
    grad = lovasz_grad(torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(grad, torch.tensor([0.5, 2 / 3 - 0.5, 1 - 2 / 3]))
    columns = lovasz_grad(torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))  # two classes at once
    torch.testing.assert_close(columns[:, 0], grad)
    torch.testing.assert_close(columns[:, 1], lovasz_grad(torch.tensor([0.0, 0.0, 1.0])))


# --------------------------------------------------------------------------- class weights from data


def test_median_frequency_weights_by_hand() -> None:
    # freq = 10/100, 30/100, absent, 60/200 -> median of (0.1, 0.3, 0.3) = 0.3.
    weights = median_frequency_weights([10, 30, 0, 60], [100, 100, 0, 200])
    torch.testing.assert_close(weights, torch.tensor([3.0, 1.0, 0.0, 1.0]))
    # Without image totals: freq = (1, 2, 4, 8) / 15, median (2 + 4) / 2 / 15.
    weights = median_frequency_weights(torch.tensor([10, 20, 40, 80]))
    torch.testing.assert_close(weights, torch.tensor([3.0, 1.5, 0.75, 0.375]))
    assert weights.dtype == torch.float32


def test_inverse_frequency_weights_by_hand() -> None:
    # 1 / freq = 10, 10/3, absent, 10/6; their mean over present classes is 5.
    weights = inverse_frequency_weights([10, 30, 0, 60])
    torch.testing.assert_close(weights, torch.tensor([2.0, 2 / 3, 0.0, 1 / 3]))
    root = inverse_frequency_weights([10, 40], power=0.5)  # 1/sqrt(0.2), 1/sqrt(0.8) = 2:1
    torch.testing.assert_close(root, torch.tensor([4 / 3, 2 / 3]))


def test_class_pixel_counts_from_masks_and_from_a_dataset() -> None:
    masks = [torch.tensor([[0, 0], [1, IGNORE]]), np.array([[1, 1], [1, 2]], dtype=np.uint8)]
    counts = class_pixel_counts(masks, num_classes=4)
    assert counts.class_pixels.tolist() == [2, 4, 1, 0]
    assert counts.image_pixels.tolist() == [3, 7, 4, 0]  # labelled pixels of the images holding the class
    dataset = [(torch.zeros(3, 2, 2), torch.as_tensor(m).long()) for m in masks]
    from_dataset = class_pixel_counts(dataset, 4)
    assert torch.equal(from_dataset.class_pixels, counts.class_pixels)
    assert torch.equal(from_dataset.image_pixels, counts.image_pixels)
    weights = median_frequency_weights(*counts)  # freq 2/3, 4/7, 1/4 -> median 4/7
    torch.testing.assert_close(weights, torch.tensor([6 / 7, 1.0, 16 / 7, 0.0]))


def test_class_pixel_counts_rejects_unknown_labels() -> None:
    with pytest.raises(ValueError, match=r"values \[7\]"):
        class_pixel_counts([torch.tensor([[0, 7]])], num_classes=4)
    with pytest.raises(ValueError, match="no class"):
        median_frequency_weights([0, 0])


# --------------------------------------------------------------------------- combining and building


def test_combined_loss_is_the_weighted_sum() -> None:
    logits, target = _batch()
    combined = CombinedLoss([(1.0, CrossEntropyLoss()), (0.5, DiceLoss()), (2.0, LovaszSoftmaxLoss())])
    expected = CrossEntropyLoss()(logits, target) + 0.5 * DiceLoss()(logits, target) \
        + 2.0 * LovaszSoftmaxLoss()(logits, target)
    torch.testing.assert_close(combined(logits, target), expected)


def test_create_loss_reads_names_mappings_and_lists() -> None:
    assert set(list_losses()) == {"ce", "dice", "focal", "lovasz", "ohem", "weighted_ce"}
    assert isinstance(create_loss("ce"), CrossEntropyLoss)
    assert isinstance(create_loss("Lovasz"), LovaszSoftmaxLoss)
    combined = create_loss({"ce": 1.0, "dice": 0.5})
    assert isinstance(combined, CombinedLoss) and combined.weights == [1.0, 0.5]
    assert [type(m) for m in combined.losses] == [CrossEntropyLoss, DiceLoss]
    for spec in (["ce", "dice"], [("ce", 1.0), ("dice", 1.0)], [{"ce": 1}, {"dice": 1}]):
        built = create_loss(spec)
        assert built.weights == [1.0, 1.0] and [type(m) for m in built.losses] == [CrossEntropyLoss, DiceLoss]
    focal = create_loss({"focal": {"weight": 0.3, "gamma": 3.0}})
    assert focal.weights == [0.3] and focal.losses[0].gamma == 3.0


def test_create_loss_passes_ignore_index_and_class_weights() -> None:
    loss = create_loss({"ce": 1.0, "focal": 1.0, "dice": 1.0}, ignore_index=-1, class_weights=[1.0, 2.0])
    assert all(m.ignore_index == -1 for m in loss.losses)
    assert loss.losses[0].class_weights.tolist() == [1.0, 2.0]
    assert loss.losses[1].alpha.tolist() == [1.0, 2.0]


def test_create_loss_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"unknown loss 'iou' \(known: ce, dice, focal, lovasz, ohem, weighted_ce\)"):
        create_loss({"ce": 1.0, "iou": 1.0})
    with pytest.raises(ValueError, match="finite number"):
        create_loss({"ce": "heavy"})
    with pytest.raises(ValueError, match="bad options"):
        create_loss({"dice": {"gamma": 2.0}})
    with pytest.raises(ValueError, match="cannot read loss spec"):
        create_loss(3)


def test_loss_with_aux_adds_the_weighted_auxiliary_loss() -> None:
    logits, target = _batch((2, NUM_CLASSES, 8, 8))
    aux = torch.randn(2, NUM_CLASSES, 8, 8)
    loss_fn = CrossEntropyLoss()
    torch.testing.assert_close(loss_with_aux(loss_fn, logits, target), loss_fn(logits, target))
    expected = loss_fn(logits, target) + 0.4 * loss_fn(aux, target)
    torch.testing.assert_close(loss_with_aux(loss_fn, logits, target, aux), expected)
    small_aux = torch.randn(2, NUM_CLASSES, 4, 4)  # a lower-resolution head is resized to the target
    resized = F.interpolate(small_aux, size=(8, 8), mode="bilinear", align_corners=False)
    expected = loss_fn(logits, target) + 0.5 * loss_fn(resized, target)
    torch.testing.assert_close(loss_with_aux(loss_fn, logits, target, small_aux, aux_weight=0.5), expected)


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", EVERY_LOSS)
def test_cuda_matches_cpu(name: str) -> None:
    logits, target = _batch()
    loss_fn = _every_loss()[name]  # built on the CPU: class weights must follow the logits
    expected = loss_fn(logits, target)
    loss = loss_fn(logits.detach().cuda().requires_grad_(), target.cuda())
    assert loss.device.type == "cuda"
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-4, abs_tol=1e-6)
    empty = loss_fn(logits.detach().cuda(), torch.full_like(target, IGNORE).cuda())
    assert empty.item() == 0.0


def test_loss_benchmark_times_and_compares_the_lovasz_losses(tmp_path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "losses.py"
    output = tmp_path / "losses.json"
    done = subprocess.run([sys.executable, str(script), "--size", "24", "32", "--batch-size", "2", "--steps", "1",
                           "--threads", "1", "--bins", "4096", "--output", str(output)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(output.read_text())
    values = report["values"]
    assert {"pixelwise ce", "pixelwise lovasz (sort)", "pixelwise lovasz (bins=4096)"} <= set(report["median_seconds"])
    assert values["pixelwise lovasz (bins=4096)"] == pytest.approx(values["pixelwise lovasz (sort)"], rel=1e-3)
    assert "binned against sorted: relative difference" in done.stdout
