"""From a file to something that predicts: a checkpoint or an exported ``.onnx`` file, run by
the runtime and at the precision asked for, with the classes and normalisation that go with it."""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pixelwise.data.classes import ClassInfo
from pixelwise.errors import InputError, MissingFileError
from pixelwise.inference.record import ModelFileError, check_record
from pixelwise.io.checkpoint import PREDICTION_KEYS, listing, load_checkpoint, non_finite_tensors
from pixelwise.models import create_model, saved_options
from pixelwise.runtimes.base import check_precision
from pixelwise.runtimes.onnx_graph import onnx_proto
from pixelwise.runtimes.onnx_runtime import OnnxRuntime
from pixelwise.runtimes.torch_runtime import TorchRuntime

RUNTIMES = ("torch", "torch-optimized", "onnxruntime")
METADATA_KEYS = ("model_spec", "classes", "normalization", "inference")
"""What an exported file records, each as JSON under ``pixelwise.KEY`` in its metadata."""
CHECKSUM_KEY = "pixelwise.checksum"
PRECISIONS = ("fp32", "int8")
_EXPORT_REMEDY = "export it again with pixelwise export"
_REMEDY = "use the file as pixelwise wrote it (a run's best.pt or last.pt, or export it again with pixelwise export)"


class LoadedModel(NamedTuple):
    """A model rebuilt from a checkpoint, with what prediction needs to go with it.

    Attributes:
        model: what runs the network: the module, in eval mode, on the requested device, or a
            runtime (:mod:`pixelwise.runtimes`) built from it or from an exported file.
        classes: class names, palette and ignore index the model was trained with.
        normalization: ``{"mean": [...], "std": [...]}`` applied to images scaled to [0, 1].
        inference: the inference options the run validated with (``precision`` among them), or
            ``None`` for checkpoints that predate the record.
    """

    model: Any
    classes: ClassInfo
    normalization: dict[str, list[float]]
    inference: dict[str, Any] | None = None


def model_from_checkpoint(state: dict[str, Any], device: str | torch.device = "cpu",
                          source: str = "checkpoint") -> LoadedModel:
    """Rebuild the model of a loaded checkpoint (see :func:`load_checkpoint`), weights included.

    Args:
        state: the checkpoint's contents.
        device: where the model goes.
        source: how to name the checkpoint in error messages (its path).

    Raises:
        ValueError: the checkpoint lacks the model spec, classes or normalisation (a bare state
            dict, or one not written by ``pixelwise train``).
        ModelFileError: its record fails :func:`~pixelwise.inference.record.check_record`, or its
            weights do not fit the model its spec describes.
    """
    missing = [key for key in PREDICTION_KEYS if key not in state]
    if missing:
        raise InputError(f"{source} holds weights but lacks {missing}, which rebuild the model without its recipe "
                         f"(a bare state dict?); pass a run's best.pt or last.pt, or load bare weights with "
                         f"create_model(name, weights=...)")
    record = check_record(state, source, remedy=_REMEDY)
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        raise ModelFileError(f"{source}: 'model' is not a mapping of parameter names to tensors; {_REMEDY}")
    diverged = non_finite_tensors(weights)
    if diverged:
        raise InputError(f"{source} holds NaN or infinite values in {listing(diverged)}: the run diverged before "
                         f"this was written, so it would predict nonsense; use an earlier checkpoint (best.pt), "
                         f"or train again with a lower optim.lr or optim.clip_grad_norm")
    model = _rebuilt(record["model_spec"], source)
    _load_fitting(model, weights, record["model_spec"]["name"], source)
    return LoadedModel(model.to(device).eval(), ClassInfo.from_dict(record["classes"]), record["normalization"],
                       record["inference"])


def _rebuilt(spec: dict[str, Any], source: str) -> torch.nn.Module:
    """The spec's model, untrained (its spec's weight sources are dropped by ``check_record``)."""
    try:
        return create_model(spec["name"], num_classes=spec["num_classes"],
                            **saved_options(spec["name"], spec["options"]))
    except (ValueError, TypeError) as error:  # a builder given an option it does not take, or a bad value
        raise ModelFileError(f"{source}: model_spec does not build a model ({error}); {_REMEDY}") from None


