"""U-Net's border weight map: its values, its journey through the training transforms with the
mask, the pixel-weighted cross-entropy that uses it, its picture, and the recipe around it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_recipe
from PIL import Image
from torchvision import tv_tensors

import pixelwise.data.weight_map as weight_map_module
from pixelwise.cli import main
from pixelwise.config import ConfigError, load_config
from pixelwise.data import DataError
from pixelwise.data.classes import IGNORE_INDEX
from pixelwise.data.synthetic import SyntheticShapes
from pixelwise.data.transforms import train_transform
from pixelwise.data.weight_map import (
    WeightMap, WeightMapSamples, border_weight_map, class_balance_weights, read_binary_mask,
)
from pixelwise.errors import InputError
from pixelwise.losses import WeightedCrossEntropyLoss, create_loss, loss_with_aux
from pixelwise.training.loop import train

W0, SIGMA = 10.0, 5.0


def _two_cells(gap: int = 2) -> np.ndarray:
    """Membrane (0) everywhere but two 20×30 cells (1) side by side, ``gap`` pixels apart, at the
    left of a wide image whose right end is far from both."""
    mask = np.zeros((40, 200), dtype=np.int64)
    mask[10:30, 10:40] = 1
    mask[10:30, 40 + gap:70 + gap] = 1
    return mask


def _brute_force(mask: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The paper's formula pixel by pixel, every distance measured directly, nothing truncated."""
    from scipy import ndimage

    cells, count = ndimage.label(mask == 1)
    rows, cols = np.indices(mask.shape)
    expected = class_balance_weights(mask).astype(np.float64)
    for y, x in zip(*np.nonzero(mask == 0)):
        distances = sorted(float(np.hypot(rows[cells == k] - y, cols[cells == k] - x).min())
                           for k in range(1, count + 1))
        if len(distances) >= 2:
            expected[y, x] += w0 * math.exp(-(distances[0] + distances[1]) ** 2 / (2 * sigma ** 2))
    return expected


# --------------------------------------------------------------------------- the map


def test_two_cells_peak_on_the_gap_and_leave_w_c_far_away() -> None:
    mask = _two_cells(gap=2)
    weights = border_weight_map(mask, W0, SIGMA)
    w_c = class_balance_weights(mask)
    assert weights.dtype == np.float32 and weights.shape == mask.shape
    gap = weights[10:30, 40:42]
    assert weights.max() == pytest.approx(gap.max())
    # A gap pixel is 1 pixel from one cell and 2 from the other: d1 + d2 = 3.
    assert gap[5, 0] == pytest.approx(w_c[20, 40] + W0 * math.exp(-9 / (2 * SIGMA ** 2)), rel=1e-6)
    np.testing.assert_allclose(weights[:, 150:], w_c[:, 150:], rtol=1e-6)  # far from every cell
    np.testing.assert_allclose(weights[mask == 1], w_c[mask == 1], rtol=1e-6)  # no border term inside cells
    assert weights[20, 41] > weights[5, 41] > weights[0, 41] > w_c[0, 41]  # decays away from the gap


def test_without_class_balance_w_c_is_one_and_the_border_term_is_unchanged() -> None:
    mask = _two_cells(gap=2)
    mask[0, :5] = IGNORE_INDEX
    balanced = border_weight_map(mask, W0, SIGMA)
    plain = border_weight_map(mask, W0, SIGMA, class_balance=False)
    labelled = mask != IGNORE_INDEX
    np.testing.assert_allclose(plain - labelled, balanced - class_balance_weights(mask), atol=1e-5)
    assert (plain[mask == 1] == 1).all() and (plain[:, 150:] == 1).all() and (plain[~labelled] == 0).all()
    assert plain[20, 41] > 1 + W0 / 2


def test_class_balance_averages_one_with_equal_totals_per_class() -> None:
    mask = _two_cells()
    mask[0, :5] = IGNORE_INDEX
    w_c = class_balance_weights(mask)
    labelled = mask != IGNORE_INDEX
    assert w_c[labelled].mean() == pytest.approx(1.0)
    assert w_c[mask == 0].sum() == pytest.approx(w_c[mask == 1].sum())
    assert (w_c[~labelled] == 0).all()


@pytest.mark.parametrize("sigma", [5.0, 1.5])
def test_values_match_a_brute_force_computation(sigma: float) -> None:
    rng = np.random.default_rng(3)
    mask = (rng.random((18, 22)) < 0.55).astype(np.int64)  # many small cells, ragged membranes
    weights = border_weight_map(mask, W0, sigma)
    # sigma 1.5 truncates the border term past d1 + d2 = border_reach: below w0 · 1e-7.
    np.testing.assert_allclose(weights, _brute_force(mask, W0, sigma), atol=W0 * 1e-7 + 1e-5, rtol=1e-5)


