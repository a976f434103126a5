"""The ISBI 2012 membrane metrics (pixelwise.metrics.membrane): the Rand error, V_info and pixel
error against scikit-image and a pair-counting reference, the best threshold, and evaluation."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.measure import label
from skimage.metrics import adapted_rand_error, variation_of_information

from conftest import tiny_recipe
from pixelwise.cli import main
from pixelwise.config import ConfigError, load_config
from pixelwise.errors import InputError
from pixelwise.inference.evaluation import evaluate_checkpoint
from pixelwise.metrics import MembraneMetric, cell_segments, membrane_scores, rand_error, v_info
from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.training.loop import MEAN_IOU, best_metric, train


def _two_cells(height: int = 12, width: int = 21) -> np.ndarray:
    """Two cells left and right of a vertical membrane in the middle column: 1 cell, 0 membrane."""
    target = np.ones((height, width), np.int64)
    target[:, width // 2] = 0
    return target


def _entropy(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    probabilities = counts / counts.sum()
    return float(-(probabilities * np.log2(probabilities)).sum())


# -- what the metrics see -------------------------------------------------------------------------

def test_a_one_pixel_break_in_a_membrane_merges_two_cells_and_costs_far_more_rand_error() -> None:
    target = _two_cells()
    merged = target.astype(np.float32)
    merged[6, 10] = 1.0  # a one-pixel break in the membrane: the two cells become one
    apart = target.astype(np.float32)
    apart[0, 0] = 0.0  # one cell pixel wrong, but the cells stay apart
    merged_scores = membrane_scores(merged, target, thresholds=(0.5,))
    apart_scores = membrane_scores(apart, target, thresholds=(0.5,))

    assert merged_scores.pixel_error[0] == apart_scores.pixel_error[0] == 1 / target.size
    assert merged_scores.rand_error[0] > 0.3  # about half of the pairs are falsely merged
    assert apart_scores.rand_error[0] < 0.02
    assert merged_scores.v_info[0] < 0.6 < 0.95 < apart_scores.v_info[0]
    perfect = membrane_scores(target.astype(np.float32), target, thresholds=(0.5,))
    assert (perfect.rand_error[0], perfect.v_info[0], perfect.pixel_error[0]) == (0.0, 1.0, 0.0)


def test_cells_touching_at_a_corner_are_two_cells() -> None:
    cells = np.zeros((4, 4), bool)
    cells[:2, :2] = cells[2:, 2:] = True
    assert cell_segments(cells).max() == 2  # 4-connectivity, as the challenge's Fiji code


@pytest.mark.parametrize("seed", range(4))
def test_label_image_metrics_agree_with_scikit_image(seed: int) -> None:
    rng = np.random.default_rng(seed)
    true_labels = rng.integers(0, 6, (30, 40))
    predicted_labels = rng.integers(0, 9, (30, 40))
    assert rand_error(true_labels, predicted_labels) == pytest.approx(
        adapted_rand_error(true_labels, predicted_labels)[0], abs=1e-12)

    split, merge = variation_of_information(true_labels, predicted_labels, ignore_labels=(0,))
    scored = true_labels > 0
    true_entropy, predicted_entropy = _entropy(true_labels[scored]), _entropy(predicted_labels[scored])
    information = true_entropy - merge
    assert information == pytest.approx(predicted_entropy - split)
    assert v_info(true_labels, predicted_labels) == pytest.approx(
        2 * information / (true_entropy + predicted_entropy), abs=1e-12)


def _pair_counting_reference(probability: np.ndarray, target: np.ndarray, threshold: float) -> tuple[float, float]:
    """Rand error and V_info by the challenge's definitions, pair by pair: over pixels that are
    cell in the ground truth, 4-connected segments, predicted membrane pixels singletons."""
    true_ids = label(target == 1, connectivity=1)
    predicted_ids = label(probability > threshold, connectivity=1)
    pixels = list(zip(*np.nonzero(target == 1)))
    same_true = same_predicted = same_both = 0
    for a, b in itertools.combinations(pixels, 2):
        in_true = true_ids[a] == true_ids[b]
        in_predicted = predicted_ids[a] == predicted_ids[b] != 0
        same_true, same_predicted, same_both = (same_true + in_true, same_predicted + in_predicted,
                                                same_both + (in_true and in_predicted))
    rand = 1 - 2 * same_both / (same_true + same_predicted)
    segments = np.array([predicted_ids[p] if predicted_ids[p] else -1 - i for i, p in enumerate(pixels)])
    truth = np.array([true_ids[p] for p in pixels])
    joint = _entropy(truth * (segments.max() - segments.min() + 1) + segments - segments.min())
    true_entropy, predicted_entropy = _entropy(truth), _entropy(segments)
    information = true_entropy + predicted_entropy - joint
    return rand, 2 * information / (true_entropy + predicted_entropy) if true_entropy + predicted_entropy else 1.0


@pytest.mark.parametrize("seed", range(3))
def test_binary_maps_score_as_the_challenge_defines_them(seed: int) -> None:
    rng = np.random.default_rng(seed)
    target = (rng.random((9, 11)) < 0.75).astype(np.int64)
    target[4, :] = target[:, 5] = 0  # membranes that part the cells into four or more
    probability = np.clip(target * 0.4 + rng.random(target.shape) * 0.6, 0, 1).astype(np.float32)
    scores = membrane_scores(probability, target, thresholds=(0.35, 0.5, 0.65))
    for column, threshold in enumerate(scores.thresholds):
        rand, information = _pair_counting_reference(probability, target, threshold)
        assert scores.rand_error[column] == pytest.approx(rand, abs=1e-12)
        assert scores.v_info[column] == pytest.approx(information, abs=1e-12)
        assert scores.pixel_error[column] == pytest.approx(np.mean((probability > threshold) != (target == 1)))


def test_ignore_pixels_count_nowhere() -> None:
    target = _two_cells()
    probability = target.astype(np.float32)
    probability[:, 10] = 1.0  # the whole membrane predicted as cell: one cell
    ignored = target.copy()
    ignored[:, 10] = 255  # ... but the membrane is ignored: no scored pixel is wrong
    scores = membrane_scores(probability, ignored, thresholds=(0.5,))
    assert scores.pixel_error[0] == 0.0
    assert scores.rand_error[0] > 0.3  # the prediction is taken everywhere: its one segment spans both cells
    none_ignored = membrane_scores(probability, target, thresholds=(0.5,))
    assert none_ignored.pixel_error[0] == pytest.approx(12 / target.size)

    empty = membrane_scores(np.ones((3, 3), np.float32), np.full((3, 3), 255), thresholds=(0.5,))
    assert np.isnan(empty.rand_error[0]) and np.isnan(empty.v_info[0]) and np.isnan(empty.pixel_error[0])
    with pytest.raises(InputError, match=r"must be 0 \(membrane\), 1 \(cell\) or ignore_index 255"):
        membrane_scores(np.ones((3, 3), np.float32), np.full((3, 3), 2), thresholds=(0.5,))


# -- over thresholds and images -------------------------------------------------------------------

def test_best_over_thresholds_picks_the_threshold_that_separates_the_cells() -> None:
    target = _two_cells()
    probability = np.where(target == 1, 0.68, 0.62).astype(np.float32)  # right only for 0.62 <= t < 0.68
    metric = MembraneMetric()
    metric.update(torch.from_numpy(target), torch.from_numpy(probability))
    stats = metric.summary()
    assert stats["rand_error"] > 0.3 and stats["pixel_error"] == pytest.approx(1 / 21)  # at 0.5 all is cell
    assert (stats["best_rand_error"], stats["best_rand_error_threshold"]) == (0.0, 0.65)
    assert (stats["best_v_info"], stats["best_v_info_threshold"]) == (1.0, 0.65)
    assert (stats["best_pixel_error"], stats["best_pixel_error_threshold"]) == (0.0, 0.65)
    assert stats["membrane_images"] == stats["pixel_error_images"] == 1

    # 0.5 is scored for the prediction but is no candidate outside the grid: the best is 0.3 (all
    # cell, 1/21 wrong), not 0.5 (right) nor 0.7 (all membrane).
    coarse = MembraneMetric(thresholds=(0.3, 0.7))
    coarse.update(torch.from_numpy(target), torch.from_numpy(np.where(target == 1, 0.6, 0.4).astype(np.float32)))
    assert coarse.curves()["thresholds"] == [0.3, 0.5, 0.7]
    assert coarse.summary()["pixel_error"] == 0.0
    assert (coarse.summary()["best_pixel_error"], coarse.summary()["best_pixel_error_threshold"]) == (
        pytest.approx(1 / 21), 0.3)


def test_one_threshold_for_all_images_and_averages_per_image() -> None:
    target = torch.from_numpy(np.stack([_two_cells(), _two_cells()]))
    probability = torch.stack([torch.where(target[0] == 1, 0.68, 0.62), torch.where(target[1] == 1, 0.9, 0.12)])
    metric = MembraneMetric()
    metric.update(target, probability)
    curves = metric.curves()
    assert curves["rand_error"][curves["thresholds"].index(0.65)] == 0.0  # both images right only there
    assert metric.best("rand_error") == (0.0, 0.65)
    first = membrane_scores(probability[0], target[0])
    second = membrane_scores(probability[1], target[1])
    assert curves["pixel_error"] == pytest.approx(list((first.pixel_error + second.pixel_error) / 2))


def test_merged_metrics_equal_one_metric_over_all_images() -> None:
    rng = np.random.default_rng(0)
    targets = torch.from_numpy((rng.random((4, 16, 16)) < 0.7).astype(np.int64))
    probabilities = torch.from_numpy(rng.random((4, 16, 16)).astype(np.float32))
    whole, first, second = MembraneMetric(), MembraneMetric(), MembraneMetric()
    whole.update(targets, probabilities)
    first.update(targets[:3], probabilities[:3])
    second.update(targets[3], probabilities[3])
    assert first.merge(second).summary() == pytest.approx(whole.summary())
    with pytest.raises(InputError, match="cannot merge"):
        whole.merge(MembraneMetric(thresholds=(0.5,)))
    whole.reset()
    assert whole.summary()["rand_error"] is None and whole.summary()["membrane_images"] == 0


# -- evaluation -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def binary_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``best.pt`` of a two-step run on two-class synthetic images (background, disc)."""
    run_dir = tmp_path_factory.mktemp("binary_run")
    train(load_config(None, tiny_recipe(run_dir, "data.options={size: 32, length: 4, num_classes: 2}")))
    return run_dir / "best.pt"


