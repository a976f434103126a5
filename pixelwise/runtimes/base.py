"""What runs the network behind :mod:`pixelwise.inference.logits`: one small interface.

A runtime maps a batch of *normalised* images ``(N, 3, H, W)`` (float32) to logits
``(N, classes, H, W)`` (float32) at the same size, for any ``H`` and ``W``; everything around
that (normalisation, windows, blending, test-time augmentation, large images) is the inference
path's job, so every runtime gets it for free.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from pixelwise.errors import InputError

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
"""``fp32``: full precision; ``bf16`` / ``fp16``: PyTorch autocast (fp16 on CUDA only);
``int8``: an ONNX file quantised by ``pixelwise export --int8``."""


@runtime_checkable
class Runtime(Protocol):
    """Runs a segmentation network on normalised batches.

    Attributes:
        name: the runtime's kind (``"torch"``, ``"torch-optimized"``, ``"onnxruntime"``).
        precision: one of :data:`PRECISIONS`.
        device: where inputs go and logits come back.
    """

    name: str
    precision: str
    device: torch.device

    def __call__(self, batch: Tensor) -> Tensor:
        """Logits ``(N, classes, H, W)``, float32 on :attr:`device`, of ``batch`` ``(N, 3, H, W)``."""
        ...


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a clear error."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision
