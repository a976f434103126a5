"""Evaluating a checkpoint: confusion matrix, per-class metrics, ``metrics.json`` and a plot.

``evaluate_checkpoint(checkpoint)`` needs nothing but the checkpoint: the data set (format,
root, options, validation split) comes from the recipe recorded in it, and any of these can be
overridden (:class:`~pixelwise.data.RecordedData`; another format drops the recorded root and
options: they belong to the recorded format), or another :class:`~pixelwise.data.DataSpec`
given. Inference runs whole-image, sliding-window and/or with test-time augmentation through
:func:`~pixelwise.inference.logits.predict_logits`, the path training's validation takes too.
Validation runs whole images, without augmentation, in eager PyTorch at the run's training
precision (``train.amp``, recorded in the checkpoint), on the recorded validation split. So on
a checkpoint saved at an evaluation (``best.pt``), evaluated with every option left at its
default (which are exactly those) on the same device, the metrics equal that evaluation's line
in the run's log. With another mode, augmentation, runtime, precision, split or device it
measures something else, and its numbers need not match the log. ``--runtime`` /
``--precision`` measure the same checkpoint in another runtime (optimised PyTorch, bf16, ONNX
Runtime), and an exported ``.onnx`` file (fp32 or int8) is evaluated alike.

Alongside the confusion matrix, a :class:`~pixelwise.metrics.BoundaryMetric` measures how well
class edges are placed: per-class Boundary IoU and trimap accuracy within ``boundary_width``
pixels (3 by default; 0 leaves them out) of the ground-truth edges.

On a two-class data set, a :class:`~pixelwise.metrics.MembraneMetric` scores the ISBI 2012
challenge's metrics from the softmax probability of class 1 (the cell interior; class 0 the
membrane): foreground-restricted Rand error, V_info and pixel error, per image and averaged, at
the prediction (threshold 0.5) and as the best over thresholds 0.05 ... 0.95. Ignore pixels count
in none of them (see :mod:`pixelwise.metrics.membrane`).

With ``out_dir``, writes ``metrics.json`` (the summary, per-class IoU / Dice / accuracy / Boundary
IoU with class names, the confusion matrix, the membrane metrics per threshold on two classes,
and the data and inference options used) and
``confusion_matrix.png`` (rows normalised to sum to 1: row *i* shows where the ground-truth
pixels of class *i* went).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pixelwise.data import ClassInfo, DataSpec, RecordedData, SegmentationDataset
from pixelwise.data.transforms import val_transform
from pixelwise.errors import InputError
from pixelwise.io.model_file import read_model_file
from pixelwise.inference.loading import LoadedModel
from pixelwise.inference.logits import InferenceOptions
from pixelwise.inference.loading import load_predictor
from pixelwise.inference.predict import ProgressCallback, RecordedViews, resolve_options
from pixelwise.metrics import (BoundaryMetric, ConfusionMatrix, MembraneMetric, format_percent, membrane_rows,
                               metrics_table)


@dataclass
class EvaluationResult:
    """What :func:`evaluate_checkpoint` measured and where it wrote it.

    Attributes:
        matrix: the confusion matrix (rows: ground truth, columns: prediction).
        classes: the model's classes (names for the metrics).
        checkpoint: the checkpoint evaluated.
        data: the data set split used.
        num_images: how many of its images were evaluated.
        inference: how logits were computed.
        runtime: what ran the network: ``runtime`` and ``precision``.
        iteration: the training iteration the checkpoint was saved at, when recorded.
        files: the files written (empty without ``out_dir``).
        boundary: Boundary IoU and trimap accuracy; ``None`` when not measured.
        membrane: the ISBI 2012 metrics (Rand error, V_info, pixel error); ``None`` unless the
            data set has two classes.
    """

    matrix: ConfusionMatrix
    classes: ClassInfo
    checkpoint: str
    data: DataSpec
    num_images: int
    inference: InferenceOptions
    iteration: int | None = None
    files: list[Path] = field(default_factory=list)
    runtime: dict[str, str] = field(default_factory=dict)
    boundary: BoundaryMetric | None = None
    membrane: MembraneMetric | None = None

    def summary(self) -> dict:
        """Every metric, JSON-able: :meth:`ConfusionMatrix.summary`; with a boundary metric
        ``boundary_iou`` (per class), ``mean_boundary_iou``, ``trimap_accuracy``,
        ``trimap_pixels`` and ``boundary_width`` (see :meth:`BoundaryMetric.summary`); with a
        membrane metric ``rand_error``, ``v_info``, ``pixel_error``, ``best_rand_error``,
        ``best_rand_error_threshold``, ... (see :meth:`MembraneMetric.summary`)."""
        stats = self.matrix.summary()
        if self.boundary is not None:
            boundary = self.boundary.summary()
            stats |= {"boundary_width": boundary.pop("width"), **boundary}
        if self.membrane is not None:
            stats |= self.membrane.summary()
        return stats

    def per_class(self) -> list[dict]:
        """One record per class: index, name, IoU, Dice, accuracy, Boundary IoU when measured
        (None where undefined), pixels."""
        stats = self.summary()
        rows = [{"index": index, "name": name, "iou": stats["iou"][index], "dice": stats["dice"][index],
                 "accuracy": stats["class_accuracy"][index], "gt_pixels": stats["gt_pixels"][index],
                 "predicted_pixels": stats["predicted_pixels"][index]}
                for index, name in enumerate(self.classes.names)]
        if self.boundary is not None:
            for row, value in zip(rows, stats["boundary_iou"]):
                row["boundary_iou"] = value
        return rows

    def to_dict(self) -> dict:
        """The contents of ``metrics.json``; on two classes with ``membrane_curves``: per threshold,
        the membrane metrics averaged over images."""
        stats = self.summary()
        means = {key: value for key, value in stats.items() if not isinstance(value, list)}
        curves = {} if self.membrane is None else {"membrane_curves": self.membrane.curves()}
        return {"checkpoint": self.checkpoint, "iteration": self.iteration,
                "data": {**self.data.to_dict(), "num_images": self.num_images},
                "inference": {**self.inference.to_dict(), **self.runtime}, "summary": means,
                "per_class": self.per_class(),
                "confusion_matrix": {**self.matrix.to_dict(), "class_names": list(self.classes.names),
                                     "rows": "ground truth", "columns": "prediction"}, **curves}


def _open_dataset(data: DataSpec, loaded: LoadedModel) -> SegmentationDataset:
    """The data set, normalised as the model was trained, checked against the model's classes."""
    dataset = data.create_dataset(val_transform(**loaded.normalization))
    if dataset.classes.num_classes != loaded.classes.num_classes:
        raise InputError(f"the data set ({data.format}, split {data.split!r}) has {dataset.classes.num_classes} "
                         f"classes but the model predicts {loaded.classes.num_classes}")
    if len(dataset) == 0:
        raise InputError(f"split {data.split!r} of the {data.format} data set holds no images")
    return dataset


