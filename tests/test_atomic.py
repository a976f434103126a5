"""The one atomic writer every file goes through: the old file survives a failed write, no
temporary is left behind, every file gets one mode, and orphans of dead processes are found."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixelwise.io.atomic import atomic_file, atomic_path, remove_orphan_temporaries, temporary_name


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="cut short"), atomic_file(target, "w") as handle:
        handle.write("half of the new")
        raise RuntimeError("cut short")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("durable", [False, True])
def test_a_finished_write_replaces_the_file_with_the_mode_of_a_new_one(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "sub" / "model.bin"
    with atomic_path(target, durable=durable) as temporary:
        temporary.write_bytes(b"new")
        os.chmod(temporary, 0o600)  # as safetensors writes its files
        assert not target.exists()
    assert target.read_bytes() == b"new" and sorted(target.parent.iterdir()) == [target]
    assert target.stat().st_mode & 0o777 == _new_file_mode()


def test_only_the_orphans_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    orphan = tmp_path / f".best.pt.{pid}.tmp"
    other_file = tmp_path / f".model.onnx.fp32.{pid}.tmp"
    mine = temporary_name(tmp_path / "last.pt")
    for path in (orphan, other_file, mine):
        path.write_bytes(b"x")
    assert remove_orphan_temporaries(tmp_path, "best.pt") == [orphan]
    assert remove_orphan_temporaries(tmp_path) == [other_file]
    assert mine.exists()  # this process is alive: its write may be under way
