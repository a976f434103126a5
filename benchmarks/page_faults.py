"""What does a training step spend faulting in the pages the previous step freed?

glibc hands a freed block above its ``mmap`` threshold (at most 32 MiB) back to the kernel, so a
training step, which allocates and frees the same activations every iteration, gets them back as
fresh pages the kernel maps and zeroes again. ``pixelwise train`` raises the thresholds as it
starts (``pixelwise.runtimes.memory.keep_freed_memory``); this measures what that buys on the
CamVid recipes' step: U-Net-ResNet18 (or ``--model``), batch 8 × 288 × 384, 11 classes,
channels-last, AdamW and cross-entropy as ``train_step.py`` times them, at the precision ``train.amp: auto`` picks on this machine
(``--precision`` to force one).

Each variant runs in a fresh process (the thresholds are process-wide), the two alternating
``--rounds`` times; a process runs ``--warmup`` untimed steps and ``--steps`` timed ones and
reports the median step, the page faults and the CPU seconds spent in the kernel and in user
code per step, and its peak resident memory. "glibc default" is what any PyTorch program gets,
segmentation_models.pytorch's training loops included.

    python benchmarks/page_faults.py [--model unet] [--rounds 2] [--steps 6] [--warmup 2] [--huge-pages]

Prints a table with the ratio of the medians and writes ``benchmarks/results/page_faults.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "page_faults.json"
# name: (whether freed memory is kept, the environment added)
VARIANTS = {"glibc default": ("default", {}), "freed memory kept (pixelwise train)": ("keep", {})}
# --huge-pages: PyTorch's own THP_MEM_ALLOC_ENABLE (2 MiB-aligned, madvise'd blocks), alone and with the above.
HUGE_PAGES = {"huge pages": ("default", {"THP_MEM_ALLOC_ENABLE": "1"}),
              "freed memory kept + huge pages": ("keep", {"THP_MEM_ALLOC_ENABLE": "1"})}

# One process's measurement: argv is mode, model, precision, warm-up and timed steps, threads; the
# step and its batch are train_step.py's (this folder is put on the child's path).
CHILD = """
import json, resource, statistics, sys, time
import torch
import pixelwise
from pixelwise.runtimes.memory import keep_freed_memory
from pixelwise.runtimes.torch_runtime import choose_precision
from train_step import NUM_CLASSES, make_batch, make_step

mode, model_name, precision, warmup, steps, threads = sys.argv[1:7]
decision = keep_freed_memory() if mode == "keep" else "glibc's default"
if threads != "default":
    torch.set_num_threads(int(threads))
amp, why = choose_precision(precision, torch.device("cpu"))
torch.manual_seed(0)
model = pixelwise.create_model(model_name, num_classes=NUM_CLASSES, encoder="resnet18").to_channels_last()
step = make_step(model, make_batch(8, 288, 384), channels_last=True, bf16=amp == "bf16")
for _ in range(int(warmup)):
    step()
before, times = resource.getrusage(resource.RUSAGE_SELF), []
for _ in range(int(steps)):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
after, n = resource.getrusage(resource.RUSAGE_SELF), len(times)
print(json.dumps({"median_s": statistics.median(times), "steps_s": times, "decision": decision,
                  "precision": amp or "fp32", "precision_reason": why, "threads": torch.get_num_threads(),
                  "faults_per_step": (after.ru_minflt - before.ru_minflt) / n,
                  "kernel_cpu_s_per_step": (after.ru_stime - before.ru_stime) / n,
                  "user_cpu_s_per_step": (after.ru_utime - before.ru_utime) / n,
                  "peak_rss_mib": after.ru_maxrss / 1024}))
"""


def measure(mode: str, environment: dict[str, str], args: argparse.Namespace) -> dict:
    """One fresh process's figures for ``mode`` ("default" or "keep") with ``environment`` added."""
    command = [sys.executable, "-c", CHILD, mode, args.model, args.precision, str(args.warmup), str(args.steps),
               str(args.threads or "default")]
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, **environment, "PYTHONPATH": path})
    if result.returncode != 0:
        raise SystemExit(f"the {mode} process failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="unet", help="a registered model with a resnet18 encoder")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16"],
                        help="auto: bf16 where the CPU computes it natively, fp32 elsewhere")
    parser.add_argument("--rounds", type=int, default=2, help="processes per variant, alternating")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per process first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--huge-pages", action="store_true",
                        help="also time PyTorch's THP_MEM_ALLOC_ENABLE=1 (transparent huge pages), alone and with "
                             "freed memory kept")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    variants = {**VARIANTS, **(HUGE_PAGES if args.huge_pages else {})}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in order:
            runs[name].append(measure(*variants[name], args))
    first = runs["glibc default"][0]
    print(f"{args.model}-resnet18, batch 8 × 3 × 288 × 384, {first['precision']} ({first['precision_reason']}), "
          f"{first['threads']} threads; {platform.processor() or platform.machine()}; {args.rounds} processes each, "
          f"{args.warmup} warm-up + {args.steps} timed steps")
    print(f"{'variant':<40} {'median s/step':>13} {'faults/step':>12} {'kernel s/step':>13} {'user s/step':>11} "
          f"{'peak RSS MiB':>12}")
    summary = {}
    for name, measured in runs.items():
        row = {"median_s": statistics.median(time for run in measured for time in run["steps_s"])}
        row.update({key: statistics.median(run[key] for run in measured)
                    for key in ("faults_per_step", "kernel_cpu_s_per_step", "user_cpu_s_per_step", "peak_rss_mib")})
        summary[name] = row
        print(f"{name:<40} {row['median_s']:>13.3f} {row['faults_per_step']:>12.0f} {row['kernel_cpu_s_per_step']:>13.2f} "
              f"{row['user_cpu_s_per_step']:>11.2f} {row['peak_rss_mib']:>12.0f}")
    speed = {name: summary["glibc default"]["median_s"] / row["median_s"] for name, row in summary.items()}
    print("speed against glibc's default: " + ", ".join(f"{name} {ratio:.2f}×" for name, ratio in speed.items()))
    write_report({"model": args.model, "precision": first["precision"], "rounds": args.rounds, "steps": args.steps,
                  "warmup": args.warmup, "threads": first["threads"], "summary": summary, "speed_ratio": speed,
                  "runs": runs}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
