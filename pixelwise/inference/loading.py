"""From a model file to something that predicts: any file pixelwise writes (a checkpoint, a
safetensors file, a model folder, an exported ``.onnx``), read through
:func:`~pixelwise.io.model_file.read_model_file`, its record checked
(:func:`~pixelwise.inference.record.check_record`), run by the runtime and at the precision
asked for, with the classes and normalisation that go with it."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pixelwise.data.classes import ClassInfo
from pixelwise.errors import InputError
from pixelwise.inference.record import ModelFileError, check_record
from pixelwise.io.checkpoint import listing, non_finite_tensors
from pixelwise.io.model_file import ModelFile, onnx_output_channels, read_model_file
from pixelwise.io.record import CHECKSUM_KEY, PRECISIONS, RECORD_KEYS, ModelRecord, metadata_digest
from pixelwise.models import create_model, saved_options
from pixelwise.runtimes.base import check_precision
from pixelwise.runtimes.onnx_graph import onnx_proto
from pixelwise.runtimes.onnx_runtime import OnnxRuntime
from pixelwise.runtimes.torch_runtime import TorchRuntime

RUNTIMES = ("torch", "torch-optimized", "torch-compiled", "onnxruntime")
METADATA_KEYS = RECORD_KEYS
_EXPORT_REMEDY = "export it again with pixelwise export"
_REMEDY = "use the file as pixelwise wrote it (a run's best.pt or last.pt, or export it again with pixelwise export)"

__all__ = ["CHECKSUM_KEY", "PRECISIONS", "RUNTIMES", "LoadedModel", "architecture", "from_pretrained", "is_onnx",
           "load_model", "load_onnx", "load_predictor", "metadata_digest", "model_from_checkpoint", "read_metadata",
           "validation_precision"]


class LoadedModel(NamedTuple):
    """A trained model ready to predict, with what prediction needs to go with it.

    Attributes:
        model: what runs the network: the module, in eval mode, on the requested device, or a
            runtime (:mod:`pixelwise.runtimes`) built from it or from an exported file.
        classes: class names, palette and ignore index the model was trained with.
        normalization: ``{"mean": [...], "std": [...]}`` applied to images scaled to [0, 1].
        inference: the inference options the run validated with (``precision`` among them), or
            ``None`` for checkpoints that predate the record.
        model_spec: ``{"name", "num_classes", "options"}``: the architecture
            (:func:`architecture` rebuilds it untrained), whatever runs it.
    """

    model: Any
    classes: ClassInfo
    normalization: dict[str, list[float]]
    inference: dict[str, Any] | None = None
    model_spec: dict[str, Any] | None = None


def architecture(spec: dict[str, Any], source: str = "model file") -> torch.nn.Module:
    """The network a checked model spec describes, untrained (its weight sources are dropped
    by :func:`~pixelwise.inference.record.check_record`, so nothing is downloaded or read)."""
    try:
        return create_model(spec["name"], num_classes=spec["num_classes"],
                            **saved_options(spec["name"], spec["options"]))
    except (ValueError, TypeError) as error:  # a builder given an option it does not take, or a bad value
        raise ModelFileError(f"{source}: model_spec does not build a model ({error}); {_REMEDY}") from None


def _module(model_file: ModelFile, device: str | torch.device) -> LoadedModel:
    """The file's network rebuilt with its weights, its record checked."""
    record = check_record(model_file.record.fields(), model_file.source, remedy=_REMEDY)
    weights = model_file.weights
    if not isinstance(weights, dict) or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        raise ModelFileError(f"{model_file.source}: 'model' is not a mapping of parameter names to tensors; {_REMEDY}")
    diverged = non_finite_tensors(weights)
    if diverged:
        raise InputError(f"{model_file.source} holds NaN or infinite values in {listing(diverged)}: the run diverged "
                         f"before this was written, so it would predict nonsense; use an earlier checkpoint "
                         f"(best.pt), or train again with a lower optim.lr or optim.clip_grad_norm")
    model = architecture(record["model_spec"], model_file.source)
    _load_fitting(model, weights, record["model_spec"]["name"], model_file.source)
    return LoadedModel(model.to(device).eval(), ClassInfo.from_dict(record["classes"]), record["normalization"],
                       record["inference"], record["model_spec"])


