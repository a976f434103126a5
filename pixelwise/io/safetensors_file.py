"""Safetensors model files, alone or in the ecosystem's model folder.

- **A safetensors file** (``pixelwise export --format safetensors``): the weights, with the
  record in the file's string metadata (the ``pixelwise.*`` schema of
  :mod:`pixelwise.io.record`) and a checksum over both.
- **A model folder** (``pixelwise export --format folder``): ``config.json`` (the record as one
  JSON object, with a checksum over it and the weights) beside ``model.safetensors`` (the
  weights alone, under the model's own parameter names): the layout Hugging Face and
  segmentation_models.pytorch save, so the weights load anywhere safetensors does.

Neither holds anything but tensors and strings: reading one never runs code.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pixelwise.errors import InputError, MissingFileError
from pixelwise.io.atomic import atomic_folder, atomic_path
from pixelwise.io.record import (CHECKSUM_KEY, ModelRecord, is_legacy_metadata, metadata_digest, record_digest,
                                 tensor_digest)
from pixelwise.io.safe_load import read_safetensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME)
_SAFETENSORS_REMEDY = "export it again with pixelwise export --format safetensors"
_FOLDER_REMEDY = "export it again with pixelwise export --format folder"

Weights = dict[str, torch.Tensor]


def _own_tensors(weights: Weights) -> Weights:
    """Each tensor contiguous in its own memory (safetensors refuses tied weights)."""
    return {key: value.detach().clone().contiguous() for key, value in weights.items()}


def write_safetensors(record: ModelRecord, weights: Weights, path: str | Path) -> None:
    """Write the weights and the record as one safetensors file, atomically."""
    from safetensors.torch import save_file  # optional at import: only writers of safetensors need it

    tensors = _own_tensors(weights)
    metadata = record.to_metadata()
    metadata[CHECKSUM_KEY] = metadata_digest(metadata, tensor_digest(tensors))
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt", **metadata})


def read_safetensors_model(path: str | Path) -> tuple[ModelRecord, Weights]:
    """The record and weights of a safetensors model file, its checksum verified.

    Raises:
        ValueError: no pixelwise record in the file, a record or tensors that no longer match
            its checksum, or metadata that is not JSON.
    """
    source = repr(str(path))
    tensors, metadata = read_safetensors(path, "checkpoint")
    if not is_legacy_metadata(metadata) and CHECKSUM_KEY not in metadata and "pixelwise.model_spec" not in metadata:
        raise InputError(f"{source} is a safetensors file without pixelwise metadata (model spec, classes, "
                         f"normalisation); write one with pixelwise export --format safetensors, or load bare "
                         f"weights with create_model(name, weights=...)")
    if is_legacy_metadata(metadata):
        recorded = metadata.pop("checksum", None)
        intact = recorded is None or record_digest({"metadata": metadata, "tensors": tensors}) == recorded
    else:
        recorded = metadata.get(CHECKSUM_KEY)
        intact = recorded is None or metadata_digest(metadata, tensor_digest(tensors)) == recorded
    if not intact:
        raise InputError(f"{source} is damaged or was edited: its metadata (model spec, class names, "
                         f"normalisation, inference options) or tensors no longer match the checksum written with "
                         f"them; {_SAFETENSORS_REMEDY}")
    return ModelRecord.from_metadata(metadata, source, "a safetensors file", _SAFETENSORS_REMEDY), tensors


def write_folder(record: ModelRecord, weights: Weights, folder: str | Path) -> None:
    """Write a model folder (``config.json`` + ``model.safetensors``) atomically: the folder
    appears complete or not at all, and replaces an existing one only once written."""
    from safetensors.torch import save_file  # optional at import: only writers of safetensors need it

    tensors = _own_tensors(weights)
    config = record.to_json()
    config["checksum"] = _folder_checksum(record.replace(version=config["version"]), tensors)
    with atomic_folder(folder) as temporary:
        save_file(tensors, str(temporary / WEIGHTS_NAME), metadata={"format": "pt"})
        (temporary / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def _folder_checksum(record: ModelRecord, tensors: Weights) -> str:
    """What a folder's ``config.json`` records as its checksum: the record in the string schema,
    with the version the config names, and the weights."""
    return metadata_digest({**record.to_metadata(), "pixelwise.version": str(record.version)}, tensor_digest(tensors))


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a model's ``config.json``."""
    return Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file()


def read_folder(folder: str | Path) -> tuple[ModelRecord, Weights]:
    """The record and weights of a model folder, its checksum verified.

    Raises:
        FileNotFoundError: the folder lacks ``config.json`` or ``model.safetensors``.
        ValueError: ``config.json`` is not JSON or not a pixelwise record, or it and the weights
            no longer match its checksum.
    """
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise MissingFileError(f"model folder {str(folder)!r} has no {needed.name}; a model folder holds "
                                   f"{CONFIG_NAME} and {WEIGHTS_NAME} ({_FOLDER_REMEDY})")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{str(config_path)!r} is not valid JSON ({error}); {_FOLDER_REMEDY}") from None
    record = ModelRecord.from_json(config, repr(str(config_path)), _FOLDER_REMEDY)
    tensors, _ = read_safetensors(weights_path, "weights file")
    recorded = config.get("checksum")
    if recorded is not None and _folder_checksum(record, tensors) != recorded:
        raise InputError(f"model folder {str(folder)!r} is damaged or was edited: {CONFIG_NAME} (model spec, class "
                         f"names, normalisation, inference options) or {WEIGHTS_NAME} no longer match the checksum "
                         f"written with them; {_FOLDER_REMEDY}")
    return record, tensors
