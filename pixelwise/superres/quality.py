"""Image quality as super-resolution papers report it, and the periodic part of an error.

PSNR and SSIM are measured on luminance in [0, 255] (:func:`pixelwise.superres.images.luminance`)
with ``scale`` pixels cropped at every border (:func:`shave`), where interpolation has no
neighbours on one side.

- :func:`psnr`: ``10·log10(255² / MSE)`` per image; **identical images give ``inf``** (the MSE is
  0), and a mean over images that include one is ``inf`` too: nothing is capped.
- :func:`ssim`: Wang et al. (2004) with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01,
  K2 = 0.03, averaged over the window positions that lie inside the image (the reference
  MATLAB code's rule), computed by scikit-image (a test checks it against torchmetrics).
- :class:`PeriodicError`: the Fourier power of an error at the frequencies of a period-``scale``
  pattern (the checkerboard of Odena et al., 2016) against the power of their neighbours.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from pixelwise.errors import InputError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
PEAK = 255.0


def shave(image: Tensor, border: int) -> Tensor:
    """Crop ``border`` pixels at every side of N×C×H×W."""
    if border == 0:
        return image
    if min(image.shape[-2:]) <= 2 * border:
        raise InputError(f"a {tuple(image.shape[-2:])} image has nothing left after a {border}-pixel border")
    return image[..., border:-border, border:-border]


def psnr(prediction: Tensor, target: Tensor, peak: float = PEAK) -> Tensor:
    """Peak signal-to-noise ratio in dB of each image of N×C×H×W (``inf`` where they are equal)."""
    _same_shape(prediction, target)
    mse = (prediction.double() - target.double()).square().flatten(1).mean(dim=1)
    return 10.0 * torch.log10(peak ** 2 / mse)


def ssim(prediction: Tensor, target: Tensor, peak: float = PEAK) -> Tensor:
    """Structural similarity of each image of N×1×H×W (module docstring for the conventions)."""
    from skimage.metrics import structural_similarity

    _same_shape(prediction, target)
    if min(prediction.shape[-2:]) < SSIM_WINDOW:
        raise InputError(f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW}, got "
                         f"{tuple(prediction.shape[-2:])}")
    scores = [structural_similarity(a.double().numpy(), b.double().numpy(), data_range=peak, gaussian_weights=True,
                                    sigma=SSIM_SIGMA, use_sample_covariance=False)
              for a, b in zip(prediction[:, 0], target[:, 0])]
    return torch.tensor(scores, dtype=torch.float64)


def _same_shape(prediction: Tensor, target: Tensor) -> None:
    if prediction.shape != target.shape:
        raise InputError(f"images differ in shape: {tuple(prediction.shape)} and {tuple(target.shape)}")


@dataclass
class PeriodicError:
    """Power spectra of errors, accumulated over images, at a period-``scale`` lattice.

    An error pattern that repeats every ``scale`` pixels (per-phase offsets, a checkerboard)
    lives at the frequencies ``(a·H/scale, b·W/scale)``, ``(a, b) ≠ (0, 0)``; a natural error
    spreads over all frequencies. :attr:`excess_db` compares the power at those peaks with the
    mean power of the bins around each (a (2·radius + 1)² window, the peak left out): 0 dB is
    no periodic component, 10 dB peaks ten times their surroundings.

    What it isolates is an error that differs by sub-pixel phase in the same way across the
    image: offsets or gains per phase, the checkerboard of uneven kernel overlap, and the
    displacement of nearest-neighbour upscaling, whose phases copy a sample from −1, 0 and +1
    pixels away (at ×3), so on an image with gradients each phase errs differently (4.5 dB on
    CamVid val ×3, against 0.7 dB for bilinear and bicubic). Errors that vary with the content
    alone spread over every frequency and score near 0 dB.
    """

    scale: int
    radius: int = 3
    peak_power: float = 0.0
    background_power: float = 0.0
    phase_square: float = 0.0  # sum over images of the mean squared per-phase error offset
    images: int = 0

    def add(self, error: Tensor) -> None:
        """Accumulate one H×W error (any size; cropped to a multiple of ``scale``)."""
        error = error.double()
        height, width = (size - size % self.scale for size in error.shape[-2:])
        error = error[..., :height, :width].reshape(height, width)
        power = torch.fft.fft2(error - error.mean()).abs().square()
        peaks, window = [], torch.ones(2 * self.radius + 1, 2 * self.radius + 1, dtype=torch.float64)
        window[self.radius, self.radius] = 0
        padded = F.pad(power[None, None], [self.radius] * 4, mode="circular")[0, 0]
        for a in range(self.scale):
            for b in range(self.scale):
                if a == b == 0:
                    continue
                u, v = a * height // self.scale, b * width // self.scale
                peaks.append(power[u, v])
                around = padded[u:u + 2 * self.radius + 1, v:v + 2 * self.radius + 1]
                self.background_power += float((around * window).sum() / window.sum())
        self.peak_power += float(torch.stack(peaks).sum())
        phases = error.reshape(height // self.scale, self.scale, width // self.scale, self.scale).mean(dim=(0, 2))
        self.phase_square += float((phases - phases.mean()).square().mean())
        self.images += 1

    @property
    def phase_rms(self) -> float:
        """Root mean square of the per-phase mean errors (the error's period-``scale`` pattern, in
        the error's units), over the images."""
        return math.sqrt(self.phase_square / self.images) if self.images else 0.0

    @property
    def excess_db(self) -> float:
        """Power at the lattice peaks over their surroundings, in dB."""
        if self.background_power == 0:
            return math.inf if self.peak_power > 0 else 0.0
        return 10.0 * math.log10(max(self.peak_power, 1e-300) / self.background_power)


@dataclass
class QualityScores:
    """PSNR, SSIM and :class:`PeriodicError` of one method over images, as the tables report them."""

    scale: int
    psnrs: list[Tensor] = field(default_factory=list)
    ssims: list[Tensor] = field(default_factory=list)
    periodic: PeriodicError = field(init=False)

    def __post_init__(self) -> None:
        self.periodic = PeriodicError(self.scale)

    def add(self, output: Tensor, target: Tensor) -> Tensor:
        """Score one 1×1×H×W luminance image in [0, 255] against its target, ``scale`` pixels of
        border cropped; returns the cropped error."""
        output, target = shave(output, self.scale), shave(target, self.scale)
        self.psnrs.append(psnr(output, target))
        self.ssims.append(ssim(output, target))
        error = output - target
        self.periodic.add(error)
        return error

    def summary(self) -> dict:
        """Means over the images of PSNR and SSIM, and the periodic error of all of them."""
        return {"psnr": float(torch.cat(self.psnrs).mean()), "ssim": float(torch.cat(self.ssims).mean()),
                "periodic_db": self.periodic.excess_db, "periodic_rms": self.periodic.phase_rms,
                "images": len(self.psnrs)}
