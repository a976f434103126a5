"""Checkpoints written atomically: a crash at any moment leaves the previous file intact.

Each checkpoint carries SHA-256 digests verified on load: ``"checksum"`` over its tensors and
``"record_checksum"`` over everything in it (model spec, classes, normalisation, inference
options, training state and tensors). Bytes changed on disk, or a record edited by hand, are an
error, not weights or class names that load silently. Checkpoints written before the record
checksum carry only the first, and load as before. The digests and the record's schema are
:mod:`pixelwise.io.record`'s; safetensors files are read and written by
:mod:`pixelwise.io.safetensors_file`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pixelwise.errors import InputError, MissingFileError
from pixelwise.io.atomic import atomic_file
from pixelwise.io.record import PREDICTION_KEYS, ModelRecord, record_digest, tensor_digest
from pixelwise.io.safe_load import TorchScriptFileError, UntrustedFileError, file_format, load_torch_file
from pixelwise.io.safetensors_file import CONFIG_NAME, WEIGHTS_NAME, read_safetensors_model, write_safetensors

logger = logging.getLogger(__name__)

_CHECKSUM_KEYS = ("checksum", "record_checksum")
__all__ = ["PREDICTION_KEYS", "load_checkpoint", "save_checkpoint", "save_safetensors", "non_finite_tensors",
           "listing", "record_digest", "tensor_digest", "folder_error"]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically.

    The bytes go to a temporary file in the same folder, are flushed to disk, and only then
    renamed over ``path`` (:func:`~pixelwise.io.atomic.atomic_file`), so a reader sees the old
    checkpoint or the new one, never half of one.
    """
    tensors = tensor_digest(state)
    state = {**{key: value for key, value in state.items() if key not in _CHECKSUM_KEYS},
             "checksum": tensors, "record_checksum": record_digest(state, tensors)}
    with atomic_file(path, durable=True) as handle:
        torch.save(state, handle)


def non_finite_tensors(weights: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in a state dict that hold NaN or infinite values."""
    return [name for name, tensor in weights.items()
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def listing(names: list[str], head: int = 3) -> str:
    """Names for a message: the first ``head``, then how many more."""
    return ", ".join(names[:head]) + (f" and {len(names) - head} more" if len(names) > head else "")


def folder_error(path: Path) -> MissingFileError:
    """The error for a folder given where a model file was expected, naming what to pass."""
    inside = [name for name in ("best.pt", "last.pt") if (path / name).is_file()]
    hint = f"pass {path / inside[0]}" if inside else (
        f"pass a checkpoint file (a run's best.pt or last.pt) or a model folder (one holding {CONFIG_NAME} "
        f"and {WEIGHTS_NAME}, as pixelwise export --format folder writes it)")
    return MissingFileError(f"checkpoint {str(path)!r} is a folder, not a file; {hint}")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (``.pt``, or ``.safetensors`` from ``pixelwise export``) without running
    any code from it, with errors that say what to do.

    Raises:
        FileNotFoundError: no such file (a folder is named as one, with the file to pass instead).
        UntrustedFileError: the file's pickle holds objects that would run code; nothing ran.
        ValueError: not a pixelwise checkpoint, or truncated.
    """
    path = Path(path)
    if path.is_dir():
        raise folder_error(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {str(path)!r} does not exist; train first, or check the run folder")
    kind = file_format(path)  # by content: a .pt that holds safetensors loads too
    if kind == "safetensors":
        return _load_safetensors_checkpoint(path)
    # An empty file goes to torch.load as "torch": it is a write cut short, not the wrong file.
    if kind == "other":
        raise InputError(f"{str(path)!r} is not a pixelwise checkpoint (not a file written by torch.save); "
                         f"pass a run's best.pt or last.pt")
    try:
        state = load_torch_file(path, "checkpoint")
    except (UntrustedFileError, TorchScriptFileError):
        raise
    except ValueError as error:
        raise InputError(f"{error} — use the run's other checkpoint (last.pt / best.pt)") from error
    if not isinstance(state, dict) or "model" not in state:
        raise InputError(f"{str(path)!r} is not a pixelwise checkpoint (no 'model' entry)")
    tensors = tensor_digest(state) if "checksum" in state or "record_checksum" in state else None
    if "checksum" in state and tensors != state["checksum"]:
        raise InputError(f"checkpoint {str(path)!r} is damaged: its tensors no longer match the checksum written "
                         f"with them (bytes changed on disk); use the run's other checkpoint (last.pt / best.pt) "
                         f"or a backup")
    if "record_checksum" in state and record_digest(state, tensors) != state["record_checksum"]:
        raise InputError(f"checkpoint {str(path)!r} is damaged or was edited: its record (model spec, class names, "
                         f"normalisation, inference options, training state) no longer matches the checksum written "
                         f"with it; use the run's other checkpoint (last.pt / best.pt) or a backup")
    return state


def save_safetensors(state: dict[str, Any], path: str | Path) -> None:
    """Write a checkpoint's model weights and record as one safetensors file, atomically
    (:func:`~pixelwise.io.safetensors_file.write_safetensors`); it loads with
    :func:`load_checkpoint` like the ``.pt``."""
    try:
        record = ModelRecord.from_state(state, "the checkpoint")
    except InputError as error:
        raise InputError(f"{error}; a safetensors export carries them") from None
    write_safetensors(record, state["model"], path)


def _load_safetensors_checkpoint(path: Path) -> dict[str, Any]:
    record, tensors = read_safetensors_model(path)
    return {"model": tensors, **record.fields()}
