"""Overlap counts of transposed convolution, checkerboard scores, and the ``pixelwise overlap`` command."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from pixelwise.analysis.overlap import (
    checkerboard_score,
    compare_upsamplers,
    overlap_counts_1d,
    overlap_map,
)
from pixelwise.geometry.sizes import conv_transpose_output_size
from pixelwise.cli import main
from pixelwise.layers.upsample import UPSAMPLE_KINDS, make_upsampler

LAYERS = dict(kernel=st.integers(1, 7), stride=st.integers(1, 4), padding=st.integers(0, 3),
              dilation=st.integers(1, 3))


def brute_force_counts(kernel: int, stride: int, input_size: int, padding: int, dilation: int) -> list[int]:
    """Count, pair by pair, which (input pixel, kernel tap) lands on which output pixel."""
    counts = [0] * conv_transpose_output_size(input_size, kernel, stride, padding, dilation=dilation)
    for source in range(input_size):
        for tap in range(kernel):
            target = source * stride + tap * dilation - padding  # padding crops the output's borders
            if 0 <= target < len(counts):
                counts[target] += 1
    return counts


@pytest.mark.parametrize(("kernel", "stride", "patterns", "even"), [
    (3, 2, [(2, 1), (1, 2)], False),
    (4, 2, [(2, 2)], True),
    (2, 2, [(1, 1)], True),  # no overlap at all
    (5, 2, [(3, 2), (2, 3)], False),
])
def test_known_cases(kernel, stride, patterns, even):
    overlap = overlap_map(kernel, stride)
    assert overlap.period == stride
    assert overlap.pattern in patterns
    assert overlap.even is even


def test_even_interiors_are_constant_away_from_the_borders():
    assert set(overlap_map(4, 2).counts[2:-2].tolist()) == {2}
    assert set(overlap_map(2, 2).grid.flatten().tolist()) == {1}


@settings(max_examples=150, deadline=None)
@given(input_size=st.integers(1, 12), **LAYERS)
def test_counts_equal_the_brute_force_loop(input_size, kernel, stride, padding, dilation):
    try:
        expected = brute_force_counts(kernel, stride, input_size, padding, dilation)
    except ValueError:  # the padding crops everything away
        with pytest.raises(ValueError):
            overlap_counts_1d(kernel, stride, input_size, padding, dilation)
        return
    assert overlap_counts_1d(kernel, stride, input_size, padding, dilation).tolist() == expected


@settings(max_examples=100, deadline=None)
@given(input_size=st.integers(1, 12), **LAYERS)
def test_pattern_and_evenness_follow_the_tap_residues(input_size, kernel, stride, padding, dilation):
    try:
        overlap = overlap_map(kernel, stride, input_size, padding, dilation)
    except ValueError:
        return  # too small an input (checked below) or no output
    # Phase r receives every tap j with j·dilation ≡ r + padding (mod stride).
    expected = tuple(sum((tap * dilation - phase - padding) % stride == 0 for tap in range(kernel))
                     for phase in range(stride))
    assert overlap.pattern == expected
    assert overlap.even == (kernel % stride == 0 and math.gcd(dilation, stride) == 1)


@settings(max_examples=100, deadline=None)
@given(**LAYERS)
def test_the_suggested_input_size_is_the_smallest_that_works(kernel, stride, padding, dilation):
    try:
        overlap_map(kernel, stride, 1, padding, dilation)
        return  # already the smallest
    except ValueError as error:
        if "use ≥" not in str(error):
            return  # the padding leaves no output at size 1: not this test's question
        smallest = int(str(error).rsplit("≥ ", 1)[1])
    overlap_map(kernel, stride, smallest, padding, dilation)
    with pytest.raises(ValueError):
        overlap_map(kernel, stride, smallest - 1, padding, dilation)


@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation"), [(3, 2, 0, 1), (4, 2, 1, 1), (5, 3, 2, 2)])
def test_grid_equals_the_real_2d_transposed_convolution(kernel, stride, padding, dilation):
    overlap = overlap_map(kernel, stride, 6, padding, dilation)
    real = F.conv_transpose2d(torch.ones(1, 1, 6, 6), torch.ones(1, 1, kernel, kernel), stride=stride,
                              padding=padding, dilation=dilation)
    assert torch.equal(overlap.grid, real[0, 0].round().long())


def test_render_shows_the_grid():
    lines = overlap_map(2, 2, input_size=2).render().splitlines()
    assert lines == ["1 1 1 1"] * 4
    lines = overlap_map(3, 2, input_size=3).render().splitlines()
    assert lines[0] == "1 1 2 1 2 1 1" and lines[2] == "2 2 4 2 4 2 2" and len(lines) == 7


def test_save_png_writes_one_block_per_output_pixel(tmp_path):
    path = tmp_path / "overlap.png"
    overlap_map(3, 2, input_size=4).save_png(path, cell=4)
    with Image.open(path) as image:
        assert image.size == (9 * 4, 9 * 4)
        assert image.getpixel((2 * 4, 2 * 4)) == 255  # a 4-count cell is the brightest


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("kind", UPSAMPLE_KINDS)
def test_score_is_zero_at_pixelwise_initialisation(kind, scale):
    assert checkerboard_score(make_upsampler(kind, 4, 4, scale), channels=4, scale=scale) <= 1e-6


def test_score_is_positive_for_a_random_transposed_convolution():
    layer = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1)
    assert checkerboard_score(layer, channels=4, scale=2) > 0.1


def test_uneven_overlap_scores_higher_than_even_overlap():
    def positive(kernel: int, padding: int, output_padding: int) -> nn.ConvTranspose2d:
        layer = nn.ConvTranspose2d(4, 4, kernel, stride=2, padding=padding, output_padding=output_padding)
        nn.init.uniform_(layer.weight, 0.0, 1.0)
        nn.init.zeros_(layer.bias)
        return layer

    uneven = checkerboard_score(positive(3, 1, 1), channels=4, scale=2)
    even = checkerboard_score(positive(4, 1, 0), channels=4, scale=2)
    assert uneven > 2 * even


def test_score_leaves_the_module_untouched():
    layer = nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1).train()
    before = layer.weight.clone()
    checkerboard_score(layer, channels=2, scale=2)
    assert layer.training and layer.weight.dtype == torch.float32 and torch.equal(layer.weight, before)


def test_score_rejects_a_module_of_another_scale():
    with pytest.raises(ValueError, match="expected a 32×32 output"):
        checkerboard_score(nn.Upsample(scale_factor=3), channels=1, scale=2)


def test_compare_upsamplers_covers_every_kind_and_is_deterministic():
    rows = compare_upsamplers(channels=4, num_seeds=2)
    assert {(row.upsampler, row.init) for row in rows} >= {(kind, init) for kind in UPSAMPLE_KINDS
                                                           for init in ("pixelwise", "random")}
    scores = {(row.upsampler, row.init): row.score for row in rows}
    assert all(scores[kind, "pixelwise"] <= 1e-6 for kind in UPSAMPLE_KINDS)
    assert scores["ConvTranspose2d k3 s2", "random"] > 0.1
    assert scores["ConvTranspose2d k3 s2", "positive"] > scores["ConvTranspose2d k4 s2", "positive"]
    assert compare_upsamplers(channels=4, num_seeds=2) == rows


def test_cli_prints_the_map_and_writes_the_png(capsys, tmp_path):
    path = tmp_path / "k3s2.png"
    assert main(["overlap", "--kernel", "3", "--stride", "2", "--size", "4", "--png", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "2 2 4 2 4 2 4 2 2" in printed
    assert "period 2" in printed and "[2, 1]" in printed and "uneven" in printed
    with Image.open(path) as image:
        image.verify()


def test_cli_compare_prints_the_table(capsys):
    assert main(["overlap", "--compare"]) == 0
    printed = capsys.readouterr().out
    assert all(kind in printed for kind in UPSAMPLE_KINDS) and "ConvTranspose2d k3 s2" in printed


def test_cli_needs_kernel_and_stride_without_compare(capsys):
    assert main(["overlap", "--kernel", "3"]) == 2
    assert "--kernel and --stride" in capsys.readouterr().out
