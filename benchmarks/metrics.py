"""How fast does pixelwise count a confusion matrix, against torchmetrics and numpy?

Inputs: ``--batch`` random 19-class label maps of ``--height`` × ``--width`` (default 2 ×
1024 × 2048, Cityscapes-sized), int64 as a data loader and ``argmax`` give them, with 5% of the
target pixels set to the ignore index 255. Every method counts the same inputs into a 19 × 19
matrix, and the matrices are checked to be equal before anything is timed:

- ``pixelwise``: :meth:`pixelwise.metrics.ConfusionMatrix.update` (with its label checks);
- ``torchmetrics``: ``MulticlassJaccardIndex(num_classes=19, ignore_index=255).update``, as
  constructed by default (``validate_args=True``: it counts unique values with a sort);
- ``torchmetrics_no_validation``: the same with ``validate_args=False``, its fastest setting;
- ``torchvision_reference``: torchvision's ``references/segmentation/utils.ConfusionMatrix``
  update (boolean mask, compaction, int64 index, ``torch.bincount``);
- ``numpy_bincount``: ``np.bincount`` of ``target * 19 + prediction`` over non-ignored pixels.

Timings: ``--warmup`` untimed calls each, then ``--repeats`` rounds in which every method runs
once (the order alternating between rounds, so a noisy shared machine slows all alike); the
median per method is reported, with the best (least disturbed) run beside it. Mpixel/s counts
all pixels of the batch, ignore pixels included. The whole comparison runs once per
``--threads`` value (default 2, then 1): with other processes on the cores, torch's
multi-threaded ops can lose more to OpenMP hand-offs than they gain, and the one-thread run
shows each method without that. pixelwise's CPU update is serial by design, so it should not
care.

Target: pixelwise at least 2x torchmetrics, in both its settings.

Usage:
    python benchmarks/metrics.py [--threads 2 1] [--repeats 9] [--batch 2]

Prints a table and writes ``benchmarks/results/metrics.json``.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchmetrics
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex

from pixelwise.metrics import ConfusionMatrix
from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

NUM_CLASSES = 19
IGNORE = 255
RESULTS = Path(__file__).resolve().parent / "results" / "metrics.json"
BASELINE = "torchmetrics"


def make_inputs(batch: int, height: int, width: int, ignore_fraction: float) -> tuple[Tensor, Tensor]:
    """Random int64 target and prediction maps; ``ignore_fraction`` of the target is ignore."""
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, NUM_CLASSES, (batch, height, width), generator=generator)
    prediction = torch.randint(0, NUM_CLASSES, (batch, height, width), generator=generator)
    target[torch.rand(target.shape, generator=generator) < ignore_fraction] = IGNORE
    return target, prediction


def torchvision_reference(target: Tensor, prediction: Tensor, num_classes: int) -> Tensor:
    """The update of torchvision's references/segmentation/utils.py ConfusionMatrix."""
    target, prediction = target.flatten(), prediction.flatten()
    keep = (target >= 0) & (target < num_classes)
    index = num_classes * target[keep].to(torch.int64) + prediction[keep]
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def numpy_bincount(target: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """A plain numpy confusion matrix: mask the ignore pixels, then one bincount."""
    keep = target != IGNORE
    index = target[keep] * num_classes + prediction[keep]
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def methods(target: Tensor, prediction: Tensor) -> dict[str, tuple[Callable[[], None], Callable[[], Tensor]]]:
    """Per method: one update of the batch, and a function returning the counted matrix."""
    ours = ConfusionMatrix(NUM_CLASSES, IGNORE)
    tm = MulticlassJaccardIndex(num_classes=NUM_CLASSES, ignore_index=IGNORE)
    tm_fast = MulticlassJaccardIndex(num_classes=NUM_CLASSES, ignore_index=IGNORE, validate_args=False)
    target_np, prediction_np = target.numpy().ravel(), prediction.numpy().ravel()
    last: dict[str, Tensor] = {}

    def remember(name: str, counts: Callable[[], Tensor | np.ndarray]) -> Callable[[], None]:
        def run() -> None:
            last[name] = torch.as_tensor(counts())
        return run

    return {
        "pixelwise": (lambda: ours.update(target, prediction), lambda: ours.matrix),
        "torchmetrics": (lambda: tm.update(prediction, target), lambda: tm.confmat),
        "torchmetrics_no_validation": (lambda: tm_fast.update(prediction, target), lambda: tm_fast.confmat),
        "torchvision_reference": (remember("tv", lambda: torchvision_reference(target, prediction, NUM_CLASSES)),
                                  lambda: last["tv"]),
        "numpy_bincount": (remember("np", lambda: numpy_bincount(target_np, prediction_np, NUM_CLASSES)),
                           lambda: last["np"]),
    }


def check_agreement(runs: dict[str, tuple[Callable[[], None], Callable[[], Tensor]]]) -> None:
    """Run every method once and require the same matrix from all (accumulators hold one batch)."""
    for update, _ in runs.values():
        update()
    reference = runs["numpy_bincount"][1]()
    for name, (_, matrix) in runs.items():
        if not torch.equal(matrix().to(torch.int64), reference.to(torch.int64)):
            raise AssertionError(f"{name} counted a different matrix")


def time_methods(runs: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds of each update, ``repeats`` interleaved rounds after ``warmup`` each."""
    for update, _ in runs.values():
        for _ in range(warmup):
            update()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats):
        for name in (list(runs) if repeat % 2 == 0 else list(reversed(runs))):
            start = time.perf_counter()
            runs[name][0]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def summarize_times(times: dict[str, list[float]], num_pixels: int, threads: int) -> list[dict]:
    """Median and best ms, Mpixel/s and speed relative to both torchmetrics settings."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    return [{"method": name, "threads": threads, "median_ms": medians[name], "best_ms": min(times[name]),
             "mpixel_per_s": num_pixels / medians[name] / 1e3,
             "speedup_vs_torchmetrics": medians[BASELINE] / medians[name],
             "speedup_vs_torchmetrics_no_validation": medians["torchmetrics_no_validation"] / medians[name],
             "times_ms": times[name]} for name in times]


