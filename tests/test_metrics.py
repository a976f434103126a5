"""ConfusionMatrix and its metrics: against numpy, against torchmetrics, and the documented rules."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex

import pixelwise.metrics.confusion as metrics
from pixelwise.data.classes import class_info
from pixelwise.metrics import ConfusionMatrix

NUM_CLASSES = 7
IGNORE = 255
ABSENT = 5          # in neither ground truth nor prediction (predicted only at ignore pixels)
ONLY_PREDICTED = 6  # never in the ground truth, sometimes predicted
NEVER_PREDICTED = 4  # in the ground truth, never predicted


def make_maps(shape: tuple[int, ...] = (3, 29, 41), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random target/prediction with 10% ignore pixels and the three kinds of missing classes."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES - 2, shape, generator=generator)  # classes 0-4
    prediction = torch.randint(0, NUM_CLASSES, shape, generator=generator)
    prediction[prediction == NEVER_PREDICTED] = 0
    ignore = torch.rand(shape, generator=generator) < 0.1
    target[ignore] = IGNORE
    prediction[ignore] = ABSENT  # what a model predicts at ignore pixels must not count
    prediction[~ignore & (prediction == ABSENT)] = 1
    return target, prediction


def numpy_matrix(target: torch.Tensor, prediction: torch.Tensor, num_classes: int = NUM_CLASSES,
                 ignore_index: int | None = IGNORE) -> np.ndarray:
    """Reference confusion matrix: drop ignore pixels, then np.bincount."""
    t = target.numpy().ravel().astype(np.int64)
    p = prediction.numpy().ravel().astype(np.int64)
    keep = t != ignore_index if ignore_index is not None else np.ones(t.shape, bool)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes**2).reshape(num_classes, num_classes)


def numpy_metrics(matrix: np.ndarray) -> dict:
    """Reference metrics written straight from the definitions."""
    m = matrix.astype(np.float64)
    tp, gt, pred = np.diag(m), m.sum(1), m.sum(0)
    union = gt + pred - tp
    present, in_gt = union > 0, gt > 0
    iou = np.where(present, tp / np.where(present, union, 1), np.nan)
    recall = np.where(in_gt, tp / np.where(in_gt, gt, 1), np.nan)
    dice = np.where(present, 2 * tp / np.where(present, gt + pred, 1), np.nan)
    return {"iou": iou, "class_accuracy": recall, "dice": dice,
            "mean_iou": iou[present].mean(), "mean_dice": dice[present].mean(),
            "mean_class_accuracy": recall[in_gt].mean(), "pixel_accuracy": tp.sum() / m.sum(),
            "frequency_weighted_iou": (gt[in_gt] * iou[in_gt]).sum() / gt.sum()}


def counted(target: torch.Tensor, prediction: torch.Tensor, **kwargs) -> ConfusionMatrix:
    """A fresh matrix (``NUM_CLASSES`` unless given) after one update."""
    matrix = ConfusionMatrix(kwargs.pop("num_classes", NUM_CLASSES), **kwargs)
    matrix.update(target, prediction)
    return matrix


def torchmetrics_value(metric_class: type, average: str, target: torch.Tensor,
                       prediction: torch.Tensor) -> torch.Tensor:
    """torchmetrics' value of ``metric_class(average=average, ignore_index=255)`` on one batch."""
    metric = metric_class(num_classes=NUM_CLASSES, ignore_index=IGNORE, average=average)
    metric.update(prediction, target)
    return metric.compute().double()


# -- counting equals the numpy reference ----------------------------------------------------------

@pytest.mark.parametrize("target_dtype,prediction_dtype", [(torch.int64, torch.int64), (torch.uint8, torch.int64),
                                                            (torch.int32, torch.uint8), (torch.int16, torch.int32)])
def test_matrix_equals_numpy_bincount(target_dtype: torch.dtype, prediction_dtype: torch.dtype) -> None:
    target, prediction = make_maps()
    matrix = counted(target.to(target_dtype), prediction.to(prediction_dtype))
    np.testing.assert_array_equal(matrix.matrix.numpy(), numpy_matrix(target, prediction))
    assert matrix.matrix.dtype == torch.int64


