"""Choosing int8 quantisation settings by measurement: calibration method × reduce_range.

Exports a checkpoint to fp32 ONNX once, then quantises it (ONNX Runtime static, QDQ, per-channel
int8 weights, uint8 activations) with each calibration method (minmax, entropy, percentile),
with and without ``reduce_range`` (7-bit weights), all calibrated on the same images, and
evaluates every file on a validation split through the one inference path: mIoU, the mIoU lost
against fp32, argmax agreement with fp32 and milliseconds per image.

    python benchmarks/int8.py --checkpoint runs/camvid_unet/best.pt \\
        --calibrate camvid:../shared/datasets/camvid:train [--images 32] [--val-images 101]

Prints a table and writes ``benchmarks/results/int8.json``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from pixelwise.data import DataSpec
from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.inference.loading import model_from_checkpoint
from pixelwise.inference.evaluation import evaluate_loaded
from pixelwise.inference.logits import InferenceOptions
from pixelwise.export import CALIBRATION_METHODS, Int8Options, calibration_batches, quantize_int8
from pixelwise.runtimes.onnx_graph import onnx_proto
from pixelwise.runtimes import OnnxRuntime
from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "int8.json"


def evaluate(runtime: OnnxRuntime, loaded, data: DataSpec, limit: int | None) -> dict:
    """mIoU and milliseconds per image of one runtime, with its predictions' confusion matrix."""
    start = time.perf_counter()
    result = evaluate_loaded(loaded._replace(model=runtime), data, InferenceOptions.create(), limit=limit)
    seconds = time.perf_counter() - start
    return {"miou": result.summary()["mean_iou"], "iou": result.summary()["iou"],
            "ms_per_image": 1e3 * seconds / result.num_images, "images": result.num_images}


def agreement(fp32: OnnxRuntime, int8: OnnxRuntime, batches: list[np.ndarray]) -> float:
    """Argmax agreement of the two files on the given images."""
    same = total = 0
    for batch in batches:
        tensor = torch.from_numpy(batch)
        a, b = fp32(tensor).argmax(1), int8(tensor).argmax(1)
        same, total = same + (a == b).sum().item(), total + a.numel()
    return same / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--calibrate", required=True, metavar="FORMAT:ROOT:SPLIT")
    parser.add_argument("--images", type=int, default=32, help="calibration images")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--val-images", type=int, help="evaluate on the first N validation images (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    state = load_checkpoint(args.checkpoint)
    loaded = model_from_checkpoint(state)
    options = Int8Options(args.calibrate, args.images, val_split=args.val_split, val_images=args.val_images)
    batches = calibration_batches(options, loaded.normalization)
    data = options.data(args.val_split)
    val_batches = [batch for batch in calibration_batches(Int8Options(
        f"{data.format}:{data.root or ''}:{args.val_split}", 8), loaded.normalization)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pixelwise-int8-") as folder:
        fp32_path = Path(folder) / "fp32.onnx"
        onnx.save(onnx_proto(loaded.model, state["model_spec"]["name"]), str(fp32_path))
        fp32 = OnnxRuntime(fp32_path, args.threads)
        baseline = evaluate(fp32, loaded, data, args.val_images)
        rows.append({"method": "fp32", "reduce_range": None, **baseline, "miou_loss_points": 0.0, "agreement": 1.0})
        print(f"fp32: mIoU {100 * baseline['miou']:.2f}%, {baseline['ms_per_image']:.0f} ms/image", flush=True)
        for method in CALIBRATION_METHODS:
            for reduce_range in (False, True):
                int8_path = Path(folder) / f"{method}_{reduce_range}.onnx"
                start = time.perf_counter()
                quantize_int8(fp32_path, int8_path, batches, method, reduce_range)
                calibration_s = time.perf_counter() - start
                int8 = OnnxRuntime(int8_path, args.threads, "int8")
                scores = evaluate(int8, loaded, data, args.val_images)
                row = {"method": method, "reduce_range": reduce_range, **scores, "calibration_s": calibration_s,
                       "miou_loss_points": 100 * (baseline["miou"] - scores["miou"]),
                       "agreement": agreement(fp32, int8, val_batches)}
                rows.append(row)
                print(f"{method:<10} reduce_range={reduce_range!s:<5} mIoU {100 * row['miou']:.2f}% "
                      f"(loss {row['miou_loss_points']:+.2f} points), agreement {row['agreement']:.2%}, "
                      f"{row['ms_per_image']:.0f} ms/image, calibration {calibration_s:.0f} s", flush=True)
    print(f"\n{'method':<10} {'reduce_range':>12} {'mIoU %':>7} {'loss pts':>9} {'agree':>8} {'ms/img':>7}")
    for row in rows:
        print(f"{row['method']:<10} {str(row['reduce_range']):>12} {100 * row['miou']:>7.2f} "
              f"{row['miou_loss_points']:>9.2f} {row['agreement']:>8.2%} {row['ms_per_image']:>7.0f}")
    write_report({"question": "int8 calibration method and reduce_range, measured on a validation split",
                  "checkpoint": str(args.checkpoint), "calibrate": args.calibrate, "calibration_images": args.images,
                  "val_split": args.val_split, "threads": args.threads, "onnxruntime": onnxruntime.__version__,
                  "results": rows}, args.output)


if __name__ == "__main__":
    main()
