"""pixelwise.superres: image conventions, PSNR / SSIM against peers, the networks' sizes, the
periodic-error measure, training (loss falls, resume is exact), compare and upscale."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_recipe
from PIL import Image

from pixelwise.cli import main
from pixelwise.config import ConfigError, load_config
from pixelwise.data.io import DataError
from pixelwise.layers.upsample import UPSAMPLE_KINDS, WideTransposedUpsample
from pixelwise.io.model_file import read_superres_onnx
from pixelwise.runtimes.onnx_graph import onnx_proto
from pixelwise.runtimes.onnx_runtime import OnnxRuntime
from pixelwise.superres.compare import compare_methods, save_comparison_figure, upscale_file, upscale_images
from pixelwise.superres.images import (bicubic_upscale, downscale, modcrop, rgb_to_ycbcr, to_pixels, to_tensor,
                                       upscale_fixed, ycbcr_to_rgb)
from pixelwise.superres.models import create_sr_model
from pixelwise.superres.export import export_superres
from pixelwise.superres.published import PUBLISHED, benchmark_of, published_results
from pixelwise.superres.quality import PeriodicError, psnr, shave, ssim
from pixelwise.superres.train import (SuperResFrames, load_superres_config, load_superres_model,
                                      train_superres)
from pixelwise.training import run_loop
from pixelwise.training.loop import train


REPO_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "model_files"


def _smooth_image(generator: torch.Generator, height: int, width: int) -> np.ndarray:
    """A photo-like uint8 RGB image: coarse noise upscaled, plus a little fine texture."""
    coarse = torch.rand(1, 3, height // 6 + 1, width // 6 + 1, generator=generator)
    image = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    image = image + 0.05 * torch.rand(1, 3, height, width, generator=generator)
    return to_pixels(image.clamp(0, 1))


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sr_images")
    generator = torch.Generator().manual_seed(7)
    for split, count in (("train", 4), ("val", 2)):
        (root / split).mkdir()
        for index in range(count):
            Image.fromarray(_smooth_image(generator, 48, 60)).save(root / split / f"{index}.png")
    return root


def _overrides(root, out, *extra):
    return [f"data.train={root / 'train'}", f"data.val={root / 'val'}", "data.patch_size=8", "data.batch_size=4",
            "train.eval_every=5", "train.checkpoint_every=5", f"train.output_dir={out}",
            "model.options={channels: [8, 8]}", *extra]


# ------------------------------------------------------------------ conventions and metrics

def test_ycbcr_matches_scikit_image_and_inverts():
    from skimage.color import rgb2ycbcr

    pixels = _smooth_image(torch.Generator().manual_seed(1), 12, 15)
    ours = rgb_to_ycbcr(to_tensor(pixels).double())[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, rgb2ycbcr(pixels), atol=1e-9)
    rgb = to_tensor(pixels).double()
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb)


def test_a_read_only_array_converts_without_a_warning():
    pixels = np.ascontiguousarray(_smooth_image(torch.Generator().manual_seed(2), 5, 7))
    pixels.setflags(write=False)  # as np.asarray of a PIL image returns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = to_tensor(pixels)
    assert np.array_equal(to_pixels(image), pixels)


def test_psnr_matches_numpy_formula_and_torchmetrics_and_is_infinite_for_equal_images():
    from torchmetrics.functional.image import peak_signal_noise_ratio

    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 20, 24, generator=generator, dtype=torch.float64) * 255
    b = (a + torch.randn(2, 1, 20, 24, generator=generator, dtype=torch.float64) * 5).clamp(0, 255)
    ours = psnr(b, a)
    expected = [10 * np.log10(255 ** 2 / np.mean((b[i].numpy() - a[i].numpy()) ** 2)) for i in range(2)]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12)
    peer = peak_signal_noise_ratio(b[:1], a[:1], data_range=255.0)
    assert float(ours[0]) == pytest.approx(float(peer), rel=1e-6)  # torchmetrics sums in float32
    assert math.isinf(float(psnr(a, a.clone())[0])), "identical images: inf, not capped"
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, a[..., :-1])


def test_ssim_matches_torchmetrics_on_the_valid_region():
    """scikit-image's SSIM (what pixelwise uses) and torchmetrics' full SSIM map, cropped to the
    window positions inside the image, agree."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    generator = torch.Generator().manual_seed(3)
    a = torch.rand(1, 1, 30, 41, generator=generator, dtype=torch.float64) * 255
    b = (a + torch.randn(1, 1, 30, 41, generator=generator, dtype=torch.float64) * 12).clamp(0, 255)
    _, full = structural_similarity_index_measure(b, a, gaussian_kernel=True, sigma=1.5, kernel_size=11,
                                                  data_range=255.0, return_full_image=True)
    assert float(ssim(b, a)[0]) == pytest.approx(float(full[..., 5:-5, 5:-5].mean()), abs=1e-10)
    assert float(ssim(a, a)[0]) == pytest.approx(1.0)
    assert float(ssim(b, a)[0]) < 0.99


