"""Graceful on a busy machine? The demo's training step alone and beside another CPU-bound process.

OpenMP's worker threads (PyTorch's intra-op pool) wait for work by spinning before they sleep.
On a machine whose cores are also busy with another process, a spinning thread takes the core
that the thread it waits for needs, and a step can slow down many times more than the share of
the cores it lost. This measures the demo's training step (U-Net, batch 8 of 64×64, AdamW,
cross-entropy; the step of ``pixelwise demo``) in a fresh process, in steps per second:

- alone, and beside a competitor: ``torch`` (another process training the same step with
  PyTorch's default threads and the same wait policy, like a second training run) or ``python``
  (a pure-Python busy loop on one core);
- with OpenMP's default waiting (``OMP_WAIT_POLICY`` unset: spin, then sleep), a short spin
  (``GOMP_SPINCOUNT=10000``) and ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once).

The slowdown is the alone rate over the rate beside the competitor; with the cores shared
evenly with one other 2-thread process it would be 2. Target (issue 36): at most 2.5.

    python benchmarks/busy_machine.py [--steps 40] [--competitor torch python]

Prints a table and writes ``benchmarks/results/busy_machine.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "busy_machine.json"
# How OpenMP's idle threads wait: its default (spin, then sleep), a spin of 10,000 turns
# (GOMP_SPINCOUNT; libgomp's default when the wait policy is unset is 300,000), or no spin.
POLICIES: dict[str, dict[str, str]] = {"default": {}, "spin 10k": {"GOMP_SPINCOUNT": "10000"},
                                       "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
BUSY_PYTHON = "while True: pass"


def worker(steps: int, warmup: int) -> dict:
    """In this process: time ``steps`` demo training steps after ``warmup`` untimed ones."""
    import torch

    from pixelwise.demo import demo_config
    from pixelwise.losses import create_loss
    from pixelwise.training.loop import build_model, train_one_step

    config = demo_config("runs/busy_machine_unused")
    torch.manual_seed(0)
    model = build_model(config, 6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = create_loss("ce")
    images = torch.randn(config.data.batch_size, 3, 64, 64)
    masks = torch.randint(0, 6, (config.data.batch_size, 64, 64))
    device = torch.device("cpu")
    for _ in range(warmup):
        train_one_step(model, (images, masks), loss_fn, optimizer, config, device)
    start = time.perf_counter()
    for _ in range(steps):
        train_one_step(model, (images, masks), loss_fn, optimizer, config, device)
    seconds = time.perf_counter() - start
    return {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds, "threads": torch.get_num_threads()}


def environment(policy: dict[str, str]) -> dict[str, str]:
    """This process's environment with OpenMP's waiting set as ``policy`` says (only it)."""
    env = {key: value for key, value in os.environ.items() if key not in WAIT_VARIABLES}
    return {**env, **policy}


def run_worker(policy: dict[str, str], steps: int, warmup: int) -> dict:
    """A fresh process (OpenMP reads its wait policy once, when PyTorch loads) timing the step."""
    env = environment(policy)
    command = [sys.executable, __file__, "--worker", "--steps", str(steps), "--warmup", str(warmup)]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def start_competitor(kind: str, policy: dict[str, str]) -> subprocess.Popen:
    """A CPU-bound process that runs until killed: a second training loop (under the same wait
    policy: pixelwise beside pixelwise), or a Python busy loop."""
    env = environment(policy)
    if kind == "python":
        return subprocess.Popen([sys.executable, "-c", BUSY_PYTHON], env=env)
    return subprocess.Popen([sys.executable, __file__, "--worker", "--steps", "1000000", "--warmup", "0"], env=env,
                            stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--competitor", nargs="+", choices=("torch", "python"), default=["torch", "python"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.steps, args.warmup)))
        return 0

    rows = []
    for name, policy in POLICIES.items():
        alone = run_worker(policy, args.steps, args.warmup)
        rows.append({"policy": name, "beside": None, **alone})
        for kind in args.competitor:
            competitor = start_competitor(kind, policy)
            try:
                time.sleep(3.0)  # let it start computing
                beside = run_worker(policy, args.steps, args.warmup)
            finally:
                competitor.kill()
                competitor.wait()
            rows.append({"policy": name, "beside": kind, **beside,
                         "slowdown": alone["steps_per_s"] / beside["steps_per_s"]})

    header = f"{'OpenMP waiting':<16} {'beside':<8} {'steps/s':>8} {'slowdown':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        slowdown = "" if row["beside"] is None else f"{row['slowdown']:.2f}×"
        print(f"{row['policy']:<16} {row['beside'] or 'alone':<8} {row['steps_per_s']:>8.2f} {slowdown:>9}")
    write_report({"question": "the demo's training step alone and beside another CPU-bound process, by OpenMP "
                              "wait policy", "processor": platform.processor() or platform.machine(),
                  "cpus": os.cpu_count(), "rows": rows}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