def print_table(rows: list[dict]) -> None:
    """One line per method."""
    header = (f"{'method':<28} {'threads':>7} {'median ms':>10} {'best ms':>9} {'Mpixel/s':>9} "
              f"{'x torchmetrics':>15} {'x tm (no validation)':>21}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['method']:<28} {row['threads']:>7} {row['median_ms']:>10.1f} {row['best_ms']:>9.1f} "
              f"{row['mpixel_per_s']:>9.1f} {row['speedup_vs_torchmetrics']:>15.2f} {row['speedup_vs_torchmetrics_no_validation']:>21.2f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2, help="label maps per update")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--ignore-fraction", type=float, default=0.05, help="share of ignore pixels in the target")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates per method first")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                        help="torch.set_num_threads values, one measurement each")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    target, prediction = make_inputs(args.batch, args.height, args.width, args.ignore_fraction)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        runs = methods(target, prediction)
        check_agreement(runs)
        rows += summarize_times(time_methods(runs, args.repeats, args.warmup), target.numel(), threads)
    print_table(rows)
    report = {
        "question": "confusion-matrix update throughput: pixelwise vs torchmetrics vs numpy",
        "device": "cpu", "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__, "torchmetrics": torchmetrics.__version__, "numpy": np.__version__,
        "threads": args.threads, "num_classes": NUM_CLASSES, "ignore_index": IGNORE,
        "shape": [args.batch, args.height, args.width], "ignore_fraction": args.ignore_fraction,
        "repeats": args.repeats, "warmup": args.warmup, "statistic": "median",
        "baseline": BASELINE, "results": rows,
    }
    write_report(report, args.output)


if __name__ == "__main__":
    main()