def test_metrics_equal_numpy_reference() -> None:
    target, prediction = make_maps()
    matrix = counted(target, prediction)
    expected = numpy_metrics(numpy_matrix(target, prediction))
    for name in ("iou", "class_accuracy", "dice"):
        np.testing.assert_allclose(getattr(matrix, name).numpy(), expected[name], rtol=1e-12, equal_nan=True)
    for name in ("mean_iou", "mean_dice", "mean_class_accuracy", "pixel_accuracy", "frequency_weighted_iou"):
        assert getattr(matrix, name) == pytest.approx(expected[name], rel=1e-12), name


@pytest.mark.parametrize("ignore_index", [None, -1, -100, 7, 1000])
def test_any_ignore_index_outside_the_classes(ignore_index: int | None) -> None:
    target, prediction = make_maps()
    if ignore_index is None:
        target[target == IGNORE] = 0
    else:
        target[target == IGNORE] = ignore_index
    matrix = counted(target, prediction, ignore_index=ignore_index)
    np.testing.assert_array_equal(matrix.matrix.numpy(), numpy_matrix(target, prediction, ignore_index=ignore_index))


def test_chunk_boundaries_do_not_change_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    target, prediction = make_maps()
    expected = counted(target, prediction).matrix
    monkeypatch.setattr(metrics, "CPU_CHUNK", 97)  # many chunks, the last one short
    assert torch.equal(counted(target, prediction).matrix, expected)
    monkeypatch.setattr(metrics, "CPU_CHUNK", 10**9)  # one pass, as on accelerators
    assert torch.equal(counted(target, prediction).matrix, expected)


def test_non_contiguous_inputs() -> None:
    target, prediction = make_maps()
    matrix = counted(target.transpose(1, 2), prediction.transpose(1, 2))
    np.testing.assert_array_equal(matrix.matrix.numpy(), numpy_matrix(target, prediction))


def test_update_logits_is_update_of_argmax() -> None:
    target, _ = make_maps()
    logits = torch.randn(target.shape[0], NUM_CLASSES, *target.shape[1:])
    from_logits = ConfusionMatrix(NUM_CLASSES)
    from_logits.update_logits(target, logits)
    assert torch.equal(from_logits.matrix, counted(target, logits.argmax(1)).matrix)


# -- the documented rules -------------------------------------------------------------------------

def test_ignore_pixels_never_count() -> None:
    target, prediction = make_maps()
    matrix = counted(target, prediction)
    assert matrix.num_pixels == int((target != IGNORE).sum())
    assert matrix.matrix[ABSENT].sum() == 0 and matrix.matrix[:, ABSENT].sum() == 0  # predicted only at ignore


def test_absent_class_is_skipped_not_zero() -> None:
    # Class 2 is absent from both maps: IoU NaN and left out of the mean, which is (1 + 1/2) / 2.
    target = torch.tensor([[0, 0, 1, 1, IGNORE]])
    prediction = torch.tensor([[0, 0, 1, 0, 2]])
    matrix = counted(target, prediction, num_classes=3)
    iou = matrix.iou
    assert math.isnan(iou[2]) and iou[:2].tolist() == pytest.approx([2 / 3, 1 / 2])
    assert matrix.mean_iou == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert matrix.summary()["present_classes"] == 2


def test_predicted_only_class_counts_as_zero_iou() -> None:
    target = torch.tensor([[0, 0, 1, 1]])
    prediction = torch.tensor([[0, 0, 1, 2]])
    matrix = counted(target, prediction, num_classes=3)
    assert matrix.iou.tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert matrix.mean_iou == pytest.approx(0.5)
    assert matrix.mean_class_accuracy == pytest.approx(0.75)  # recall over ground-truth classes 0 and 1


def test_all_ignore_batch_changes_nothing_and_summary_has_no_nan() -> None:
    matrix = ConfusionMatrix(NUM_CLASSES)
    matrix.update(torch.full((2, 8, 8), IGNORE), torch.randint(0, NUM_CLASSES, (2, 8, 8)))
    assert matrix.num_pixels == 0 and not matrix.matrix.any()
    summary = matrix.summary()
    json.dumps(summary, allow_nan=False)  # raises on NaN
    assert summary["mean_iou"] == summary["pixel_accuracy"] == summary["mean_dice"] == 0.0
    assert summary["mean_class_accuracy"] == summary["frequency_weighted_iou"] == 0.0
    assert summary["iou"] == [None] * NUM_CLASSES and summary["present_classes"] == 0

    target, prediction = make_maps()
    matrix.update(target, prediction)
    before = matrix.matrix.clone()
    matrix.update(torch.full((1, 5, 5), IGNORE), torch.zeros(1, 5, 5, dtype=torch.long))
    assert torch.equal(matrix.matrix, before)


