"""The field's published figures on its benchmarks, to set a measured comparison beside.

Each row is luminance PSNR as its paper reports it (Y of YCbCr, the border of ``scale`` pixels
cropped, MATLAB's antialiased bicubic degradation: the protocol of
:func:`~pixelwise.superres.compare.compare_methods`), with the paper and table it comes from and
the images the network was trained on. ``pixelwise superres compare`` prints the rows of the
benchmark and scale it measured, and only those.

The papers: SRCNN — Dong, Loy, He & Tang, "Learning a Deep Convolutional Network for Image
Super-Resolution", ECCV 2014; ESPCN — Shi et al., "Real-Time Single Image and Video
Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network", CVPR 2016; FSRCNN —
Dong, Loy & Tang, "Accelerating the Super-Resolution Convolutional Neural Network", ECCV 2016.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

SRCNN_ECCV = "Dong et al., ECCV 2014 (SRCNN)"
ESPCN_CVPR = "Shi et al., CVPR 2016 (ESPCN)"
FSRCNN_ECCV = "Dong et al., ECCV 2016 (FSRCNN)"
T91 = "T91 (91 images)"


@dataclass(frozen=True)
class PublishedResult:
    """One published figure: ``method`` at ×``scale`` on ``benchmark``, trained on ``training``."""

    method: str
    benchmark: str
    scale: int
    psnr: float
    training: str
    source: str


def _rows(method: str, training: str, source: str, figures: dict[tuple[str, int], float]) -> list[PublishedResult]:
    return [PublishedResult(method, benchmark, scale, psnr, training, source)
            for (benchmark, scale), psnr in figures.items()]


PUBLISHED: tuple[PublishedResult, ...] = (
    *_rows("bicubic", "—", f"{SRCNN_ECCV}, Tables 1–2",
           {("Set5", 2): 33.66, ("Set5", 3): 30.39, ("Set5", 4): 28.42,
            ("Set14", 2): 30.23, ("Set14", 3): 27.54, ("Set14", 4): 26.00}),
    *_rows("SRCNN", T91, f"{SRCNN_ECCV}, Tables 1–2",
           {("Set5", 2): 36.34, ("Set5", 3): 32.39, ("Set5", 4): 30.09,
            ("Set14", 2): 32.18, ("Set14", 3): 29.00, ("Set14", 4): 27.20}),
    *_rows("ESPCN", T91, f"{ESPCN_CVPR}, Table 1", {("Set5", 3): 32.55, ("Set14", 3): 29.08}),
    *_rows("FSRCNN (56, 12, 4)", T91, FSRCNN_ECCV, {("Set5", 3): 33.06, ("Set14", 3): 29.37}),
)
BENCHMARKS: tuple[str, ...] = tuple(dict.fromkeys(row.benchmark for row in PUBLISHED))


def published_results(benchmark: str, scale: int) -> list[PublishedResult]:
    """The published rows of ``benchmark`` (any case) at ``scale``, in :data:`PUBLISHED`'s order."""
    return [row for row in PUBLISHED if row.benchmark.lower() == benchmark.lower() and row.scale == scale]


def benchmark_of(images: Sequence[str | Path]) -> str | None:
    """The benchmark a comparison measured: its one input is a folder named as one of
    :data:`BENCHMARKS` (``../shared/datasets/superres/Set5``); otherwise ``None`` (files, patterns
    or several folders are not a benchmark as published)."""
    if len(images) != 1 or not Path(images[0]).is_dir():
        return None
    name = Path(images[0]).resolve().name.lower()
    return next((benchmark for benchmark in BENCHMARKS if benchmark.lower() == name), None)


def as_dicts(rows: Sequence[PublishedResult]) -> list[dict]:
    """The rows as plain data (for JSON)."""
    return [asdict(row) for row in rows]
