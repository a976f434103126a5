"""Keep the memory a training step frees for the next step, instead of handing it back to the system.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves a large request (above
its ``mmap`` threshold, 128 KiB at first and at most 32 MiB as it adapts) with fresh pages from
the kernel and returns them when the tensor is freed. A training step allocates and frees the
same activations and gradients every iteration, so the kernel maps and zeroes them again each
time: a U-Net-ResNet18 step of batch 8 at 288×384 takes about 330,000 page faults and 0.8–0.9 s
of CPU time in the kernel, a tenth of the step's (``benchmarks/page_faults.py``).
:func:`keep_freed_memory` raises glibc's ``mmap`` and trim thresholds, so freed blocks stay in
the process's heap and the next step reuses them; the process's peak memory grows by 7–9% (what
the heap keeps between steps).

It changes only the process that calls it (``pixelwise train`` and ``pixelwise superres train``
do, in the training loop), and only with glibc. The environment decides where it says something:
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (glibc's own settings), or another
allocator loaded by ``LD_PRELOAD`` (jemalloc, tcmalloc), are left alone.
"""
from __future__ import annotations

import ctypes
import os
import platform
from typing import Callable, Mapping

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Blocks up to this size come from the heap and stay there once freed: a training step's largest
# activations (8 × 64 × 288 × 384 float32 is 226 MiB) fit well within it.
MMAP_THRESHOLD = 1 << 30
# Free memory at the top of the heap is returned to the system only beyond this much (mallopt
# takes a C int: 2 GiB is its largest value).
TRIM_THRESHOLD = 2**31 - 1

GLIBC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or ``None`` where the C library is another one."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def keep_freed_memory(environ: Mapping[str, str] | None = None,
                      mallopt: Callable[[int, int], int] | None = None) -> str:
    """Raise glibc's ``mmap`` and trim thresholds for this process where nothing else decides;
    returns what was done and why (training logs it).

    Args:
        environ: the environment to read (default: the process's).
        mallopt: glibc's ``mallopt`` (default: looked up; ``None`` found where the C library is
            not glibc).
    """
    environ = os.environ if environ is None else environ
    preloaded = environ.get("LD_PRELOAD", "")
    if any(name in preloaded for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return f"left to the allocator LD_PRELOAD loads ({preloaded})"
    chosen = [name for name in GLIBC_SETTINGS if name in environ]
    if chosen:
        return "as the environment sets it (" + ", ".join(f"{name}={environ[name]}" for name in chosen) + ")"
    mallopt = mallopt if mallopt is not None else _glibc_mallopt()
    if mallopt is None:
        return f"the C library's default ({platform.system()}, {platform.libc_ver()[0] or 'not glibc'})"
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "glibc's default (this glibc refused the thresholds)"
    return (f"kept for reuse: blocks up to {MMAP_THRESHOLD >> 20} MiB stay in the heap once freed, "
            f"so a step does not fault in the pages the last one freed")