def test_downscale_is_pils_antialiased_bicubic():
    pixels = _smooth_image(torch.Generator().manual_seed(2), 36, 48)
    ours = to_pixels(downscale(to_tensor(pixels), 3)).astype(int)
    pil = np.asarray(Image.fromarray(pixels).resize((16, 12), Image.Resampling.BICUBIC)).astype(int)
    # PIL rounds and clips to 8 bits between its horizontal and vertical passes
    difference = np.abs(ours - pil)
    assert difference.max() <= 3 and (difference <= 1).mean() > 0.99


def test_fixed_upscaling_rules():
    low = torch.rand(1, 3, 5, 7)
    for method in ("nearest", "bilinear", "bicubic", "lanczos"):
        assert upscale_fixed(low, 3, method).shape == (1, 3, 15, 21)
    torch.testing.assert_close(upscale_fixed(low, 3, "nearest"),
                               low.repeat_interleave(3, -1).repeat_interleave(3, -2))
    # bicubic is MATLAB's and PIL's (Keys a = -0.5), not PyTorch's plain a = -0.75
    plane = torch.rand(12, 16)
    pil = np.asarray(Image.fromarray(plane.numpy(), mode="F").resize((48, 36), Image.Resampling.BICUBIC))
    np.testing.assert_allclose(bicubic_upscale(plane[None, None], 3)[0, 0].numpy(), pil, atol=1e-5)
    with pytest.raises(ValueError, match="unknown interpolation"):
        upscale_fixed(low, 3, "cubic")
    assert modcrop(torch.zeros(1, 3, 50, 61), 3).shape[-2:] == (48, 60)


