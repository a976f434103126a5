"""A PyTorch model as an ONNX graph (``torch.onnx.export``, dynamo), with dynamic batch, height
and width: what ``pixelwise export`` writes, and what ONNX Runtime runs when asked to run a
checkpoint."""
from __future__ import annotations

import torch
from torch import nn
from torch.export import Dim

from pixelwise.errors import PixelwiseError

OPSET = 18
EXAMPLE_SIZE = (67, 93)
"""Height and width of the example input the graph is traced with: odd and no multiple of any
stride, so no size-dependent branch is taken that only even or aligned sizes would take."""


class ExportError(PixelwiseError, RuntimeError):
    """The model could not be exported, or the export does not compute what the model does."""


def onnx_proto(model: nn.Module, name: str = "model", opset: int = OPSET):
    """The model as an ONNX ``ModelProto`` with dynamic batch, height and width.

    Raises:
        ExportError: the exporter failed; the message names the model and the operator.
    """
    example = torch.randn(1, model.in_channels if hasattr(model, "in_channels") else 3, *EXAMPLE_SIZE)
    # By position, whatever the forward's argument is called (x for segmentation, image for super-resolution).
    dynamic = ({0: Dim("batch", min=1, max=4096), 2: Dim("height", min=1, max=65536),
                3: Dim("width", min=1, max=65536)},)
    try:
        program = torch.onnx.export(model.eval(), (example,), dynamo=True, opset_version=opset,
                                    input_names=["image"], output_names=["logits"], dynamic_shapes=dynamic,
                                    optimize=True, verbose=False)
    except Exception as error:  # noqa: BLE001 - the exporter raises many types; all mean "cannot export"
        raise ExportError(f"model {name!r} cannot be exported to ONNX: {exporter_summary(error)}") from error
    return program.model_proto


def exporter_summary(error: BaseException) -> str:
    """The line of an exporter error that names what failed (the operator, or the Python construct)."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__
    lines = [line.strip() for e in chain for line in str(e).splitlines() if line.strip()]
    for marker in ("No ONNX function found", "Unsupported", "unsupported", "Error when translating", "TypeError"):
        hits = [line for line in lines if marker in line]
        if hits:
            return hits[0][:400]
    return f"{type(chain[-1]).__name__}: {lines[0][:400] if lines else ''}"
