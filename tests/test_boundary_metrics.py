"""BoundaryMetric (Boundary IoU, trimap accuracy): against scikit-image, by hand, and its rules."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from skimage.morphology import erosion

from pixelwise.metrics import BoundaryMetric, ConfusionMatrix

NUM_CLASSES = 5
IGNORE = 255

# -- the peer: the official mask_to_boundary, with scikit-image in place of OpenCV --------------


def peer_boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """``mask`` minus its erosion: zero-pad by 1, erode ``width`` times with a 3 x 3 square, crop
    (boundary-iou-api ``mask_to_boundary``, with a fixed ``width`` for its dilation)."""
    padded = np.pad(mask, 1)  # zeros: outside the image is background
    # mode="ignore": beyond the padded array nothing erodes, as cv2.erode's default border
    eroded = erosion(padded, [(np.ones((3, 3), bool), width)], mode="ignore")[1:-1, 1:-1]
    return mask & ~eroded


def peer_edge(mask: np.ndarray, width: int) -> np.ndarray:
    """``mask`` minus its erosion by a (2 width + 1) square, outside the image not counting."""
    return mask & ~erosion(mask, np.ones((2 * width + 1, 2 * width + 1), bool), mode="ignore")


def peer_counts(target: torch.Tensor, prediction: torch.Tensor, width: int, num_classes: int = NUM_CLASSES,
                ignore_index: int | None = IGNORE) -> dict[str, np.ndarray | int]:
    """Per-class intersection and union of the boundaries, and the trimap counts, image by image."""
    intersection = np.zeros(num_classes, np.int64)
    union = np.zeros(num_classes, np.int64)
    trimap = correct = 0
    for gt, pred in zip(target.reshape(-1, *target.shape[-2:]).numpy(),
                        prediction.reshape(-1, *prediction.shape[-2:]).numpy()):
        counted = np.ones(gt.shape, bool) if ignore_index is None else gt != ignore_index
        band = np.zeros(gt.shape, bool)
        for c in range(num_classes):
            g = peer_boundary(gt == c, width) & counted
            p = peer_boundary(pred == c, width) & counted
            intersection[c] += (g & p).sum()
            union[c] += (g | p).sum()
            band |= peer_edge(gt == c, width)
        band &= counted
        trimap += band.sum()
        correct += (band & (gt == pred)).sum()
    return {"intersection": intersection, "union": union, "trimap": int(trimap), "correct": int(correct)}


def make_maps(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocky random label maps (regions, not noise), the prediction a shifted, blotched copy,
    with ignored blobs and single ignored pixels in the target."""
    generator = torch.Generator().manual_seed(seed)
    height, width = shape[-2:]

    def blocks(block: int) -> torch.Tensor:
        coarse = torch.randint(0, NUM_CLASSES, (*shape[:-2], height // block + 2, width // block + 2),
                               generator=generator)
        fine = coarse.repeat_interleave(block, -2).repeat_interleave(block, -1)
        top, left = (int(torch.randint(0, block, (1,), generator=generator)) for _ in range(2))
        return fine[..., top:top + height, left:left + width].contiguous()

    target = blocks(5)
    prediction = torch.roll(target, shifts=(1, -2), dims=(-2, -1))
    blotches = blocks(3)
    replace = blocks(4) == 0
    prediction[replace] = blotches[replace]
    ignore = (blocks(6) == 0) | (torch.rand(target.shape, generator=generator) < 0.03)
    target[ignore] = IGNORE
    return target, prediction


def counted(target: torch.Tensor, prediction: torch.Tensor, width: int = 3, **kwargs) -> BoundaryMetric:
    metric = BoundaryMetric(kwargs.pop("num_classes", NUM_CLASSES), kwargs.pop("ignore_index", IGNORE), width)
    metric.update(target, prediction)
    return metric


def assert_matches_peer(metric: BoundaryMetric, peer: dict) -> None:
    np.testing.assert_array_equal(metric.intersection.cpu().numpy(), peer["intersection"])
    np.testing.assert_array_equal(metric.union.cpu().numpy(), peer["union"])
    assert metric.trimap_pixels == peer["trimap"]
    summary = metric.summary()
    with np.errstate(invalid="ignore"):
        expected = peer["intersection"] / peer["union"]
    assert summary["boundary_iou"] == [None if np.isnan(v) else pytest.approx(v) for v in expected]
    assert summary["mean_boundary_iou"] == pytest.approx(np.nanmean(expected))
    assert summary["trimap_accuracy"] == pytest.approx(peer["correct"] / peer["trimap"])


# -- against the peer -----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 37), (1, 23, 1), (2, 7, 7), (3, 13, 29), (2, 33, 17), (1, 64, 48)])
@pytest.mark.parametrize("width", [1, 2, 3, 5])
def test_matches_scikit_image(shape: tuple[int, ...], width: int) -> None:
    target, prediction = make_maps(shape, seed=sum(shape) + width)
    assert_matches_peer(counted(target, prediction, width), peer_counts(target, prediction, width))


def test_matches_scikit_image_without_ignore_index() -> None:
    target, prediction = make_maps((2, 31, 40), seed=7)
    target[target == IGNORE] = 0
    metric = counted(target, prediction, 2, ignore_index=None)
    assert_matches_peer(metric, peer_counts(target, prediction, 2, ignore_index=None))


# -- by hand --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("width", "band"), [(1, 24), (2, 40), (3, 48), (4, 49)])
@pytest.mark.parametrize("corner", [False, True])
def test_a_7x7_square_has_a_known_band(width: int, band: int, corner: bool) -> None:
    """7 x 7 = 49 pixels; eroding by d leaves a (7 - 2d)^2 core. At the image corner the border
    erodes like background, so the count is the same."""
    target = torch.zeros(1, 15, 15, dtype=torch.long)
    if corner:
        target[0, :7, :7] = 1
    else:
        target[0, 4:11, 4:11] = 1
    metric = counted(target, target, width)
    assert metric.counts[1, 1] == band  # |G_d| of the square
    assert metric.intersection[1] == metric.union[1] == band
    assert metric.summary()["boundary_iou"] == [1.0, 1.0, None, None, None]


def test_trimap_band_by_hand() -> None:
    """A 7 x 7 square in an 11 x 11 image, d = 1: the square's outer ring (24) and the ring of
    background around it (9 x 9 - 7 x 7 = 32) are the trimap; the image border is not an edge."""
    target = torch.zeros(1, 11, 11, dtype=torch.long)
    target[0, 2:9, 2:9] = 1
    prediction = target.clone()
    prediction[0, 2, 2:9] = 0  # the square's top row missed: 7 trimap pixels wrong
    metric = counted(target, prediction, 1)
    assert metric.trimap_pixels == 24 + 32
    assert metric.summary()["trimap_accuracy"] == pytest.approx((56 - 7) / 56)
    # Boundary of the square: ground truth 24, prediction (7 x 6 rectangle) 7*6 - 5*4 = 22, shared 17.
    assert metric.counts[1, 1] == 24 and metric.counts[2, 1] == 22 and metric.intersection[1] == 17
    assert metric.iou[1] == pytest.approx(17 / 29)


def test_perfect_prediction_scores_one() -> None:
    target, _ = make_maps((3, 40, 50), seed=3)
    prediction = torch.where(target == IGNORE, 4, target)  # anything may be predicted at ignored pixels
    summary = counted(target, prediction).summary()
    present = set(target[target != IGNORE].unique().tolist())
    assert summary["boundary_iou"] == [1.0 if c in present else None for c in range(NUM_CLASSES)]
    assert summary["mean_boundary_iou"] == summary["trimap_accuracy"] == 1.0
    assert summary["width"] == 3 and summary["trimap_pixels"] > 0


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_a_shift_costs_far_more_near_the_edges(shift: int) -> None:
    """A pole 4 px wide moved sideways: whole-image IoU and pixel accuracy hardly see it, since
    the background is large; near the pole's edges the same error is a large share."""
    target = torch.zeros(1, 128, 128, dtype=torch.long)
    target[0, 14:114, 40:44] = 1
    prediction = torch.roll(target, shift, dims=2)
    matrix = ConfusionMatrix(2)
    matrix.update(target, prediction)
    metric = counted(target, prediction, num_classes=2)
    # The pole (4 px <= 2d) is all boundary, so its Boundary IoU is its IoU (Cheng et al., sec. 4).
    assert metric.iou[1] == pytest.approx(float(matrix.iou[1])) == pytest.approx((4 - shift) / (4 + shift))
    background_drop, background_boundary_drop = 1 - float(matrix.iou[0]), 1 - float(metric.iou[0])
    assert background_boundary_drop > 10 * background_drop
    assert 1 - metric.mean_iou > 1.3 * (1 - matrix.mean_iou)
    assert 1 - metric.trimap_accuracy > 10 * (1 - matrix.pixel_accuracy)


def test_a_shift_of_a_large_object_shows_in_its_boundary_iou() -> None:
    target = torch.zeros(1, 96, 96, dtype=torch.long)
    target[0, 20:70, 20:70] = 1
    prediction = torch.roll(target, 2, dims=2)
    matrix = ConfusionMatrix(2)
    matrix.update(target, prediction)
    metric = counted(target, prediction, num_classes=2)
    assert float(matrix.iou[1]) == pytest.approx(48 / 52)
    assert 1 - float(metric.iou[1]) > 5 * (1 - float(matrix.iou[1]))


# -- the rules ------------------------------------------------------------------------------------

def test_batched_update_equals_image_by_image() -> None:
    target, prediction = make_maps((4, 21, 34), seed=11)
    batched = counted(target, prediction)
    one_by_one = BoundaryMetric(NUM_CLASSES, IGNORE)
    for gt, pred in zip(target, prediction):
        one_by_one.update(gt, pred)  # H x W
    assert torch.equal(batched.counts, one_by_one.counts)
    halves = BoundaryMetric(NUM_CLASSES, IGNORE)
    halves.update(target[:2], prediction[:2])
    other = BoundaryMetric(NUM_CLASSES, IGNORE)
    other.update(target[2:], prediction[2:])
    assert torch.equal(halves.merge(other).counts, batched.counts)
    leading = BoundaryMetric(NUM_CLASSES, IGNORE)
    leading.update(target.view(2, 2, 21, 34), prediction.view(2, 2, 21, 34))
    assert torch.equal(leading.counts, batched.counts)


def test_ignored_pixels_never_count() -> None:
    target, prediction = make_maps((2, 30, 30), seed=5)
    target[0, 5:20, 5:20] = IGNORE
    base = counted(target, prediction)
    other = prediction.clone()
    ignored = target == IGNORE
    # Changing the prediction only at pixels whose whole neighbourhood is ignored changes nothing.
    interior = ignored & ~torch.nn.functional.max_pool2d((~ignored).float()[:, None], 7, 1, 3)[:, 0].bool()
    assert interior.any()
    other[interior] = (other[interior] + 1) % NUM_CLASSES
    assert torch.equal(counted(target, other).counts, base.counts)
    # A class predicted only on ignored pixels is absent; a class only predicted elsewhere scores 0.
    target = torch.zeros(1, 9, 9, dtype=torch.long)
    target[0, :, :3] = IGNORE
    prediction = torch.zeros(1, 9, 9, dtype=torch.long)
    prediction[0, 2:5, 0:2] = 3
    prediction[0, 6:8, 5:7] = 4
    assert counted(target, prediction).summary()["boundary_iou"][3:] == [None, 0.0]


def test_nothing_counted_is_zero_not_nan() -> None:
    metric = BoundaryMetric(3)
    assert metric.summary() == {"boundary_iou": [None, None, None], "mean_boundary_iou": 0.0,
                                "trimap_accuracy": 0.0, "trimap_pixels": 0, "width": 3}
    metric.update(torch.full((1, 4, 4), IGNORE), torch.zeros(1, 4, 4, dtype=torch.long))
    assert metric.summary()["mean_boundary_iou"] == 0.0 and metric.trimap_pixels == 0


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_label_dtypes_agree(dtype: torch.dtype) -> None:
    target, prediction = make_maps((2, 19, 23), seed=2)
    expected = counted(target, prediction).counts
    assert torch.equal(counted(target.to(dtype), prediction.to(dtype)).counts, expected)
    assert torch.equal(counted(target.to(dtype), prediction).counts, expected)


def test_uint8_labels_do_not_wrap_onto_a_negative_ignore_index() -> None:
    """-100 as uint8 would be 156: a target of 156 is an error, not an ignored pixel."""
    target = torch.zeros(1, 4, 4, dtype=torch.uint8)
    target[0, 0, 0] = 156
    with pytest.raises(ValueError, match=r"156 \(1 pixels\)"):
        counted(target, torch.zeros_like(target), ignore_index=-100)


def test_update_logits_is_the_argmax() -> None:
    target, _ = make_maps((2, 16, 18), seed=4)
    logits = torch.randn(2, NUM_CLASSES, 16, 18, generator=torch.Generator().manual_seed(0))
    from_logits = BoundaryMetric(NUM_CLASSES)
    from_logits.update_logits(target, logits)
    assert torch.equal(from_logits.counts, counted(target, logits.argmax(1)).counts)
    with pytest.raises(ValueError, match="logits must be N x 5 x H x W"):
        from_logits.update_logits(target, logits[:, :3])


@pytest.mark.parametrize(("build", "message"), [
    (lambda: BoundaryMetric(3, width=0), "width must be a positive int"),
    (lambda: BoundaryMetric(3, ignore_index=1), "is a class index"),
    (lambda: BoundaryMetric(0), "num_classes must be a positive int"),
])
def test_bad_settings_are_clear_errors(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_labels_are_clear_errors() -> None:
    metric = BoundaryMetric(3)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="H x W or N x H x W"):
        metric.update(labels.reshape(-1), labels.reshape(-1))
    bad = labels.clone()
    bad[0, 1, 1] = 7
    with pytest.raises(ValueError, match=r"target has values outside \[0, 3\) other than ignore_index 255: 7"):
        metric.update(bad, labels)
    with pytest.raises(ValueError, match=r"prediction has values outside \[0, 3\): 7"):
        metric.update(labels, bad)
    with pytest.raises(ValueError, match="integer class indices"):
        metric.update(labels, labels.float())
    with pytest.raises(ValueError, match="cannot merge"):
        metric.merge(BoundaryMetric(3, width=2))
    assert metric.counts.sum() == 0  # nothing counted by the failed updates


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA not available"))])
def test_device_follows_the_inputs(device: str) -> None:
    target, prediction = make_maps((3, 41, 37), seed=9)
    metric = counted(target.to(device), prediction.to(device))
    assert metric.device.type == device
    assert_matches_peer(metric, peer_counts(target, prediction, 3))
    uint8 = counted(target.to(device, torch.uint8), prediction.to(device, torch.uint8))
    assert torch.equal(uint8.counts, metric.counts)


def test_all_reduce(tmp_path: Path) -> None:
    target, prediction = make_maps((2, 20, 20))
    metric = counted(target, prediction)
    before = metric.counts.clone()
    assert metric.all_reduce() is metric  # no process group: a no-op
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        metric.all_reduce()  # one process: the sum is its own counts
        assert torch.equal(metric.counts, before)
    finally:
        dist.destroy_process_group()
