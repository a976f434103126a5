"""What runs the network behind the one inference path: PyTorch (fp32, optimised, bf16 / fp16
autocast) and ONNX Runtime (fp32, int8), behind one small interface (:class:`Runtime`).

:func:`pixelwise.engine.loading.load_predictor` builds one from a checkpoint or an ``.onnx``
file, with the classes and normalisation that go with it.
"""
from pixelwise.runtimes.base import PRECISIONS, Runtime, check_precision
from pixelwise.runtimes.onnx_runtime import OnnxRuntime
from pixelwise.runtimes.torch_runtime import TorchRuntime, autocast_context

__all__ = ["PRECISIONS", "OnnxRuntime", "Runtime", "TorchRuntime", "autocast_context",
           "check_precision"]
