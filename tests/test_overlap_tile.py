"""Overlap-tile in windowed inference: the valid-convolution U-Net's windows get real context.

The paper's U-Net (``padding="valid"``) predicts a whole image by overlap-tile: :meth:`forward`
mirrors the image onto ``[-margin, unet_input_size(side) - margin)`` along each side and runs the
valid network on it. Sliding-window and tiled inference read, for each window, a stretch of
that same mirrored input (real image wherever it lies inside the image) chosen by
:meth:`UNet.context_region`: it starts on a multiple of ``2^depth`` of the whole input, so every
max-pooling pairs the same pixels, and reaches ``2^(depth+1)`` pixels of output past the window
on each side, beyond the band along its edges where the upsamplers' own border padding changes
the logits (the paper's 2×2 up-convolution has none; every upsampler here, the default
transposed one included, has one of at most ``2·(2^depth - 1)`` pixels). Equality with the
whole-image forward therefore holds for *every* window, at multiples of ``2^depth`` and at
arbitrary offsets alike, with every upsampler: to double-precision rounding per window (1e-12),
and to float32 rounding after blending (the blend computes in float32).

Before windowed inference read context (each window mirrored at its own borders), the
sliding-window test below failed with logit differences of 0.28 to 0.81 (checked by running
this file against the previous ``windows.py``, ``unet.py`` and ``base.py``);
:func:`test_windows_mirrored_at_their_own_borders_differ` keeps that path as a reference.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pixelwise.inference.logits import (
    InferenceOptions,
    normalize_image,
    predict_large_image,
    predict_logits,
    predict_tiled,
)
from pixelwise.inference.windows import read_mirrored, sliding_windows
from pixelwise.layers import mirror_pad
from pixelwise.layers.upsample import UPSAMPLE_KINDS
from pixelwise.models import create_model
from pixelwise.models.unet import unet_input_size, unet_margin

DEPTH = 2
MARGIN = unet_margin(DEPTH)  # 20


def valid_unet(upsample: str = "transposed", dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("unet", num_classes=3, base_channels=4, depth=DEPTH, norm=None, upsample=upsample)
    return model.to(dtype).eval()


def reader(image: torch.Tensor):
    """A ``read_region`` over a ``(C, H, W)`` tensor that refuses regions outside it."""
    def read(top: int, left: int, height: int, width: int) -> torch.Tensor:
        assert top >= 0 and left >= 0 and top + height <= image.shape[-2] and left + width <= image.shape[-1]
        return image[:, top:top + height, left:left + width]
    return read


@pytest.mark.parametrize(("side", "before", "after"), [(9, 20, 31), (1, 5, 3), (2, 7, 0), (40, 3, 0), (5, 0, 13)])
def test_mirrored_reads_are_mirror_pad(side: int, before: int, after: int) -> None:
    image = torch.randn(2, side, side + 3)
    expected = mirror_pad(image[None], before, after, after, before)[0]
    region = (-before, -after, side + before + after, side + 3 + after + before)
    torch.testing.assert_close(read_mirrored(reader(image), (side, side + 3), region), expected, rtol=0, atol=0)


@pytest.mark.parametrize("upsample", UPSAMPLE_KINDS)
@pytest.mark.parametrize(("size", "windows"), [
    ((52, 60), [(0, 0, 16, 16), (16, 24, 16, 16), (36, 44, 16, 16), (8, 32, 20, 28)]),  # multiples of 2^depth
    ((53, 61), [(0, 0, 17, 13), (5, 7, 17, 13), (36, 48, 17, 13), (19, 1, 23, 29), (30, 33, 23, 28)]),  # any offset
    ((7, 90), [(0, 0, 7, 30), (0, 31, 7, 30), (0, 60, 7, 30)]),  # shorter than the margin
    ((1, 33), [(0, 3, 1, 9)]),
])
def test_each_window_with_its_context_gets_the_whole_images_logits(upsample, size, windows) -> None:
    model = valid_unet(upsample)
    image = torch.randn(3, *size, dtype=torch.float64)
    with torch.no_grad():
        whole = model(image[None])[0]
        for top, left, height, width in windows:
            region = model.context_region((top, left, height, width), size)
            logits = model.forward_context(read_mirrored(reader(image), size, region)[None])[0]
            rows, cols = top - region[0] - MARGIN, left - region[1] - MARGIN
            torch.testing.assert_close(logits[:, rows:rows + height, cols:cols + width],
                                       whole[:, top:top + height, left:left + width], rtol=0, atol=1e-12)


def test_a_window_as_large_as_the_image_is_the_whole_images_overlap_tile_input() -> None:
    model = valid_unet()
    size = (37, 50)
    top, left, height, width = model.context_region((0, 0, *size), size)
    assert (top, left) == (-MARGIN, -MARGIN)
    assert (height, width) == (unet_input_size(37, DEPTH), unet_input_size(50, DEPTH))


@pytest.mark.parametrize("upsample", ["transposed", "bilinear"])
@pytest.mark.parametrize(("size", "window", "stride"), [
    ((40, 52), 16, 12),  # every window at a multiple of 2^depth
    ((50, 61), (20, 24), (13, 11)),  # windows at arbitrary offsets
])
def test_sliding_window_equals_whole_image_overlap_tile(upsample, size, window, stride) -> None:
    model = valid_unet(upsample)
    image = torch.randn(2, 3, *size, dtype=torch.float64)
    assert len(sliding_windows(size, window, stride)) > 4
    with torch.no_grad():
        whole = model(image).float()
    for blend in ("gaussian", "uniform"):
        slid = predict_logits(model, image, mode="slide", window=window, stride=stride, blend=blend, batch_size=3)
        torch.testing.assert_close(slid, whole, rtol=1e-5, atol=1e-5)


def test_windows_mirrored_at_their_own_borders_differ() -> None:
    # The same network behind a plain module declares no context margin: each window is then
    # overlap-tiled on its own, mirrored at its own borders, which is visibly not the image.
    model = valid_unet()
    image = torch.randn(1, 3, 50, 61, dtype=torch.float64)
    with torch.no_grad():
        whole = model(image).float()
    own_borders = predict_logits(nn.Sequential(model), image, mode="slide", window=(20, 24), stride=(13, 11))
    assert (own_borders - whole).abs().max() > 0.05


def test_tiled_and_large_image_prediction_equal_whole_image_prediction() -> None:
    model = valid_unet(dtype=torch.float32)
    pixels = (np.random.RandomState(0).rand(70, 45, 3) * 255).astype(np.uint8)
    normalized = normalize_image(pixels)
    with torch.no_grad():
        whole = model(normalized[None])[0]
    expected_labels, expected_probs = whole.argmax(0).numpy(), whole.softmax(0).numpy()

    probs = np.zeros((3, 70, 45), dtype=np.float32)
    options = InferenceOptions.create(window=(24, 20), stride=(15, 13), batch_size=2)
    labels = predict_large_image(model, pixels, 3, options, normalization=None, band=20, probabilities=probs)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(probs, expected_probs, rtol=0, atol=1e-5)

    tiled = np.zeros((70, 45), dtype=np.uint8)
    stats = predict_tiled(model, reader(normalized), (70, 45), 3, window=(24, 20), stride=(15, 13), batch_size=3,
                          write_labels=tiled, band=16)
    np.testing.assert_array_equal(tiled, expected_labels)
    assert stats.bands > 1
    assert stats.largest_read[0] > 24 + 2 * MARGIN  # windows are read with their context


@pytest.mark.parametrize(("name", "options"), [
    ("unet", {"padding": "same", "base_channels": 4, "depth": DEPTH}),
    ("unet", {"base_channels": 4, "depth": DEPTH, "norm": None, "input_scale": 0.5}),
    ("fcn8s", {"encoder": "resnet18"}),
])
def test_models_without_a_context_margin_predict_each_window_on_its_own(name, options) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **options).eval()
    assert model.context_margin == 0
    image, window, stride = torch.randn(1, 3, 45, 58), (24, 32), (15, 20)
    slid = predict_logits(model, image, mode="slide", window=window, stride=stride, blend="uniform", batch_size=1)
    # The direct computation: each window through the model, the overlaps averaged in window order.
    total, count = torch.zeros(1, 3, 45, 58), torch.zeros(1, 1, 45, 58)
    with torch.no_grad():
        for top, left, height, width in sliding_windows((45, 58), window, stride):
            total[..., top:top + height, left:left + width] += model(image[..., top:top + height, left:left + width])
            count[..., top:top + height, left:left + width] += 1
    assert torch.equal(slid, total / count)
