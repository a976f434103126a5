"""``pixelwise demo``: every model in the zoo, run on one synthetic image.

Until the training pipeline lands, the demo shows the model contract at work: an image of an
awkward size (not a multiple of 32) goes into every registered architecture, with its default
encoder and upsampler, and logits come back at exactly that size.
"""
from __future__ import annotations

import math

import torch
from rich.console import Console
from rich.table import Table

from pixelwise.models.zoo import run_zoo


def synthetic_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth, deterministic test image ``(1, 3, H, W)``: gradients, a disc and a bar."""
    generator = torch.Generator().manual_seed(seed)
    ys = torch.linspace(-1, 1, height)[:, None].expand(height, width)
    xs = torch.linspace(-1, 1, width)[None, :].expand(height, width)
    disc = ((xs - 0.3) ** 2 + (ys + 0.2) ** 2 < 0.2).float()
    bar = ((ys - 0.5).abs() < 0.1).float() * (xs < 0.4).float()
    image = torch.stack([0.5 + 0.5 * xs * disc, bar - 0.5 * ys, torch.cos(math.pi * xs * ys)])
    return (image + 0.05 * torch.randn(image.shape, generator=generator)).unsqueeze(0)


def run_demo(console: Console, height: int = 253, width: int = 317) -> int:
    """Print a table of every model's parameters, output shape and CPU time on one image."""
    image = synthetic_image(height, width)
    console.print(f"Running every registered model on one synthetic {height}×{width} image (CPU, eval mode)…")
    table = Table(title="pixelwise model zoo")
    for column in ("model", "family", "encoder", "parameters", "input", "output", "ms"):
        table.add_column(column, justify="right" if column in ("parameters", "ms") else "left")
    all_match = True
    for row in run_zoo(image):
        match = row.output_shape[-2:] == row.input_shape[-2:]
        all_match &= match
        table.add_row(row.name, row.family, row.encoder, f"{row.parameters / 1e6:.1f}M",
                      "×".join(map(str, row.input_shape)),
                      ("" if match else "[red]") + "×".join(map(str, row.output_shape)), f"{row.milliseconds:.0f}")
    console.print(table)
    verdict = "every model returned logits at the input size" if all_match else "[red]size mismatch[/]"
    console.print(f"{verdict}. Train one with: pixelwise train model.name=unet model.encoder=resnet18")
    return 0 if all_match else 1
