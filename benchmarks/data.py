"""Can the data pipeline keep a CPU training step fed? CamVid read + augmented through a DataLoader.

Two measurements on CamVid train (367 frames, 480×360), with the training preset of
:func:`pixelwise.data.transforms.train_transform` (random scale 0.5–2.0 relative to the image,
360×480 crop padded with the ignore index, horizontal flip, colour jitter, normalisation):

1. **Throughput**: samples per second out of a ``DataLoader`` (``--workers`` processes,
   ``--batch-size``) with the main process idle, so the workers have the machine: what the
   pipeline can deliver at most. The first batch (worker start-up) is not timed.
2. **Share of a training step spent waiting for data**: a U-Net with a ResNet-18 encoder
   (``pixelwise.create_model("unet", num_classes=11, encoder="resnet18")``), AdamW and
   cross-entropy with ``ignore_index=255`` train for ``--steps`` steps; each step's wait for
   the next batch and its compute (forward, backward, optimiser step) are timed separately,
   after ``--warmup`` untimed steps. Workers and the training step share the cores, as in a
   real run. Each worker runs one torch thread (torch's default) and sleeps once its prefetch
   queue is full, so when the step is much slower than the pipeline the workers need only a
   small share of the CPU (printed as "worker load") and the main process gets every core
   (``--threads``, default ``cpu_count``); where the worker load is high, pass
   ``--threads`` = cores minus workers.

3. **Elastic deformation** (U-Net's, :class:`pixelwise.data.elastic.ElasticDeformation`: 3×3
   grid, σ = 10 px): milliseconds per sample on a 512×512 grayscale-as-RGB uint8 slice (the
   ISBI 2012 EM slice size) and its mask, on one thread as a loader worker runs it; and, with
   the training measurement, a batch's worth of it as a share of a training step's time (worker
   time, which overlaps the step while the workers keep up). ``--elastic`` also puts it in the
   CamVid loader (before the crop, as ``data.elastic`` does), so the data wait is measured with it.

4. **A recipe's own run** (``--config RECIPE``, overrides with ``--set``): the recipe's training
   samples (its augmentation, elastic deformation and border weight maps) through a loader with
   its ``data.workers`` and ``data.batch_size``, and its own training step (model, loss, optimiser,
   precision, memory layout), measured as in 1 and 2. For the ISBI 2012 recipe::

       python benchmarks/data.py --config configs/isbi2012_unet.yaml --output benchmarks/results/data_isbi2012.json

Target: data wait under 10% of a step. CamVid is read in place (``--root``, default
``../shared/datasets/camvid`` next to the repository); without it (or with ``--elastic-only``)
only the elastic deformation is measured.

Usage:
    python benchmarks/data.py [--steps 10] [--workers 2] [--batch-size 4] [--root PATH] [--elastic]
    python benchmarks/data.py --elastic-only
    python benchmarks/data.py --config RECIPE [--set KEY=VALUE ...]

Prints a table and writes ``benchmarks/results/data.json``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torchvision
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import tv_tensors

import pixelwise
from pixelwise.config import Config, load_config
from pixelwise.data import create_dataset
from pixelwise.data.classes import IGNORE_INDEX
from pixelwise.data.elastic import ElasticDeformation
from pixelwise.data.transforms import train_transform
from pixelwise.losses import create_loss
from pixelwise.runtimes.threads import loader_workers
from pixelwise.runtimes.torch_runtime import choose_precision
from pixelwise.training.loop import train_one_step
from pixelwise.training.recipe import build_datasets, build_model, build_optimizer, class_weights, training_samples
from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "camvid"
RESULTS = REPO / "benchmarks" / "results" / "data.json"
CROP = (360, 480)
ELASTIC_SIZE = 512  # an ISBI 2012 EM slice


def make_loader(root: Path, workers: int, batch_size: int, elastic: bool = False) -> DataLoader:
    """CamVid train with the training preset (with U-Net's elastic deformation if asked), shuffled,
    seeded, workers kept between epochs."""
    deform = ElasticDeformation(grid=3, sigma=10.0) if elastic else None
    dataset = create_dataset("camvid", root=root, split="train",
                             transform=train_transform(CROP, scale_range=(0.5, 2.0), hflip=0.5, elastic=deform))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))


def measure_throughput(loader: DataLoader, batches: int) -> dict:
    """Samples per second over ``batches`` batches after the first (worker start-up excluded;
    the few batches prefetched meanwhile count, a small overstatement over a whole epoch)."""
    iterator = endless(loader)  # a small data set (ISBI: 5 batches an epoch) is read over several epochs
    next(iterator)
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        count += next(iterator)[0].shape[0]
    elapsed = time.perf_counter() - start
    return {"batches": batches, "samples": count, "seconds": elapsed, "samples_per_s": count / elapsed}


def measure_elastic(samples: int, size: int = ELASTIC_SIZE) -> dict:
    """Milliseconds per sample of the elastic deformation (3×3 grid, σ = 10 px) of a ``size``²
    grayscale slice stored as RGB uint8 and its int64 mask, on one thread as in a loader worker;
    the first call is not timed."""
    gray = torch.randint(0, 256, (1, size, size), dtype=torch.uint8)
    image, mask = tv_tensors.Image(gray.expand(3, size, size).clone()), tv_tensors.Mask((gray[0] > 127).long())
    deform = ElasticDeformation(grid=3, sigma=10.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    try:
        deform(image, mask)
        for _ in range(samples):
            start = time.perf_counter()
            deform(image, mask)
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(threads)
    return {"size": [size, size], "grid": 3, "sigma": 10.0, "threads": 1, "samples": samples,
            "ms_per_sample": statistics.mean(times), "median_ms_per_sample": statistics.median(times),
            "ms": times}


def print_elastic(elastic: dict, batch_size: int, training: dict | None) -> float | None:
    """The elastic deformation's cost per sample and, given a training measurement, a batch's worth
    of it as a share of a step's time; returns that share."""
    height, width = elastic["size"]
    print(f"elastic deformation (3×3 grid, σ = 10 px), {height}×{width} RGB uint8 + mask, one thread: "
          f"{elastic['ms_per_sample']:.1f} ms per sample (median {elastic['median_ms_per_sample']:.1f})")
    if training is None:
        return None
    step_ms = training["wait_ms_per_step"] + training["compute_ms_per_step"]
    share = batch_size * elastic["ms_per_sample"] / step_ms
    print(f"  a batch of {batch_size}: {batch_size * elastic['ms_per_sample']:.0f} ms of worker time per "
          f"{step_ms:.0f} ms training step = {100 * share:.2f}% of the step")
    return share


def endless(loader: DataLoader):
    """Batches from ``loader``, epoch after epoch."""
    while True:
        yield from loader


def plain_step(model: nn.Module) -> Callable[[Sequence[Tensor]], None]:
    """One AdamW step of ``model`` on cross-entropy (ignore index 255), in fp32."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    model.train()

    def step(batch: Sequence[Tensor]) -> None:
        images, masks = batch
        loss = criterion(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def recipe_loader_and_step(config: Config) -> tuple[DataLoader, Callable[[Sequence[Tensor]], None]]:
    """A recipe's own training samples (its augmentation, elastic deformation and weight maps),
    loaded as its run loads them (``data.workers``, ``data.batch_size``), and its own step
    (:func:`pixelwise.training.loop.train_one_step`: model, loss, optimiser, precision and
    memory layout as the recipe sets them)."""
    torch.manual_seed(config.train.seed)
    device = torch.device("cpu")
    config.train.amp, _ = choose_precision(config.train.amp, device)  # "auto" decided as a run decides it
    config.data.workers, _ = loader_workers(config.data.workers)
    train_set, _ = build_datasets(config)
    samples = training_samples(config, train_set)
    loader = DataLoader(samples, batch_size=config.data.batch_size, shuffle=True, drop_last=True,
                        num_workers=config.data.workers, persistent_workers=config.data.workers > 0,
                        generator=torch.Generator().manual_seed(config.train.seed))
    classes = train_set.classes
    model = build_model(config, classes.num_classes)
    if config.train.channels_last:
        model = model.to_channels_last()
    optimizer = build_optimizer(config, model)
    loss_fn = create_loss(config.loss, ignore_index=classes.ignore_index,
                          class_weights=class_weights(config, classes))
    return loader, lambda batch: train_one_step(model, batch, loss_fn, optimizer, config, device)


def measure_training(loader: DataLoader, step: Callable[[Sequence[Tensor]], None], steps: int, warmup: int) -> dict:
    """Per-step milliseconds spent waiting for the next batch and computing on it."""
    batches = endless(loader)
    waits, computes = [], []
    for index in range(warmup + steps):
        start = time.perf_counter()
        batch = next(batches)
        ready = time.perf_counter()
        step(batch)
        done = time.perf_counter()
        if index >= warmup:
            waits.append((ready - start) * 1e3)
            computes.append((done - ready) * 1e3)
    wait, compute = statistics.mean(waits), statistics.mean(computes)
    return {"steps": steps, "warmup": warmup, "wait_ms_per_step": wait, "compute_ms_per_step": compute,
            "wait_share": wait / (wait + compute), "wait_ms": waits, "compute_ms": computes,
            "median_wait_ms": statistics.median(waits), "max_wait_ms": max(waits)}


def print_table(throughput: dict, training: dict) -> None:
    """One row: the figures the question asks for."""
    header = f"{'samples/s':>10} {'data wait ms/step':>18} {'compute ms/step':>16} {'wait share':>11}"
    print(header)
    print("-" * len(header))
    print(f"{throughput['samples_per_s']:>10.1f} {training['wait_ms_per_step']:>18.1f} "
          f"{training['compute_ms_per_step']:>16.1f} {100 * training['wait_share']:>10.1f}%")
    verdict = "meets" if training["wait_share"] < 0.10 else "misses"
    print(f"data wait is {100 * training['wait_share']:.1f}% of a step: {verdict} the target (< 10%)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="CamVid folder (train/, trainannot/)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per batch")
    parser.add_argument("--read-batches", type=int, default=None,
                        help="batches timed for the throughput (default: one epoch)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the main process (default: cpu_count)")
    parser.add_argument("--upsample", default="transposed", help="decoder upsampler of the U-Net")
    parser.add_argument("--elastic", action="store_true", help="add U-Net's elastic deformation to the loader")
    parser.add_argument("--elastic-only", action="store_true", help="measure only the elastic deformation")
    parser.add_argument("--elastic-samples", type=int, default=20, help="timed elastic deformations")
    parser.add_argument("--config", type=Path, default=None,
                        help="measure this recipe's own loader and training step instead of CamVid's preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the --config recipe (data.workers=1, train.amp=null, ...)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    return parser.parse_args()


def measure_recipe(args: argparse.Namespace, threads: int) -> dict:
    """The data wait of a recipe's own run: its loader and its step, side by side."""
    config = load_config(args.config, args.set)
    loader, step = recipe_loader_and_step(config)
    data = config.data
    print(f"{args.config}: {data.format} {data.train_split}, {len(loader.dataset)} images, crop "
          f"{data.crop_size[0]}×{data.crop_size[1]}, batch {data.batch_size}, elastic {data.elastic is not None}, "
          f"weight map {data.weight_map is not None}, {data.workers} workers, {threads} main thread(s), "
          f"amp {config.train.amp}, {os.cpu_count()} CPUs")
    throughput = measure_throughput(loader, args.read_batches or 2 * args.steps)
    training = measure_training(loader, step, args.steps, args.warmup)
    print_table(throughput, training)
    return {"question": "the share of a recipe's training step spent waiting for its own data",
            "recipe": str(args.config), "overrides": args.set, "device": "cpu",
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "main_threads": threads, "workers": data.workers,
            "batch_size": data.batch_size, "throughput": throughput, "training": training,
            "target_wait_share": 0.10}


def main() -> int:
    args = parse_args()
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if args.config is not None:
        write_report(measure_recipe(args, threads), args.output)
        return 0
    elastic = measure_elastic(args.elastic_samples)
    if args.elastic_only or not (args.root / "train").is_dir() or not (args.root / "trainannot").is_dir():
        if not args.elastic_only:
            print(f"CamVid not found at {args.root} (needs train/ and trainannot/); skipping the loading "
                  "benchmark. Pass --root to point at a copy.")
        print_elastic(elastic, args.batch_size, None)
        write_report({"question": "milliseconds per sample of elastic deformation", "cpus": os.cpu_count(),
                      "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                      "elastic": elastic}, args.output)
        return 0
    loader = make_loader(args.root, args.workers, args.batch_size, args.elastic)
    print(f"CamVid train: {len(loader.dataset)} frames, crop {CROP[0]}×{CROP[1]}, batch {args.batch_size}, "
          f"{args.workers} workers, {threads} main thread(s), {os.cpu_count()} CPUs")
    throughput = measure_throughput(loader, min(args.read_batches or len(loader), len(loader)) - 1)
    model = pixelwise.create_model("unet", num_classes=11, encoder="resnet18", upsample=args.upsample)
    training = measure_training(loader, plain_step(model), args.steps, args.warmup)
    print_table(throughput, training)
    elastic_share = print_elastic(elastic, args.batch_size, training)
    # Seconds of worker time a step needs (at the idle-main-process rate), per second of step.
    worker_load = args.batch_size / throughput["samples_per_s"] / (training["compute_ms_per_step"] / 1e3)
    if args.workers:
        print(f"worker load: about {100 * worker_load:.0f}% of the {args.workers} workers' time")
    report = {
        "question": "samples/s of CamVid train + augmentation, and the share of a training step spent waiting for data",
        "device": "cpu", "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "dataset": "camvid train", "crop": list(CROP), "scale_range": [0.5, 2.0], "hflip": 0.5,
        "loader_elastic": args.elastic, "elastic": elastic, "elastic_share_of_step": elastic_share,
        "workers": args.workers, "batch_size": args.batch_size, "main_threads": threads,
        "model": {"name": "unet", "encoder": "resnet18", "upsample": args.upsample, "num_classes": 11},
        "throughput": throughput, "training": training, "worker_load": worker_load, "target_wait_share": 0.10,
    }
    write_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