def evaluate_checkpoint(checkpoint: str | Path, data: DataSpec | RecordedData = RecordedData(),
                        options: InferenceOptions | RecordedViews = RecordedViews(), *,
                        device: str | torch.device = "cpu", runtime: str | None = None, precision: str | None = None,
                        out_dir: str | Path | None = None, on_image: ProgressCallback | None = None,
                        boundary_width: int = 3) -> EvaluationResult:
    """Measure a checkpoint (or an exported ONNX file) on a data set split; optionally write
    ``metrics.json`` and a plot.

    Args:
        checkpoint: a checkpoint written by ``pixelwise train``, or an ``.onnx`` file written by
            ``pixelwise export`` (it records no data set: pass a :class:`~pixelwise.data.DataSpec`,
            or a :class:`~pixelwise.data.RecordedData` naming the format and root).
        data: the data set split; by default the recorded validation split.
        options: how logits are computed; by default whole images with the test-time views the
            model records (:class:`~pixelwise.inference.predict.RecordedViews`).
        device: where the model runs.
        runtime: ``"torch"``, ``"torch-optimized"``, ``"torch-compiled"`` or ``"onnxruntime"``
            (see :func:`~pixelwise.inference.loading.load_predictor`).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (default: the precision the run
            validated with; with every other option at its default too and a recipe without
            test-time augmentation, the result on ``best.pt`` reproduces the logged validation
            mIoU).
        out_dir: folder for ``metrics.json`` and ``confusion_matrix.png`` (``None``: no files).
        on_image: progress callback ``on_image(done, total)``.
        boundary_width: band width in pixels for Boundary IoU and trimap accuracy (0: not
            measured).
    """
    _check_boundary_width(boundary_width)
    model_file = read_model_file(checkpoint)
    loaded = load_predictor(model_file, runtime, precision, device)
    state = model_file.state
    if isinstance(data, RecordedData):
        data = data.resolve((state.get("config") or {}).get("data") if state is not None else None)
    result = evaluate_loaded(loaded, data, resolve_options(options, loaded.inference), device, on_image,
                             boundary_width=boundary_width)
    result.checkpoint, result.iteration = str(checkpoint), None if state is None else state.get("iteration")
    if out_dir is not None:
        result.files = write_evaluation(result, out_dir)
    return result


