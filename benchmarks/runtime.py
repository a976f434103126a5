"""Runtimes side by side: torchvision eager fp32 beside pixelwise's eager, optimised, bf16, ONNX
Runtime fp32 and ONNX Runtime int8, on one 512×512 image.

Models: ``deeplabv3_resnet50`` (ours holds torchvision's weights, so both compute the same), the
registry's ``deeplabv3plus`` (ResNet-50) and the CamVid recipe's U-Net-ResNet18 (11 classes).
Each variant is one :mod:`pixelwise.runtimes` runtime, called as the inference path calls it.
The ratio column divides by torchvision's eager fp32 on ``deeplabv3_resnet50`` and, for the
models torchvision does not have, by plain eager PyTorch fp32 of the same model (what a
torchvision-style loop would run). Repetitions are interleaved (alternating the order) and the
median is reported; ``max |diff|`` is against eager fp32, ``agree`` the argmax agreement.

int8 is calibrated here on a few smooth synthetic images: this measures speed only. Its
accuracy on real data is measured by ``pixelwise export --int8`` (see the README).

    python benchmarks/runtime.py [--size 512] [--repeats 3] [--threads 2] [--models unet_resnet18] [--compile]

Prints a table and writes ``benchmarks/results/runtime.json``.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import onnx
import onnxruntime
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import segmentation as tv_segmentation

import pixelwise
from pixelwise.export import quantize_int8
from pixelwise.runtimes.onnx_graph import onnx_proto
from pixelwise.models.zoo import smooth_test_image
from pixelwise.runtimes import OnnxRuntime, TorchRuntime
from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "runtime.json"
MODELS = ("deeplabv3_resnet50", "deeplabv3plus", "unet_resnet18")


def build(name: str) -> tuple[nn.Module, nn.Module | None]:
    """Ours in eval mode, and torchvision's with the same weights where it has the model."""
    if name == "deeplabv3_resnet50":
        theirs = tv_segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                    aux_loss=False).eval()
        ours = pixelwise.create_model(name, num_classes=21, aux=False)
        ours.load_state_dict(theirs.state_dict())
        return ours.eval(), theirs
    if name == "unet_resnet18":
        return pixelwise.create_model("unet", num_classes=11, encoder="resnet18").eval(), None
    return pixelwise.create_model(name, num_classes=21).eval(), None


def onnx_runtimes(model: nn.Module, name: str, folder: Path, threads: int, size: int) -> dict[str, OnnxRuntime]:
    """The model exported to ONNX, and that file quantised to int8 (calibrated on 4 images)."""
    fp32, int8 = folder / f"{name}.onnx", folder / f"{name}_int8.onnx"
    onnx.save(onnx_proto(model, name), str(fp32))
    batches = [smooth_test_image(size, size, seed=seed).numpy() for seed in range(4)]
    quantize_int8(fp32, int8, batches)
    return {"onnxruntime fp32": OnnxRuntime(fp32, threads), "onnxruntime int8": OnnxRuntime(int8, threads, "int8")}


def variants(name: str, folder: Path, threads: int, size: int,
             compile: bool = False) -> tuple[dict[str, Callable[[Tensor], Tensor]], str]:
    """Every runtime of one model (``compile``: the torch-compiled runtime too, fp32 and bf16),
    and the name of the baseline the ratios divide by."""
    ours, theirs = build(name)
    runs: dict[str, Callable[[Tensor], Tensor]] = {}
    if theirs is not None:
        runs["torchvision eager fp32"] = lambda x: theirs(x)["out"]
    runs["ours eager fp32"] = TorchRuntime(ours)
    runs["ours optimised fp32"] = TorchRuntime(ours, optimize=True)
    runs["ours bf16 autocast"] = TorchRuntime(ours, "bf16")
    runs["ours optimised bf16"] = TorchRuntime(ours, "bf16", optimize=True)
    if compile:  # compiled in the warm-up run
        runs["ours compiled fp32"] = TorchRuntime(ours, compile=True)
        runs["ours compiled bf16"] = TorchRuntime(ours, "bf16", compile=True)
    runs.update(onnx_runtimes(ours, name, folder, threads, size))
    return runs, ("torchvision eager fp32" if theirs is not None else "ours eager fp32")


@torch.inference_mode()
def measure(runs: dict[str, Callable[[Tensor], Tensor]], baseline: str, x: Tensor, repeats: int,
            warmup: int) -> dict:
    """Interleaved timings, medians, ratios to the baseline, differences to eager fp32."""
    for _ in range(warmup):
        for run in runs.values():
            run(x)
    times: dict[str, list[float]] = {key: [] for key in runs}
    outputs: dict[str, Tensor] = {}
    for repeat in range(repeats):
        for key in (list(runs) if repeat % 2 == 0 else list(reversed(runs))):
            start = time.perf_counter()
            outputs[key] = runs[key](x).float()
            times[key].append((time.perf_counter() - start) * 1e3)
    medians = {key: statistics.median(values) for key, values in times.items()}
    reference = outputs["ours eager fp32"]
    return {
        "baseline": baseline,
        "median_ms": medians,
        "ratio": {key: medians[key] / medians[baseline] for key in runs},
        "max_abs_diff": {key: (out - reference).abs().max().item() for key, out in outputs.items()},
        "argmax_agreement": {key: (out.argmax(1) == reference.argmax(1)).float().mean().item()
                             for key, out in outputs.items()},
        "times_ms": times,
    }


def print_table(results: list[dict]) -> None:
    header = f"{'model':<20} {'runtime':<24} {'median ms':>10} {'ratio':>7} {'max |diff|':>11} {'agree':>8}"
    print(header)
    print("-" * len(header))
    for row in results:
        for key, ms in row["median_ms"].items():
            print(f"{row['model']:<20} {key:<24} {ms:>10.1f} {row['ratio'][key]:>7.3f} "
                  f"{row['max_abs_diff'][key]:>11.2e} {row['argmax_agreement'][key]:>8.2%}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512, help="input height and width")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per variant first")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch and ONNX Runtime intra-op threads")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--compile", action="store_true",
                        help="also time the torch-compiled runtime (optimised, then torch.compile)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = smooth_test_image(args.size, args.size)
    results = []
    with tempfile.TemporaryDirectory(prefix="pixelwise-bench-") as folder:
        for name in args.models:
            runs, baseline = variants(name, Path(folder), args.threads, args.size, args.compile)
            results.append({"model": name, **measure(runs, baseline, x, args.repeats, args.warmup)})
            print_table(results[-1:])
    print()
    print_table(results)
    write_report({
        "question": "inference time of each runtime (PyTorch eager / optimised / bf16, ONNX Runtime fp32 / int8) "
                    "against torchvision's eager fp32",
        "device": "cpu", "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "onnxruntime": onnxruntime.__version__, "threads": args.threads,
        "batch": 1, "size": args.size, "repeats": args.repeats, "warmup": args.warmup, "statistic": "median",
        "results": results,
    }, args.output)


if __name__ == "__main__":
    main()