def test_periodic_error_finds_a_checkerboard_and_not_noise():
    """Noise spreads over every frequency (0 dB, once averaged over images: a single image's few
    peak bins are as variable as any); a pattern of period 3 stands far above it."""
    generator = torch.Generator().manual_seed(4)
    pattern = torch.tensor([[1.0, -1.0, 0.0], [0.0, 2.0, -1.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    tiled = pattern.repeat(32, 40)
    plain, periodic = PeriodicError(3), PeriodicError(3)
    for _ in range(30):
        noise = torch.randn(96, 120, generator=generator, dtype=torch.float64)
        plain.add(noise)
        periodic.add(noise + tiled)
    assert abs(plain.excess_db) < 1.0
    assert periodic.excess_db > 20.0
    assert periodic.phase_rms == pytest.approx(float((pattern - pattern.mean()).square().mean().sqrt()), rel=0.05)


def test_nearest_displaces_its_sub_pixel_phases():
    """On a ramp nearest's phases copy a sample 1 px to their left, their own, and 1 px to their
    right (×3): per-phase errors of -slope, 0, +slope, a periodic error of RMS slope·√(2/3);
    linear rules reproduce the ramp."""
    ramp = torch.linspace(0, 1, 96, dtype=torch.float64).expand(1, 1, 48, 96)
    low = downscale(ramp, 3)
    scores = {}
    for method in ("nearest", "bilinear"):
        scores[method] = PeriodicError(3)
        scores[method].add(shave((upscale_fixed(low, 3, method) - ramp) * 255, 3)[0, 0])
    assert scores["nearest"].phase_rms == pytest.approx(255 / 95 * math.sqrt(2 / 3), rel=1e-6)
    assert scores["bilinear"].phase_rms < 0.01 and scores["nearest"].excess_db > 40


# ------------------------------------------------------------------ networks

NETWORKS = ["srcnn", *(f"{name}-{kind}" for name in ("espcn", "fsrcnn") for kind in UPSAMPLE_KINDS)]


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("network", NETWORKS)
def test_networks_map_odd_sizes_to_scale_times(network, scale):
    name, _, kind = network.partition("-")
    model = create_sr_model(name, scale, **({"upsample": kind} if kind else {}))
    for height, width in ((7, 9), (11, 5)):
        assert model(torch.rand(2, 1, height, width)).shape == (2, 1, scale * height, scale * width)


def test_fsrcnn_is_the_papers_network():
    model = create_sr_model("fsrcnn", 3)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.out_channels) for c in convs] == [(5, 56), (1, 12), *[(3, 12)] * 4, (1, 56)]
    assert sum(isinstance(m, torch.nn.PReLU) for m in model.features) == 7
    deconv = model.upsampler.conv
    assert isinstance(deconv, torch.nn.ConvTranspose2d) and deconv.kernel_size == (9, 9) and deconv.stride == (3, 3)
    # The paper counts 12,464 weights at x3 (biases and PReLU slopes left out).
    weights = sum(m.weight.numel() for m in [*convs, deconv])
    assert weights == 56 * 25 + 56 * 12 + 4 * 12 * 12 * 9 + 12 * 56 + 56 * 81 == 12_464
    small = create_sr_model("fsrcnn", 2, d=32, s=5, m=1)
    assert small.upsampler.conv.kernel_size == (8, 8) and small(torch.rand(1, 1, 5, 7)).shape == (1, 1, 10, 14)
    with pytest.raises(ValueError, match="kernel - scale even"):
        create_sr_model("fsrcnn", 2, kernel=9)
    with pytest.raises(ValueError, match="has none"):
        create_sr_model("fsrcnn", 3, upsample="pixelshuffle", kernel=9)


@pytest.mark.parametrize("network", ["srcnn", "espcn-pixelshuffle", *(f"fsrcnn-{kind}" for kind in UPSAMPLE_KINDS)])
def test_networks_export_to_onnx_and_run_at_any_size(network, tmp_path):
    """One graph with dynamic batch, height and width computes what the network does."""
    name, _, kind = network.partition("-")
    model = create_sr_model(name, 3, **({"upsample": kind} if kind else {})).eval()
    for parameter in model.parameters():  # away from the initial interpolation
        parameter.data += 0.05 * torch.randn_like(parameter)
    onnx.save(onnx_proto(model, name), str(tmp_path / "sr.onnx"))
    runtime = OnnxRuntime(tmp_path / "sr.onnx")
    for shape in ((1, 1, 7, 9), (2, 1, 20, 13), (1, 1, 64, 96)):
        image = torch.rand(shape)
        with torch.no_grad():
            expected = model(image)
        assert runtime(image).shape == expected.shape
        torch.testing.assert_close(runtime(image), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("scale", "kernel"), [(3, 9), (2, 8), (4, 10), (3, 5)])
def test_the_wide_transposed_convolution_starts_as_bilinear_interpolation(scale, kernel):
    """Centred at every scale, borders included: at initialisation it is F.interpolate's bilinear."""
    up = WideTransposedUpsample(2, 2, scale, kernel)
    image = torch.rand(1, 2, 7, 9)
    expected = F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(image), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("scale", "kernel"), [(3, 9), (2, 8), (4, 10), (3, 5), (2, 4), (5, 11)])
def test_the_wide_transposed_convolution_is_computed_as_its_sub_pixel_convolution(scale, kernel):
    """Random kernels (not the bilinear start, where many taps are zero): the dense convolution at
    low resolution plus pixel shuffle gives the transposed convolution's outputs and gradients."""
    torch.manual_seed(scale * kernel)
    up = WideTransposedUpsample(5, 2, scale, kernel).double()
    with torch.no_grad():
        up.conv.weight.normal_()
        up.conv.bias.normal_()
    image = torch.randn(2, 5, 7, 4, dtype=torch.float64, requires_grad=True)
    fast, reference = up(image), up.transposed_forward(image)
    assert fast.shape == reference.shape == (2, 2, 7 * scale, 4 * scale)
    torch.testing.assert_close(fast, reference, atol=1e-12, rtol=1e-12)
    upstream = torch.randn_like(fast)
    for fast_grad, reference_grad in zip(torch.autograd.grad(fast, (image, up.conv.weight, up.conv.bias), upstream),
                                         torch.autograd.grad(reference, (image, up.conv.weight, up.conv.bias), upstream)):
        torch.testing.assert_close(fast_grad, reference_grad, atol=1e-10, rtol=1e-10)
    weight, _ = up.subpixel_weight()
    assert weight.shape[:2] == (2 * scale ** 2, 5) and weight.shape[-1] == 2 * up.reach + 1
    assert torch.count_nonzero(weight) == kernel * kernel * 5 * 2  # every tap used once, the rest zero


