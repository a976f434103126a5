"""What does a Lovász-Softmax step cost, sorted (as Berman et al. and segmentation_models.pytorch
compute it) against pixelwise's histogram (``lovasz: {bins: 1024}``)?

One loss step is forward and backward of the loss alone on the logits a CamVid recipe's training
batch produces: ``--batch-size`` × 11 classes × H × W random logits (scaled so the softmax is
neither flat nor saturated) and masks with 5% ignore pixels. The rows are timed interleaved
(alternating who goes first) after an untimed warm-up, so a noisy shared machine slows all alike;
the median of each is reported with its ratio to segmentation_models.pytorch's ``LovaszLoss``
(above 1.0: faster than smp), or to pixelwise's sorted Lovász when smp is not installed.
Cross-entropy is timed beside them as the floor a loss step costs. The values are compared too:
pixelwise's sorted loss with smp's, and the binned loss with the sorted one.

Usage:
    python benchmarks/losses.py [--size 288 384] [--batch-size 8] [--steps 5] [--threads 2] [--bins 1024]

smp comes with ``pip install -e '.[bench]'``; prints a table and writes ``benchmarks/results/losses.json``.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from pixelwise.losses import create_loss
from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "losses.json"
NUM_CLASSES = 11
IGNORE_INDEX = 255


def make_batch(batch_size: int, height: int, width: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Logits of a half-trained network's spread and 11-class masks with 5% ignore pixels."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch_size, NUM_CLASSES, height, width, generator=generator)
    masks = torch.randint(0, NUM_CLASSES, (batch_size, height, width), generator=generator)
    masks[torch.rand(masks.shape, generator=generator) < 0.05] = IGNORE_INDEX
    return logits, masks


def contenders(bins: int) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """Row name → loss function of (logits, masks)."""
    rows: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "pixelwise ce": create_loss("ce"),
        "pixelwise lovasz (sort)": create_loss("lovasz"),
        f"pixelwise lovasz (bins={bins})": create_loss({"lovasz": {"bins": bins}}),
    }
    try:
        from segmentation_models_pytorch.losses import LovaszLoss
    except ImportError:
        print("segmentation_models_pytorch is not installed (pip install -e '.[bench]'): "
              "comparing with pixelwise's sorted Lovász instead")
    else:
        rows["smp LovaszLoss"] = LovaszLoss("multiclass", ignore_index=IGNORE_INDEX)
    return rows


def time_steps(rows: dict[str, Callable[[Tensor, Tensor], Tensor]], batch: tuple[Tensor, Tensor],
               steps: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of each forward + backward, interleaved, after one warm-up each; and the values."""
    logits, masks = batch
    names = list(rows)
    times: dict[str, list[float]] = {name: [] for name in names}
    values: dict[str, float] = {}
    for step in range(steps + 1):
        order = names if step % 2 == 0 else names[::-1]
        for name in order:
            leaf = logits.detach().requires_grad_()
            start = time.perf_counter()
            loss = rows[name](leaf, masks)
            loss.backward()
            elapsed = time.perf_counter() - start
            if step > 0:
                times[name].append(elapsed)
            values[name] = loss.item()
    return times, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=[288, 384], metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bins", type=int, default=1024)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = contenders(args.bins)
    batch = make_batch(args.batch_size, *args.size)
    times, values = time_steps(rows, batch, args.steps)
    reference = "smp LovaszLoss" if "smp LovaszLoss" in rows else "pixelwise lovasz (sort)"
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    pixels = args.batch_size * args.size[0] * args.size[1]
    print(f"{args.batch_size} × {NUM_CLASSES} × {args.size[0]} × {args.size[1]} logits ({pixels:,} pixels), "
          f"{args.threads} thread(s), median of {args.steps} steps, torch {torch.__version__}")
    print(f"| loss | forward + backward (ms) | speed vs {reference} | value |")
    print("|---|---:|---:|---:|")
    for name in rows:
        print(f"| {name} | {medians[name] * 1000:.0f} | {medians[reference] / medians[name]:.2f}× | "
              f"{values[name]:.6f} |")
    sorted_value = values["pixelwise lovasz (sort)"]
    binned_value = values[f"pixelwise lovasz (bins={args.bins})"]
    print(f"binned against sorted: relative difference {abs(binned_value - sorted_value) / sorted_value:.2e}")
    if "smp LovaszLoss" in rows:
        smp_value = values["smp LovaszLoss"]
        print(f"sorted against smp: relative difference {abs(sorted_value - smp_value) / smp_value:.2e}")
    write_report({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                  "threads": args.threads, "batch": [args.batch_size, NUM_CLASSES, *args.size], "bins": args.bins,
                  "reference": reference, "median_seconds": medians, "values": values}, args.output)


if __name__ == "__main__":
    main()
