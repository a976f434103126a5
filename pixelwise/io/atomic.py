"""Files written atomically: the bytes go to a temporary file beside the target, which is renamed
over it only once complete (``os.replace`` is atomic on POSIX and Windows), so a reader sees the
old file or the new one, never half of one, and a crash leaves the old one intact.

Temporaries are named ``.NAME[.ROLE].PID.tmp``; :func:`remove_orphan_temporaries` deletes those
whose writing process is gone (a run or an export killed midway). Every file written here gets
the mode of a new file (``0o666`` less the umask), whatever the writing library chose.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

logger = logging.getLogger(__name__)


def temporary_name(path: Path, role: str = "") -> Path:
    """The temporary file a write of ``path`` goes through, ``.NAME[.ROLE].PID.tmp`` beside it,
    which :func:`remove_orphan_temporaries` recognises once this process is gone."""
    return path.with_name(f".{path.name}{'.' + role if role else ''}.{os.getpid()}.tmp")


def publish(temporary: Path, path: Path, durable: bool = False) -> None:
    """Rename a finished ``temporary`` over ``path``, with the mode of a new file; ``durable``
    also makes the rename itself survive a power cut (the folder is flushed)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)
    if durable:
        _fsync_folder(path.parent)


@contextmanager
def atomic_path(path: str | Path, role: str = "", durable: bool = False) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to (for writers that take a file name);
    published over ``path`` when the block ends, deleted if it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path, role)
    try:
        yield temporary
        publish(temporary, path, durable)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", durable: bool = False) -> Iterator[IO]:
    """``path`` opened for writing through a temporary (see :func:`atomic_path`); ``durable``
    flushes the bytes to disk before the rename."""
    with atomic_path(path, durable=durable) as temporary, open(temporary, mode) as handle:
        yield handle
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A temporary folder to write ``path``'s files into; when the block ends it takes the place
    of ``path`` (an existing folder there is moved aside first, then deleted), and it is deleted
    if the block raises. A reader sees the old folder or the new one, each complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary, previous = temporary_name(path), temporary_name(path, "previous")
    temporary.mkdir()
    try:
        yield temporary
        for file in temporary.iterdir():
            publish(file, file)  # the mode of a new file
        if path.exists():
            os.replace(path, previous)
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


def remove_orphan_temporaries(folder: str | Path, name: str | None = None) -> list[Path]:
    """Delete the temporary files of writes that were interrupted (``.NAME.PID.tmp``, see
    :func:`temporary_name`, whose writing process is gone); returns what was deleted.

    Args:
        folder: where to look.
        name: only those of writes of this file name (a folder that is not pixelwise's own).
    """
    removed = []
    for candidate in Path(folder).glob(".*.tmp"):
        match = re.fullmatch(r"\.(.+)\.(\d+)\.tmp", candidate.name)
        if match is None or _process_alive(int(match.group(2))):
            continue
        if name is not None and not (match.group(1) == name or match.group(1).startswith(f"{name}.")):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)  # a model folder's (see atomic_folder)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    if removed:
        logger.info("removed %d temporary file(s) of interrupted writes in %s", len(removed), folder)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX; a no-op where folders cannot be opened)."""
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