def test_summary_is_json_and_complete() -> None:
    target, prediction = make_maps()
    summary = counted(target, prediction).summary()
    restored = json.loads(json.dumps(summary, allow_nan=False))
    assert restored["iou"][ABSENT] is None and restored["class_accuracy"][ONLY_PREDICTED] is None
    assert restored["iou"][ONLY_PREDICTED] == 0.0 and restored["dice"][NEVER_PREDICTED] == 0.0
    assert restored["present_classes"] == NUM_CLASSES - 1
    assert sum(restored["gt_pixels"]) == sum(restored["predicted_pixels"]) == restored["num_pixels"]
    expected = numpy_metrics(numpy_matrix(target, prediction))
    assert restored["mean_iou"] == pytest.approx(expected["mean_iou"])


def test_table_names_classes_and_marks_absent_ones() -> None:
    target, prediction = make_maps()
    names = [f"class_{i}" for i in range(NUM_CLASSES)]
    table = counted(target, prediction).table(names)
    absent_line = next(line for line in table.splitlines() if line.startswith("class_5"))
    assert absent_line.split()[1:4] == ["-", "-", "-"]
    assert "mean IoU" in table and "frequency-weighted IoU" in table
    with pytest.raises(ValueError, match="2 class names"):
        counted(target, prediction).table(["a", "b"])


# -- against torchmetrics -------------------------------------------------------------------------

def test_mean_iou_equals_torchmetrics_macro_jaccard() -> None:
    target, prediction = make_maps()
    matrix = counted(target, prediction)
    macro = torchmetrics_value(MulticlassJaccardIndex, "macro", target, prediction)
    assert matrix.mean_iou == pytest.approx(float(macro))
    assert matrix.frequency_weighted_iou == pytest.approx(
        float(torchmetrics_value(MulticlassJaccardIndex, "weighted", target, prediction)))


def test_per_class_iou_and_dice_differ_from_torchmetrics_only_on_absent_classes() -> None:
    target, prediction = make_maps()
    matrix = counted(target, prediction)
    for ours, metric_class in ((matrix.iou, MulticlassJaccardIndex), (matrix.dice, MulticlassF1Score)):
        theirs = torchmetrics_value(metric_class, "none", target, prediction)
        defined = ~ours.isnan()
        torch.testing.assert_close(ours[defined], theirs[defined])
        assert defined.tolist() == [i != ABSENT for i in range(NUM_CLASSES)]
        assert theirs[ABSENT] == 0.0  # torchmetrics: zero_division; ours: NaN, skipped by the mean


def test_mean_dice_equals_torchmetrics_macro_f1() -> None:
    target, prediction = make_maps()
    assert counted(target, prediction).mean_dice == pytest.approx(
        float(torchmetrics_value(MulticlassF1Score, "macro", target, prediction)))


def test_pixel_accuracy_equals_torchmetrics_micro_accuracy() -> None:
    target, prediction = make_maps()
    assert counted(target, prediction).pixel_accuracy == pytest.approx(
        float(torchmetrics_value(MulticlassAccuracy, "micro", target, prediction)))


def test_mean_class_accuracy_differs_from_torchmetrics_macro_on_predicted_only_classes() -> None:
    target, prediction = make_maps()
    matrix = counted(target, prediction)
    recall = matrix.class_accuracy
    theirs = torchmetrics_value(MulticlassAccuracy, "none", target, prediction)
    in_gt = ~recall.isnan()
    torch.testing.assert_close(recall[in_gt], theirs[in_gt])
    # torchmetrics' macro averages over classes in ground truth or prediction: the class that is
    # only predicted enters with recall 0. Ours averages over ground-truth classes only.
    theirs_macro = float(torchmetrics_value(MulticlassAccuracy, "macro", target, prediction))
    assert matrix.mean_class_accuracy == pytest.approx(float(recall[in_gt].mean()))
    assert theirs_macro == pytest.approx(float(recall[in_gt].sum() / (in_gt.sum() + 1)))
    assert theirs_macro < matrix.mean_class_accuracy


