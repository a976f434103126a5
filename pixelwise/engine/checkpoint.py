"""Checkpoints written atomically: a crash at any moment leaves the previous file intact."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically.

    The bytes go to a temporary file in the same folder, are flushed to disk, and only then
    renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows), so a reader sees the
    old checkpoint or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint, with an error that says what to do when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; train first, or check the run folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - truncated zip, pickle errors: all mean "unreadable"
        raise ValueError(f"checkpoint {str(path)!r} is unreadable ({error}); it may be truncated — "
                         f"use the run's other checkpoint (last.pt / best.pt)") from error
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{str(path)!r} is not a pixelwise checkpoint (no 'model' entry)")
    return state
