"""Recipe A/B: train variants of one recipe side by side, then score each on the same split.

Each variant is the recipe plus its own ``key=value`` overrides (and the ones shared by all,
``--set``). The variants train at the same time, one process each, with the machine's cores
shared out (``OMP_NUM_THREADS``), same seed and data order, so the only difference is the
overrides. Then every ``last.pt`` (the same iteration for all: choosing ``best.pt`` on the split
being reported would favour the noisier run) is evaluated through the one inference path, at one
scale and unflipped as validation runs (not with the recipe's test-time views), with the
boundary metrics: mIoU, the IoU of chosen classes, mean Boundary IoU and trimap accuracy within
``--boundary-width`` pixels of class edges, pixel accuracy, and the validation mIoU logged during
training; on two-class membrane data also the ISBI 2012 metrics (Rand error, pixel error and
V_info at p > 0.5 and at their best thresholds).

A variant whose run folder already holds a finished ``last.pt`` is not trained again, and an
unfinished one is resumed, so an interrupted comparison is completed by running the same command.

Aligned against half-pixel DeepLabV3+ decoders on the held-out CamVid sequence 0006R0::

    python benchmarks/recipe_ab.py --config configs/camvid_deeplabv3plus.yaml --out runs/ab_deeplab \\
        --set 'data.options={holdout: 0006R0}' --set train.amp=null --set train.time_budget_min=null \\
        --set train.iterations=400 --set data.workers=1 \\
        --variant aligned 'model.options={output_stride: 16, aligned: true}' \\
        --variant half-pixel 'model.options={output_stride: 16, aligned: false}'

Prints a Markdown table and writes ``benchmarks/results/recipe_ab.json`` (``--output``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.inference.evaluation import evaluate_checkpoint
from pixelwise.inference.logits import InferenceOptions
from pixelwise.training.run_log import read_metrics
from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "recipe_ab.json"
# On two-class membrane data, the ISBI 2012 metrics at p > 0.5 and at their best thresholds.
MEMBRANE_KEYS = tuple(f"{prefix}{name}{suffix}" for name in ("rand_error", "pixel_error", "v_info")
                      for prefix, suffix in (("", ""), ("best_", ""), ("best_", "_threshold")))
THIN_CAMVID_CLASSES = ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist")


def run_state(run_dir: Path) -> str:
    """``"new"`` (no ``last.pt``), ``"unfinished"`` or ``"finished"``."""
    last = run_dir / "last.pt"
    if not last.exists():
        return "new"
    state = load_checkpoint(last)
    total = state.get("total_iterations")
    return "finished" if total is not None and state["iteration"] >= total else "unfinished"


def train_variants(config: str, variants: list[tuple[str, list[str]]], shared: list[str], out: Path,
                   threads: int) -> None:
    """Start every variant's ``pixelwise train`` that is not finished, all at once; wait for all."""
    processes = []
    for name, overrides in variants:
        run_dir = out / name
        state = run_state(run_dir)
        if state == "finished":
            print(f"{name}: {run_dir / 'last.pt'} is finished; not trained again")
            continue
        # A "new" folder that exists holds a run stopped before its first checkpoint: nothing to keep.
        flags = ["--resume"] if state == "unfinished" else ["--overwrite"] if run_dir.exists() else []
        command = [sys.executable, "-m", "pixelwise", "train", "--config", config, *shared, *overrides,
                   f"train.output_dir={run_dir}", *flags]
        out.mkdir(parents=True, exist_ok=True)
        log = open(out / f"{name}.log", "a")  # beside the run folder: train refuses a non-empty new one
        print(f"{name}: {'resuming' if state == 'unfinished' else 'training'} ({threads} thread(s)); "
              f"log in {out / f'{name}.log'}")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        processes.append((name, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    failed = []
    for name, process, log in processes:
        if process.wait() != 0:
            failed.append(name)
        log.close()
    if failed:
        raise SystemExit(f"training failed for {', '.join(failed)}: see {', '.join(f'{name}.log' for name in failed)} "
                         f"in {out}")


def score(run_dir: Path, classes: list[str], boundary_width: int) -> dict:
    """``last.pt`` evaluated on the recipe's validation split as validation runs (one scale, no
    flip), with the run's logged history."""
    result = evaluate_checkpoint(run_dir / "last.pt", options=InferenceOptions.create(scales=(1.0,), flip=False),
                                 boundary_width=boundary_width)
    summary = result.summary()
    names = list(result.classes.names)
    _, evaluations = read_metrics(run_dir / "metrics.jsonl")
    state = load_checkpoint(run_dir / "last.pt")
    return {
        "iteration": result.iteration,
        "train_minutes": state.get("train_seconds", 0.0) / 60,
        "mean_iou": summary["mean_iou"],
        "class_iou": {name: summary["iou"][names.index(name)] for name in classes if name in names},
        "mean_boundary_iou": summary.get("mean_boundary_iou"),
        "trimap_accuracy": summary.get("trimap_accuracy"),
        "pixel_accuracy": summary["pixel_accuracy"],
        "val_history": {record["iteration"]: record["eval"]["mean_iou"] for record in evaluations},
        "membrane": {key: summary[key] for key in MEMBRANE_KEYS} if "rand_error" in summary else None,
        "data": {"format": result.data.format, "split": result.data.split, "options": result.data.options,
                 "num_images": result.num_images},
    }


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def membrane_cells(membrane: dict | None) -> list[str]:
    """Rand error, pixel error and V_info as "at p > 0.5 / best (threshold)"."""
    def cell(name: str) -> str:
        if membrane is None or membrane[name] is None:
            return "–"
        best, threshold = membrane[f"best_{name}"], membrane[f"best_{name}_threshold"]
        return f"{membrane[name]:.3f} / {best:.3f} ({threshold:.2f})"
    return [cell(name) for name in ("rand_error", "pixel_error", "v_info")]


def table(results: dict[str, dict], classes: list[str], boundary_width: int) -> str:
    shown = [name for name in classes if any(name in r["class_iou"] for r in results.values())]
    membrane = any(r.get("membrane") for r in results.values())
    membrane_header = ["Rand error (p > 0.5 / best)", "pixel error", "V_info"] if membrane else []
    header = (["variant", "iterations", "minutes", "mIoU", *shown, *membrane_header,
               f"mean Boundary IoU ({boundary_width} px)", f"trimap accuracy ({boundary_width} px)",
               "pixel accuracy", "val mIoU during training"])
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 2) + "---|"]
    for name, r in results.items():
        history = " / ".join(f"{percent(miou)} ({iteration})" for iteration, miou in r["val_history"].items())
        cells = [name, str(r["iteration"]), f"{r['train_minutes']:.0f}", f"**{percent(r['mean_iou'])}**",
                 *(percent(r["class_iou"].get(c)) for c in shown),
                 *(membrane_cells(r.get("membrane")) if membrane else []), percent(r["mean_boundary_iou"]),
                 percent(r["trimap_accuracy"]), percent(r["pixel_accuracy"]), history]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the recipe every variant starts from")
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME", "OVERRIDE"),
                        help="a variant's name (its run folder under --out) and its key=value overrides")
    parser.add_argument("--set", action="append", default=[], metavar="OVERRIDE",
                        help="a key=value override for every variant")
    parser.add_argument("--out", type=Path, required=True, help="folder of the variants' run folders")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per training process (default: the cores shared out)")
    parser.add_argument("--classes", nargs="*", default=list(THIN_CAMVID_CLASSES),
                        help="classes whose IoU gets a column (those the model has)")
    parser.add_argument("--boundary-width", type=int, default=3)
    parser.add_argument("--evaluate-only", action="store_true", help="score the run folders as they are")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args()
    variants = [(spec[0], spec[1:]) for spec in args.variant]
    names = [name for name, _ in variants]
    if len(set(names)) != len(names):
        parser.error(f"variant names must differ (they name run folders): {names}")
    if not args.evaluate_only:
        threads = args.threads or max(1, (os.cpu_count() or 1) // len(variants))
        train_variants(args.config, variants, args.set, args.out, threads)
    results = {}
    for name in names:
        results[name] = score(args.out / name, args.classes, args.boundary_width)
        print(f"{name}: mIoU {percent(results[name]['mean_iou'])}")
    print(table(results, args.classes, args.boundary_width))
    write_report({"config": args.config, "shared": args.set, "variants": dict(variants),
                  "boundary_width": args.boundary_width, "results": results}, args.output)


if __name__ == "__main__":
    main()