def test_empty_matrix_is_zero_where_torchmetrics_is_nan() -> None:
    target, prediction = torch.full((1, 4, 4), IGNORE), torch.zeros(1, 4, 4, dtype=torch.long)
    matrix = counted(target, prediction)
    assert matrix.num_pixels == 0
    # torchmetrics divides by zero in the macro and weighted Jaccard index; ours is 0, never NaN.
    assert torchmetrics_value(MulticlassJaccardIndex, "macro", target, prediction).isnan()
    assert torchmetrics_value(MulticlassJaccardIndex, "weighted", target, prediction).isnan()
    assert matrix.mean_iou == matrix.frequency_weighted_iou == 0.0
    # Where torchmetrics gives a number, it is ours.
    assert float(torchmetrics_value(MulticlassF1Score, "macro", target, prediction)) == matrix.mean_dice == 0.0
    assert float(torchmetrics_value(MulticlassAccuracy, "micro", target, prediction)) == matrix.pixel_accuracy == 0.0
    assert float(torchmetrics_value(MulticlassAccuracy, "macro", target, prediction)) == 0.0
    assert matrix.mean_class_accuracy == 0.0


def test_nearly_empty_matrix_has_the_hand_computed_values_and_torchmetrics_means() -> None:
    """Two counted pixels among ignore ones — (truth 0, predicted 0) and (truth 1, predicted 0) —
    whatever is predicted at the ignore pixels. Class 0: TP 1, FP 1, FN 0; class 1: TP 0, FN 1;
    classes 2-6 absent from both."""
    target = torch.full((1, 3, 5), IGNORE)
    prediction = torch.randint(0, NUM_CLASSES, (1, 3, 5), generator=torch.Generator().manual_seed(1))
    target[0, 1, 2], prediction[0, 1, 2] = 0, 0
    target[0, 2, 4], prediction[0, 2, 4] = 1, 0
    matrix = counted(target, prediction)
    expected = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    expected[0, 0] = expected[1, 0] = 1
    assert torch.equal(matrix.matrix, expected)

    absent = [math.nan] * (NUM_CLASSES - 2)
    for values, hand in ((matrix.iou, [1 / 2, 0.0]), (matrix.dice, [2 / 3, 0.0]), (matrix.class_accuracy, [1.0, 0.0])):
        torch.testing.assert_close(values, torch.tensor(hand + absent, dtype=values.dtype), rtol=0, atol=0,
                                   equal_nan=True)
    assert matrix.mean_iou == 0.25  # (1/2 + 0) / 2: the five absent classes are skipped
    assert matrix.frequency_weighted_iou == 0.25  # (1 · 1/2 + 1 · 0) / 2
    assert matrix.pixel_accuracy == 0.5
    assert matrix.mean_class_accuracy == 0.5  # (1 + 0) / 2 over the ground-truth classes
    assert matrix.mean_dice == pytest.approx(1 / 3, rel=1e-15)

    # torchmetrics (float32) agrees on every mean here.
    assert float(torchmetrics_value(MulticlassJaccardIndex, "macro", target, prediction)) == 0.25
    assert float(torchmetrics_value(MulticlassJaccardIndex, "weighted", target, prediction)) == 0.25
    assert float(torchmetrics_value(MulticlassAccuracy, "micro", target, prediction)) == 0.5
    assert float(torchmetrics_value(MulticlassAccuracy, "macro", target, prediction)) == 0.5
    assert float(torchmetrics_value(MulticlassF1Score, "macro", target, prediction)) == pytest.approx(1 / 3, rel=1e-6)


# -- streaming, merging, saving -------------------------------------------------------------------

def test_streaming_updates_equal_one_big_update() -> None:
    target, prediction = make_maps((6, 17, 23))
    streamed = ConfusionMatrix(NUM_CLASSES)
    for index in range(6):
        streamed.update(target[index], prediction[index])
    assert torch.equal(streamed.matrix, counted(target, prediction).matrix)