def model_from_checkpoint(state: dict[str, Any], device: str | torch.device = "cpu",
                          source: str = "checkpoint") -> LoadedModel:
    """Rebuild the model of a loaded checkpoint (see :func:`~pixelwise.io.checkpoint.load_checkpoint`),
    weights included.

    Raises:
        ValueError: the checkpoint lacks the model spec, classes or normalisation (a bare state
            dict, or one not written by ``pixelwise train``).
        ModelFileError: its record fails :func:`~pixelwise.inference.record.check_record`, or its
            weights do not fit the model its spec describes.
    """
    record = ModelRecord.from_state(state, source)
    return _module(ModelFile(Path(), "checkpoint", record, state["model"], state, label=source), device)


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


def load_model(path: str | Path | ModelFile, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a trained PyTorch model from its file alone (no recipe needed).

    Args:
        path: a file that holds weights: a checkpoint written by ``pixelwise train``
            (``best.pt`` or ``last.pt``), a safetensors export or a model folder (or the file,
            already read).
        device: where the model goes.

    Returns:
        The module in eval mode (as ``model``), its classes, normalisation and model spec.

    Raises:
        ValueError: an ONNX file (a graph, not a network to train): load it with
            :func:`load_predictor`.
    """
    model_file = path if isinstance(path, ModelFile) else read_model_file(path)
    if model_file.weights is None:
        raise InputError(f"{model_file.source} is an exported {model_file.format} graph, not a PyTorch model's "
                         f"weights; run it with load_predictor (pixelwise predict --model), or pass the checkpoint "
                         f"or a model folder")
    return _module(model_file, device)


def from_pretrained(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A trained model from a model folder (``config.json`` + ``model.safetensors``, as
    ``pixelwise export --format folder`` writes it, the layout Hugging Face and
    segmentation_models.pytorch save), or from any other file that holds weights.

    ``from_pretrained(path).model`` is the ``torch.nn.Module`` in eval mode, ready to predict
    or to train further; ``.classes`` and ``.normalization`` say what its outputs mean and what
    its inputs must be. Nothing is downloaded: ``path`` is a local folder or file.
    """
    return load_model(path, device)


def is_onnx(path: str | Path) -> bool:
    """Whether ``path`` names an ONNX file (by its suffix)."""
    return Path(path).suffix.lower() == ".onnx"


def load_predictor(path: str | Path | ModelFile, runtime: str | None = None, precision: str | None = None,
                   device: str | torch.device = "cpu", threads: int | None = None) -> LoadedModel:
    """Any model file pixelwise writes, ready to predict.

    Args:
        path: a checkpoint (``.pt``), a safetensors export, a model folder or an ONNX file from
            ``pixelwise export`` (or the file, already read by
            :func:`~pixelwise.io.model_file.read_model_file`).
        runtime: ``"torch"`` (default for files with weights), ``"torch-optimized"`` (batch
            norms folded, channels-last), ``"torch-compiled"`` (optimised, then ``torch.compile``)
            or ``"onnxruntime"`` (default, and the only choice, for ONNX files; from weights, the
            model is exported to a temporary fp32 file first).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for PyTorch runtimes; default: the
            precision the run validated with (:func:`validation_precision`). An ONNX file
            computes in its own precision (fp32 or int8).
        device: where a PyTorch model runs.
        threads: ONNX Runtime's intra-op threads (default: PyTorch's).

    Returns:
        The runtime (as ``model``), classes, normalisation, recorded inference options and model
        spec.
    """
    if runtime is not None and runtime not in RUNTIMES:
        raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if precision is not None:
        check_precision(precision)
    model_file = path if isinstance(path, ModelFile) else read_model_file(path)
    if model_file.format == "onnx":
        return _load_onnx(model_file, runtime, precision, threads)
    loaded = _module(model_file, device)
    if runtime == "onnxruntime":
        return _exported_on_the_fly(model_file, loaded, precision or "fp32", threads)
    precision = precision or validation_precision(model_file.state or model_file.record.fields())
    if precision == "int8":
        raise InputError("int8 runs in ONNX Runtime from a quantised file: pixelwise export --checkpoint "
                         f"{model_file.path} --int8 --calibrate FORMAT:ROOT:SPLIT --out model_int8.onnx, then "
                         f"--model model_int8.onnx")
    model = TorchRuntime(loaded.model, precision, optimize=runtime == "torch-optimized",
                         compile=runtime == "torch-compiled")
    return loaded._replace(model=model, inference={**(loaded.inference or {}), "precision": precision})


def validation_precision(state: dict[str, Any]) -> str:
    """The precision a run validated with: recorded with the inference options, or (checkpoints
    that predate the record) the recipe's ``train.amp``, else fp32."""
    recorded = (state.get("inference") or {}).get("precision")
    amp = ((state.get("config") or {}).get("train") or {}).get("amp")
    return recorded or amp or "fp32"


def _load_onnx(model_file: ModelFile, runtime: str | None, precision: str | None, threads: int | None) -> LoadedModel:
    if runtime not in (None, "onnxruntime"):
        raise InputError(f"{model_file.source} is an ONNX file, which runs in ONNX Runtime; drop --runtime {runtime} "
                         f"or pass the checkpoint instead")
    loaded = load_onnx(model_file, threads)
    if precision is not None and precision != loaded.model.precision:
        raise InputError(f"{model_file.source} computes in {loaded.model.precision}, not {precision}; export it "
                         f"again for {precision} (pixelwise export {'--int8 ' if precision == 'int8' else ''}...)")
    return loaded


def _exported_on_the_fly(model_file: ModelFile, loaded: LoadedModel, precision: str,
                         threads: int | None) -> LoadedModel:
    """The model exported to a temporary fp32 ONNX file and run by ONNX Runtime."""
    if precision != "fp32":
        raise InputError(f"ONNX Runtime from a checkpoint runs in fp32, not {precision}; for int8 export a "
                         f"calibrated file with pixelwise export --int8 and pass it with --model")
    with tempfile.TemporaryDirectory(prefix="pixelwise-onnx-") as folder:
        file = Path(folder) / "model.onnx"
        import onnx  # optional at import: only ONNX users need it

        onnx.save(onnx_proto(loaded.model.cpu(), f"{model_file.path}"), str(file))
        model = OnnxRuntime(file, threads)  # the session holds the graph: the file may go
    return loaded._replace(model=model, inference={**(loaded.inference or {}), "precision": "fp32"})


# Exported ONNX files ---------------------------------------------------------------------------

def _checked_onnx(model_file: ModelFile) -> dict[str, Any]:
    """An ONNX file's record checked against its graph's output channels."""
    channels = onnx_output_channels(model_file.graph)
    if channels is None:
        raise ModelFileError(f"{model_file.source}: the graph does not output one (N, classes, H, W) tensor with a "
                             f"fixed number of classes; {_EXPORT_REMEDY}")
    return check_record(model_file.record.fields(), model_file.source, channels, _EXPORT_REMEDY)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The pixelwise record of an exported ONNX file, checked: its checksum, and its record
    against the graph's output channels (:func:`~pixelwise.inference.record.check_record`; the
    spec's weight sources dropped); with its ``version`` and ``precision``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not ONNX, carries no pixelwise metadata, or metadata that was
            edited, or that does not describe its graph (the message names the field).
    """
    if not is_onnx(path):
        raise InputError(f"{str(path)!r} is not an ONNX file (.onnx); pass an export of pixelwise export --format onnx")
    model_file = read_model_file(path)
    return {**_checked_onnx(model_file), "version": model_file.record.version,
            "precision": model_file.record.precision}


def load_onnx(path: str | Path | ModelFile, threads: int | None = None) -> LoadedModel:
    """An exported ONNX file as a runtime, with its classes, normalisation and model spec:
    everything prediction needs, no checkpoint."""
    model_file = path if isinstance(path, ModelFile) else read_model_file(path)
    record = _checked_onnx(model_file)
    precision = model_file.record.precision
    runtime = OnnxRuntime(model_file.path, threads, precision=precision)
    return LoadedModel(runtime, ClassInfo.from_dict(record["classes"]), record["normalization"],
                       {**(record.get("inference") or {}), "precision": precision}, record["model_spec"])
