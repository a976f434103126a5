"""The training-curve figure of docs/superres.md: validation PSNR on Set5 against minutes of
training for super-resolution runs, with the published figures of the same scale and benchmark
as dashed lines and the runs' bicubic baseline as a dotted one.

The minutes are the sum of the runs' own step times up to each evaluation (``step_s`` in
``metrics.jsonl``), so runs of different speeds line up by the time they were given.

Run: ``.venv/bin/python scripts/superres_curves.py runs/superres_espcn_x3_t91 runs/superres_srcnn_x3_t91 \
runs/superres_fsrcnn_x3_t91 --out docs/images/superres_t91_x3.png`` (the recipes' run folders)
"""
from __future__ import annotations

import argparse
import bisect
import itertools
import json
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from pixelwise.superres.models import method_name
from pixelwise.superres.published import published_results
from pixelwise.training.run_log import read_metrics


def curve(run: Path) -> tuple[list[float], list[float], float]:
    """(minutes, PSNR) at each evaluation of ``run``, and its bicubic baseline."""
    path = run / "metrics.jsonl"
    steps, evaluations = read_metrics(path)
    iterations = [step["iteration"] for step in steps]
    elapsed = list(itertools.accumulate(step["step_s"] for step in steps))
    minutes = [elapsed[bisect.bisect_right(iterations, e["iteration"]) - 1] / 60 for e in evaluations]
    records = (json.loads(line) for line in path.read_text().splitlines() if '"baseline"' in line)
    return minutes, [e["eval"]["psnr"] for e in evaluations], next(records)["baseline"]["bicubic"]["psnr"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (superres train's output_dir)")
    parser.add_argument("--benchmark", default="Set5", help="whose published figures to draw")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    scales = set()
    for run in args.runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        scales.add(config["model"]["scale"])
        minutes, psnr, bicubic = curve(run)
        label = f"{method_name(config['model']['name'], config['model'].get('options') or {})} ({run.name})"
        axes.plot(minutes, psnr, marker="o", markersize=3, linewidth=1.2, label=label)
    if len(scales) != 1:
        parser.error(f"the runs upscale by {sorted(scales)}: draw one scale at a time")
    scale = scales.pop()
    axes.axhline(bicubic, color="grey", linestyle=":", linewidth=1.0, label=f"bicubic (measured) {bicubic:.2f}")
    for row, colour in zip(published_results(args.benchmark, scale)[1:], ("C7", "C8", "C9", "C6")):
        axes.axhline(row.psnr, color=colour, linestyle="--", linewidth=1.0, label=f"{row.method}, paper: {row.psnr:.2f}")
    axes.set_xlabel("minutes of training (the run's own step times)")
    axes.set_ylabel(f"luminance PSNR on {args.benchmark} (dB)")
    axes.set_title(f"×{scale}, trained on T91, validated on {args.benchmark}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
