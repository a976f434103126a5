"""Checkpoints written atomically: a crash at any moment leaves the previous file intact.

Each checkpoint carries SHA-256 digests verified on load: ``"checksum"`` over its tensors and
``"record_checksum"`` over everything in it (model spec, classes, normalisation, inference
options, training state and tensors). Bytes changed on disk, or a record edited by hand, are an
error, not weights or class names that load silently. Checkpoints written before the record
checksum carry only the first, and load as before. A safetensors export carries the same
whole-record digest in its metadata (``"checksum"``).
"""
from __future__ import annotations

import hashlib
import json
import logging
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator

import torch

from pixelwise.errors import InputError, MissingFileError
from pixelwise.io.atomic import atomic_file, atomic_path
from pixelwise.io.safe_load import (TorchScriptFileError, UntrustedFileError, file_format, load_torch_file,
                                    read_safetensors)

logger = logging.getLogger(__name__)

PREDICTION_KEYS = ("model_spec", "classes", "normalization")
"""What a checkpoint needs besides the weights to predict without its recipe."""
_CHECKSUM_KEYS = ("checksum", "record_checksum")
_SAFETENSORS_REMEDY = "export it again with pixelwise export --format safetensors"


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


def tensor_digest(state: Any) -> str:
    """SHA-256 over every tensor of ``state`` (nested dicts and lists; the ``"checksum"`` entry
    itself excluded): their places, dtypes, shapes and bytes, in a fixed order."""
    digest = hashlib.sha256()
    for place, value in _leaves(state, ("checksum",)):
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{place}:{flat.dtype}:{tuple(value.shape)};".encode())
            digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def record_digest(state: Any, tensors: str | None = None) -> str:
    """SHA-256 over everything in ``state``: every plain value (string, number, boolean,
    ``None``) with its place and type, and its tensors through their :func:`tensor_digest`
    (``tensors``, when already computed: each tensor's bytes are hashed once); the top-level
    checksum entries themselves excluded."""
    digest = hashlib.sha256()
    for place, value in _leaves(state, _CHECKSUM_KEYS):
        if not isinstance(value, torch.Tensor):
            digest.update(f"{place}={type(value).__name__}:{value!r};".encode())
    digest.update(f"tensors={tensor_digest(state) if tensors is None else tensors};".encode())
    return digest.hexdigest()


def _leaves(value: Any, skipped: tuple[str, ...], place: str = "") -> Iterator[tuple[str, Any]]:
    """``(place, value)`` of every tensor and plain value in nested dicts, lists and tuples, in a
    fixed order; the top-level keys ``skipped`` left out."""
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            if not (place == "" and key in skipped):
                yield from _leaves(value[key], skipped, f"{place}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _leaves(item, skipped, f"{place}/{index}")
    else:
        yield place, value


def non_finite_tensors(weights: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in a state dict that hold NaN or infinite values."""
    return [name for name, tensor in weights.items()
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def listing(names: list[str], head: int = 3) -> str:
    """Names for a message: the first ``head``, then how many more."""
    return ", ".join(names[:head]) + (f" and {len(names) - head} more" if len(names) > head else "")


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
        inside = [name for name in ("best.pt", "last.pt") if (path / name).is_file()]
        hint = f"pass {path / inside[0]}" if inside else "pass a checkpoint file (a run's best.pt or last.pt)"
        raise MissingFileError(f"checkpoint {str(path)!r} is a folder, not a file; {hint}")
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
    """Write a checkpoint's model weights as safetensors, atomically, with what prediction needs
    (model spec, classes, normalisation, inference options) as JSON in the file's metadata.

    The result loads with :func:`load_checkpoint` / :func:`load_model` like the ``.pt``; its
    metadata's ``"checksum"`` covers the metadata and the tensors (see :func:`record_digest`).
    """
    from safetensors.torch import save_file

    missing = [key for key in PREDICTION_KEYS if key not in state]
    if missing:
        raise InputError(f"the checkpoint lacks {missing}, which a safetensors export carries; pass a run's "
                         f"best.pt or last.pt")
    metadata = {key: json.dumps(state[key]) for key in (*PREDICTION_KEYS, "inference") if state.get(key) is not None}
    metadata["format"] = "pixelwise"
    metadata["pixelwise_version"] = version("pixelwise")
    # safetensors refuses tensors sharing memory (tied weights): each gets its own contiguous copy.
    tensors = {key: value.detach().clone().contiguous() for key, value in state["model"].items()}
    metadata["checksum"] = record_digest({"metadata": metadata, "tensors": tensors})
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def _load_safetensors_checkpoint(path: Path) -> dict[str, Any]:
    tensors, metadata = read_safetensors(path, "checkpoint")
    if metadata.get("format") != "pixelwise" or any(key not in metadata for key in PREDICTION_KEYS):
        raise InputError(f"{str(path)!r} is a safetensors file without pixelwise metadata (model spec, classes, "
                         f"normalisation); write one with pixelwise export --format safetensors, or load bare "
                         f"weights with create_model(name, weights=...)")
    recorded = metadata.pop("checksum", None)
    if recorded is not None and record_digest({"metadata": metadata, "tensors": tensors}) != recorded:
        raise InputError(f"{str(path)!r} is damaged or was edited: its metadata (model spec, class names, "
                         f"normalisation, inference options) or tensors no longer match the checksum written with "
                         f"them; {_SAFETENSORS_REMEDY}")
    try:
        state = {key: json.loads(value) for key, value in metadata.items() if key in (*PREDICTION_KEYS, "inference")}
    except json.JSONDecodeError as error:
        raise InputError(f"{str(path)!r} has pixelwise metadata that is not valid JSON ({error}); "
                         f"{_SAFETENSORS_REMEDY}") from error
    return {"model": tensors, **state}