def test_merge_equals_joint_and_reset_clears() -> None:
    target, prediction = make_maps((4, 16, 16))
    first, second = counted(target[:1], prediction[:1]), counted(target[1:], prediction[1:])
    assert first.merge(second) is first
    assert torch.equal(first.matrix, counted(target, prediction).matrix)
    first.reset()
    assert first.num_pixels == 0
    with pytest.raises(ValueError, match="cannot merge"):
        first.merge(ConfusionMatrix(NUM_CLASSES + 1))


def test_all_reduce_without_process_group_is_a_no_op() -> None:
    target, prediction = make_maps()
    matrix = counted(target, prediction)
    before = matrix.matrix.clone()
    assert matrix.all_reduce() is matrix
    assert torch.equal(matrix.matrix, before)


def test_to_dict_round_trip_through_json() -> None:
    target, prediction = make_maps()
    matrix = counted(target, prediction)
    restored = ConfusionMatrix.from_dict(json.loads(json.dumps(matrix.to_dict())))
    assert torch.equal(restored.matrix, matrix.matrix)
    assert (restored.num_classes, restored.ignore_index) == (NUM_CLASSES, IGNORE)


def test_for_classes_takes_num_classes_and_ignore_index_from_class_info() -> None:
    matrix = ConfusionMatrix.for_classes(class_info(["road", "car", "sky"], ignore_index=250))
    assert (matrix.num_classes, matrix.ignore_index) == (3, 250)


# -- errors ---------------------------------------------------------------------------------------

def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"target shape \(2, 4, 4\) != prediction shape \(2, 4, 5\)"):
        ConfusionMatrix(3).update(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="logits must be N x 3"):
        ConfusionMatrix(3).update_logits(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4, 4))


def test_float_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="integer class indices.*update_logits"):
        ConfusionMatrix(3).update(torch.zeros(4, dtype=torch.long), torch.zeros(4))


def test_prediction_out_of_range_names_values_and_counts() -> None:
    target = torch.zeros(2, 3, 3, dtype=torch.long)
    prediction = torch.zeros(2, 3, 3, dtype=torch.long)
    prediction[0, 0, :] = 3
    prediction[1, 0, 0] = -1
    with pytest.raises(ValueError, match=r"prediction has values outside \[0, 3\): 3 \(3 pixels\), -1 \(1 pixels\)"):
        ConfusionMatrix(3).update(target, prediction)


@pytest.mark.parametrize("bad", [3, 254, 256, 10**9, -1])
def test_target_out_of_range_names_values_and_counts(bad: int) -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, :2] = bad
    target[0, 1, :] = IGNORE
    matrix = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=rf"target has values outside \[0, 3\) other than ignore_index 255: "
                                         rf"{bad} \(2 pixels\)"):
        matrix.update(target, torch.zeros_like(target))
    assert matrix.num_pixels == 0  # a refused batch counts nothing


def test_bad_label_in_a_late_chunk_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "CPU_CHUNK", 64)
    target, prediction = make_maps()
    target.view(-1)[-1] = 9
    with pytest.raises(ValueError, match=r"9 \(1 pixels\)"):
        ConfusionMatrix(NUM_CLASSES).update(target, prediction)


def test_ignore_index_may_not_be_a_class() -> None:
    with pytest.raises(ValueError, match="is a class index"):
        ConfusionMatrix(3, ignore_index=0)


# -- devices --------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA not available"))])
def test_device_follows_the_inputs(device: str) -> None:
    target, prediction = make_maps()
    matrix = ConfusionMatrix(NUM_CLASSES)
    matrix.update(target.to(device), prediction.to(device))
    assert matrix.device.type == device
    np.testing.assert_array_equal(matrix.matrix.cpu().numpy(), numpy_matrix(target, prediction))
    assert matrix.mean_iou == pytest.approx(numpy_metrics(numpy_matrix(target, prediction))["mean_iou"])
    bad = target.clone()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"9 \(1 pixels\)"):
        matrix.update(bad.to(device), prediction.to(device))


def test_all_reduce_in_a_process_group(tmp_path: Path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        target, prediction = make_maps()
        matrix = counted(target, prediction)
        before = matrix.matrix.clone()
        matrix.all_reduce()  # one process: the sum is its own counts
        assert torch.equal(matrix.matrix, before)
    finally:
        dist.destroy_process_group()
