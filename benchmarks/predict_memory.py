"""Peak memory of the whole ``pixelwise predict`` command on huge images, against the floor.

``benchmarks/sliding_window.py`` measures tiled prediction itself; a user runs the command,
which also decodes the file, and writes the class-index PNG and the overlay. This script runs
``pixelwise predict`` on square PNGs of growing side, each in a fresh process under
``/usr/bin/time``-like accounting (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a child
that does only that), and reports:

- *baseline*: the same command on a 64×64 image (Python, PyTorch, the model: fixed costs);
- *peak*: the command's peak resident memory;
- *floor*: what any implementation must hold at once while predicting: the decoded image as
  PIL holds it (4 bytes a pixel) plus the same as a uint8 RGB array (3 bytes) during decoding;
- *growth / floor*: (peak - baseline) / floor. 1.0 means nothing beyond the decoded image is
  held; the class map (1 byte a pixel), the overlay and the PNG encoders should add little.

The model is a small U-Net (random weights, 11 classes) written by this script, since the
network's working memory per window is measured by ``sliding_window.py`` already.

``--reference-tree DIR`` runs the same command a second time with ``DIR`` (another checkout of
pixelwise, e.g. ``git worktree add /tmp/before <commit>``) first on ``PYTHONPATH``, and prints
the ratio of the two peaks' growth: the change measured side by side, in one run.

Usage:
    python benchmarks/predict_memory.py [--sizes 2000 4000 9000] [--window 512] [--reference-tree DIR]

Prints a table and writes ``benchmarks/results/predict_memory.json``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

_CHILD = """
import resource, subprocess, sys
result = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, result.returncode)
"""


def _checkpoint(folder: Path) -> Path:
    """A tiny trained-for-one-step U-Net checkpoint (the command needs a real one)."""
    from pixelwise.config import load_config
    from pixelwise.training.loop import train

    config = load_config(None, ["model.name=unet", "model.encoder=null",
                                "model.options={base_channels: 8, depth: 3}", "data.options={size: 32, length: 4}",
                                "data.crop_size=[32, 32]", "data.batch_size=2", "data.workers=0",
                                "train.iterations=1", f"train.output_dir={folder / 'run'}"])
    train(config)
    return folder / "run" / "last.pt"


def _image(path: Path, side: int) -> None:
    """A smooth synthetic photograph-like image (compresses fast, decodes to full size)."""
    rows = np.arange(side, dtype=np.uint32)[:, None]
    band = np.empty((side, side, 3), dtype=np.uint8)
    band[..., 0] = (rows + np.arange(side)) % 256
    band[..., 1] = rows % 256
    band[..., 2] = (rows * 3) % 256
    Image.fromarray(band).save(path, compress_level=1)


def _peak_mib(command: list[str], tree: str | None = None) -> float:
    """Peak resident memory of ``command`` (run in a fresh process; ``tree`` first on its
    ``PYTHONPATH``), MiB."""
    env = dict(os.environ, PYTHONPATH=tree) if tree else None
    output = subprocess.run([sys.executable, "-c", _CHILD, *command], capture_output=True, text=True, check=True,
                            env=env)
    peak_kib, returncode = map(int, output.stdout.split())
    if returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {returncode}")
    return peak_kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 9000])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--reference-tree", help="another pixelwise checkout to measure side by side")
    args = parser.parse_args()
    executable = str(Path(sys.executable).with_name("pixelwise"))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        checkpoint = _checkpoint(folder)

        def command(image: Path, out: str) -> list[str]:
            return [executable, "predict", "--checkpoint", str(checkpoint), str(image), "--out", str(folder / out),
                    "--window", str(args.window), str(args.window), "--tile-threshold", str(1024 * 1024)]

        _image(folder / "small.png", 64)
        baseline = _peak_mib(command(folder / "small.png", "small"))
        reference_baseline = _peak_mib(command(folder / "small.png", "small_ref"), args.reference_tree) \
            if args.reference_tree else None
        print(f"baseline (64×64): {baseline:.0f} MiB", flush=True)
        for side in args.sizes:
            image = folder / f"image_{side}.png"
            _image(image, side)
            start = time.perf_counter()
            peak = _peak_mib(command(image, f"out_{side}"))
            seconds = time.perf_counter() - start
            floor = side * side * 7 / 2**20
            row = {"side": side, "baseline_mib": baseline, "peak_mib": peak, "floor_mib": floor,
                   "growth_over_floor": (peak - baseline) / floor, "seconds": seconds}
            if args.reference_tree:
                reference = _peak_mib(command(image, f"ref_{side}"), args.reference_tree)
                row.update(reference_peak_mib=reference, reference_growth_mib=reference - reference_baseline,
                           growth_ratio=(peak - baseline) / (reference - reference_baseline))
            rows.append(row)
            print(f"{side}²: peak {peak:.0f} MiB, growth {peak - baseline:.0f} MiB, floor {floor:.0f} MiB, "
                  f"growth / floor {(peak - baseline) / floor:.2f}, {seconds:.0f} s", flush=True)
            image.unlink()
    reference = " | reference growth | growth / reference's" if args.reference_tree else ""
    print(f"\n| image | peak | growth over the 64² baseline | floor (decoded image) | growth / floor{reference} |")
    print("|---|---:|---:|---:|---:|" + ("---:|---:|" if args.reference_tree else ""))
    for row in rows:
        extra = f" {row['reference_growth_mib']:.0f} MiB | {row['growth_ratio']:.2f}× |" if args.reference_tree else ""
        print(f"| {row['side']}² | {row['peak_mib']:.0f} MiB | {row['peak_mib'] - row['baseline_mib']:.0f} MiB | "
              f"{row['floor_mib']:.0f} MiB | {row['growth_over_floor']:.2f} |{extra}")
    write_report({"window": args.window, "cpus": os.cpu_count(), "rows": rows},
                 Path(__file__).parent / "results" / "predict_memory.json")


if __name__ == "__main__":
    main()