def test_a_two_class_evaluation_reports_the_challenge_metrics(binary_checkpoint: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    result = evaluate_checkpoint(binary_checkpoint, out_dir=tmp_path)
    stats = result.summary()
    assert stats["membrane_images"] == stats["pixel_error_images"] == result.num_images == 4
    # Equal image sizes and no ignore pixels: the mean per-image error is the pooled one, and
    # p(cell) > 0.5 is the argmax.
    assert stats["pixel_error"] == pytest.approx(1 - stats["pixel_accuracy"])
    assert 0 <= stats["best_rand_error"] <= stats["rand_error"] <= 1 and 0 <= stats["v_info"] <= stats["best_v_info"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["summary"]["best_rand_error_threshold"] == stats["best_rand_error_threshold"]
    assert len(metrics["membrane_curves"]["thresholds"]) == len(metrics["membrane_curves"]["v_info"]) == 19

    assert main(["evaluate", "--checkpoint", str(binary_checkpoint), "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert "ISBI 2012 metrics" in printed and "Rand error" in printed and "V_info" in printed


def test_a_six_class_evaluation_does_not_report_them(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = evaluate_checkpoint(tiny_checkpoint, out_dir=tmp_path)
    assert result.membrane is None
    assert not {"rand_error", "v_info", "pixel_error"} & set(result.summary())
    assert "membrane_curves" not in json.loads((tmp_path / "metrics.json").read_text())


# -- training: validation scores them, best.pt chosen by one ---------------------------------------

def test_training_validation_logs_them_and_best_pt_follows_the_chosen_one(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    # lr 0.05 moves the tiny model between evaluations, so the best is not simply the last.
    overrides = tiny_recipe(run_dir, "data.options={size: 32, length: 4, num_classes: 2}", "train.iterations=4",
                            "train.eval_every=1", "optim.lr=0.05", "train.best_metric=best_rand_error")
    assert main(["train", *overrides]) == 0
    assert "best best rand error" in capsys.readouterr().out
    evaluations = [json.loads(line)["eval"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                   if "eval" in json.loads(line)]
    assert len(evaluations) == 4
    assert all(stats["membrane_images"] == 4 and 0 <= stats["best_rand_error"] <= stats["rand_error"] <= 1
               and "mean_iou" in stats for stats in evaluations)
    best = min(stats["best_rand_error"] for stats in evaluations)
    state = load_checkpoint(run_dir / "best.pt")
    assert state["best_value_best_rand_error"] == best
    assert "best_miou" not in state
    # best.pt holds the model that scored it: evaluated again, the same value.
    again = evaluate_checkpoint(run_dir / "best.pt", out_dir=tmp_path / "again").summary()
    assert again["best_rand_error"] == pytest.approx(best, abs=1e-9)
    assert evaluations.index(min(evaluations, key=lambda stats: stats["best_rand_error"])) + 1 == state["iteration"]

    # Resumed for longer, the run keeps its best so far.
    result = train(load_config(None, [*overrides, "train.iterations=5"]), resume=True)
    assert result.best_metric == "best_rand_error"
    assert result.best == load_checkpoint(run_dir / "best.pt")["best_value_best_rand_error"] <= best


def test_a_membrane_metric_for_best_pt_needs_two_classes_and_a_known_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="two-class"):
        train(load_config(None, tiny_recipe(tmp_path / "a", "train.best_metric=rand_error")))
    with pytest.raises(ConfigError, match="best_rand_error"):
        train(load_config(None, tiny_recipe(tmp_path / "b", "data.options={size: 32, length: 4, num_classes: 2}",
                                            "train.best_metric=rand")))
    assert best_metric("v_info", 2).higher_is_better and not best_metric("best_pixel_error", 2).higher_is_better
    assert best_metric("mean_iou", 6) is MEAN_IOU