def evaluate_loaded(loaded: LoadedModel, data: DataSpec, options: InferenceOptions,
                    device: str | torch.device = "cpu", on_image: ProgressCallback | None = None,
                    limit: int | None = None, boundary_width: int = 3) -> EvaluationResult:
    """Measure a loaded model (any runtime) on a data set split; on two classes, with the ISBI 2012
    metrics too (class 1 the cell interior).

    Args:
        limit: evaluate only the first ``limit`` images.
        boundary_width: band width in pixels for Boundary IoU and trimap accuracy (0: not
            measured).
    """
    _check_boundary_width(boundary_width)
    dataset = _open_dataset(data, loaded)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    num_classes, ignore_index = loaded.classes.num_classes, dataset.classes.ignore_index
    matrix = ConfusionMatrix(num_classes, ignore_index, device=device)
    boundary = BoundaryMetric(num_classes, ignore_index, boundary_width, device) if boundary_width else None
    membrane = MembraneMetric(ignore_index, device=device) if num_classes == 2 else None
    for index in range(count):
        image, mask = dataset[index]
        logits = options.logits(loaded.model, image[None])
        target = mask[None].to(logits.device)
        matrix.update_logits(target, logits)
        if boundary is not None:
            boundary.update_logits(target, logits)
        if membrane is not None:
            membrane.update_logits(target, logits)
        if on_image is not None:
            on_image(index + 1, count)
    runtime = {"runtime": getattr(loaded.model, "name", "torch"),
               "precision": getattr(loaded.model, "precision", options.precision or "fp32")}
    return EvaluationResult(matrix, loaded.classes, "", data, count, options, runtime=runtime, boundary=boundary,
                            membrane=membrane)


def _check_boundary_width(boundary_width: int) -> None:
    """Raise a ValueError unless the width is a whole number of pixels, 0 or more."""
    if isinstance(boundary_width, bool) or not isinstance(boundary_width, int) or boundary_width < 0:
        raise InputError(f"boundary width must be a whole number of pixels, 0 or more (0: no boundary metrics), "
                         f"got {boundary_width!r}")


# Files -----------------------------------------------------------------------------------------

