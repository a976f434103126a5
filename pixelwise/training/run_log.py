"""What a run records: ``metrics.jsonl``, TensorBoard events, and loss / mIoU plots.

``metrics.jsonl`` is the run's history, one JSON object a line: a training step
``{"iteration", "loss", "lr", "step_s"}``, an evaluation ``{"iteration", "eval": summary}``, or
the time budget's plan ``{"iteration", "time_budget": {...}}``. The same scalars go to
TensorBoard (``<run_dir>/tensorboard``: ``train/loss``, ``train/lr``, ``val/mIoU``,
``val/pixel_accuracy``, ``val/IoU/<class>``, ...). Under distributed training only rank 0
writes; the other ranks get a :class:`RunLog` that does nothing.

A resumed run first cuts both back to its checkpoint's iteration, so steps that ran after the
checkpoint and before the interruption are not recorded twice; the plots
(:func:`plot_curves`) read the whole file, so they show the whole history of a resumed run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from pixelwise.io.atomic import atomic_file

# Scalars of an evaluation summary (pixelwise.metrics.summarize) and their TensorBoard tags.
SUMMARY_TAGS = {"mean_iou": "val/mIoU", "pixel_accuracy": "val/pixel_accuracy",
                "mean_class_accuracy": "val/mean_class_accuracy",
                "frequency_weighted_iou": "val/frequency_weighted_iou", "mean_dice": "val/mean_dice"}


class RunLog:
    """Appends to ``metrics.jsonl`` and writes TensorBoard events (rank 0 only).

    Args:
        run_dir: the run folder.
        enabled: ``False`` on ranks other than 0: every method then does nothing.
        resume_from: the iteration a resumed run starts from; later records are dropped first.
        class_names: names for the per-class IoU tags (class indices otherwise).
        summary_tags: the evaluation summary's scalars and their TensorBoard tags.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_from: int | None = None,
                 class_names: Sequence[str] | None = None, summary_tags: Mapping[str, str] = SUMMARY_TAGS) -> None:
        self.enabled, self.summary_tags = enabled, summary_tags
        self.class_names = list(class_names) if class_names is not None else None
        self._handle = self._writer = None
        if not enabled:
            return
        path = Path(run_dir) / "metrics.jsonl"
        if resume_from is not None:
            truncate_metrics(path, resume_from)
        self._handle = open(path, "a")
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only where it is used

        # purge_step hides events of an earlier session from this step on (TensorBoard's own
        # rule for restarts), the same cut as metrics.jsonl's.
        purge = None if resume_from is None else resume_from + 1
        self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=purge)

    def step(self, iteration: int, loss: float, lr: float, step_s: float) -> None:
        """One training step."""
        if not self.enabled:
            return
        self.record({"iteration": iteration, "loss": loss, "lr": lr, "step_s": step_s})
        self._writer.add_scalar("train/loss", loss, iteration)
        self._writer.add_scalar("train/lr", lr, iteration)
        self._writer.add_scalar("train/step_s", step_s, iteration)

    def evaluation(self, iteration: int, summary: dict) -> None:
        """One validation summary (:meth:`pixelwise.metrics.ConfusionMatrix.summary`, or any
        summary holding the keys of ``summary_tags``)."""
        if not self.enabled:
            return
        self.record({"iteration": iteration, "eval": summary})
        for key, tag in self.summary_tags.items():
            self._writer.add_scalar(tag, summary[key], iteration)
        per_class = summary.get("iou", [])
        names = self.class_names or [str(index) for index in range(len(per_class))]
        for name, iou in zip(names, per_class):
            if iou is not None:  # absent class: nothing to plot
                self._writer.add_scalar(f"val/IoU/{name}", iou, iteration)
        self._writer.flush()

    def record(self, record: dict[str, Any]) -> None:
        """Any other record (e.g. the time budget's plan), as one line of ``metrics.jsonl``."""
        if not self.enabled:
            return
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Flush and close the files."""
        if self._handle is not None:
            self._handle.close()
            self._writer.close()
            self._handle = self._writer = None

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """The training steps and the evaluations of a ``metrics.jsonl``, in iteration order.

    When an iteration appears twice (a file from before resumes were truncated, or edited by
    hand), the later line wins.
    """
    steps: dict[int, dict] = {}
    evaluations: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "loss" in record:
            steps[record["iteration"]] = record
        elif "eval" in record:
            evaluations[record["iteration"]] = record
    return [steps[i] for i in sorted(steps)], [evaluations[i] for i in sorted(evaluations)]


def truncate_metrics(path: str | Path, last_iteration: int) -> None:
    """Drop the records after ``last_iteration`` (atomically: a crash leaves the old file)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["iteration"] <= last_iteration]
    with atomic_file(path, "w") as handle:
        handle.write("".join(line + "\n" for line in kept))


# The validation curve plot_curves draws: (summary key, file name, title, axis label, y floor).
MIOU_CURVE = ("mean_iou", "miou.png", "validation mean IoU", "mIoU", 0.0)


def plot_curves(metrics_jsonl: str | Path, out_dir: str | Path,
                curve: tuple[str, str, str, str, float | None] = MIOU_CURVE) -> list[Path]:
    """Draw ``loss.png`` (training loss) and ``miou.png`` (validation mIoU; another ``curve`` of
    the evaluation summaries if given) from a run's history.

    Uses matplotlib's Agg renderer through a bare ``Figure`` (no pyplot), so it works without a
    display and leaves the caller's matplotlib backend alone.

    Args:
        metrics_jsonl: a run's ``metrics.jsonl``.
        out_dir: where to write the images.

    Returns:
        The images written: ``loss.png`` when there are training steps, the curve's image when
        there are evaluations.
    """
    steps, evaluations = read_metrics(metrics_jsonl)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if steps:
        iterations = [s["iteration"] for s in steps]
        losses = [s["loss"] for s in steps]
        written.append(_line_plot(out_dir / "loss.png", "training loss", "loss", iterations, losses,
                                  smoothed=_moving_average(losses, max(1, len(losses) // 50))))
    if evaluations:
        key, filename, title, label, floor = curve
        written.append(_line_plot(out_dir / filename, title, label, [e["iteration"] for e in evaluations],
                                  [e["eval"][key] for e in evaluations], marker="o", floor=floor))
    return written


def _line_plot(path: Path, title: str, ylabel: str, x: list[int], y: list[float],
               smoothed: list[float] | None = None, marker: str | None = None, floor: float | None = None) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(x, y, marker=marker, linewidth=1.0, alpha=0.35 if smoothed else 1.0, label=ylabel)
    if smoothed:
        axes.plot(x, smoothed, linewidth=1.8, label=f"{ylabel} (moving average)")
        axes.legend()
    axes.set(title=title, xlabel="iteration", ylabel=ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if floor is not None:
        axes.set_ylim(bottom=floor)
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100)
    return path


def _moving_average(values: list[float], window: int) -> list[float] | None:
    """Trailing mean over ``window`` values; ``None`` when there is nothing to smooth."""
    if window < 2:
        return None
    averages, running = [], 0.0
    for index, value in enumerate(values):
        running += value - (values[index - window] if index >= window else 0.0)
        averages.append(running / min(index + 1, window))
    return averages