def test_espcn_depth_and_residual_start():
    deep = create_sr_model("espcn", 3, channels=[16, 16, 8])
    assert [m.out_channels for m in deep.features if isinstance(m, torch.nn.Conv2d)] == [16, 16, 8]
    assert deep(torch.rand(1, 1, 7, 9)).shape == (1, 1, 21, 27)
    # residual: the network adds its output to the bicubic enlargement; with the last layer
    # zeroed it is exactly the bicubic rule
    residual = create_sr_model("espcn", 3, upsample="pixelshuffle", residual=True)
    torch.nn.init.zeros_(residual.upsampler.conv.weight)
    torch.nn.init.zeros_(residual.upsampler.conv.bias)
    low = torch.rand(1, 1, 8, 10)
    torch.testing.assert_close(residual(low), bicubic_upscale(low, 3))
    with pytest.raises(ValueError, match="positive feature widths"):
        create_sr_model("espcn", 3, channels=[16, 0])


def test_unknown_network_and_bad_scale():
    with pytest.raises(ValueError, match="FSRCNN needs d >= 1"):
        create_sr_model("fsrcnn", 3, s=0)
    with pytest.raises(ValueError, match="unknown super-resolution model"):
        create_sr_model("edsr", 3)
    with pytest.raises(ValueError, match="at least 2"):
        create_sr_model("espcn", 1)
    with pytest.raises(ValueError, match="unknown upsample kind"):
        create_sr_model("espcn", 3, upsample="cubic")
    with pytest.raises(ValueError, match="srcnn has no option 'upsample'; its options are channels"):
        create_sr_model("srcnn", 3, upsample="pixelshuffle")


# ------------------------------------------------------------------ training sets

def _patch_errors(frames: SuperResFrames, samples: int) -> list[tuple[float, float, float]]:
    """Per sample: mean squared error of the bicubic enlargement of its LR patch against its HR
    patch, against the HR patch flipped, and against it moved by one LR pixel (inside a border)."""
    errors = []
    scale = frames.scale
    for index in range(samples):
        torch.manual_seed(index)
        low, high = frames[index % len(frames)]
        enlarged = bicubic_upscale(low[None], scale)[0]
        inside = (slice(None), slice(2 * scale, -2 * scale), slice(2 * scale, -2 * scale))

        def error(target):
            return float((enlarged[inside] - target[inside]).square().mean())
        errors.append((error(high), error(high.flip(-1)), error(high.roll(scale, -1))))
    return errors


def test_shrunk_flipped_and_transposed_patches_stay_aligned(tmp_path):
    """Every dihedral transform and shrinking factor keeps the LR patch on its HR patch: its bicubic
    enlargement is closer to it than to the same patch flipped or moved by one LR pixel."""
    generator = torch.Generator().manual_seed(3)
    for index in range(3):
        pixels = _smooth_image(generator, 90, 120)
        pixels[::2] = pixels[::2] // 2  # fine horizontal detail, so a misplaced patch shows
        Image.fromarray(pixels).save(tmp_path / f"{index}.png")
    frames = SuperResFrames(tmp_path, 3, patch_size=16, shrink_factors=(1.0, 0.8, 0.6), by_area=True)
    assert [factor for _, factor in frames.sources] == [1.0, 0.8, 0.6] * 3 and frames.left_out == []
    assert [tuple(high.shape[-2:]) for high in frames.high_y[:3]] == [(90, 120), (72, 96), (54, 72)]
    errors = _patch_errors(frames, 48)
    assert all(aligned < flipped and aligned < moved for aligned, flipped, moved in errors)


def test_sampling_by_area_and_copies_too_small_for_a_patch(image_folders):
    frames = SuperResFrames(image_folders / "train", 3, patch_size=8, shrink_factors=(1.0, 0.5), by_area=True)
    # 48×60 images: 16×20 LR pixels at 1.0 (five 8-pixel patches); shrunk by 0.5, 8×10 LR.
    assert len(frames.high_y) == 8 and len(frames) == 4 * (5 + 1)
    assert [frames.image_of(index) for index in range(7)] == [0, 0, 0, 0, 0, 1, 2]
    with pytest.raises(IndexError):
        frames.image_of(len(frames))
    small = SuperResFrames(image_folders / "train", 3, patch_size=8, shrink_factors=(1.0, 0.4))
    assert len(small) == len(small.high_y) == 4 and [f for _, f in small.left_out] == [0.4] * 4
    with pytest.raises(ConfigError, match="data.shrink"):
        load_superres_config(None, ["data.shrink=[1.0, 0]"])


