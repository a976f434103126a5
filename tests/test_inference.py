"""Inference: sliding windows agree with whole-image inference where they must, TTA averages the
right views, and tiled prediction of large images matches sliding windows with bounded memory."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import pixelwise
from pixelwise.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pixelwise.inference.logits import InferenceOptions, predict_large_image, predict_logits, predict_tiled
from pixelwise.inference.windows import TiledStats, importance_map, sliding_windows, window_starts


def _pointwise(num_classes: int = 3) -> nn.Module:
    """A 1×1-convolution net: each pixel's logits depend on that pixel only, so any window sees
    exactly what the whole image does."""
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, num_classes, 1)).eval()


def _mirror_symmetric(num_classes: int = 3) -> nn.Module:
    """3×3 convolutions whose kernels are symmetric left-right, with zero padding: flipping the
    input flips the output."""
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, num_classes, 3, padding=1))
    with torch.no_grad():
        for conv in (net[0], net[2]):
            conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    return net.eval()


def _unet() -> nn.Module:
    return pixelwise.create_model("unet", num_classes=3, encoder="resnet18").eval()


def _normalise(image: np.ndarray) -> Tensor:
    """What predict_large_image does to each window, done to the whole image."""
    mean, std = (torch.tensor(values).view(-1, 1, 1) for values in (IMAGENET_MEAN, IMAGENET_STD))
    return ((torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std)[None]


# Window geometry ------------------------------------------------------------------------------

def test_windows_run_flush_from_border_to_border_no_further_apart_than_the_stride() -> None:
    assert window_starts(97, 64, 40) == [0, 33]
    assert window_starts(131, 64, 40) == [0, 34, 67]  # evenly spread: steps of 33.5, not 40 then 27
    assert window_starts(64 + 3 * 48, 64, 48) == [0, 48, 96, 144]
    assert window_starts(64, 64, 40) == [0]
    assert window_starts(30, 64, 40) == [0]
    with pytest.raises(ValueError, match="stride <= window"):
        window_starts(100, 64, 65)


@pytest.mark.parametrize(("window", "stride"), [(64, 40), (64, 64), (64, 1), (7, 5)])
def test_window_starts_are_as_few_as_the_stride_allows_at_every_size(window: int, stride: int) -> None:
    for size in range(window + 1, 4 * window):
        starts = window_starts(size, window, stride)
        steps = [b - a for a, b in zip(starts, starts[1:])]
        assert starts[0] == 0 and starts[-1] == size - window
        assert max(steps) <= stride and min(steps) > 0
        assert (len(starts) - 2) * stride < size - window  # one window fewer would leave a gap


def test_odd_sized_image_is_covered_everywhere_with_positive_weight() -> None:
    weight = torch.zeros(97, 131)
    for top, left, height, width in sliding_windows((97, 131), 64, 40):
        assert (height, width) == (64, 64) and top + height <= 97 and left + width <= 131
        weight[top:top + height, left:left + width] += importance_map((height, width))
    assert weight.min() > 0


def test_gaussian_importance_map_peaks_at_the_centre_and_is_symmetric() -> None:
    weights = importance_map((64, 48))
    assert weights.max() == 1 and weights.min() > 0
    torch.testing.assert_close(weights, weights.flip(-1))
    torch.testing.assert_close(weights, weights.flip(-2))
    assert torch.equal(importance_map(8, "uniform"), torch.ones(8, 8))


# Sliding window vs whole image ----------------------------------------------------------------

@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
@pytest.mark.parametrize("size", [(64, 64), (50, 37)])
def test_sliding_over_an_image_no_larger_than_a_window_is_whole_image_inference_exactly(
        blend: str, size: tuple[int, int]) -> None:
    model, image = _unet(), torch.randn(1, 3, *size)
    whole = predict_logits(model, image)
    slide = predict_logits(model, image, mode="slide", window=64, stride=40, blend=blend)
    assert torch.equal(slide, whole)


@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
def test_overlapping_windows_of_a_pointwise_model_blend_to_whole_image_inference(blend: str) -> None:
    model, image = _pointwise(), torch.randn(2, 3, 97, 131)
    whole = predict_logits(model, image)
    slide = predict_logits(model, image, mode="slide", window=64, stride=40, blend=blend)
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)


def test_blending_is_the_weighted_mean_of_the_windows_covering_each_pixel() -> None:
    """Reference: the plain formula over a full-size accumulator, with a model whose windows do
    differ (padding effects), so the weights matter."""
    model, image = _unet(), torch.randn(1, 3, 80, 100)
    slide = predict_logits(model, image, mode="slide", window=48, stride=32)
    total, weight = torch.zeros(3, 80, 100), torch.zeros(80, 100)
    with torch.no_grad():
        for top, left, height, width in sliding_windows((80, 100), 48, 32):
            window_weight = importance_map((height, width))
            logits = model(image[..., top:top + height, left:left + width])[0]
            total[:, top:top + height, left:left + width] += logits * window_weight
            weight[top:top + height, left:left + width] += window_weight
    torch.testing.assert_close(slide[0], total / weight, atol=1e-5, rtol=1e-5)


def test_windows_batched_or_one_at_a_time_give_the_same_logits() -> None:
    model, image = _unet(), torch.randn(1, 3, 90, 70)
    one = predict_logits(model, image, mode="slide", window=48, stride=32, batch_size=1)
    many = predict_logits(model, image, mode="slide", window=48, stride=32, batch_size=5)
    torch.testing.assert_close(many, one, atol=1e-5, rtol=1e-5)


def test_inference_restores_training_mode_and_runs_without_autograd() -> None:
    model = _pointwise().train()
    logits = predict_logits(model, torch.randn(1, 3, 20, 20), mode="slide", window=16, stride=8)
    assert model.training and not logits.requires_grad


# Test-time augmentation -----------------------------------------------------------------------

def test_a_single_view_at_scale_one_returns_the_networks_own_logits() -> None:
    """Bit for bit, and not turned into log-probabilities (which the multi-view result is)."""
    model, image = _unet(), torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        expected = model(image)
    assert torch.equal(predict_logits(model, image, scales=(1.0,)), expected)
    assert not torch.allclose(expected.exp().sum(1), torch.ones(1, 45, 61))  # raw logits, not log-softmax


def test_multi_scale_is_the_log_of_the_mean_probability_of_each_scale_mapped_back() -> None:
    model, image = _unet(), torch.randn(1, 3, 45, 61)
    multi = predict_logits(model, image, scales=(0.5, 1.0))
    with torch.no_grad():
        # 45·0.5 and 61·0.5 rounded half up (scaled_size); the scale-1 view is the image itself.
        half = nn.functional.interpolate(image, size=(23, 31), mode="bilinear", align_corners=False)
        half_back = nn.functional.interpolate(model(half), size=(45, 61), mode="bilinear", align_corners=False)
        full = model(image)
    expected = (half_back.softmax(1) + full.softmax(1)) / 2
    assert multi.shape == (1, 3, 45, 61)
    torch.testing.assert_close(multi, expected.log(), atol=1e-5, rtol=1e-5)
    # The half-scale view really counts: the result is not the single-scale prediction.
    assert (multi.softmax(1) - full.softmax(1)).abs().max() > 1e-2


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_flip_tta_of_a_mirror_symmetric_model_changes_nothing(mode: str) -> None:
    model, image = _mirror_symmetric(), torch.randn(2, 3, 40, 40)
    plain = predict_logits(model, image, mode=mode, window=40, stride=24)
    flipped = predict_logits(model, image, mode=mode, window=40, stride=24, flip=True)
    torch.testing.assert_close(flipped.softmax(1), plain.softmax(1), atol=1e-6, rtol=1e-5)


def test_tta_averages_the_probabilities_of_every_view_mapped_back() -> None:
    model, image = _unet(), torch.randn(1, 3, 37, 53)
    tta = predict_logits(model, image, scales=(0.5, 1.25), flip=True)
    probs = []
    with torch.no_grad():
        for size in ((19, 27), (46, 66)):  # 37·s and 53·s rounded half up (scaled_size)
            view = nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False)
            for logits in (model(view), model(view.flip(-1)).flip(-1)):
                back = nn.functional.interpolate(logits, size=(37, 53), mode="bilinear", align_corners=False)
                probs.append(back.softmax(1))
    assert tta.shape == (1, 3, 37, 53)
    torch.testing.assert_close(tta.softmax(1), torch.stack(probs).mean(0), atol=1e-5, rtol=1e-5)


# Tiled prediction of large images -------------------------------------------------------------

@pytest.mark.parametrize(("band", "batch_size"), [(None, 4), (150, 1)])
def test_tiled_prediction_matches_sliding_window_argmax(band: int | None, batch_size: int) -> None:
    """Also when cut into bands: each cell's windows are folded in the same order. (One window
    per forward pass there, as the bands batch windows differently: a convolution's rounding
    may depend on the batch size.)"""
    model = _unet()
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    expected = predict_logits(model, _normalise(image), mode="slide", window=128, stride=96,
                              batch_size=batch_size).argmax(1)[0]
    options = InferenceOptions.create(window=128, stride=96, batch_size=batch_size)
    labels = predict_large_image(model, image, num_classes=3, options=options, band=band)
    assert labels.dtype == np.uint8 and labels.shape == (300, 400)
    np.testing.assert_array_equal(labels, expected.numpy())
    if band is None:
        pil_labels = predict_large_image(model, Image.fromarray(image), 3, options)
        np.testing.assert_array_equal(pil_labels, labels)


def test_tiled_probabilities_match_sliding_window_softmax() -> None:
    model, image = _unet(), torch.randn(1, 3, 100, 90)
    expected = predict_logits(model, image, mode="slide", window=48, stride=32).softmax(1)[0]
    probs = torch.full_like(expected, float("nan"))

    def keep(top: int, left: int, block: Tensor) -> None:
        probs[:, top:top + block.shape[1], left:left + block.shape[2]] = block
    predict_tiled(model, lambda t, l, h, w: image[0, :, t:t + h, l:l + w], (100, 90), 3, 48, 32, write_probs=keep)
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=1e-5)


def _tiled_run(height: int, width: int, window: int = 64, stride: int = 48, band: int | None = None,
               ) -> tuple[TiledStats, list[tuple[int, int]]]:
    """Tiled prediction with a pointwise model, checking that only windows are read and every
    pixel is written exactly once; the stats and the shapes of the blocks written."""
    model, reads, blocks = _pointwise(), [], []
    written = np.zeros((height, width), dtype=np.int32)

    def read(top: int, left: int, h: int, w: int) -> Tensor:
        reads.append((h, w))
        return torch.ones(3, h, w)

    def write(top: int, left: int, labels: np.ndarray) -> None:
        blocks.append(labels.shape)
        written[top:top + labels.shape[0], left:left + labels.shape[1]] += 1
    stats = predict_tiled(model, read, (height, width), 3, window, stride, batch_size=3, write_labels=write, band=band)
    assert max(reads) == (window, window) and len(reads) == stats.windows
    assert (written == 1).all()
    return stats, blocks


def test_tiled_prediction_writes_window_sized_blocks_and_counts_its_work() -> None:
    stats, blocks = _tiled_run(197, 231)
    assert max(h for h, _ in blocks) <= 64 and max(w for _, w in blocks) <= 64
    assert stats.windows == len(sliding_windows((197, 231), 64, 48)) and stats.forwards == -(-stats.windows // 3)
    banded, _ = _tiled_run(197, 231, band=100)  # wider than tall: its 197 rows make two bands
    assert banded.bands == 2 and banded.windows > stats.windows


def test_blending_memory_is_the_overlap_strip_across_the_shorter_side() -> None:
    """The same for an image four times as long (at sizes where every step is the stride, so the
    overlaps match), and less than one window-high band of float logits across it at any size."""
    runs = [_tiled_run(*size)[0].peak_blend_bytes for size in [(304, 208), (1168, 208), (208, 1168)]]
    assert runs[0] == runs[1] == runs[2] > 0  # the wide image is visited column by column
    for height, width in [(600, 200), (1200, 200), (200, 1200), (131, 97)]:
        band_bytes = (3 + 1) * 4 * 64 * min(height, width)  # logits and weights, float32, a window high
        assert _tiled_run(height, width)[0].peak_blend_bytes < band_bytes


def test_bands_bound_blending_memory_whatever_the_image_size() -> None:
    window, stride, band = 128, 96, 256
    # At most a strip of overlaps a band (and a window) long, and the cells of one window.
    bound = (3 + 1) * 4 * ((window - stride) * (band + window) + window * window)
    for size in [(1088, 1088), (2048, 2048), (2000, 1500)]:
        assert _tiled_run(*size, window, stride, band)[0].peak_blend_bytes <= bound
    assert _tiled_run(2048, 2048, window, stride)[0].peak_blend_bytes > 2 * bound  # uncut


def test_large_image_with_a_pointwise_model() -> None:
    model = _pointwise(num_classes=4)
    image = np.random.default_rng(1).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
    labels = predict_large_image(model, image, num_classes=4, options=InferenceOptions.create(window=512, stride=384))
    with torch.no_grad():
        expected = model(_normalise(image)).argmax(1)[0].numpy()
    # Blended logits differ from the direct ones by rounding only: that can flip an exact tie.
    assert labels.shape == (2000, 2000) and (labels != expected).mean() < 1e-5


def test_wrong_inputs_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="mode must be"):
        predict_logits(_pointwise(), torch.randn(1, 3, 8, 8), mode="tiles")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        predict_logits(_pointwise(), torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="uint8"):
        predict_large_image(_pointwise(), np.zeros((8, 8, 3), dtype=np.float32), 3)
    with pytest.raises(ValueError, match=r"\(N, 5, H, W\)"):
        predict_large_image(_pointwise(), np.zeros((8, 8, 3), dtype=np.uint8), 5)
