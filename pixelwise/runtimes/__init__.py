"""What runs the network behind the one inference path: PyTorch (fp32, optimised, bf16 / fp16
autocast) and ONNX Runtime (fp32, int8), behind one small interface (:class:`Runtime`); and the
optimisation of a PyTorch model for inference (batch norms folded, channels-last).

:func:`pixelwise.inference.loading.load_predictor` builds one from a checkpoint or an ``.onnx``
file, with the classes and normalisation that go with it.
"""
from pixelwise.runtimes.base import PRECISIONS, Runtime, check_precision
from pixelwise.runtimes.onnx_runtime import OnnxRuntime
from pixelwise.runtimes.optimize import conv_bn_pairs, fold_batch_norms, optimize_for_inference
from pixelwise.runtimes.torch_runtime import TorchRuntime, autocast_context

__all__ = ["PRECISIONS", "OnnxRuntime", "Runtime", "TorchRuntime", "autocast_context", "check_precision",
           "conv_bn_pairs", "fold_batch_norms", "optimize_for_inference"]