def _load_fitting(model: torch.nn.Module, weights: dict[str, torch.Tensor], name: str, source: str) -> None:
    """Load ``weights`` into ``model``, refusing missing, extra or misshapen tensors in one line."""
    expected = model.state_dict()
    problems = []
    missing = [key for key in expected if key not in weights]
    extra = [key for key in weights if key not in expected]
    wrong = [f"{key} {tuple(weights[key].shape)} (the model's: {tuple(expected[key].shape)})"
             for key in expected if key in weights and weights[key].shape != expected[key].shape]
    for label, names in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
        if names:
            problems.append(f"{label}: {listing(names)}")
    if problems:
        raise ModelFileError(f"{source}: its weights do not fit the {name!r} model its model_spec describes "
                             f"({'; '.join(problems)}); {_REMEDY}")
    model.load_state_dict(weights)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a trained model from its checkpoint alone (no recipe needed).

    Args:
        path: a checkpoint written by ``pixelwise train`` (``best.pt`` or ``last.pt``).
        device: where the model goes.

    Returns:
        The model in eval mode, its classes and its input normalisation.
    """
    return model_from_checkpoint(load_checkpoint(path), device, repr(str(path)))


def is_onnx(path: str | Path) -> bool:
    """Whether ``path`` names an ONNX file (by its suffix)."""
    return Path(path).suffix.lower() == ".onnx"


def load_predictor(path: str | Path, runtime: str | None = None, precision: str | None = None,
                   device: str | torch.device = "cpu", threads: int | None = None,
                   state: dict[str, Any] | None = None) -> LoadedModel:
    """A checkpoint or an exported ONNX file, ready to predict.

    Args:
        path: a checkpoint (``.pt`` / ``.safetensors``) or an ONNX file from ``pixelwise export``.
        runtime: ``"torch"`` (default for checkpoints), ``"torch-optimized"`` (batch norms
            folded, channels-last) or ``"onnxruntime"`` (default, and the only choice, for ONNX
            files; from a checkpoint, the model is exported to a temporary fp32 file first).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for PyTorch runtimes; default: the
            precision the run validated with (:func:`validation_precision`). An ONNX file
            computes in its own precision (fp32 or int8).
        device: where a PyTorch model runs.
        threads: ONNX Runtime's intra-op threads (default: PyTorch's).
        state: the checkpoint's contents, when already loaded.

    Returns:
        The runtime (as ``model``), classes, normalisation and recorded inference options.
    """
    if runtime is not None and runtime not in RUNTIMES:
        raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if precision is not None:
        check_precision(precision)
    if state is None and is_onnx(path):
        return _load_onnx(path, runtime, precision, threads)
    state = load_checkpoint(path) if state is None else state
    loaded = model_from_checkpoint(state, device, repr(str(path)))
    if runtime == "onnxruntime":
        return _exported_on_the_fly(path, loaded, precision or "fp32", threads)
    precision = precision or validation_precision(state)
    if precision == "int8":
        raise InputError("int8 runs in ONNX Runtime from a quantised file: pixelwise export --checkpoint "
                         f"{path} --int8 --calibrate FORMAT:ROOT:SPLIT --out model_int8.onnx, then --model "
                         "model_int8.onnx")
    model = TorchRuntime(loaded.model, precision, optimize=runtime == "torch-optimized")
    return loaded._replace(model=model, inference={**(loaded.inference or {}), "precision": precision})


def validation_precision(state: dict[str, Any]) -> str:
    """The precision a run validated with: recorded with the inference options, or (checkpoints
    that predate the record) the recipe's ``train.amp``, else fp32."""
    recorded = (state.get("inference") or {}).get("precision")
    amp = ((state.get("config") or {}).get("train") or {}).get("amp")
    return recorded or amp or "fp32"


def _load_onnx(path: str | Path, runtime: str | None, precision: str | None, threads: int | None) -> LoadedModel:
    if runtime not in (None, "onnxruntime"):
        raise InputError(f"{str(path)!r} is an ONNX file, which runs in ONNX Runtime; drop --runtime {runtime} "
                         f"or pass the checkpoint instead")
    loaded = load_onnx(path, threads)
    if precision is not None and precision != loaded.model.precision:
        raise InputError(f"{str(path)!r} computes in {loaded.model.precision}, not {precision}; export it again "
                         f"for {precision} (pixelwise export {'--int8 ' if precision == 'int8' else ''}...)")
    return loaded


