"""Does tiled prediction of large images take time linear in the area and flat memory?

:func:`pixelwise.inference.logits.predict_tiled` segments square images of growing side with a
small real model. The image is generated a window at a time from its coordinates (as a reader
of a file on disk would deliver it), so the only thing in memory that grows with the area is the
uint8 class map the result is written into.

Method. Each size runs in a fresh subprocess, so one size's allocations cannot hide another's.
The worker builds the model, folds its batch norms (``optimize_for_inference``), runs one
untimed batch of windows so the allocator's working set is in the baseline, allocates and zeroes
the class map, then resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``)
and reads ``VmRSS`` as the baseline. After prediction, ``VmHWM`` is the peak; *peak growth* is
peak minus baseline: what prediction itself added (the class map was already resident).
Workers run with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB: by default glibc raises
that threshold after large blocks are freed and then keeps such blocks in its heap, so RSS
creeps up with the number of windows run (about 50 MB more after 462 windows than after 9,
measured) rather than following live memory; ``--default-malloc`` measures it that way. The
blending buffer (the strip of overlaps, cut into bands of about 4096 pixels: see
:mod:`pixelwise.inference.logits`) is reported separately, as ``predict_tiled`` counts it; the
rest of the peak growth is the model's working memory for one batch of windows.

The model is ``fcn8s`` on ``mobilenet_v3_large`` with random weights (so the class map itself
means nothing), batch norms folded: 0.5-0.7 s per 512×512 window on two busy cores, where
``unet``/``resnet18`` took about 2 s, which would have made the 8000×8000 case a quarter of an
hour. Seconds per megapixel follow windows per megapixel (9 windows cover 1000×1000, 462 cover
8000×8000), so seconds per window is the column to read for linearity.

``--runtime onnxruntime`` / ``onnxruntime-int8`` runs the same through ONNX Runtime: the model is
exported (and quantised, calibrated on four generated windows) before the baseline is read, so
the session's own memory is part of the baseline and the growth is what prediction adds.

Usage:
    python benchmarks/sliding_window.py [--sizes 1000 2000 4000 8000] [--threads 2]
        [--model fcn8s --encoder mobilenet_v3_large] [--classes 11] [--window 512] [--stride 384]
        [--band 4096] [--batch-size 4] [--runtime torch|onnxruntime|onnxruntime-int8]

Prints a table and writes ``benchmarks/results/sliding_window.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import pixelwise
from pixelwise.runtimes import optimize_for_inference
from pixelwise.inference.logits import predict_tiled
from pixelwise.runtimes import OnnxRuntime
from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "sliding_window.json"
MMAP_THRESHOLD = 128 * 1024  # glibc's default starting value, kept fixed


def synthetic_region(top: int, left: int, height: int, width: int) -> Tensor:
    """A smooth, deterministic, roughly normalised image region, made from its coordinates."""
    ys = torch.arange(top, top + height, dtype=torch.float32)[:, None]
    xs = torch.arange(left, left + width, dtype=torch.float32)[None, :]
    return torch.stack([torch.sin(ys / 97 + xs / 53), torch.cos(xs / 71 - ys / 29), torch.sin((ys + xs) / 41)])


def memory_kib(field: str) -> int:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def build(args: argparse.Namespace, folder: Path) -> torch.nn.Module | OnnxRuntime:
    """The model with batch norms folded, or its ONNX export (fp32 or int8) in ONNX Runtime."""
    model = pixelwise.create_model(args.model, num_classes=args.classes, encoder=args.encoder).eval()
    if args.runtime == "torch":
        return optimize_for_inference(model, example=torch.randn(1, 3, args.window, args.window))
    import onnx

    from pixelwise.export import quantize_int8
    from pixelwise.runtimes.onnx_graph import onnx_proto

    path = folder / "model.onnx"
    onnx.save(onnx_proto(model, args.model), str(path))
    if args.runtime == "onnxruntime":
        return OnnxRuntime(path, args.threads)
    windows = [synthetic_region(97 * i, 131 * i, args.window, args.window)[None].numpy() for i in range(4)]
    quantize_int8(path, folder / "model_int8.onnx", windows)
    return OnnxRuntime(folder / "model_int8.onnx", args.threads, "int8")


def measure(args: argparse.Namespace) -> dict:
    """One size, in this (fresh) process: seconds, windows, memory."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="pixelwise-tiles-") as folder:
        model = build(args, Path(folder))
    with torch.inference_mode():  # warm-up: the allocator's steady state belongs to the baseline
        model(torch.stack([synthetic_region(0, 0, args.window, args.window)] * args.batch_size))
    labels = np.empty((args.worker, args.worker), dtype=np.uint8)
    labels.fill(0)  # touch every page, so the map is resident before the baseline (np.zeros is lazy)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline = memory_kib("VmRSS")
    start = time.perf_counter()
    stats = predict_tiled(model, synthetic_region, labels.shape, args.classes, args.window, args.stride,
                          batch_size=args.batch_size, write_labels=labels, band=args.band)
    seconds = time.perf_counter() - start
    peak = memory_kib("VmHWM")
    return {
        "size": args.worker, "megapixels": args.worker**2 / 1e6, "seconds": seconds,
        "windows": stats.windows, "forwards": stats.forwards, "bands": stats.bands,
        "seconds_per_megapixel": seconds / (args.worker**2 / 1e6), "seconds_per_window": seconds / stats.windows,
        "baseline_rss_mib": baseline / 1024, "peak_rss_growth_mib": (peak - baseline) / 1024,
        "peak_blend_buffer_mib": stats.peak_blend_bytes / 2**20, "label_map_mib": labels.nbytes / 2**20,
        "classes_found": int(np.unique(labels).size),
    }


