"""Facts about the registered models, for listings: parameters, output shapes, timings."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from pixelwise.models.registry import create_model, list_models, model_info


def count_parameters(name: str, num_classes: int = 21, **options) -> int:
    """Number of parameters of a model, counted on the meta device (nothing is allocated or
    initialised, so even the 134M-parameter FCN-VGG16 counts instantly)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **options)
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class ZooRow:
    """One model run once on one image."""

    name: str
    family: str
    encoder: str
    parameters: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    milliseconds: float


def run_zoo(image: torch.Tensor, num_classes: int = 21, names: list[str] | None = None) -> list[ZooRow]:
    """Build each registered model with its defaults and run it once on ``image`` (eval mode)."""
    rows = []
    for name in names or list_models():
        info = model_info(name)
        model = create_model(name, num_classes=num_classes).eval()
        start = time.perf_counter()
        with torch.inference_mode():
            logits = model(image)
        elapsed = (time.perf_counter() - start) * 1000
        rows.append(ZooRow(name, info.family, info.default_encoder or "(paper's own)",
                           sum(p.numel() for p in model.parameters()), tuple(image.shape),
                           tuple(logits.shape), elapsed))
    return rows


def smooth_test_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth, deterministic test image ``(1, 3, H, W)``: gradients, a disc and a bar."""
    generator = torch.Generator().manual_seed(seed)
    ys = torch.linspace(-1, 1, height)[:, None].expand(height, width)
    xs = torch.linspace(-1, 1, width)[None, :].expand(height, width)
    disc = ((xs - 0.3) ** 2 + (ys + 0.2) ** 2 < 0.2).float()
    bar = ((ys - 0.5).abs() < 0.1).float() * (xs < 0.4).float()
    image = torch.stack([0.5 + 0.5 * xs * disc, bar - 0.5 * ys, torch.cos(math.pi * xs * ys)])
    return (image + 0.05 * torch.randn(image.shape, generator=generator)).unsqueeze(0)
