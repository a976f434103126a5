"""How many threads to compute with: the CPUs this process may really use.

``os.cpu_count()`` counts the machine's CPUs. A process may be pinned to fewer (its affinity, as
``taskset`` or a container's cpuset sets it) or be allowed less CPU time than that (a cgroup's
CPU quota, as ``docker --cpus`` or a CI runner's limit sets it). PyTorch's default thread count
follows the machine, not the quota, so in a container allowed 2 CPUs of a 64-CPU host it would
run 64 threads that take turns on 2 CPUs' worth of time.

:func:`usable_cpus` reads both; :func:`set_threads` applies an explicit count, or lowers
PyTorch's default to what may be used (it never raises it); :func:`loader_workers` turns
``data.workers: auto`` into a number of data-loading processes from the same count.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from pixelwise.errors import InputError

CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMBERSHIP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # absent (no cgroup of that kind), unreadable: no limit known there
        return None


def _ancestors(base: Path, relative: str) -> list[Path]:
    """``base / relative`` and its parents up to ``base``, those that exist. In a container the
    path the kernel reports is often the host's, absent from the container's view; its own
    limit then sits at ``base``."""
    folder = base / relative.strip("/")
    found = []
    while True:
        if folder.is_dir():
            found.append(folder)
        if folder == base or base not in folder.parents:
            break
        folder = folder.parent
    return found


def _v2_limit(folder: Path) -> float | None:
    """CPUs' worth of time in a cgroup v2 ``cpu.max`` (``"200000 100000"`` is 2; ``"max ..."``: none)."""
    text = _read(folder / "cpu.max")
    fields = text.split() if text else []
    if len(fields) != 2 or fields[0] == "max":
        return None
    return int(fields[0]) / int(fields[1])


def _v1_limit(folder: Path) -> float | None:
    """CPUs' worth of time in a cgroup v1 CFS quota (``cpu.cfs_quota_us`` -1: none)."""
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota is None or period is None or int(quota) <= 0 or int(period) <= 0:
        return None
    return int(quota) / int(period)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, membership: str | None = None) -> float | None:
    """The CPU time this process's cgroups allow, in CPUs (quota ÷ period), the tightest along
    their paths; ``None`` where there is no limit or none can be read.

    Args:
        root: where the cgroup file systems are mounted.
        membership: the text of ``/proc/self/cgroup`` (read from there by default).
    """
    text = membership if membership is not None else _read(MEMBERSHIP)
    limits: list[float | None] = []
    for line in (text or "").splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":  # the unified (v2) hierarchy
            limits += [_v2_limit(folder) for folder in _ancestors(root, path)]
        elif "cpu" in controllers.split(","):  # v1: mounted under its controllers' name, or "cpu"
            for name in dict.fromkeys((controllers, "cpu")):
                limits += [_v1_limit(folder) for folder in _ancestors(root / name, path)]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def usable_cpus(affinity: int | None = None, quota: float | None = None, read_quota: bool = True) -> tuple[int, str]:
    """How many CPUs this process may use, and what decided it.

    Args:
        affinity: the CPUs it may run on (default: ``os.sched_getaffinity``, else the CPU count).
        quota: its cgroup CPU quota in CPUs (default: :func:`cgroup_cpu_limit`, where ``read_quota``).
    """
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if quota is None and read_quota:
        quota = cgroup_cpu_limit()
    if quota is not None and quota < affinity:
        count = max(1, math.floor(quota))
        return count, f"a CPU quota of {quota:g} CPUs (cgroup) on {affinity} CPUs it may run on"
    return affinity, f"{affinity} CPUs this process may run on"


def set_threads(requested: int | None = None) -> tuple[int, str]:
    """Set PyTorch's intra-op threads and say why: ``requested`` as given, or (``None``) PyTorch's
    default lowered to :func:`usable_cpus` where that is fewer (never raised: a caller that
    chose fewer threads, such as a test or ``OMP_NUM_THREADS``, keeps them)."""
    if requested is not None:
        if requested < 1:
            raise InputError(f"threads must be at least 1, got {requested}")
        torch.set_num_threads(requested)
        return requested, "as asked"
    usable, reason = usable_cpus()
    current = torch.get_num_threads()
    if usable < current:
        torch.set_num_threads(usable)
        return usable, reason
    return current, f"PyTorch's default, within {reason}"


# data.workers: auto never starts more loader processes than this: a training step's batch is a
# few images, which a handful of processes decode and augment ahead of the step on any machine.
MAX_AUTO_WORKERS = 4


def loader_workers(requested: int | str, usable: tuple[int, str] | None = None) -> tuple[int, str]:
    """The data-loading processes for ``data.workers`` and why: a number as given; ``"auto"``
    one per CPU this process may use (:func:`usable_cpus`, or ``usable``), at most
    :data:`MAX_AUTO_WORKERS`. Loader processes sleep while their batches wait in the queue, so
    they share the cores with the step's threads without holding them.

    Raises:
        InputError: neither a count >= 0 nor ``"auto"``.
    """
    if requested == "auto":
        cpus, reason = usable or usable_cpus()
        workers = max(1, min(cpus, MAX_AUTO_WORKERS))
        return workers, f"auto: {reason}, at most {MAX_AUTO_WORKERS}"
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise InputError(f"data.workers must be 0 (load in the main process), more, or auto; got {requested!r}")
    return requested, "as the recipe sets it"