def write_evaluation(result: EvaluationResult, out_dir: str | Path) -> list[Path]:
    """Write ``metrics.json`` and ``confusion_matrix.png`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = out_dir / "metrics.json"
    # default=str: data options come from YAML and are JSON-able, but a path object must not crash the write
    metrics.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    figure = plot_confusion_matrix(result.matrix, result.classes.names, out_dir / "confusion_matrix.png",
                                   title=f"{Path(result.checkpoint).name} on {result.data.format} "
                                         f"{result.data.split} ({result.summary()['mean_iou']:.1%} mIoU)")
    return [metrics, figure]


def row_normalised(matrix: ConfusionMatrix) -> torch.Tensor:
    """Each ground-truth row divided by its total (float64); rows of absent classes are NaN."""
    counts = matrix.matrix.detach().cpu().double()
    return counts / counts.sum(1, keepdim=True)  # 0/0 = NaN marks "no such pixels", not "all wrong"


def plot_confusion_matrix(matrix: ConfusionMatrix, class_names: Sequence[str], path: str | Path,
                          title: str = "confusion matrix") -> Path:
    """Draw the row-normalised confusion matrix with class names on both axes, as a PNG.

    Uses matplotlib's object API on an Agg canvas: no pyplot state, no display needed.
    """
    # Imported here: matplotlib is slow to import and only this function needs it.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = row_normalised(matrix).numpy()
    count = len(class_names)
    side = min(40.0, 3.0 + 0.45 * count)  # inches: room for the names, capped for 150-class sets
    font = max(4.0, min(10.0, 280 / max(count, 1)))
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    cmap = colormaps["Blues"].with_extremes(bad="lightgrey")  # NaN rows (absent classes) in grey
    shown = axes.imshow(values, cmap=cmap, vmin=0.0, vmax=1.0)
    axes.set_xticks(range(count), class_names, rotation=45, ha="right", fontsize=font)
    axes.set_yticks(range(count), class_names, fontsize=font)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title(title, fontsize=10)
    if count <= 30:  # beyond that the numbers no longer fit in the cells
        for row, col in np.argwhere(~np.isnan(values)):
            value = values[row, col]
            axes.text(col, row, f"{100 * value:.0f}", ha="center", va="center", fontsize=font * 0.8,
                      color="white" if value > 0.5 else "black")
    figure.colorbar(shown, ax=axes, label="fraction of the ground-truth class")
    figure.savefig(path, dpi=100)
    return Path(path)


# Printing --------------------------------------------------------------------------------------

def evaluation_table(result: EvaluationResult) -> Table:
    """Per-class IoU, Dice, accuracy, Boundary IoU (when measured) and pixel counts, then the
    means, as a rich table (the cells of :func:`~pixelwise.metrics.metrics_table`)."""
    data, inference = result.data, result.inference
    views = "" if not inference.augmented else (
        f"scales {' '.join(f'{scale:g}' for scale in inference.scales)}{' + flip' if inference.flip else ''}, ")
    table = Table(title=f"{Path(result.checkpoint).name} on {data.format} {data.split} "
                        f"({result.num_images} images, {inference.mode}, {views}"
                        f"{' '.join(result.runtime.values())})")
    cells = metrics_table(result.summary(), result.classes.names)
    for column in cells.header(unit=" %"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in cells.rows:
        table.add_row(*row)
    table.add_section()
    table.add_row(*cells.mean_row)
    return table


def membrane_table(result: EvaluationResult) -> Table:
    """The ISBI 2012 metrics as a rich table (the cells of
    :func:`~pixelwise.metrics.membrane_rows`): each at the prediction and at its best threshold."""
    stats = result.summary()
    cell = result.classes.names[1]
    table = Table(title=f"ISBI 2012 metrics ({cell!r} = class 1 as the cell interior), "
                        f"mean over {stats['membrane_images']} images")
    for heading in ("metric", "at p > 0.5", "best over thresholds", "threshold"):
        table.add_column(heading, justify="left" if heading == "metric" else "right")
    for row in membrane_rows(stats):
        table.add_row(*row)
    return table


def print_evaluation(result: EvaluationResult, console: Console) -> None:
    """Print the table, the summary, the membrane metrics on two classes, and where the files went."""
    stats = result.summary()
    console.print(evaluation_table(result))
    console.print(f"mIoU {format_percent(stats['mean_iou'])}%, "
                  f"pixel accuracy {format_percent(stats['pixel_accuracy'])}%, "
                  f"mean class accuracy {format_percent(stats['mean_class_accuracy'])}%, "
                  f"frequency-weighted IoU {format_percent(stats['frequency_weighted_iou'])}% "
                  f"over {stats['present_classes']} present classes ('-': the class is absent)",
                  markup=False, highlight=False)
    if result.boundary is not None:
        console.print(f"within {stats['boundary_width']} px of class edges: mean Boundary IoU (BIoU) "
                      f"{format_percent(stats['mean_boundary_iou'])}%, trimap accuracy "
                      f"{format_percent(stats['trimap_accuracy'])}% over {stats['trimap_pixels']} pixels",
                      markup=False, highlight=False)
    if result.membrane is not None:
        console.print(membrane_table(result))
    for path in result.files:
        console.print(f"wrote {path}", markup=False, highlight=False)