# ------------------------------------------------------------------ training

def test_training_lowers_the_loss_and_resumes_exactly(image_folders, tmp_path):
    config = load_superres_config(None, _overrides(image_folders, tmp_path / "whole", "train.iterations=20",
                                                   "optim.lr=0.003"))
    frames = SuperResFrames(image_folders / "train", 3, patch_size=8)
    low, high = zip(*(frames[i] for i in range(len(frames))))
    low, high = torch.stack(low), torch.stack(high)
    untrained = create_sr_model("espcn", 3, channels=(8, 8))
    torch.manual_seed(0)
    whole = train_superres(config)
    trained, _ = load_superres_model(whole.run_dir / "last.pt")
    with torch.no_grad():
        assert F.mse_loss(trained(low), high) < 0.7 * F.mse_loss(untrained(low), high)
    assert (whole.run_dir / "psnr.png").is_file() and (whole.run_dir / "loss.png").is_file()
    assert whole.bicubic["psnr"] > 0 and whole.last_metrics["images"] == 2

    split = tmp_path / "split"
    split_config = load_superres_config(None, _overrides(image_folders, split, "train.iterations=20",
                                                         "optim.lr=0.003"))

    def interrupt(iteration: int, loss: float) -> None:
        if iteration == 12:  # two steps after the checkpoint at 10: they are replayed
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_superres(split_config, on_step=interrupt)
    torch.manual_seed(123)  # the resumed run's random state comes from the checkpoint
    resumed = train_superres(split_config, resume=True)
    assert resumed.iterations == 20
    a = torch.load(whole.run_dir / "last.pt", weights_only=True)["model"]
    b = torch.load(split / "last.pt", weights_only=True)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    steps = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [s["iteration"] for s in steps if "loss" in s] == list(range(1, 21))


def test_time_budget_sizes_the_run(image_folders, tmp_path):
    result = train_superres(load_superres_config(None, _overrides(image_folders, tmp_path / "budget",
                                                                  "train.time_budget_min=0.15")))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    plans = [r for r in records if "time_budget" in r]
    assert len(plans) == 1 and result.iterations >= plans[0]["time_budget"]["decided_at"]
    assert torch.load(result.run_dir / "last.pt", weights_only=True)["iteration"] == result.iterations


def test_segmentation_and_superres_drive_the_one_training_loop(image_folders, tmp_path, monkeypatch):
    """Both tasks train through :class:`TrainingLoop`, each deciding best.pt by its own metric."""
    tasks = []
    real_run = run_loop.TrainingLoop.run

    def spy(loop, batches, log):
        tasks.append(loop.task.best)
        return real_run(loop, batches, log)

    monkeypatch.setattr(run_loop.TrainingLoop, "run", spy)
    segmentation = train(load_config(None, tiny_recipe(tmp_path / "segmentation")))
    superres = train_superres(load_superres_config(None, _overrides(image_folders, tmp_path / "superres",
                                                                    "train.iterations=2")))
    assert [(best.summary_key, best.checkpoint_key) for best in tasks] == [("mean_iou", "best_miou"),
                                                                           ("psnr", "best_psnr")]
    for result, best in zip((segmentation, superres), tasks):
        state = torch.load(result.run_dir / "best.pt", weights_only=True)
        assert state["iteration"] == result.iterations == 2 and best.checkpoint_key in state


def test_bad_inputs_are_named(image_folders, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(_smooth_image(torch.Generator().manual_seed(5), 48, 60)).save(broken / "good.png")
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="bad.png"):
        SuperResFrames(broken, 3, patch_size=8)
    with pytest.raises(DataError, match="too small"):
        SuperResFrames(image_folders / "val", 3, patch_size=64)
    with pytest.raises(ConfigError, match="unknown key 'model.upsample'"):
        load_superres_config(None, ["model.upsample=transposed"])
    with pytest.raises(ConfigError, match="loss"):
        load_superres_config(None, ["loss=ssim"])
    with pytest.raises(ConfigError, match="model.scale"):
        load_superres_config(None, ["model.scale=1"])


