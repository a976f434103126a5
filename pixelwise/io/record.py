"""The record of a trained model, and the one schema every model file stores it in.

A trained model is its weights plus a record: the model spec that rebuilds the network, the
class names and palette, the input normalisation, the inference options it validated with, the
precision its file computes in and the pixelwise version that wrote it (:class:`ModelRecord`).

**One schema.** Files that hold string metadata (safetensors, ONNX ``metadata_props``,
TorchScript extra files) store each field as JSON under ``pixelwise.FIELD``
(:meth:`ModelRecord.to_metadata`); a model folder's ``config.json`` holds the same fields as one
JSON object (:meth:`ModelRecord.to_json`); a ``.pt`` checkpoint holds them as entries of its
dictionary beside the training state. Safetensors files written before this schema
(``"format": "pixelwise"`` with bare field names) still read (:meth:`ModelRecord.from_metadata`).

**Checksums.** ``pixelwise.checksum`` is a SHA-256 over the ``pixelwise.*`` metadata and, where
the file holds them, the tensors (:func:`metadata_digest`); a checkpoint carries
``record_checksum`` over its whole dictionary (:func:`record_digest`). A reader verifies them,
so bytes changed on disk or a record edited by hand are an error, not weights or class names
that load silently.

What the record's values must be to predict is checked above this layer, where models and
inference options are known (:func:`pixelwise.inference.record.check_record`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Iterator, Mapping

import torch

from pixelwise.errors import InputError

RECORD_KEYS = ("model_spec", "classes", "normalization", "inference")
"""The record's fields a file stores as JSON values."""
PREDICTION_KEYS = ("model_spec", "classes", "normalization")
"""What a model file needs besides the weights to predict without its recipe."""
PREFIX = "pixelwise."
CHECKSUM_KEY = "pixelwise.checksum"
PRECISIONS = ("fp32", "int8")
"""What an exported file may compute in."""
_LEGACY_FORMAT = "pixelwise"  # safetensors before the one schema: bare field names beside this "format"


@dataclass(frozen=True)
class ModelRecord:
    """What a model file says about its model besides the weights (values as JSON holds them,
    unchecked: see :func:`pixelwise.inference.record.check_record`).

    Attributes:
        model_spec: ``{"name", "num_classes", "options"}``, which rebuilds the network.
        classes: class names, palette and ignore index (:meth:`ClassInfo.to_dict`).
        normalization: ``{"mean": [...], "std": [...]}`` for images scaled to [0, 1].
        inference: the inference options the run validated with, or ``None``.
        precision: what the file computes in: ``"fp32"`` or (a quantised ONNX file) ``"int8"``.
        version: the pixelwise version that wrote the file, where recorded.
    """

    model_spec: Any
    classes: Any
    normalization: Any
    inference: Any = None
    precision: str = "fp32"
    version: str | None = None

    def fields(self) -> dict[str, Any]:
        """The JSON fields, those that are set."""
        return {key: getattr(self, key) for key in RECORD_KEYS if getattr(self, key) is not None}

    def to_metadata(self) -> dict[str, str]:
        """The record as string metadata: each field as JSON under ``pixelwise.FIELD``, with the
        precision and the version of the pixelwise writing it (no checksum)."""
        metadata = {PREFIX + key: json.dumps(value) for key, value in self.fields().items()}
        metadata[PREFIX + "version"] = version("pixelwise")
        metadata[PREFIX + "precision"] = self.precision
        return metadata

    def to_json(self) -> dict[str, Any]:
        """The record as one JSON object (a model folder's ``config.json``), with its format
        and the version writing it."""
        return {"format": "pixelwise", "version": version("pixelwise"), "precision": self.precision,
                **self.fields()}

    def replace(self, **changes: Any) -> ModelRecord:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], source: str) -> ModelRecord:
        """The record of a checkpoint's dictionary.

        Raises:
            InputError: the dictionary lacks a field prediction needs (a bare state dict).
        """
        missing = [key for key in PREDICTION_KEYS if key not in state]
        if missing:
            raise InputError(f"{source} holds weights but lacks {missing}, which rebuild the model without its "
                             f"recipe (a bare state dict?); pass a run's best.pt or last.pt, or load bare weights "
                             f"with create_model(name, weights=...)")
        return cls(*(state.get(key) for key in RECORD_KEYS))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], source: str, what: str, remedy: str) -> ModelRecord:
        """The record of a file's string metadata (the ``pixelwise.*`` schema, or the bare names
        of safetensors files written before it); ``source`` and ``what`` name the file and its
        kind in messages.

        Raises:
            InputError: a field prediction needs is missing, or a value is not JSON.
        """
        prefix = "" if metadata.get("format") == _LEGACY_FORMAT else PREFIX
        missing = [key for key in PREDICTION_KEYS if prefix + key not in metadata]
        if missing:
            raise InputError(f"{source} is {what} without pixelwise metadata (missing {missing}); {remedy}")
        try:
            values = {key: json.loads(metadata[prefix + key]) for key in RECORD_KEYS if prefix + key in metadata}
        except json.JSONDecodeError as error:
            raise InputError(f"{source} has pixelwise metadata that is not valid JSON ({error}); {remedy}") from None
        return cls(**values, precision=metadata.get(PREFIX + "precision", "fp32"),
                   version=metadata.get(PREFIX + "version", metadata.get("pixelwise_version")))

    @classmethod
    def from_json(cls, value: Any, source: str, remedy: str) -> ModelRecord:
        """The record of a model folder's ``config.json``.

        Raises:
            InputError: not a pixelwise record, or a field prediction needs is missing.
        """
        if not isinstance(value, dict) or value.get("format") != "pixelwise":
            raise InputError(f"{source} is not a pixelwise model config (no \"format\": \"pixelwise\"); {remedy}")
        missing = [key for key in PREDICTION_KEYS if key not in value]
        if missing:
            raise InputError(f"{source} lacks {missing}; {remedy}")
        return cls(**{key: value.get(key) for key in RECORD_KEYS}, precision=value.get("precision", "fp32"),
                   version=value.get("version"))


