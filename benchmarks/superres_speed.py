"""Video-size super-resolution on the CPU: frames per second of a 640×360 → 1920×1080 (×3)
enlargement, each network through each runtime, beside bicubic interpolation in the same run.

For each network (ESPCN and FSRCNN by default, untrained: the speed does not depend on the
weights; ``--checkpoint`` measures trained ones) and each runtime — PyTorch fp32, PyTorch fp32
channels-last, PyTorch bf16 autocast (only on a CPU that computes bf16 natively) and ONNX Runtime
fp32 (the network exported by :func:`pixelwise.runtimes.onnx_graph.onnx_proto` to a temporary
file) and ONNX Runtime int8 (that file statically quantised by :func:`pixelwise.export.quantize_int8`,
calibrated on the low-resolution luminance of eight T91 images, random images where T91 is absent)
— two figures:

- **network**: the luminance channel alone (1×1×360×640 in, 1×1×1080×1920 out);
- **frame**: the whole colour frame as ``pixelwise superres upscale`` does it
  (:func:`pixelwise.superres.compare.upscale_rgb`: the network on Y, bicubic on Cb and Cr).

Bicubic is :func:`pixelwise.superres.images.upscale_fixed` on the RGB frame. Each figure is the
median over ``--frames`` timed frames after two untimed ones. What a runtime costs in quality is
its luminance PSNR on ``--images`` (Set5 where present; as ``superres compare`` scores it), so a
trained ``--checkpoint`` says whether int8 or bf16 gives its accuracy away. ``--reference`` adds
each FSRCNN with its last layer run as the transposed convolution itself
(:meth:`~pixelwise.layers.upsample.WideTransposedUpsample.transposed_forward`), the speed its
sub-pixel form replaced. Goal (issue 35): ≥ 24
frames per second for the ×3 network on 2 cores.

Usage:
    python benchmarks/superres_speed.py [--frames 10] [--threads N] [--network espcn fsrcnn] [--images DIR] [--reference]
    python benchmarks/superres_speed.py --network --checkpoint runs/superres_fsrcnn_x3_t91/last.pt

Prints a table and writes ``benchmarks/results/superres_speed.json``.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from pixelwise.data.io import decode_image
from pixelwise.layers.upsample import WideTransposedUpsample
from pixelwise.export import quantize_int8
from pixelwise.inference.predict import expand_inputs
from pixelwise.runtimes.onnx_graph import onnx_proto
from pixelwise.runtimes.onnx_runtime import OnnxRuntime
from pixelwise.runtimes.threads import usable_cpus
from pixelwise.runtimes.torch_runtime import cpu_has_bf16
from pixelwise.superres.compare import upscale_luminance, upscale_rgb
from pixelwise.superres.images import downscale, luminance, modcrop, to_tensor, upscale_fixed
from pixelwise.superres.quality import QualityScores
from pixelwise.superres.models import create_sr_model, method_name
from pixelwise.superres.train import load_superres_model
from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "superres_speed.json"
SUPERRES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "superres"
LOW_SIZE = (360, 640)
SCALE = 3


class _Runtime(nn.Module):
    """A runtime called as a module (what :func:`upscale_rgb` runs)."""

    def __init__(self, run: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.run = run

    def forward(self, image: Tensor) -> Tensor:
        return self.run(image)


def frames_per_second(work: Callable[[], object], frames: int) -> dict:
    """Median frames per second of ``work`` over ``frames`` timed calls after two untimed ones."""
    for _ in range(2):
        work()
    seconds = []
    for _ in range(frames):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {"fps": 1.0 / median, "median_ms": 1e3 * median, "ms": [1e3 * s for s in seconds]}


def runtimes(model: nn.Module, folder: Path, name: str, threads: int,
             calibration: list[np.ndarray]) -> dict[str, Callable[[Tensor], Tensor]]:
    """The ways to run ``model`` on a luminance batch, by name."""
    model = model.eval()

    def eager(image: Tensor) -> Tensor:
        with torch.no_grad():
            return model(image)

    layout = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def channels_last(image: Tensor) -> Tensor:
        with torch.no_grad():
            return layout(image.contiguous(memory_format=torch.channels_last))

    found: dict[str, Callable[[Tensor], Tensor]] = {"pytorch fp32": eager, "pytorch fp32 channels-last": channels_last}
    if cpu_has_bf16():
        def bf16(image: Tensor) -> Tensor:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model(image).float()
        found["pytorch bf16 autocast"] = bf16
    path = folder / f"{name}.onnx"  # the benchmark's own temporary files
    onnx.save(onnx_proto(model, name), str(path))
    found["onnxruntime fp32"] = OnnxRuntime(path, threads=threads)
    quantize_int8(path, folder / f"{name}_int8.onnx", calibration)
    found["onnxruntime int8"] = OnnxRuntime(folder / f"{name}_int8.onnx", threads=threads)
    return found


def calibration_batches(count: int = 8) -> list[np.ndarray]:
    """Low-resolution luminance in [0, 1] of ``count`` T91 images (random images without T91)."""
    paths = sorted((SUPERRES / "T91").glob("*.png"))[:count]
    if not paths:
        return [torch.rand(1, 1, 96, 128).numpy() for _ in range(count)]
    return [(luminance(downscale(modcrop(to_tensor(decode_image(path)[0]), SCALE), SCALE)) / 255).numpy()
            for path in paths]


def quality(module: nn.Module, images: list[Path]) -> float:
    """Mean luminance PSNR of ``module`` on ``images`` at ×SCALE, as ``superres compare`` scores it."""
    scores = QualityScores(SCALE)
    for path in images:
        high = modcrop(to_tensor(decode_image(path)[0]), SCALE)
        scores.add(upscale_luminance(module, downscale(high, SCALE)), luminance(high))
    return scores.summary()["psnr"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", nargs="*", default=["espcn", "fsrcnn"],
                        help="untrained networks to time (none: `--network` alone)")
    parser.add_argument("--checkpoint", action="append", default=[], help="trained networks (superres train)")
    parser.add_argument("--frames", type=int, default=10, help="timed frames per figure")
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: cores)")
    parser.add_argument("--images", type=Path, default=SUPERRES / "Set5",
                        help="whose luminance PSNR each runtime gets (default: Set5; absent: not scored)")
    parser.add_argument("--reference", action="store_true",
                        help="also FSRCNN's last layer as the transposed convolution it computes as a sub-pixel one")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args()
    threads = args.threads or usable_cpus()[0]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    networks = [(name, create_sr_model(name, SCALE)) for name in args.network]
    for checkpoint in args.checkpoint:
        model, spec = load_superres_model(checkpoint)
        if spec["scale"] != SCALE:
            parser.error(f"{checkpoint} upscales by {spec['scale']}; this benchmark measures ×{SCALE}")
        networks.append((f"{method_name(spec['name'], spec['options'])} ({Path(checkpoint).parent.name})", model))
    for name, model in list(networks):
        if isinstance(getattr(model, "upsampler", None), WideTransposedUpsample) and args.reference:
            reference = copy.deepcopy(model)
            reference.upsampler.forward = reference.upsampler.transposed_forward
            networks.append((f"{name} as transposed conv", reference))
    frame = torch.rand(1, 3, *LOW_SIZE)
    frame_y = torch.rand(1, 1, *LOW_SIZE)
    images = expand_inputs([args.images]) if args.images.exists() else []
    calibration = calibration_batches()
    rows = [{"method": "bicubic (RGB)", "runtime": "pytorch fp32", "network": None,
             "frame": frames_per_second(lambda: upscale_fixed(frame, SCALE, "bicubic"), args.frames)}]
    with tempfile.TemporaryDirectory() as folder:
        for name, model in networks:
            for runtime, run in runtimes(model, Path(folder), name.split(" ")[0], threads, calibration).items():
                module = _Runtime(run)
                rows.append({"method": name, "runtime": runtime,
                             "network": frames_per_second(lambda: run(frame_y), args.frames),
                             "frame": frames_per_second(lambda: upscale_rgb(module, frame, SCALE), args.frames),
                             "psnr": quality(module, images) if images else None})
    bicubic = rows[0]["frame"]["fps"]
    print(f"×{SCALE}: {LOW_SIZE[1]}×{LOW_SIZE[0]} → {SCALE * LOW_SIZE[1]}×{SCALE * LOW_SIZE[0]}, {threads} thread(s), "
          f"{platform.processor() or platform.machine()}, bf16 units: {cpu_has_bf16()}")
    scored = f"PSNR {args.images.name}" if images else "PSNR"
    print(f"{'method':<32} {'runtime':<28} {'network fps':>12} {'frame fps':>10} {'frame vs bicubic':>17} {scored:>11}")
    for row in rows:
        network = "—" if row["network"] is None else f"{row['network']['fps']:.1f}"
        psnr = "—" if row.get("psnr") is None else f"{row['psnr']:.2f}"
        print(f"{row['method']:<32} {row['runtime']:<28} {network:>12} {row['frame']['fps']:>10.1f} "
              f"{row['frame']['fps'] / bicubic:>16.2f}× {psnr:>11}")
    write_report({"question": f"frames per second of a ×{SCALE} {LOW_SIZE[1]}×{LOW_SIZE[0]} enlargement",
                  "threads": threads, "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                  "bf16_units": cpu_has_bf16(), "torch": torch.__version__, "frames": args.frames, "rows": rows,
                  "psnr_images": [str(path) for path in images],
                  "goal_fps": 24}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