def test_a_segmentation_checkpoint_is_refused(tiny_checkpoint):
    with pytest.raises(ConfigError, match="not a super-resolution checkpoint"):
        load_superres_model(tiny_checkpoint)


# ------------------------------------------------------------------ compare and upscale

@pytest.fixture(scope="module")
def sr_checkpoint(image_folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("sr_run")
    result = train_superres(load_superres_config(None, _overrides(image_folders, out, "train.iterations=10",
                                                                  "model.options={upsample: transposed, "
                                                                  "channels: [8, 8]}")))
    return result.run_dir / "best.pt"


def test_compare_scores_every_method(image_folders, sr_checkpoint, tmp_path):
    comparison = compare_methods([image_folders / "val"], 3, [sr_checkpoint])
    rows = {row.method: row for row in comparison.rows}
    assert list(rows) == ["nearest", "bilinear", "bicubic", "lanczos", "espcn-transposed"]
    assert rows["bicubic"].psnr > rows["nearest"].psnr
    for name in ("nearest", "bilinear", "bicubic"):
        assert rows[name].checkerboard == pytest.approx(0.0, abs=1e-9)
        assert rows[name].upsampler_checkerboard is None
    assert rows["espcn-transposed"].upsampler_checkerboard is not None
    assert all(math.isfinite(row.periodic_db) and row.periodic_rms > 0 for row in comparison.rows)
    # the bicubic row is what training logs as its baseline
    frames = SuperResFrames(image_folders / "val", 3)
    from pixelwise.superres.train import evaluate_interpolation
    assert evaluate_interpolation("bicubic", frames)["psnr"] == pytest.approx(rows["bicubic"].psnr, rel=1e-9)
    figure = save_comparison_figure(comparison, tmp_path / "figure.png", size=24)
    assert Image.open(figure).size[0] > 300


def test_cli_train_compare_upscale(image_folders, sr_checkpoint, tmp_path, capsys):
    run = tmp_path / "cli_run"
    assert main(["superres", "train", *_overrides(image_folders, run, "train.iterations=5")]) == 0
    assert "best validation PSNR" in capsys.readouterr().out
    assert main(["superres", "train", *_overrides(image_folders, run, "train.iterations=5")]) == 2
    assert "--resume" in capsys.readouterr().out
    out = tmp_path / "compare"
    assert main(["superres", "compare", str(image_folders / "val"), "--scale", "3", "--checkpoint",
                 str(sr_checkpoint), "--out", str(out), "--crop", "24"]) == 0
    table = capsys.readouterr().out
    assert "espcn-transposed" in table and "lanczos" in table
    assert (out / "comparison.png").is_file()
    assert len(json.loads((out / "comparison.json").read_text())["rows"]) == 5
    assert main(["superres", "compare", str(image_folders / "val"), "--scale", "2", "--checkpoint",
                 str(sr_checkpoint), "--out", str(out)]) == 2
    assert "upscales by 3" in capsys.readouterr().out
    image = image_folders / "val" / "0.png"
    assert main(["superres", "upscale", str(image), "--checkpoint", str(sr_checkpoint), "--out",
                 str(tmp_path / "big.png")]) == 0
    assert Image.open(tmp_path / "big.png").size == (180, 144)
    assert upscale_file(sr_checkpoint, image, tmp_path / "b.png") == ((48, 60), (144, 180))
    # A folder of frames: one PNG each, the model loaded once, frames per second said
    assert main(["superres", "upscale", str(image_folders / "val"), "--checkpoint", str(sr_checkpoint), "--out",
                 str(tmp_path / "frames")]) == 0
    assert "frames/s" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["0.png", "1.png"]
    assert main(["superres", "upscale", str(image_folders / "val"), "--checkpoint", str(sr_checkpoint), "--out",
                 str(tmp_path / "one.png")]) == 2
    assert "name a folder" in capsys.readouterr().out
    report = upscale_images(sr_checkpoint, [image], tmp_path / "bf16.png", precision="bf16")
    assert report.images[0].after == (144, 180) and report.frames_per_second > 0
    difference = np.abs(np.asarray(Image.open(tmp_path / "bf16.png"), dtype=int) - np.asarray(Image.open(tmp_path / "big.png")))
    assert difference.mean() < 2


# ------------------------------------------------------------------ published figures

def test_the_published_figures_are_data_with_their_sources():
    keys = [(row.method, row.benchmark, row.scale) for row in PUBLISHED]
    assert len(keys) == len(set(keys))
    assert all(row.source and row.training and 20 < row.psnr < 40 for row in PUBLISHED)
    assert [(row.method, row.psnr) for row in published_results("set5", 3)] == [
        ("bicubic", 30.39), ("SRCNN", 32.39), ("ESPCN", 32.55), ("FSRCNN (56, 12, 4)", 33.06)]
    assert {row.method for row in published_results("Set14", 2)} == {"bicubic", "SRCNN"}
    assert published_results("Set5", 8) == [] and published_results("Urban100", 3) == []


def test_compare_prints_the_published_figures_of_its_benchmark_and_scale_only(image_folders, tmp_path, capsys):
    set5 = tmp_path / "Set5"
    set5.mkdir()
    for image in (image_folders / "val").iterdir():
        (set5 / image.name).write_bytes(image.read_bytes())
    assert benchmark_of([set5]) == "Set5" and benchmark_of([set5 / "0.png"]) is None
    assert benchmark_of([set5, set5]) is None and benchmark_of([image_folders / "val"]) is None
    out = tmp_path / "compare"
    assert main(["superres", "compare", str(set5), "--scale", "3", "--out", str(out), "--crop", "24"]) == 0
    printed = capsys.readouterr().out
    assert "published: ×3 on Set5" in printed and "32.55" in printed and "Shi et al., CVPR 2016" in printed
    report = json.loads((out / "comparison.json").read_text())
    assert report["benchmark"] == "Set5" and [row["psnr"] for row in report["published"]][-1] == 33.06
    assert main(["superres", "compare", str(set5), "--scale", "4", "--out", str(out), "--crop", "24"]) == 0
    printed = capsys.readouterr().out
    assert "published: ×4 on Set5" in printed and "28.42" in printed and "32.55" not in printed
    assert main(["superres", "compare", str(image_folders / "val"), "--scale", "3", "--out", str(out),
                 "--crop", "24"]) == 0
    assert "published" not in capsys.readouterr().out
    assert json.loads((out / "comparison.json").read_text())["published"] == []
    assert main(["superres", "compare", str(image_folders / "val"), "--scale", "3", "--benchmark", "Set14",
                 "--out", str(out), "--crop", "24"]) == 0
    assert "published: ×3 on Set14" in capsys.readouterr().out


def test_train_and_compare_read_no_image_outside_the_folders_given(image_folders, tmp_path, monkeypatch, capsys):
    """Set14 is kept back: a benchmark folder beside Set5 is never opened by training or comparing."""
    root = tmp_path / "superres"
    for name, source in (("T91", "train"), ("Set5", "val"), ("Set14", "val")):
        (root / name).mkdir(parents=True)
        for image in (image_folders / source).iterdir():
            (root / name / image.name).write_bytes(image.read_bytes())
    opened = []
    real_open = Image.open

    def spy(source, *args, **kwargs):
        opened.append(Path(source).resolve() if isinstance(source, (str, Path)) else source)
        return real_open(source, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    run = tmp_path / "run"
    overrides = [f"data.train={root / 'T91'}", f"data.val={root / 'Set5'}", "data.patch_size=8", "data.batch_size=4",
                 "train.iterations=2", "train.eval_every=2", f"train.output_dir={run}", "model.options={channels: [8, 8]}"]
    assert main(["superres", "train", *overrides]) == 0
    assert main(["superres", "compare", str(root / "Set5"), "--scale", "3", "--checkpoint", str(run / "last.pt"),
                 "--out", str(tmp_path / "compare"), "--crop", "24"]) == 0
    assert "published: ×3 on Set5" in capsys.readouterr().out
    paths = [path for path in opened if isinstance(path, Path)]
    assert {path.parent.name for path in paths} == {"T91", "Set5"}
    assert all(path.is_relative_to(root.resolve()) for path in paths)


# ------------------------------------------------------------------ export

def test_a_superres_checkpoint_exports_to_onnx_and_upscales_as_it_does(image_folders, sr_checkpoint, tmp_path, capsys):
    image = image_folders / "val" / "0.png"
    exported = tmp_path / "sr.onnx"
    assert main(["export", "--checkpoint", str(sr_checkpoint), "--out", str(exported)]) == 0
    printed = capsys.readouterr().out
    assert "parity, ONNX Runtime fp32" in printed and "super-resolution" in printed
    spec, _ = read_superres_onnx(exported)
    assert spec == load_superres_model(sr_checkpoint)[1]
    assert main(["superres", "upscale", str(image), "--checkpoint", str(exported), "--out", str(tmp_path / "o.png")]) == 0
    with pytest.raises(ValueError, match="ONNX Runtime in fp32"):
        upscale_images(exported, [image], tmp_path / "x.png", precision="bf16")
    upscale_file(sr_checkpoint, image, tmp_path / "c.png")
    difference = np.abs(np.asarray(Image.open(tmp_path / "o.png"), dtype=int) - np.asarray(Image.open(tmp_path / "c.png")))
    assert difference.max() <= 1  # 8-bit rounding of outputs within 1e-4
    rows = compare_methods([image_folders / "val"], 3, [sr_checkpoint, exported], fixed=("bicubic",)).rows
    assert rows[1].psnr == pytest.approx(rows[2].psnr, abs=0.01) and rows[2].method.startswith("espcn-transposed (")
    # The same target again: refused without --overwrite; other formats and int8 are for segmentation
    assert main(["export", "--checkpoint", str(sr_checkpoint), "--out", str(exported)]) == 2
    assert "--overwrite" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(sr_checkpoint), "--out", str(tmp_path / "sr.pt2"),
                 "--format", "torchscript"]) == 2
    assert "super-resolution network" in capsys.readouterr().out
    # A segmentation command names what the file is
    assert main(["predict", "--model", str(exported), str(image), "--out", str(tmp_path / "masks")]) == 2
    assert "is a super-resolution network" in capsys.readouterr().out


