"""Aligned resampling between feature-map grids, and the aligned upsamplers, checked against a
numpy reference, against PyTorch's own interpolation where the rules coincide, and under export."""
from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.layers import (
    UPSAMPLE_KINDS,
    Grid,
    ResizeConv,
    aligned_resize,
    aligned_upsample,
    half_pixel_shift,
    make_upsampler,
    shifted_upsample,
    upsampler_between,
    upsampling_step,
)

SCALES = (2, 3, 4, 8)


def _reference(x: np.ndarray, size: tuple[int, int], source: Grid, target: Grid, mode: str) -> np.ndarray:
    """Per output pixel, straight from the definition: u = (target.offset + target.stride·j -
    source.offset) / source.stride on each axis, exact in fractions, borders clamped."""
    height, width = x.shape[-2:]
    out = np.zeros(x.shape[:-2] + tuple(size), dtype=np.float64)

    def coordinate(j: int) -> Fraction:
        return (target.offset + target.stride * j - source.offset) / source.stride

    def clamp(i: int, n: int) -> int:
        return min(max(i, 0), n - 1)

    for i in range(size[0]):
        for j in range(size[1]):
            u, v = coordinate(i), coordinate(j)
            if mode == "nearest":
                out[..., i, j] = x[..., clamp(math.floor(u + Fraction(1, 2)), height),
                                   clamp(math.floor(v + Fraction(1, 2)), width)]
                continue
            u0, v0 = math.floor(u), math.floor(v)
            a, b = float(u - u0), float(v - v0)
            for du, wu in ((0, 1 - a), (1, a)):
                for dv, wv in ((0, 1 - b), (1, b)):
                    out[..., i, j] += wu * wv * x[..., clamp(u0 + du, height), clamp(v0 + dv, width)]
    return out


def _random_grid(rng: random.Random) -> Grid:
    stride = Fraction(rng.randint(1, 12), rng.choice((1, 2, 3, 4, 8)))
    offset = Fraction(rng.randint(-40, 40), rng.choice((1, 2, 3, 5, 8)))
    return Grid(stride, offset)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("in_size", [1, 2, 7, 33])
def test_aligned_resize_matches_the_numpy_reference(mode: str, in_size: int) -> None:
    rng = random.Random(in_size)
    x = torch.randn(2, 3, in_size, in_size + 1, dtype=torch.float64)
    for _ in range(6):
        source, target = _random_grid(rng), _random_grid(rng)
        size = (rng.choice((1, 2, 7, 33)), rng.choice((1, 2, 7, 33)))
        expected = _reference(x.numpy(), size, source, target, mode)
        got = aligned_resize(x, size, source, target, mode)
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-12,
                                   err_msg=f"{source} -> {target}, size {size}")


def test_fractional_and_negative_shifts_are_exercised() -> None:
    rng = random.Random(0)
    shifts = [target.shift_from(source) for source, target in
              ((_random_grid(rng), _random_grid(rng)) for _ in range(20))]
    assert any(shift < 0 for shift in shifts) and any(shift.denominator > 1 for shift in shifts)


@pytest.mark.parametrize("sizes", [((5, 9), (9, 17)), ((4, 4), (10, 10)), ((7, 3), (4, 2)), ((6, 11), (16, 31))])
def test_corner_grids_equal_interpolate_with_align_corners(sizes) -> None:
    # align_corners=True reads input j·(n-1)/(m-1): a source grid of stride m-1 sampled by one of stride n-1.
    (n_h, n_w), (m_h, m_w) = sizes
    assert Fraction(n_h - 1, m_h - 1) == Fraction(n_w - 1, m_w - 1)
    x = torch.randn(2, 3, n_h, n_w, dtype=torch.float64)  # PyTorch's scale (n-1)/(m-1) is rounded
    got = aligned_resize(x, (m_h, m_w), Grid(m_h - 1), Grid(n_h - 1))
    expected = F.interpolate(x, size=(m_h, m_w), mode="bilinear", align_corners=True)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", SCALES)
def test_half_pixel_grids_equal_interpolate_without_align_corners(scale: int) -> None:
    x = torch.randn(1, 2, 5, 3)
    size = (5 * scale, 3 * scale)
    source, target = Grid.half_pixel(scale), Grid.half_pixel(1)
    torch.testing.assert_close(aligned_resize(x, size, source, target),
                               F.interpolate(x, size=size, mode="bilinear", align_corners=False), atol=1e-6, rtol=0)
    torch.testing.assert_close(aligned_resize(x, size, source, target, "nearest"),
                               F.interpolate(x, size=size, mode="nearest-exact"), atol=0, rtol=0)


