"""ONNX Runtime: an exported model (``pixelwise export --format onnx``, fp32 or int8) as a runtime.

Loading an ONNX file runs no Python code: the file is a protobuf graph of standard operators.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pixelwise.errors import InputError

METADATA_PRECISION = "pixelwise.precision"


class OnnxRuntime:
    """An ONNX file run by ONNX Runtime on the CPU.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: PyTorch's thread count, so runtimes compare alike).
        precision: what the file computes in (read from its metadata by
            :func:`pixelwise.inference.loading.load_onnx`; ``"fp32"`` or ``"int8"``).
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "fp32") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except (ort.capi.onnxruntime_pybind11_state.Fail,  # corrupt or truncated protobuf
                ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph) as error:
            raise InputError(f"{str(path)!r} is not a readable ONNX model ({str(error).splitlines()[0]}); "
                             f"export it again with pixelwise export --format onnx") from error
        self.input_name = self.session.get_inputs()[0].name
        self.path, self.precision, self.device = Path(path), precision, torch.device("cpu")

    def __call__(self, batch: Tensor) -> Tensor:
        array = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)