def run_size(size: int, argv: list[str], mmap_threshold: int | None) -> dict:
    """:func:`measure` for one size in a fresh Python process."""
    env = dict(os.environ)
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    done = subprocess.run([sys.executable, __file__, *argv, "--worker", str(size)],
                          capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    header = (f"{'size':>6} {'MP':>6} {'windows':>7} {'bands':>5} {'seconds':>8} {'s/MP':>6} {'s/window':>8} "
              f"{'base MiB':>8} {'peak growth MiB':>15} {'blend MiB':>9} {'labels MiB':>10}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['size']:>6} {row['megapixels']:>6.1f} {row['windows']:>7} {row['bands']:>5} "
              f"{row['seconds']:>8.1f} "
              f"{row['seconds_per_megapixel']:>6.2f} {row['seconds_per_window']:>8.3f} "
              f"{row['baseline_rss_mib']:>8.0f} {row['peak_rss_growth_mib']:>15.1f} "
              f"{row['peak_blend_buffer_mib']:>9.1f} {row['label_map_mib']:>10.1f}")


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000], help="image sides")
    parser.add_argument("--model", default="fcn8s", help="architecture (pixelwise.list_models())")
    parser.add_argument("--encoder", default="mobilenet_v3_large", help="its encoder")
    parser.add_argument("--classes", type=int, default=11, help="number of classes")
    parser.add_argument("--window", type=int, default=512, help="window side")
    parser.add_argument("--stride", type=int, default=384, help="step between windows")
    parser.add_argument("--band", type=int, default=4096, help="longest strip of overlaps held (pixels)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--runtime", choices=("torch", "onnxruntime", "onnxruntime-int8"), default="torch",
                        help="what runs the windows")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's mmap threshold dynamic")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: measure this size
    return parser.parse_args(), sys.argv[1:]


def main() -> None:
    args, argv = parse_args()
    if args.worker is not None:
        print(json.dumps(measure(args)))
        return
    rows, mmap_threshold = [], None if args.default_malloc else MMAP_THRESHOLD
    for size in args.sizes:
        rows.append(run_size(size, argv, mmap_threshold))
        print(f"done {size}x{size}: {rows[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    print_table(rows)
    report = {
        "question": "time and peak memory of tiled prediction (predict_tiled) as the image grows",
        "method": "one fresh subprocess per size; peak RSS growth = VmHWM after prediction minus VmRSS just "
                  "before it (VmHWM reset via /proc/self/clear_refs); the uint8 label map is resident in the "
                  "baseline; image regions generated on the fly; glibc mmap threshold fixed unless null",
        "model": args.model, "encoder": args.encoder, "runtime": args.runtime, "batch_norm_folded": True,
        "classes": args.classes,
        "window": args.window, "stride": args.stride, "batch_size": args.batch_size, "band": args.band,
        "blend": "gaussian", "malloc_mmap_threshold": mmap_threshold, "device": "cpu", "threads": args.threads,
        "processor": platform.processor() or platform.machine(), "torch": torch.__version__, "results": rows,
    }
    write_report(report, args.output)


if __name__ == "__main__":
    main()
