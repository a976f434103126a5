"""How PyTorch's OpenMP threads wait for work, chosen before PyTorch loads (the only time OpenMP
reads it).

OpenMP's idle threads spin before they sleep. On a machine whose cores other processes keep
busy, a spinning thread holds a core that the thread it waits for needs, and a step slows down
far more than the share of the cores it lost: the demo's training step ran 5.0× slower beside a
second 2-thread training process on 2 cores, and 1.7× with ``OMP_WAIT_POLICY=PASSIVE`` (its
threads sleep at once), which costs 20% of that small step on idle cores
(``benchmarks/busy_machine.py``). So :func:`choose_wait_policy` picks PASSIVE only when the
machine is busy as pixelwise starts: the last minute's load average is at least one CPU-bound
process and, with this process's threads added, more than the CPUs. ``import pixelwise`` calls
it; an ``OMP_WAIT_POLICY`` already set, or PyTorch already loaded, is left alone.
"""
from __future__ import annotations

import os
import sys
from typing import MutableMapping

# Set by choose_wait_policy: what was chosen and why (the training log repeats it).
DECISION = "not chosen yet"


def choose_wait_policy(environ: MutableMapping[str, str] | None = None, load: float | None = None,
                       cpus: int | None = None, torch_loaded: bool | None = None) -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` (the process's) when the machine is busy;
    returns what was decided and why (also kept in :data:`DECISION`).

    Args:
        load: the 1-minute load average (default: ``os.getloadavg()``).
        cpus: the CPUs this process may run on, which PyTorch's threads default to (default:
            its affinity).
        torch_loaded: whether PyTorch is already imported (then OpenMP has read its setting).
    """
    global DECISION
    environ = os.environ if environ is None else environ
    torch_loaded = "torch" in sys.modules if torch_loaded is None else torch_loaded
    if "OMP_WAIT_POLICY" in environ:
        DECISION = f"OMP_WAIT_POLICY={environ['OMP_WAIT_POLICY']}, as the environment sets it"
    elif torch_loaded:
        DECISION = "OpenMP's default (PyTorch was loaded before pixelwise could choose)"
    else:
        load = os.getloadavg()[0] if load is None else load
        cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
        if load >= 1.0 and load + cpus > (os.cpu_count() or cpus):
            environ["OMP_WAIT_POLICY"] = "PASSIVE"
            DECISION = (f"OMP_WAIT_POLICY=PASSIVE: the machine is busy (load {load:.1f} on {os.cpu_count()} CPUs), "
                        f"where spinning threads slow every step")
        else:
            DECISION = f"OpenMP's default: the machine is quiet (load {load:.1f} on {os.cpu_count()} CPUs)"
    return DECISION