def _exported_on_the_fly(path: str | Path, loaded: LoadedModel, precision: str, threads: int | None) -> LoadedModel:
    """The checkpoint's model exported to a temporary fp32 ONNX file and run by ONNX Runtime."""
    if precision != "fp32":
        raise InputError(f"ONNX Runtime from a checkpoint runs in fp32, not {precision}; for int8 export a "
                         f"calibrated file with pixelwise export --int8 and pass it with --model")
    with tempfile.TemporaryDirectory(prefix="pixelwise-onnx-") as folder:
        file = Path(folder) / "model.onnx"
        import onnx

        onnx.save(onnx_proto(loaded.model.cpu(), f"{path}"), str(file))
        model = OnnxRuntime(file, threads)  # the session holds the graph: the file may go
    return loaded._replace(model=model, inference={**(loaded.inference or {}), "precision": "fp32"})


# Exported ONNX files ---------------------------------------------------------------------------

def metadata_digest(metadata: dict[str, str]) -> str:
    """SHA-256 over an exported file's ``pixelwise.*`` metadata (its checksum entry excluded)."""
    digest = hashlib.sha256()
    for key in sorted(metadata):
        if key.startswith("pixelwise.") and key != CHECKSUM_KEY:
            digest.update(json.dumps([key, metadata[key]]).encode())
    return digest.hexdigest()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The pixelwise metadata of an exported ONNX file, checked: its checksum (files written
    since it was introduced), and its record against the graph's output channels
    (:func:`~pixelwise.inference.record.check_record`; the spec's weight sources dropped).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not ONNX, carries no pixelwise metadata, or metadata that was
            edited, or that does not describe its graph (the message names the field).
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"ONNX model {str(path)!r} does not exist; export one with pixelwise export")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError as error:
        raise InputError(f"{str(path)!r} is not an ONNX model (it does not parse: {error}); "
                         f"export one with pixelwise export --format onnx") from error
    props = {prop.key: prop.value for prop in model.metadata_props}
    missing = [key for key in ("model_spec", "classes", "normalization") if f"pixelwise.{key}" not in props]
    if missing:
        raise InputError(f"{str(path)!r} is an ONNX model without pixelwise metadata (missing {missing}); "
                         f"export it with pixelwise export, which records classes, palette and normalisation")
    if CHECKSUM_KEY in props and metadata_digest(props) != props[CHECKSUM_KEY]:
        raise InputError(f"{str(path)!r} is damaged or was edited: its pixelwise metadata (model spec, class names, "
                         f"normalisation, inference options) no longer matches the checksum written with it; "
                         f"{_EXPORT_REMEDY}")
    try:
        metadata = {key: json.loads(props[f"pixelwise.{key}"]) for key in METADATA_KEYS
                    if f"pixelwise.{key}" in props}
    except json.JSONDecodeError as error:
        raise InputError(f"{str(path)!r} has pixelwise metadata that is not valid JSON ({error}); {_EXPORT_REMEDY}") from None
    metadata = check_record(metadata, repr(str(path)), _output_channels(model, path), _EXPORT_REMEDY)
    metadata["version"] = props.get("pixelwise.version")
    metadata["precision"] = props.get("pixelwise.precision", "fp32")
    if metadata["precision"] not in PRECISIONS:
        raise ModelFileError(f"{str(path)!r}: pixelwise.precision is {metadata['precision']!r}, not one of "
                             f"{', '.join(PRECISIONS)}; {_EXPORT_REMEDY}")
    return metadata


def _output_channels(model: Any, path: Path) -> int:
    """The channels of the graph's logits ``(N, C, H, W)``, which must be fixed."""
    outputs = model.graph.output
    dims = outputs[0].type.tensor_type.shape.dim if len(outputs) == 1 else []
    if len(dims) != 4 or not dims[1].HasField("dim_value"):
        raise ModelFileError(f"{str(path)!r}: the graph does not output one (N, classes, H, W) tensor with a fixed "
                             f"number of classes; {_EXPORT_REMEDY}")
    return dims[1].dim_value


def load_onnx(path: str | Path, threads: int | None = None) -> LoadedModel:
    """An exported ONNX file as a runtime, with its classes and normalisation: everything
    prediction needs, no checkpoint."""
    metadata = read_metadata(path)
    normalization = {key: [float(v) for v in metadata["normalization"][key]] for key in ("mean", "std")}
    runtime = OnnxRuntime(path, threads, precision=metadata["precision"])
    return LoadedModel(runtime, ClassInfo.from_dict(metadata["classes"]), normalization,
                       {**(metadata.get("inference") or {}), "precision": metadata["precision"]})
