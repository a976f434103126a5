"""Every model file pixelwise reads or writes, through one door.

:func:`read_model_file` tells the format from the file itself and returns a :class:`ModelFile`:
the record (:class:`~pixelwise.io.record.ModelRecord`), the weights or graph, and for a training
checkpoint its whole dictionary. One reader and one writer per format:

============  ===============================  ==========================================
format        written by                       read by
============  ===============================  ==========================================
checkpoint    ``pixelwise train`` (``.pt``)    :func:`~pixelwise.io.checkpoint.load_checkpoint`
safetensors   ``export --format safetensors``  :func:`~pixelwise.io.safetensors_file.read_safetensors_model`
folder        ``export --format folder``       :func:`~pixelwise.io.safetensors_file.read_folder`
onnx          ``export --format onnx``         :func:`read_onnx`
torchscript   ``export --format torchscript``  refused by name: run it with ``torch.jit.load``
============  ===============================  ==========================================

A super-resolution network exported to ONNX (:func:`write_superres_onnx`) carries its own spec
(``pixelwise.task: superres``, ``pixelwise.superres_model``) and is read by
:func:`read_superres_onnx`; :func:`read_onnx` refuses it by name.

Nothing here runs code from a file, downloads anything, or builds a model: the record's values
are checked, and the model rebuilt, by :mod:`pixelwise.inference.loading`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from pixelwise.errors import InputError, MissingFileError
from pixelwise.io.atomic import atomic_path
from pixelwise.io.checkpoint import folder_error, load_checkpoint
from pixelwise.io.record import CHECKSUM_KEY, PREFIX, ModelRecord, check_precision_field, metadata_digest
from pixelwise.io.safe_load import file_format, is_torchscript, torchscript_error
from pixelwise.io.safetensors_file import (is_model_folder, read_folder, write_folder,
                                          write_safetensors)

FORMATS = ("checkpoint", "safetensors", "folder", "onnx", "torchscript")
_ONNX_REMEDY = "export it again with pixelwise export"
TASK_KEY = PREFIX + "task"
SUPERRES_TASK = "superres"
SUPERRES_SPEC_KEY = PREFIX + "superres_model"

__all__ = ["FORMATS", "ModelFile", "model_file_format", "read_model_file", "read_onnx", "read_superres_onnx",
           "write_folder", "write_onnx", "write_safetensors", "write_superres_onnx", "write_torchscript"]


@dataclass
class ModelFile:
    """A model file as read, before its record is checked.

    Attributes:
        path: where it was read from.
        format: one of :data:`FORMATS`.
        record: what it says about its model.
        weights: the model's state dict (``None`` for an ONNX graph).
        state: a training checkpoint's whole dictionary (its recipe, optimiser, progress);
            ``None`` for exports.
        graph: an ONNX file's ``ModelProto`` (``None`` otherwise), parsed once.
        label: how messages name the file, where not by its path.
    """

    path: Path
    format: str
    record: ModelRecord
    weights: dict[str, torch.Tensor] | None = None
    state: dict[str, Any] | None = None
    graph: Any = None
    label: str | None = None

    @property
    def source(self) -> str:
        """How messages name the file: ``label``, else its quoted path."""
        return self.label or repr(str(self.path))

    @property
    def recipe(self) -> dict[str, Any]:
        """The training recipe recorded with a checkpoint (empty for exports)."""
        return dict((self.state or {}).get("config") or {})


def model_file_format(path: str | Path) -> str:
    """What a model file is, told from the file itself (its name only for ONNX).

    A path with nothing there is a ``"checkpoint"``, which :func:`read_model_file` then reports
    missing.

    Raises:
        FileNotFoundError: a folder that is not a model folder (the message says what to pass).
    """
    path = Path(path)
    if path.is_dir():
        if is_model_folder(path):
            return "folder"
        raise folder_error(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"  # read_onnx says if it is missing
    if not path.is_file():
        return "checkpoint"  # load_checkpoint says it is missing
    if is_torchscript(path):
        return "torchscript"
    return "safetensors" if path.suffix == ".safetensors" or file_format(path) == "safetensors" else "checkpoint"


def read_model_file(path: str | Path) -> ModelFile:
    """Read any model file pixelwise writes (see the table above), verifying its checksum.

    Raises:
        FileNotFoundError: no such file or model folder.
        TorchScriptFileError: a TorchScript program, which pixelwise does not load.
        UntrustedFileError: a pickle that would run code; nothing ran.
        ValueError: not a model file, damaged, edited, or lacking its record.
    """
    path = Path(path)
    kind = model_file_format(path)
    if kind == "onnx":
        record, graph = read_onnx(path)
        return ModelFile(path, kind, record, graph=graph)
    if kind == "folder":
        record, weights = read_folder(path)
        return ModelFile(path, kind, record, weights)
    if kind == "torchscript":
        raise torchscript_error(path, "model file")
    state = load_checkpoint(path)
    record = ModelRecord.from_state(state, repr(str(path)))
    return ModelFile(path, kind, record, state["model"], state if kind == "checkpoint" else None)


# ONNX ------------------------------------------------------------------------------------------

def write_onnx(proto: Any, record: ModelRecord, path: str | Path) -> None:
    """Save an ONNX graph with the record in its ``metadata_props`` (checksummed)."""
    _save_onnx(proto, record.to_metadata(), path)


def write_superres_onnx(proto: Any, spec: dict, path: str | Path) -> None:
    """Save a super-resolution network's ONNX graph with its spec (``{"name", "scale",
    "options"}``) and the pixelwise version in its ``metadata_props`` (checksummed)."""
    _save_onnx(proto, {TASK_KEY: SUPERRES_TASK, SUPERRES_SPEC_KEY: json.dumps(spec, sort_keys=True),
                       PREFIX + "version": version("pixelwise")}, path)


def _save_onnx(proto: Any, metadata: dict[str, str], path: str | Path) -> None:
    import onnx  # optional at import: only ONNX users need it

    del proto.metadata_props[:]
    for key, value in {**metadata, CHECKSUM_KEY: metadata_digest(metadata)}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _load_onnx(path: Path) -> tuple[dict[str, str], Any]:
    """The metadata (its checksum verified) and the parsed graph of an ONNX file."""
    import onnx  # optional at import: only ONNX users need it
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise MissingFileError(f"ONNX model {str(path)!r} does not exist; export one with pixelwise export")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except DecodeError as error:
        raise InputError(f"{str(path)!r} is not an ONNX model (it does not parse: {error}); "
                         f"export one with pixelwise export --format onnx") from error
    props = {prop.key: prop.value for prop in graph.metadata_props}
    if CHECKSUM_KEY in props and metadata_digest(props) != props[CHECKSUM_KEY]:
        raise InputError(f"{str(path)!r} is damaged or was edited: its pixelwise metadata (model spec, class names, "
                         f"normalisation, inference options) no longer matches the checksum written with it; "
                         f"{_ONNX_REMEDY}")
    return props, graph


def read_superres_onnx(path: str | Path) -> tuple[dict, Any]:
    """The spec ``{"name", "scale", "options"}`` (checksum verified) and the parsed graph of a
    super-resolution network exported to ONNX.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not ONNX, not a super-resolution export, or was edited.
    """
    path = Path(path)
    props, graph = _load_onnx(path)
    if props.get(TASK_KEY) != SUPERRES_TASK or CHECKSUM_KEY not in props:
        raise InputError(f"{str(path)!r} is not a super-resolution model exported by pixelwise (its metadata has no "
                         f"{TASK_KEY}: {SUPERRES_TASK}); export a superres checkpoint with pixelwise export")
    try:
        spec = json.loads(props[SUPERRES_SPEC_KEY])
    except (KeyError, json.JSONDecodeError) as error:
        raise InputError(f"{str(path)!r} holds no readable {SUPERRES_SPEC_KEY}; {_ONNX_REMEDY}") from error
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("scale"), int)
            and isinstance(spec.get("options"), dict)):
        raise InputError(f"{str(path)!r}: {SUPERRES_SPEC_KEY} is not a network spec (name, scale, options); "
                         f"{_ONNX_REMEDY}")
    return spec, graph


def read_onnx(path: str | Path) -> tuple[ModelRecord, Any]:
    """The record (its checksum verified, its precision one an export computes in) and the
    parsed graph of an ONNX file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not ONNX, carries no pixelwise metadata, or metadata that was
            edited.
    """
    path = Path(path)
    props, graph = _load_onnx(path)
    if props.get(TASK_KEY) == SUPERRES_TASK:
        raise InputError(f"{str(path)!r} is a super-resolution network, not a segmentation model; use it with "
                         f"pixelwise superres upscale / compare --checkpoint {str(path)!r}")
    record = ModelRecord.from_metadata(props, repr(str(path)), "an ONNX model", "export it with pixelwise export, "
                                       "which records classes, palette and normalisation")
    check_precision_field(record, repr(str(path)), _ONNX_REMEDY)
    return record, graph


def onnx_output_channels(graph: Any) -> int | None:
    """The channels of an ONNX graph's logits ``(N, C, H, W)``; ``None`` if the graph does not
    output one such tensor with a fixed channel count."""
    outputs = graph.graph.output
    dims = outputs[0].type.tensor_type.shape.dim if len(outputs) == 1 else []
    if len(dims) != 4 or not dims[1].HasField("dim_value"):
        return None
    return dims[1].dim_value


# TorchScript -----------------------------------------------------------------------------------

def write_torchscript(program: torch.jit.ScriptModule, record: ModelRecord, path: str | Path) -> None:
    """Save a TorchScript program atomically with the record as extra files (for LibTorch and
    ``torch.jit.load`` users; pixelwise itself does not load programs)."""
    metadata = record.to_metadata()
    with atomic_path(path) as temporary:
        torch.jit.save(program, str(temporary), _extra_files={**metadata, CHECKSUM_KEY: metadata_digest(metadata)})
