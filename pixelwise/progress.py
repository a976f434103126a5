"""Progress of long jobs (training, evaluation, prediction) on the command line.

On a terminal: rich's progress bar. Anywhere else (a pipe, ``make demo | tee``, CI logs) a bar
prints nothing until the end, so a plain line is printed instead, every ``interval`` seconds
and when the job ends.
"""
from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

PLAIN_INTERVAL_S = 30.0


class ProgressReport:
    """A progress bar (terminal) or plain progress lines at intervals (elsewhere).

    Args:
        console: where to print.
        label: the job's name (``train``, ``predict``...).
        enabled: ``False`` prints nothing (e.g. on processes other than rank 0).
        transient: remove the bar when done (terminal only).
        eta: show the time remaining (terminal) / estimate it (plain lines).
        interval: seconds between plain lines.
    """

    def __init__(self, console: Console, label: str, *, enabled: bool = True, transient: bool = False,
                 eta: bool = True, interval: float = PLAIN_INTERVAL_S) -> None:
        self.console, self.label, self.enabled, self.eta, self.interval = console, label, enabled, eta, interval
        self.terminal = console.is_terminal
        self.completed, self.total, self.status = 0, None, ""
        self._start = self._printed_at = time.monotonic()
        self._printed_completed = 0
        self._first: tuple[float, int] | None = None  # (time, completed) of the first update: a resumed
        # job starts part-way, and its rate counts only what this session did
        self._bar: Progress | None = None
        if enabled and self.terminal:
            columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[status]}"), TimeElapsedColumn()]
            if eta:
                columns += [TextColumn("eta"), TimeRemainingColumn()]
            self._bar = Progress(*columns, console=console, transient=transient)
            self._task = self._bar.add_task(label, total=None, status="")

    def __enter__(self) -> "ProgressReport":
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, error, trace)
        elif self.enabled and self.completed != self._printed_completed:
            self._print_line()

    def print(self, text: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        if self.enabled:
            (self._bar.console if self._bar is not None else self.console).print(text, markup=False,
                                                                                  highlight=False)

    def update(self, completed: int | None = None, total: int | None = None, status: str | None = None) -> None:
        """Record where the job stands; ``None`` leaves a field as it was."""
        if completed is not None:
            self.completed = completed
            if self._first is None:
                self._first = (time.monotonic(), completed)
        if total is not None:
            self.total = total
        if status is not None:
            self.status = status
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, total=self.total, status=self.status)
        elif self.completed != self._printed_completed and time.monotonic() - self._printed_at >= self.interval:
            self._print_line()

    @property
    def rate_per_s(self) -> float | None:
        """Units completed per second in this session (from the first update on)."""
        if self._first is None:
            return None
        elapsed, done = time.monotonic() - self._first[0], self.completed - self._first[1]
        return done / elapsed if done > 0 and elapsed > 0 else None

    def _print_line(self) -> None:
        elapsed = time.monotonic() - self._start
        parts = [f"{self.label}: {self.completed}/{self.total if self.total is not None else '?'}"]
        if self.status:
            parts.append(self.status)
        parts.append(f"{_duration(elapsed)} elapsed")
        rate = self.rate_per_s
        if self.eta and rate and self.total is not None and self.total > self.completed:
            parts.append(f"eta {_duration((self.total - self.completed) / rate)}")
        self.console.print(" · ".join(parts), markup=False, highlight=False)
        self._printed_at, self._printed_completed = time.monotonic(), self.completed


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
