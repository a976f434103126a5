"""Scan a data set on disk for problems before training on it: ``pixelwise check-data``.

:func:`check_dataset` reads every file of every split once and, unlike
:meth:`~pixelwise.data.base.SegmentationDataset.load` (which raises on the first problem),
collects them all: unreadable or truncated files, images with no mask and masks with no
image, image/mask size mismatches, label values outside [0, num_classes) other than the
ignore index, RGB masks where class-index masks were expected (or colours missing from the
colour table), empty folders or splits. Conversions that are handled (16-bit, RGBA,
grayscale, palette, EXIF-rotated images) are listed as notes, not problems. The report also
counts pairs per split, image sizes and pixels per class.
"""
from __future__ import annotations

import inspect
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pixelwise.data.base import SegmentationDataset
from pixelwise.data.classes import ClassInfo
from pixelwise.data.formats import PairedFileDataset  # importing it registers the formats
from pixelwise.data.io import (DataError, apply_label_map, decode_image, decode_mask, label_error,
                               size_error)
from pixelwise.data.registry import create_dataset, dataset_factory, list_datasets


@dataclass
class Problem:
    """One problem in the data.

    Attributes:
        kind: short code (see :class:`~pixelwise.data.io.DataError`).
        file: the offending file or folder.
        message: what is wrong and what to do.
        split: the split it was found in.
    """

    kind: str
    file: str
    message: str
    split: str = ""

    @classmethod
    def from_error(cls, error: DataError, split: str) -> "Problem":
        return cls(error.kind, error.path or "", str(error), split)


@dataclass
class SplitStats:
    """What one split holds.

    Attributes:
        pairs: number of (image, mask) pairs found.
        sizes: image size (H, W) → number of images.
        class_pixels: pixels per class index.
        ignore_pixels: pixels holding the ignore index.
        invalid_pixels: pixels holding out-of-range values.
    """

    pairs: int
    num_classes: int
    sizes: Counter = field(default_factory=Counter)
    class_pixels: np.ndarray = field(init=False)
    ignore_pixels: int = 0
    invalid_pixels: int = 0

    def __post_init__(self) -> None:
        self.class_pixels = np.zeros(self.num_classes, dtype=np.int64)

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "sizes": {f"{w}x{h}": n for (h, w), n in sorted(self.sizes.items())},
                "class_pixels": self.class_pixels.tolist(), "ignore_pixels": self.ignore_pixels,
                "invalid_pixels": self.invalid_pixels}


@dataclass
class DataReport:
    """The result of :func:`check_dataset`.

    Attributes:
        format: the data set format.
        root: the data set folder.
        classes: the class metadata (``None`` when no split could be opened).
        splits: split name → its statistics.
        problems: every problem found, in scan order.
        notes: handled conversions (``"16-bit image (scaled to 8 bits)"``) → files.
        seconds: how long the scan took.
    """

    format: str
    root: str
    classes: ClassInfo | None = None
    splits: dict[str, SplitStats] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict:
        """JSON-able form (``pixelwise check-data --json``)."""
        return {"format": self.format, "root": self.root, "ok": self.ok, "seconds": round(self.seconds, 3),
                "classes": self.classes.to_dict() if self.classes else None,
                "splits": {name: stats.to_dict() for name, stats in self.splits.items()},
                "problems": [vars(p) for p in self.problems],
                "notes": {note: {"count": len(files), "examples": files[:3]} for note, files in self.notes.items()}}


