"""Does pixelwise's U-Net-ResNet18 train as fast as segmentation_models.pytorch's ``Unet("resnet18")``?

``--model deeplabv3plus`` asks the same of DeepLabV3+-ResNet18 (output stride 16) against smp's
``DeepLabV3Plus("resnet18", encoder_output_stride=16)``. ``--model fcn8s`` times FCN-8s-ResNet18,
which smp does not have: every row is then compared with ours as built at the same precision,
which measures what the CamVid recipe's ``train.channels_last`` buys.

Both networks are built from random initialisation for 11 classes (CamVid) and trained on the
same batches: random images and masks from one seed, ``--batch-size`` × 3 × H × W with 5% of the
mask pixels set to the ignore index. One training step is what ``pixelwise train`` does:
forward, cross-entropy with ``ignore_index=255``, backward, AdamW step. Steps are interleaved
(alternating who goes first) after untimed warm-up steps, so a noisy shared machine slows both
sides alike; the median step time of each is reported as images per second, with the ratio
ours / theirs (above 1.0: ours is faster).

Two pixelwise variants: as built (``create_model("unet", encoder="resnet18")``: transposed-conv
upsampling, the default; or the DeepLabV3+) and with ``channels_last`` memory format
(``train.channels_last`` in a recipe). smp is timed as built. With ``--bf16`` both networks are also timed under CPU bf16
autocast (``train.amp: bf16``), ours also channels-last (the CamVid recipes' setting), and those
rows are compared with smp under bf16.

With ``--compile`` ours is also timed channels-last and compiled by ``torch.compile``
(``train.compile: true``), at each precision timed; the compile happens in the untimed warm-up.

Usage:
    python benchmarks/train_step.py [--model {unet,deeplabv3plus,fcn8s}] [--size 352 480] [--batch-size 4] [--steps 8] [--threads 2] [--bf16] [--compile]

Needs ``pip install -e '.[bench]'`` (segmentation-models-pytorch); prints a table and writes
``benchmarks/results/train_step.json``.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import Tensor, nn

import pixelwise
from report import write_report  # benchmarks/report.py: run as scripts, this folder is on sys.path

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"
NUM_CLASSES = 11
IGNORE_INDEX = 255


def make_batch(batch_size: int, height: int, width: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Normalised-looking images and 11-class masks with 5% ignore pixels."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, height, width, generator=generator)
    masks = torch.randint(0, NUM_CLASSES, (batch_size, height, width), generator=generator)
    masks[torch.rand(masks.shape, generator=generator) < 0.05] = IGNORE_INDEX
    return images, masks


def make_step(model: nn.Module, batch: tuple[Tensor, Tensor], channels_last: bool = False,
              bf16: bool = False, compile: bool = False) -> Callable[[], float]:
    """One training step of ``model`` on ``batch`` (AdamW, cross-entropy); returns the loss.

    ``bf16`` runs the forward pass under CPU bf16 autocast, as ``train.amp: bf16`` does;
    ``compile`` runs it through ``torch.compile`` as ``train.compile: true`` does (the first,
    untimed warm-up step compiles).
    """
    images, masks = batch
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    network = torch.compile(model) if compile else model

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = network(images)
        loss = criterion(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


MODELS = {  # --model: (pixelwise name and options, smp class name and options)
    "unet": ({}, "Unet", {}),
    "deeplabv3plus": ({"output_stride": 16}, "DeepLabV3Plus", {"encoder_output_stride": 16}),
    "fcn8s": ({}, None, {}),  # no FCN in smp: the rows are compared with ours as built
}


def ours_label(model: str) -> str:
    """The name of our network as built in the table."""
    return f"pixelwise {model} resnet18"


def peer_label(model: str) -> str:
    """The name of the row every other row is compared with: smp's network, or ours as built
    where smp has no peer."""
    smp_name = MODELS[model][1]
    return f"smp {smp_name}(resnet18)" if smp_name else ours_label(model)


def build_steps(batch: tuple[Tensor, Tensor], bf16: bool, model: str = "unet",
                compile: bool = False) -> dict[str, Callable[[], float]]:
    """The variants, each with its own model and optimiser; ``bf16`` adds both networks under
    bf16 autocast, ``compile`` ours channels-last and compiled (at each precision timed)."""
    torch.manual_seed(0)
    options, smp_name, smp_options = MODELS[model]

    def ours() -> nn.Module:
        return pixelwise.create_model(model, num_classes=NUM_CLASSES, encoder="resnet18", **options)

    def ours_channels_last() -> nn.Module:
        return ours().to_channels_last()

    def theirs() -> nn.Module:
        import segmentation_models_pytorch as smp

        return getattr(smp, smp_name)("resnet18", encoder_weights=None, classes=NUM_CLASSES, **smp_options)

    name, has_peer = ours_label(model), smp_name is not None
    steps = {
        name: make_step(ours(), batch),
        f"{name} channels_last": make_step(ours_channels_last(), batch, channels_last=True),
    }
    if compile:
        steps[f"{name} channels_last compiled"] = make_step(ours_channels_last(), batch, channels_last=True,
                                                             compile=True)
    if has_peer:
        steps[peer_label(model)] = make_step(theirs(), batch)
    if bf16:
        steps[f"{name} bf16"] = make_step(ours(), batch, bf16=True)
        steps[f"{name} channels_last bf16"] = make_step(ours_channels_last(), batch, channels_last=True, bf16=True)
        if compile:
            steps[f"{name} channels_last compiled bf16"] = make_step(ours_channels_last(), batch, channels_last=True,
                                                                      bf16=True, compile=True)
        if has_peer:
            steps[f"{peer_label(model)} bf16"] = make_step(theirs(), batch, bf16=True)
    return steps


def compare(steps: dict[str, Callable[[], float]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of every variant, interleaved, after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for repeat in range(repeats):
        order = list(steps) if repeat % 2 == 0 else list(reversed(steps))
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="unet")
    parser.add_argument("--size", type=int, nargs=2, default=(352, 480), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--bf16", action="store_true", help="also time both networks under bf16 autocast")
    parser.add_argument("--compile", action="store_true",
                        help="also time ours channels-last and compiled by torch.compile (train.compile)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if MODELS[args.model][1]:
        try:
            import segmentation_models_pytorch  # noqa: F401
        except ImportError:
            print("segmentation_models_pytorch is not installed: pip install -e '.[bench]'")
            return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = make_batch(args.batch_size, *args.size)
    print(f"batch {args.batch_size}×3×{args.size[0]}×{args.size[1]}, {NUM_CLASSES} classes, "
          f"{torch.get_num_threads()} threads; {args.warmup} warm-up + {args.steps} timed steps each, interleaved")
    times = compare(build_steps(batch, args.bf16, args.model, args.compile), args.steps, args.warmup)
    medians = {name: statistics.median(values) for name, values in times.items()}
    peer = peer_label(args.model)

    def reference(name: str) -> float:  # the peer at the same precision
        return medians[f"{peer} bf16" if name.endswith("bf16") else peer]

    ratio_column = "ratio to smp" if MODELS[args.model][1] else "ratio to built"
    header = f"{'variant':<52} {'median s/step':>13} {'images/s':>9} {ratio_column:>14}"
    print(header)
    print("-" * len(header))
    for name, median in medians.items():
        print(f"{name:<52} {median:>13.3f} {args.batch_size / median:>9.2f} {reference(name) / median:>14.3f}")
    report = {
        "question": f"training throughput of pixelwise {args.model}-ResNet18 against {peer}, same batches",
        "reference": peer,
        "model": args.model,
        "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "batch_size": args.batch_size, "size": list(args.size), "steps": args.steps, "warmup": args.warmup,
        "seconds_per_step": times, "median_s": medians,
        "images_per_s": {name: args.batch_size / median for name, median in medians.items()},
        "ratio_to_reference": {name: reference(name) / median for name, median in medians.items()},
    }
    write_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