def test_an_edited_superres_export_is_refused(sr_checkpoint, tmp_path):
    exported = tmp_path / "sr.onnx"
    export_superres(sr_checkpoint, exported, parity=False)
    graph = onnx.load(str(exported))
    for prop in graph.metadata_props:
        if prop.key == "pixelwise.superres_model":
            prop.value = prop.value.replace('"scale": 3', '"scale": 2')
    onnx.save(graph, str(tmp_path / "edited.onnx"))
    with pytest.raises(ValueError, match="damaged or was edited"):
        load_superres_model(tmp_path / "edited.onnx")
    with pytest.raises(ValueError, match="not a super-resolution model"):
        read_superres_onnx(REPO_FIXTURES / "model.onnx")


# ------------------------------------------------------------------ the T91 recipes

SUPERRES_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "superres"
T91_RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("superres_*_t91.yaml"))


def test_a_t91_recipe_per_network_within_30_minutes_and_every_scale_for_fsrcnn():
    configs = {path.stem: load_superres_config(path) for path in T91_RECIPES}
    assert {(config.model.name, config.model.scale) for config in configs.values()} == {
        ("espcn", 3), ("srcnn", 3), ("fsrcnn", 2), ("fsrcnn", 3), ("fsrcnn", 4)}
    for stem, config in configs.items():
        assert stem == f"superres_{config.model.name}_x{config.model.scale}_t91"
        assert config.train.time_budget_min <= 30 and config.train.output_dir == f"runs/{stem}"
        assert config.data.train.endswith("superres/T91") and config.data.val.endswith("superres/Set5")