@dataclass
class _PairResult:
    size: tuple[int, int] | None = None
    counts: np.ndarray | None = None
    invalid: dict[int, int] = field(default_factory=dict)
    problems: list[DataError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- scanning

def _count_labels(mask: np.ndarray, num_classes: int, ignore_index: int) -> tuple[np.ndarray, dict[int, int]]:
    """Pixels per class (plus the ignore index last) and the out-of-range values with counts."""
    flat = mask.ravel()
    if flat.size and (flat.min() < 0 or flat.max() > 65535):  # bincount would allocate the whole range
        values, counts = np.unique(flat, return_counts=True)
    else:
        counts = np.bincount(flat, minlength=num_classes)
        values = np.nonzero(counts)[0]
        counts = counts[values]
    tally = np.zeros(num_classes + 1, dtype=np.int64)
    invalid: dict[int, int] = {}
    for value, count in zip(values.tolist(), counts.tolist()):
        if 0 <= value < num_classes:
            tally[value] = count
        elif value == ignore_index:
            tally[num_classes] = count
        else:
            invalid[value] = count
    return tally, invalid


def _scan_pair(dataset: PairedFileDataset, image_path: Path, mask_path: Path) -> _PairResult:
    """Read one pair as ``load`` would, keeping every problem instead of raising the first."""
    result = _PairResult()
    classes = dataset.classes
    mask = None
    try:
        mask = apply_label_map(decode_mask(mask_path, dataset.colors), dataset.label_map)
        result.counts, result.invalid = _count_labels(mask, classes.num_classes, classes.ignore_index)
        if result.invalid:
            result.problems.append(label_error(mask_path, result.invalid, classes.num_classes, classes.ignore_index))
    except DataError as error:
        result.problems.append(error)
    try:
        pixels, result.notes = decode_image(image_path, None if mask is None else mask.shape)
        result.size = pixels.shape[:2]
        if mask is not None and pixels.shape[:2] != mask.shape:
            result.problems.append(size_error(image_path, pixels.shape[:2], mask_path, mask.shape))
    except DataError as error:
        result.problems.append(error)
    return result


def _scan_loaded(dataset: SegmentationDataset, index: int) -> _PairResult:
    """Fallback for data sets that are not file pairs: whatever ``load`` raises is the problem."""
    result = _PairResult()
    try:
        image, mask = dataset.load(index)
    except DataError as error:
        result.problems.append(error)
        return result
    result.size = tuple(image.shape[-2:])
    result.counts, result.invalid = _count_labels(mask.numpy(), dataset.classes.num_classes,
                                                  dataset.classes.ignore_index)
    return result


def _scan(dataset: SegmentationDataset, workers: int) -> Iterator[_PairResult]:
    """Scan every sample; PIL decodes outside the GIL, so threads overlap the reads."""
    if isinstance(dataset, PairedFileDataset):
        def job(pair: tuple[Path, Path]) -> _PairResult:
            return _scan_pair(dataset, *pair)
        items: list = dataset.pairs
    else:
        def job(index: int) -> _PairResult:
            return _scan_loaded(dataset, index)
        items = list(range(len(dataset)))
    if workers <= 1:
        yield from map(job, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(job, items)


def _add(report: DataReport, stats: SplitStats, result: _PairResult, split: str, name: str) -> None:
    """Fold one sample's result (``name``: its file, for the notes) into the report."""
    report.problems.extend(Problem.from_error(error, split) for error in result.problems)
    for note in result.notes:
        report.notes.setdefault(note, []).append(name)
    if result.size is not None:
        stats.sizes[result.size] += 1
    if result.counts is not None:
        stats.class_pixels += result.counts[:-1]
        stats.ignore_pixels += int(result.counts[-1])
        stats.invalid_pixels += sum(result.invalid.values())


# ---------------------------------------------------------------------------- entry point

def _open_split(format: str, root: str | Path, split: str, options: dict) -> SegmentationDataset:
    """The split's data set, keeping pairing problems (``strict=False``) where the format can."""
    if "strict" in inspect.signature(dataset_factory(format)).parameters:
        options = {**options, "strict": False}
    return create_dataset(format, root=root, split=split, **options)


def _splits_of(format: str, root: str | Path, options: dict) -> list[str]:
    available = getattr(dataset_factory(format), "available_splits", None)
    return available(root, **options) if available else ["train"]


def check_dataset(format: str, root: str | Path, split: str | None = None, workers: int | None = None,
                  **options) -> DataReport:
    """Scan a data set for problems, keeping on after each one.

    Args:
        format: a registered data set format (``pixelwise.data.list_datasets()``).
        root: the data set folder.
        split: one split to scan; ``None`` scans every split found.
        workers: reading threads (default: up to 4, fewer on small machines).
        **options: the format's own options (``num_classes``, ``mask_colors``, ...).

    Returns:
        The report; ``report.ok`` is False when any problem was found.

    Raises:
        ValueError: an unknown format or option (a usage error, not a data problem).
    """
    dataset_factory(format)  # an unknown format raises the registry's "did you mean" error first
    start = time.perf_counter()
    report = DataReport(format, str(root))
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    if not Path(root).is_dir():
        report.problems.append(Problem("layout", str(root), f"{root}: folder not found. Check the --root path."))
        return report
    splits = [split] if split else _splits_of(format, root, options)
    if not splits:
        report.problems.append(Problem("empty", str(root), f"{root}: no split of the {format} format found here. "
                                       f"Check the root and the format (formats: {', '.join(list_datasets())})."))
    for name in splits:
        _check_split(report, format, root, name, options, workers)
    report.seconds = time.perf_counter() - start
    return report


def _check_split(report: DataReport, format: str, root: str | Path, split: str, options: dict,
                 workers: int) -> None:
    """Open one split (a problem if it cannot be opened) and scan all of its samples."""
    try:
        dataset = _open_split(format, root, split, options)
    except DataError as error:
        report.problems.append(Problem.from_error(error, split))
        return
    report.classes = report.classes or dataset.classes
    report.problems.extend(Problem.from_error(error, split) for error in getattr(dataset, "problems", ()))
    stats = SplitStats(len(dataset), dataset.classes.num_classes)
    report.splits[split] = stats
    for index, result in enumerate(_scan(dataset, workers)):
        _add(report, stats, result, split, dataset.name(index))


# ---------------------------------------------------------------------------- printing

def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def _class_table(report: DataReport) -> Table:
    """Pixels per class and split, with each class's share of the split's labelled pixels."""
    classes = report.classes
    table = Table(title="Pixels per class",
                  caption="share of labelled pixels; (ignore): share of all pixels")
    table.add_column("index", justify="right")
    table.add_column("class")
    for name in report.splits:
        table.add_column(f"{name} pixels", justify="right")
        table.add_column(f"{name} share", justify="right")
    labelled = {name: int(stats.class_pixels.sum()) for name, stats in report.splits.items()}
    for index, class_name in enumerate(classes.names):
        cells = []
        for name, stats in report.splits.items():
            cells += [f"{stats.class_pixels[index]:,}", _share(int(stats.class_pixels[index]), labelled[name])]
        table.add_row(str(index), class_name, *cells)
    extra = [("ignore", str(classes.ignore_index), "ignore_pixels")]
    if any(stats.invalid_pixels for stats in report.splits.values()):
        extra.append(("out of range", "-", "invalid_pixels"))
    for label, index, attribute in extra:
        cells = []
        for name, stats in report.splits.items():
            total = labelled[name] + stats.ignore_pixels + stats.invalid_pixels
            cells += [f"{getattr(stats, attribute):,}", _share(getattr(stats, attribute), total)]
        table.add_row(index, f"({label})", *cells, style="dim")
    return table


def _summary_table(report: DataReport) -> Table:
    table = Table(title=escape(f"{report.format} data set at {report.root}"))
    for column in ("split", "pairs", "image sizes (W×H: count)"):
        table.add_column(column, justify="right" if column == "pairs" else "left")
    for name, stats in report.splits.items():
        sizes = ", ".join(f"{w}×{h}: {n}" for (h, w), n in stats.sizes.most_common(5))
        more = f" (+{len(stats.sizes) - 5} more sizes)" if len(stats.sizes) > 5 else ""
        table.add_row(name, str(stats.pairs), sizes + more)
    return table


def print_report(report: DataReport, console: Console, max_problems: int = 50) -> None:
    """Print the report as tables, then the notes and the problems (each with what to do)."""
    if report.splits:
        console.print(_summary_table(report))
        console.print(_class_table(report))
    for note, files in report.notes.items():
        examples = ", ".join(files[:3])
        console.print(f"[cyan]note:[/] {escape(f'{len(files)} × {note}, e.g. {examples}')}", highlight=False,
                      soft_wrap=True)
    if report.ok:
        console.print(f"[bold green]No problems found[/] ({report.seconds:.1f} s).")
        return
    kinds = Counter(problem.kind for problem in report.problems)
    console.print(f"[bold red]{len(report.problems)} problem(s)[/] ({', '.join(f'{n} {k}' for k, n in kinds.items())}; "
                  f"{report.seconds:.1f} s):")
    for problem in report.problems[:max_problems]:
        prefix = f"[{problem.split}] " if problem.split else ""
        # soft wrap: rich would otherwise break long paths across lines
        console.print(f"  [red]✗[/] {escape(prefix + problem.message)}", highlight=False, soft_wrap=True)
    if len(report.problems) > max_problems:
        console.print(f"  ... and {len(report.problems) - max_problems} more (--json lists them all)")