def is_legacy_metadata(metadata: Mapping[str, str]) -> bool:
    """Whether safetensors metadata predates the one schema (bare field names)."""
    return metadata.get("format") == _LEGACY_FORMAT


def check_precision_field(record: ModelRecord, source: str, remedy: str) -> None:
    """Refuse a precision an exported file cannot compute in."""
    if record.precision not in PRECISIONS:
        raise InputError(f"{source}: pixelwise.precision is {record.precision!r}, not one of "
                         f"{', '.join(PRECISIONS)}; {remedy}")


# Digests ---------------------------------------------------------------------------------------

def metadata_digest(metadata: Mapping[str, str], tensors: str | None = None) -> str:
    """SHA-256 over a file's ``pixelwise.*`` metadata (its checksum entry excluded) and, where
    the file holds tensors, their :func:`tensor_digest`."""
    digest = hashlib.sha256()
    for key in sorted(metadata):
        if key.startswith(PREFIX) and key != CHECKSUM_KEY:
            digest.update(json.dumps([key, metadata[key]]).encode())
    if tensors is not None:
        digest.update(f"tensors={tensors};".encode())
    return digest.hexdigest()


def tensor_digest(state: Any, skipped: tuple[str, ...] = ("checksum",)) -> str:
    """SHA-256 over every tensor of ``state`` (nested dicts and lists; the top-level ``skipped``
    entries excluded): their places, dtypes, shapes and bytes, in a fixed order."""
    digest = hashlib.sha256()
    for place, value in _leaves(state, skipped):
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{place}:{flat.dtype}:{tuple(value.shape)};".encode())
            digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def record_digest(state: Any, tensors: str | None = None,
                  skipped: tuple[str, ...] = ("checksum", "record_checksum")) -> str:
    """SHA-256 over everything in ``state``: every plain value (string, number, boolean,
    ``None``) with its place and type, and its tensors through their :func:`tensor_digest`
    (``tensors``, when already computed: each tensor's bytes are hashed once); the top-level
    ``skipped`` entries excluded."""
    digest = hashlib.sha256()
    for place, value in _leaves(state, skipped):
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