@pytest.mark.skipif(not (SUPERRES_DATA / "T91").is_dir(), reason="../shared/datasets/superres is absent")
@pytest.mark.parametrize("recipe", T91_RECIPES, ids=lambda path: path.stem)
def test_a_t91_recipe_trains_on_real_images(recipe, tmp_path):
    """Two steps on three T91 images (the smallest, 78×78, and the widest among them), validated on one Set5 image."""
    train_images, val_images = tmp_path / "train", tmp_path / "val"
    train_images.mkdir()
    val_images.mkdir()
    for name in ("t20.png", "t1.png", "t46.png"):
        (train_images / name).write_bytes((SUPERRES_DATA / "T91" / name).read_bytes())
    (val_images / "bird.png").write_bytes((SUPERRES_DATA / "Set5" / "bird.png").read_bytes())
    config = load_superres_config(recipe, [f"data.train={train_images}", f"data.val={val_images}",
                                           "train.time_budget_min=null", "train.iterations=2", "train.eval_every=2",
                                           f"train.output_dir={tmp_path / 'run'}", "data.batch_size=4"])
    result = train_superres(config)
    assert result.iterations == 2 and result.last_metrics["images"] == 1
    assert math.isfinite(result.last_metrics["psnr"]) and result.bicubic["psnr"] > 25