def test_ignored_pixels_weigh_nothing() -> None:
    mask = _two_cells()
    mask[:, 40:42] = IGNORE_INDEX  # the gap itself ignored
    mask[0:5, 100:120] = IGNORE_INDEX
    weights = border_weight_map(mask)
    assert (weights[mask == IGNORE_INDEX] == 0).all()
    assert (weights[mask != IGNORE_INDEX] > 0).all()


def test_fewer_than_two_cells_leave_only_w_c_and_bad_masks_are_refused() -> None:
    one_cell = np.zeros((20, 20), dtype=np.int64)
    one_cell[5:10, 5:10] = 1
    np.testing.assert_allclose(border_weight_map(one_cell), class_balance_weights(one_cell), rtol=1e-6)
    assert (border_weight_map(np.ones((8, 8), dtype=np.int64)) == 1).all()
    with pytest.raises(InputError, match="binary mask"):
        border_weight_map(np.full((4, 4), 2))
    with pytest.raises(InputError, match="H×W"):
        border_weight_map(np.zeros((1, 4, 4), dtype=np.int64))
    with pytest.raises(InputError, match="sigma > 0"):
        border_weight_map(one_cell, sigma=0)


def test_a_torch_mask_gives_the_same_map() -> None:
    mask = _two_cells()
    np.testing.assert_array_equal(border_weight_map(torch.from_numpy(mask)), border_weight_map(mask))


# --------------------------------------------------------------------------- the loss


def test_weighted_ce_is_the_weighted_mean_of_the_pixel_losses() -> None:
    logits = torch.randn(2, 2, 9, 11, requires_grad=True)
    target = torch.randint(0, 2, (2, 9, 11))
    target[torch.rand(target.shape) < 0.2] = IGNORE_INDEX
    weights = torch.rand(2, 9, 11) * 5
    loss = create_loss("weighted_ce")(logits, target, weights)
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    valid = target != IGNORE_INDEX
    expected = (weights * per_pixel)[valid].sum() / weights[valid].sum()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert (logits.grad.permute(1, 0, 2, 3)[:, ~valid] == 0).all()


def test_weighted_ce_without_weights_is_cross_entropy_and_checks_shapes() -> None:
    logits, target = torch.randn(2, 2, 5, 6), torch.randint(0, 2, (2, 5, 6))
    torch.testing.assert_close(WeightedCrossEntropyLoss()(logits, target), F.cross_entropy(logits, target))
    with pytest.raises(InputError, match="one weight per pixel"):
        WeightedCrossEntropyLoss()(logits, target, torch.ones(2, 5, 5))


def test_weights_reach_weighted_ce_in_a_sum_and_in_the_auxiliary_head() -> None:
    logits, aux = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 4, 4)
    target, weights = torch.randint(0, 2, (2, 8, 8)), torch.rand(2, 8, 8)
    combined = create_loss({"weighted_ce": 1.0, "dice": 0.5})
    expected = WeightedCrossEntropyLoss()(logits, target, weights) + 0.5 * create_loss("dice")(logits, target)
    torch.testing.assert_close(combined(logits, target, weights), expected)
    single = WeightedCrossEntropyLoss()
    with_aux = loss_with_aux(single, logits, target, aux, 0.4, weights)
    resized = F.interpolate(aux, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(with_aux, single(logits, target, weights) + 0.4 * single(resized, target, weights))
    with pytest.raises(InputError, match="weighted_ce"):
        loss_with_aux(create_loss("ce"), logits, target, weights=weights)


# --------------------------------------------------------------------------- carried through training


def _binary_train_set(length: int = 4) -> SyntheticShapes:
    transform = train_transform((32, 32), (0.5, 1.5), hflip=0.5, color_jitter=None)
    return SyntheticShapes("train", size=32, length=length, num_classes=2, transform=transform)


def test_the_map_moves_with_the_mask_through_the_transforms() -> None:
    dataset = _binary_train_set()
    samples = WeightMapSamples(dataset)
    for index in range(len(samples)):
        mask = dataset.load(index)[1]
        # A "map" that encodes the class: after any scale, crop and flip it must still match the mask.
        samples.cache[index] = 1.0 + 2.0 * mask.as_subclass(torch.Tensor).float()
    torch.manual_seed(1)
    padded = 0
    for index in range(len(samples)):
        image, mask, weights = samples[index]
        assert image.shape == (3, 32, 32) and weights.dtype == torch.float32 and type(weights) is torch.Tensor
        labelled = mask != IGNORE_INDEX
        torch.testing.assert_close(weights[labelled], 1.0 + 2.0 * mask[labelled].float())
        assert (weights[~labelled] == 0).all()
        padded += int((~labelled).sum())
    assert padded > 0  # some crops were padded with the ignore index, and their weights zeroed


def test_each_mask_map_is_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counting(mask, *args, **kwargs):
        calls.append(1)
        return border_weight_map(mask, *args, **kwargs)

    monkeypatch.setattr(weight_map_module, "border_weight_map", counting)
    samples = WeightMapSamples(_binary_train_set(length=3))
    for _ in range(3):  # three epochs
        for index in range(len(samples)):
            assert len(samples[index]) == 3
    assert len(calls) == 3
    samples.fill_cache()
    assert len(calls) == 3
    plain = WeightMapSamples(SyntheticShapes("train", size=32, length=1, num_classes=2), class_balance=False)
    _, mask, weights = plain[0]
    np.testing.assert_array_equal(weights.numpy(), border_weight_map(mask.numpy(), class_balance=False))


def test_weight_map_is_a_mask_and_refuses_other_than_two_classes() -> None:
    assert issubclass(WeightMap, torch.Tensor) and issubclass(WeightMap, tv_tensors.Mask)
    with pytest.raises(InputError, match="needs binary masks"):
        WeightMapSamples(SyntheticShapes("train", size=32, length=2, num_classes=3))


def test_a_tiny_run_trains_on_the_weighted_loss(tmp_path) -> None:
    losses: list[float] = []
    config = load_config(None, tiny_recipe(tmp_path / "run", "data.options={size: 32, length: 8, num_classes: 2}",
                                           "data.weight_map={w0: 10, sigma: 3, class_balance: false}",
                                           "loss=weighted_ce"))
    assert config.data.weight_map.sigma == 3.0 and config.data.weight_map.class_balance is False
    result = train(config, on_step=lambda iteration, loss: losses.append(loss))
    assert result.iterations == 2 and len(losses) == 2
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)


