"""From a file to something that predicts: a checkpoint or an exported ``.onnx`` file, run by
the runtime and at the precision asked for, with the classes and normalisation that go with it."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from pixelwise.engine.checkpoint import LoadedModel, load_checkpoint, model_from_checkpoint
from pixelwise.runtimes.base import check_precision
from pixelwise.runtimes.onnx_runtime import OnnxRuntime
from pixelwise.runtimes.torch_runtime import TorchRuntime

RUNTIMES = ("torch", "torch-optimized", "onnxruntime")


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
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
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
        raise ValueError("int8 runs in ONNX Runtime from a quantised file: pixelwise export --checkpoint "
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
    from pixelwise.export import load_onnx

    if runtime not in (None, "onnxruntime"):
        raise ValueError(f"{str(path)!r} is an ONNX file, which runs in ONNX Runtime; drop --runtime {runtime} "
                         f"or pass the checkpoint instead")
    loaded = load_onnx(path, threads)
    if precision is not None and precision != loaded.model.precision:
        raise ValueError(f"{str(path)!r} computes in {loaded.model.precision}, not {precision}; export it again "
                         f"for {precision} (pixelwise export {'--int8 ' if precision == 'int8' else ''}...)")
    return loaded


def _exported_on_the_fly(path: str | Path, loaded: LoadedModel, precision: str, threads: int | None) -> LoadedModel:
    """The checkpoint's model exported to a temporary fp32 ONNX file and run by ONNX Runtime."""
    from pixelwise.export import onnx_proto

    if precision != "fp32":
        raise ValueError(f"ONNX Runtime from a checkpoint runs in fp32, not {precision}; for int8 export a "
                         f"calibrated file with pixelwise export --int8 and pass it with --model")
    with tempfile.TemporaryDirectory(prefix="pixelwise-onnx-") as folder:
        file = Path(folder) / "model.onnx"
        import onnx

        onnx.save(onnx_proto(loaded.model.cpu(), f"{path}"), str(file))
        model = OnnxRuntime(file, threads)  # the session holds the graph: the file may go
    return loaded._replace(model=model, inference={**(loaded.inference or {}), "precision": "fp32"})
