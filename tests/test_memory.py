"""Training keeps freed memory for the next step: glibc's thresholds raised, measured by the page
faults a repeated large allocation takes in a fresh process, and left alone where the
environment decides."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_recipe

from pixelwise.config import load_config
from pixelwise.runtimes import memory
from pixelwise.training.loop import train

# Allocates, fills and frees a 64 MiB tensor ten times, as training steps do their activations,
# and prints the page faults of the last five (the heap settles in the first few).
FAULTS = """
import resource, sys, torch
from pixelwise.runtimes.memory import keep_freed_memory
if sys.argv[1] == "keep":
    print(keep_freed_memory(), file=sys.stderr)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for round in range(10):
    if round == 5:
        start = faults()
    block = torch.empty(16 * 1024 * 1024)
    block.fill_(1.0)
    del block
print((faults() - start) / 5)
"""


def _faults_per_round(mode: str) -> float:
    result = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return float(result.stdout.strip())


@pytest.mark.skipif(memory._glibc_mallopt() is None, reason="needs glibc")
def test_a_freed_block_is_reused_without_faulting_its_pages_in_again() -> None:
    default, kept = _faults_per_round("default"), _faults_per_round("keep")
    pages = 64 * 1024 * 1024 / 4096
    if default < pages / 4:
        pytest.skip(f"the kernel maps this memory in huge pages here ({default:.0f} faults a round)")
    assert default > 0.8 * pages  # each round's block comes fresh from the kernel
    assert kept < 0.05 * pages, f"{kept:.0f} faults a round with the thresholds raised (default: {default:.0f})"


def test_the_environment_and_other_allocators_decide_first() -> None:
    calls: list[tuple[int, int]] = []

    def mallopt(parameter: int, value: int) -> int:
        calls.append((parameter, value))
        return 1

    said = memory.keep_freed_memory({"MALLOC_TRIM_THRESHOLD_": "0"}, mallopt)
    assert "MALLOC_TRIM_THRESHOLD_=0" in said and calls == []
    said = memory.keep_freed_memory({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, mallopt)
    assert "jemalloc" in said and calls == []
    assert "kept for reuse" in memory.keep_freed_memory({}, mallopt)
    assert calls == [(memory.M_MMAP_THRESHOLD, memory.MMAP_THRESHOLD), (memory.M_TRIM_THRESHOLD, memory.TRIM_THRESHOLD)]
    assert "refused" in memory.keep_freed_memory({}, lambda parameter, value: 0)


def test_a_training_run_says_what_it_did_with_freed_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pixelwise.training.run_loop"):
        train(load_config(None, tiny_recipe(tmp_path, "train.iterations=1")))
    said = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Freed memory: ")]
    assert said == ["Freed memory: " + memory.keep_freed_memory()]  # what this process's setting gives