@pytest.mark.parametrize("scale", SCALES + (5, 16))
def test_aligned_upsample_equals_aligned_resize_between_grids(scale: int) -> None:
    for size in ((1, 1), (2, 7), (33, 3)):
        x = torch.randn(2, 3, *size)
        target = (scale * size[0], scale * size[1])
        torch.testing.assert_close(aligned_upsample(x, scale, "nearest"),
                                   aligned_resize(x, target, Grid(scale), Grid(1), "nearest"), atol=0, rtol=0)
        torch.testing.assert_close(aligned_upsample(x, scale), aligned_resize(x, target, Grid(scale), Grid(1)),
                                   atol=1e-6, rtol=0)


def test_half_precision_weights_do_not_overflow() -> None:
    x = torch.randn(1, 2, 5, 5)
    source, target = Grid(Fraction(1, 99991)), Grid(Fraction(1, 70001))  # rule denominator ~7e9
    half = aligned_resize(x.half(), (7, 7), source, target)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), aligned_resize(x, (7, 7), source, target), atol=1e-2, rtol=1e-2)


def test_aligned_upsampling_puts_input_pixel_m_on_output_pixel_k_m() -> None:
    x = torch.randn(1, 2, 4, 6)
    for scale in SCALES:
        for mode in ("bilinear", "nearest"):
            y = aligned_upsample(x, scale, mode)
            assert y.shape == (1, 2, 4 * scale, 6 * scale)
            torch.testing.assert_close(y[..., ::scale, ::scale], x, atol=0, rtol=0)


def test_grid_geometry_and_errors() -> None:
    grid = Grid(4, 0.5)
    assert grid.offset == Fraction(1, 2) and grid.stride == 4
    assert grid.position(3) == Fraction(25, 2) and grid.locate(grid.position(3)) == 3
    assert grid.scaled(4) == Grid(1, Fraction(1, 2))
    assert Grid.half_pixel(8) == Grid(8, Fraction(7, 2))
    assert Grid(1).shift_from(Grid.half_pixel(8)) == Fraction(-7, 16)
    assert Grid(2, 1 / 3).offset == Fraction(1, 3)
    with pytest.raises(ValueError, match="stride must be positive"):
        Grid(0)
    with pytest.raises(TypeError, match="offset must be a Fraction"):
        Grid(2, "0")  # type: ignore[arg-type]
    x = torch.randn(1, 1, 3, 3)
    with pytest.raises(ValueError, match="mode must be one of"):
        aligned_resize(x, (6, 6), Grid(2), Grid(1), "bicubic")
    with pytest.raises(ValueError, match=r"expects \(N, C, H, W\)"):
        aligned_resize(x[0], (6, 6), Grid(2), Grid(1))
    with pytest.raises(ValueError, match="exceed 2\\*\\*32"):
        aligned_resize(x, (6, 6), Grid(1), Grid(Fraction(1, 3**21)))
    with pytest.raises(ValueError, match="positive integer"):
        aligned_upsample(x, 0)


# The aligned upsamplers -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", UPSAMPLE_KINDS)
@pytest.mark.parametrize("scale", SCALES)
def test_aligned_upsampler_at_init_is_its_aligned_resize_rule(kind: str, scale: int) -> None:
    upsampler = make_upsampler(kind, 4, 4, scale, shift=0)
    mode = "nearest" if kind == "nearest" else "bilinear"
    for size in ((1, 1), (5, 3), (8, 7)):
        x = torch.randn(2, 4, *size)
        with torch.no_grad():
            torch.testing.assert_close(upsampler(x), aligned_upsample(x, scale, mode), atol=1e-5, rtol=0)


