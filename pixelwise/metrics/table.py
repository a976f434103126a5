"""The per-class metrics table of a summary: its cells (:func:`metrics_table`) and a plain-text
rendering (:func:`format_table`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from pixelwise.errors import InputError
from pixelwise.metrics.scores import summarize

# The per-class score columns: summary key of the values, summary key of their mean, heading. The
# Boundary IoU column shows where the summary holds a BoundaryMetric's values too.
_SCORE_COLUMNS = (("iou", "mean_iou", "IoU"), ("dice", "mean_dice", "Dice"),
                  ("class_accuracy", "mean_class_accuracy", "Acc"), ("boundary_iou", "mean_boundary_iou", "BIoU"))
# The means under the plain-text table: summary key, label.
_MEAN_LINES = (("mean_iou", "mean IoU"), ("mean_dice", "mean Dice"), ("mean_class_accuracy", "mean class accuracy"),
               ("pixel_accuracy", "pixel accuracy"), ("frequency_weighted_iou", "frequency-weighted IoU"))


def format_percent(value: float | None) -> str:
    """A table cell: percent with two decimals, '-' for an undefined value."""
    return "-" if value is None else f"{100 * value:.2f}"


@dataclass(frozen=True)
class MetricsTable:
    """The cells of a per-class metrics table, for any rendering (plain text in
    :func:`format_table`, a rich table in ``pixelwise.inference.evaluation``).

    Attributes:
        scores: the headings of the score columns (percentages), between the class name and the
            pixel counts.
        rows: per class: name, scores (``-`` where undefined), ground-truth and predicted pixels.
        mean_row: ``mean``, the mean of each score column, the pixels counted and an empty cell.
    """

    scores: tuple[str, ...]
    rows: list[tuple[str, ...]]
    mean_row: tuple[str, ...]

    def header(self, unit: str = "") -> tuple[str, ...]:
        """The column headings, ``unit`` after each score heading."""
        return ("class", *(f"{heading}{unit}" for heading in self.scores), "gt px", "pred px")


def metrics_table(stats: dict, class_names: Sequence[str] | None = None) -> MetricsTable:
    """The cells of the per-class table of a summary.

    Args:
        stats: a :func:`summarize` result; with a :meth:`BoundaryMetric.summary` merged in, the
            table has a Boundary IoU column too.
        class_names: one name per class; indices when omitted.
    """
    num_classes = stats["num_classes"]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise InputError(f"{len(names)} class names for {num_classes} classes")
    columns = [column for column in _SCORE_COLUMNS if column[0] in stats]
    rows = [(name, *(format_percent(stats[key][index]) for key, _, _ in columns),
             str(stats["gt_pixels"][index]), str(stats["predicted_pixels"][index]))
            for index, name in enumerate(names)]
    mean_row = ("mean", *(format_percent(stats[mean]) for _, mean, _ in columns), str(stats["num_pixels"]), "")
    return MetricsTable(tuple(heading for _, _, heading in columns), rows, mean_row)


def format_table(matrix: Tensor, class_names: Sequence[str] | None = None) -> str:
    """Per-class IoU, Dice, accuracy and pixel counts, then the means, as fixed-width text.

    Args:
        matrix: a ``C x C`` confusion matrix.
        class_names: one name per class; indices when omitted. Absent classes show ``-``.
    """
    stats = summarize(matrix)
    table = metrics_table(stats, class_names)
    widths = [max([len(row[0]) for row in table.rows] + [24])] + [7] * len(table.scores) + [12, 12]
    lines = [_fixed_width(table.header(), widths)]
    lines.append("-" * len(lines[0]))
    lines += [_fixed_width(row, widths) for row in table.rows]
    lines.append("-" * len(lines[0]))
    lines += [_fixed_width((label, format_percent(stats[key])), widths) for key, label in _MEAN_LINES]
    lines.append(f"over {stats['present_classes']} present classes, {stats['num_pixels']} pixels "
                 "(values in %; '-' = undefined, the class is absent)")
    return "\n".join(lines)


def _fixed_width(cells: Sequence[str], widths: Sequence[int]) -> str:
    """One line of cells padded to their widths: the first left-aligned, the others right-aligned."""
    first, *others = cells
    return " ".join([f"{first:<{widths[0]}}", *(f"{cell:>{width}}" for cell, width in zip(others, widths[1:]))])
