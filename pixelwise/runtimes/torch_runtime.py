"""PyTorch runtimes: eager fp32, bf16 / fp16 autocast, and the optimised model (batch norms
folded, channels-last; :func:`pixelwise.runtimes.optimize.optimize_for_inference`)."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from pixelwise.errors import InputError
from pixelwise.runtimes.base import check_precision
from pixelwise.runtimes.compiled import CompiledOrEager
from pixelwise.runtimes.optimize import optimize_for_inference

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(precision: str | None, device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CPU or CUDA, fp16 on CUDA only; ``None`` or ``"fp32"``: full precision.

    The same context serves training steps (``train.amp``) and inference, so validation and
    ``pixelwise evaluate`` compute alike.
    """
    if precision in (None, "fp32"):
        return nullcontext()
    if precision not in _AUTOCAST_DTYPES:
        raise InputError(f"precision {precision!r} is not an autocast precision; choose bf16, fp16 or fp32 "
                         f"(int8 runs in ONNX Runtime: pixelwise export --int8)")
    if precision == "fp16" and device.type != "cuda":
        raise InputError("fp16 autocast needs a CUDA device; on CPU use bf16")
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def slow_precision_warning(precision: str | None, device: torch.device) -> str | None:
    """Why ``precision`` would be slow on ``device``, or ``None``: bf16 autocast on a CPU without
    bf16 instructions (AVX512-BF16 or AMX) is emulated, several times slower than float32."""
    if precision != "bf16" or device.type != "cpu" or cpu_has_bf16():
        return None
    return ("this CPU has no bf16 instructions (AVX512-BF16 or AMX), so bf16 autocast is emulated: a "
            "U-Net-ResNet18 training step measured 18× slower than in float32; set train.amp: null on this "
            "machine")


def choose_precision(requested: str | None, device: torch.device) -> tuple[str | None, str]:
    """The autocast precision to compute in for ``requested`` (``"auto"`` is decided here from
    the hardware; anything else is kept) and why.

    ``auto``: bf16 on a CPU that computes it natively (AVX512-BF16 or AMX, :func:`cpu_has_bf16`)
    and on a GPU with bf16 units; float32 (``None``) elsewhere: on other CPUs bf16 autocast is
    emulated, many times slower than float32, and fp16 needs a gradient scaler that training does
    not use.
    """
    if requested != "auto":
        return requested, "as the recipe sets it"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "this GPU computes bf16"
        return None, "this GPU has no bf16 units (fp16 would need a gradient scaler): fp32"
    if device.type == "cpu":
        if cpu_has_bf16():
            return "bf16", "this CPU computes bf16 natively (AVX512-BF16 or AMX)"
        return None, ("this CPU has no bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast is emulated "
                      "and many times slower: fp32")
    return None, f"fp32 on {device.type}"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (oneDNN's test: AVX512-BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def module_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class TorchRuntime:
    """A PyTorch model as a runtime: eval mode (the training flag is restored after each call),
    no autograd, autocast at the given precision, logits returned as float32.

    Args:
        model: maps ``(N, 3, H, W)`` to logits ``(N, classes, H, W)``.
        precision: ``"fp32"``, ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA).
        optimize: run :func:`~pixelwise.runtimes.optimize.optimize_for_inference` on a copy first
            (batch norms folded, channels-last); the original model is left untouched.
        compile: also compile the (optimised) model with ``torch.compile``
            (:class:`~pixelwise.runtimes.compiled.CompiledOrEager`): the first batch of each
            input shape compiles (seconds to a minute on a CPU; after two shapes, one graph for
            any size), later ones run the compiled graph. A model that cannot compile runs eagerly
            after one warning.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", optimize: bool = False,
                 compile: bool = False) -> None:
        if check_precision(precision) == "int8":
            raise InputError("int8 runs in ONNX Runtime: export the model with pixelwise export --int8 and "
                             "predict with --model FILE.onnx")
        self.device = module_device(model)
        autocast_context(precision, self.device)  # refuse fp16 on the CPU now, not at the first batch
        if optimize or compile:
            model = optimize_for_inference(model, example=torch.randn(1, 3, 64, 64, device=self.device))
        self.model, self.precision = model, precision
        self.compiled = CompiledOrEager(model, "the torch-compiled runtime") if compile else None
        self.name = "torch-compiled" if compile else "torch-optimized" if optimize else "torch"

    def __call__(self, batch: Tensor) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), autocast_context(self.precision, self.device):
                batch = batch.to(self.device)
                if self.compiled is not None:
                    return self.compiled.run(lambda network: network(batch).float())
                return self.model(batch).float()
        finally:
            self.model.train(was_training)