SHIFTS = (Fraction(-1, 2), Fraction(1, 4), Fraction(-1, 3), Fraction(-7, 8))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shift", SHIFTS + (Fraction(0), None))
def test_shifted_upsample_reads_shift_plus_j_over_scale(mode: str, scale: int, shift: Fraction | None) -> None:
    if shift is None:
        shift = half_pixel_shift(scale)
        if mode == "nearest":
            return  # nearest at half-pixel centres is floor(j/s) in PyTorch, not this rounding rule
    x = torch.randn(1, 2, 5, 3, dtype=torch.float64)
    size = (scale * 5, scale * 3)
    expected = _reference(x.numpy(), size, Grid(scale), Grid(1, scale * shift), mode)
    np.testing.assert_allclose(shifted_upsample(x, scale, shift, mode).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("kind", UPSAMPLE_KINDS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shift", SHIFTS)
def test_shifted_upsampler_at_init_is_its_shifted_resize_rule(kind: str, scale: int, shift: Fraction) -> None:
    if shift == half_pixel_shift(scale):
        return  # the half-pixel layers: test_the_half_pixel_shift_builds_the_half_pixel_layers
    if kind == "pixelshuffle" and shift > Fraction(1, scale):
        with pytest.raises(ValueError, match="3×3 window"):
            make_upsampler(kind, 4, 4, scale, shift=shift)
        return
    upsampler = make_upsampler(kind, 4, 4, scale, shift=shift)
    assert upsampler.sampling == (scale, shift)
    mode = "nearest" if kind == "nearest" else "bilinear"
    for size in ((1, 1), (5, 3), (8, 7)):
        x = torch.randn(2, 4, *size)
        with torch.no_grad():
            torch.testing.assert_close(upsampler(x), shifted_upsample(x, scale, shift, mode), atol=1e-5, rtol=0)


def test_the_half_pixel_shift_builds_the_half_pixel_layers() -> None:
    for kind in UPSAMPLE_KINDS:
        torch.manual_seed(1)
        legacy = make_upsampler(kind, 3, 2, 4)
        torch.manual_seed(1)
        shifted = make_upsampler(kind, 3, 2, 4, shift=half_pixel_shift(4))
        x = torch.randn(1, 3, 5, 6)
        assert torch.equal(legacy(x), shifted(x))


def test_upsampler_between_grids_and_at_scale_one() -> None:
    source, target = Grid(8, 7), Grid(4, 1)
    assert upsampling_step(source, target) == (2, Fraction(-3, 4))
    up = upsampler_between("bilinear", 2, 2, source, target)
    assert up.sampling == (2, Fraction(-3, 4))
    with pytest.raises(ValueError, match="integer scale"):
        upsampling_step(Grid(8), Grid(3))
    # One stride, two grids (a dilated stage after a patchify stem): a fixed shift, no weights.
    same_stride = upsampler_between("transposed", 2, 2, Grid(8, Fraction(15, 2)), Grid(8, Fraction(7, 2)))
    x = torch.randn(1, 2, 4, 5)
    torch.testing.assert_close(same_stride(x), aligned_resize(x, (4, 5), Grid(8, Fraction(15, 2)), Grid(8, Fraction(7, 2))))
    assert not list(same_stride.parameters())
    assert isinstance(upsampler_between("bilinear", 2, 2, Grid(4), Grid(2), aligned=False), ResizeConv)
    assert upsampler_between("bilinear", 2, 2, Grid(4), Grid(2), aligned=False).sampling is None
    with pytest.raises(ValueError, match=r"\(-1, 1\)"):
        make_upsampler("transposed", 2, 2, 2, shift=1)


def _centre_of_mass(y: torch.Tensor) -> tuple[float, float]:
    weights = y[0, 0].abs().double()
    rows = torch.arange(weights.shape[0], dtype=torch.float64)
    cols = torch.arange(weights.shape[1], dtype=torch.float64)
    total = weights.sum()
    return float((weights.sum(1) * rows).sum() / total), float((weights.sum(0) * cols).sum() / total)


@pytest.mark.parametrize("kind", UPSAMPLE_KINDS)
@pytest.mark.parametrize("scale", SCALES)
def test_an_impulse_lands_on_output_pixel_k_m_only_when_aligned(kind: str, scale: int) -> None:
    m = (4, 3)
    x = torch.zeros(1, 1, 9, 8)
    x[0, 0, m[0], m[1]] = 1
    with torch.no_grad():
        aligned = make_upsampler(kind, 1, 1, scale, shift=0)(x)
        unaligned = make_upsampler(kind, 1, 1, scale)(x)
    target = (scale * m[0], scale * m[1])
    assert aligned[0, 0, target[0], target[1]] == pytest.approx(1, abs=1e-6)
    assert aligned.max() == pytest.approx(1, abs=1e-6)
    # Odd scales (and bilinear-like kinds) centre the response on k·m exactly; nearest with an even
    # scale covers k·m - k/2 … k·m + k/2 - 1, half a pixel before.
    lead = -0.5 if kind == "nearest" and scale % 2 == 0 else 0
    assert _centre_of_mass(aligned) == pytest.approx((target[0] + lead, target[1] + lead))
    # The half-pixel rules centre it (k - 1)/2 output pixels later.
    shift = (scale - 1) / 2
    assert _centre_of_mass(unaligned) == pytest.approx((target[0] + shift, target[1] + shift))
    if kind in ("transposed", "bilinear") and scale > 2:
        assert unaligned[0, 0, target[0], target[1]] < unaligned.max() - 0.1


@pytest.mark.parametrize("kind", UPSAMPLE_KINDS)
@pytest.mark.parametrize("scale", SCALES)
def test_aligned_upsampler_output_shape_is_exact(kind: str, scale: int) -> None:
    upsampler = make_upsampler(kind, 3, 5, scale, shift=0)
    for size in ((1, 1), (1, 4), (3, 1), (5, 7), (9, 3)):
        assert upsampler(torch.randn(2, 3, *size)).shape == (2, 5, scale * size[0], scale * size[1])


@pytest.mark.parametrize("kind", UPSAMPLE_KINDS)
def test_gradients_flow_through_aligned_upsamplers(kind: str) -> None:
    upsampler = make_upsampler(kind, 3, 4, 3, shift=0)
    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    upsampler(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    for parameter in upsampler.parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_gradient_of_aligned_resize_matches_finite_differences() -> None:
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    source, target = Grid(Fraction(3, 2), -1), Grid(1, Fraction(1, 3))
    assert torch.autograd.gradcheck(lambda t: aligned_resize(t, (7, 9), source, target), (x,))


def test_scale_one_and_unaligned_defaults_are_unchanged() -> None:
    assert isinstance(make_upsampler("bilinear", 3, 3, 1, shift=0), nn.Identity)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 5)
    for kind in UPSAMPLE_KINDS:
        torch.manual_seed(1)
        default = make_upsampler(kind, 3, 2, 2)
        torch.manual_seed(1)
        explicit = make_upsampler(kind, 3, 2, 2, shift=None)
        assert torch.equal(default(x), explicit(x))


# Export with dynamic sizes ------------------------------------------------------------------------

class _AlignedResize(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (3 * x.shape[-2] + 1, 3 * x.shape[-1] + 1)
        return aligned_resize(x, size, Grid(3, Fraction(1, 2)), Grid(1, Fraction(-1, 4)), self.mode)


class _AlignedUpsample(nn.Module):
    def __init__(self, scale: int, mode: str) -> None:
        super().__init__()
        self.scale, self.mode = scale, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return aligned_upsample(x, self.scale, self.mode)


@pytest.mark.parametrize("module", [_AlignedResize("bilinear"), _AlignedResize("nearest"),
                                    _AlignedUpsample(4, "bilinear"), _AlignedUpsample(8, "nearest"),
                                    make_upsampler("transposed", 2, 2, 4, shift=0)],
                         ids=["aligned_resize-bilinear", "aligned_resize-nearest", "aligned_upsample-bilinear",
                              "aligned_upsample-nearest", "transposed-aligned"])
def test_exports_with_dynamic_height_and_width(module: nn.Module) -> None:
    from torch.export import Dim, export

    dynamic = {"x": {2: Dim("height", min=1, max=4096), 3: Dim("width", min=1, max=4096)}}
    program = export(module.eval(), (torch.randn(1, 2, 6, 5),), dynamic_shapes=dynamic)
    for size in ((1, 1), (7, 12)):
        x = torch.randn(1, 2, *size)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), module(x), atol=0, rtol=0)


def test_onnx_export_with_dynamic_sizes_matches_eager() -> None:
    import onnxruntime as ort

    from pixelwise.runtimes.onnx_graph import onnx_proto

    class Model(nn.Module):
        in_channels = 2

        def __init__(self) -> None:
            super().__init__()
            self.up = make_upsampler("bilinear", 2, 2, 3, shift=0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return aligned_resize(self.up(x), (x.shape[-2] + 2, x.shape[-1] + 2), Grid(1), Grid(3, -3))

    model = Model().eval()
    session = ort.InferenceSession(onnx_proto(model, "aligned").SerializeToString())
    for size in ((1, 1), (7, 12)):
        x = torch.randn(1, 2, *size)
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, atol=1e-6, rtol=0)