def test_recipes_that_would_lose_the_map_are_refused(tmp_path) -> None:
    binary = ("data.options={size: 32, length: 8, num_classes: 2}",)
    with pytest.raises(ConfigError, match="data.cutmix"):
        load_config(None, tiny_recipe(tmp_path, *binary, "data.weight_map={}", "data.cutmix=0.5"))
    with pytest.raises(ConfigError, match="data.rare_classes"):
        load_config(None, tiny_recipe(tmp_path, *binary, "data.weight_map={}", "data.rare_classes={}"))
    with pytest.raises(ConfigError, match="sigma"):
        load_config(None, tiny_recipe(tmp_path, *binary, "data.weight_map={sigma: 0}"))
    with pytest.raises(ConfigError, match="data.weight_map"):
        train(load_config(None, tiny_recipe(tmp_path / "a", *binary, "loss=weighted_ce")))
    with pytest.raises(ConfigError, match="takes no per-pixel weights"):
        train(load_config(None, tiny_recipe(tmp_path / "b", *binary, "data.weight_map={}")))
    with pytest.raises(ConfigError, match="class_weights"):
        train(load_config(None, tiny_recipe(tmp_path / "c", *binary, "data.weight_map={}", "loss=weighted_ce",
                                            "class_weights=[1.0, 2.0]")))


# --------------------------------------------------------------------------- the picture


def test_the_cli_writes_the_map_as_a_png_and_an_array(tmp_path, capsys) -> None:
    Image.fromarray((_two_cells() * 255).astype(np.uint8)).save(tmp_path / "label.png")
    out, npy = tmp_path / "pictures" / "map.png", tmp_path / "map.npy"
    assert main(["weight-map", str(tmp_path / "label.png"), "--out", str(out), "--npy", str(npy)]) == 0
    picture = Image.open(out)
    assert picture.mode == "RGB" and picture.size == (200, 40)
    np.testing.assert_array_equal(np.load(npy), border_weight_map(_two_cells()))
    assert "wrote" in capsys.readouterr().out
    np.testing.assert_array_equal(read_binary_mask(tmp_path / "label.png"), _two_cells())
    assert main(["weight-map", str(tmp_path / "label.png"), "--out", str(out), "--npy", str(npy),
                 "--no-class-balance"]) == 0
    np.testing.assert_array_equal(np.load(npy), border_weight_map(_two_cells(), class_balance=False))


@pytest.mark.parametrize("content", ["values", "text", "missing"])
def test_the_cli_refuses_a_bad_mask_in_one_line(tmp_path, capsys, monkeypatch, content: str) -> None:
    monkeypatch.chdir(tmp_path)
    if content == "values":
        Image.fromarray(np.array([[0, 7], [255, 0]], dtype=np.uint8)).save("bad.png")
    elif content == "text":
        (tmp_path / "bad.png").write_text("not an image")
    assert main(["weight-map", "bad.png", "--out", "map.png"]) == 2
    printed = capsys.readouterr()
    lines = (printed.out + printed.err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad.png") and "Traceback" not in lines[0]
    assert not (tmp_path / "map.png").exists()
    with pytest.raises(DataError):
        read_binary_mask("bad.png")
