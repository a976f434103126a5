"""A super-resolution network to ONNX, checked before the file is kept.

``pixelwise export --checkpoint runs/superres_x/best.pt --format onnx --out sr.onnx`` (the command
tells a super-resolution checkpoint from a segmentation one): one graph with dynamic batch,
height and width (:func:`~pixelwise.runtimes.onnx_graph.onnx_proto`), the network's spec and the
pixelwise version in its metadata (:func:`~pixelwise.io.model_file.write_superres_onnx`), so
``superres upscale`` and ``superres compare`` take the file as they take the checkpoint.

**Parity.** ONNX Runtime runs the file beside eager PyTorch on random luminance images of three
sizes (one odd, one a batch of two); the outputs, in [0, 1], must agree within
:data:`PARITY_TOLERANCE`, or the export is an error and no file is left behind (the graph is
written to a temporary name and renamed only once it passed). The target is checked as a
segmentation export's is (:func:`~pixelwise.export.check_target`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pixelwise.export import check_target
from pixelwise.io.atomic import publish, remove_orphan_temporaries, temporary_name
from pixelwise.io.model_file import write_superres_onnx
from pixelwise.runtimes.onnx_graph import ExportError, onnx_proto
from pixelwise.runtimes.onnx_runtime import OnnxRuntime
from pixelwise.superres.train import load_superres_model

PARITY_SIZES = ((1, 1, 67, 93), (2, 1, 31, 17), (1, 1, 128, 160))
PARITY_TOLERANCE = 1e-4  # of outputs in [0, 1]: float32 in two orders of summation, not a wrong graph


@dataclass
class SuperResExport:
    """What was written: the file and, with parity checked, the largest output difference."""

    path: Path
    max_difference: float | None = None


def export_superres(checkpoint: str | Path, out: str | Path, parity: bool = True, overwrite: bool = False,
                    on_line: Callable[[str], None] | None = None) -> SuperResExport:
    """Export a ``superres train`` checkpoint to ONNX, checked against PyTorch before it is kept.

    Raises:
        ExportTargetError: ``out`` may not be written (checked before any work).
        ExportError: the network does not export, or ONNX Runtime does not compute what it does.
    """
    out = check_target(checkpoint, out, overwrite)
    remove_orphan_temporaries(out.parent, out.name)  # of an export to the same file that was killed
    model, spec = load_superres_model(checkpoint)
    say = on_line or (lambda line: None)
    temporary = temporary_name(out, "fp32")
    try:
        write_superres_onnx(onnx_proto(model, spec["name"]), spec, temporary)
        report = SuperResExport(out)
        if parity:
            report.max_difference = _parity(model, OnnxRuntime(temporary), say)
        publish(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
    return report


def _parity(model: torch.nn.Module, runtime: OnnxRuntime, say: Callable[[str], None]) -> float:
    """The largest difference between the two on random images of :data:`PARITY_SIZES`."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    say("parity, ONNX Runtime fp32 against eager PyTorch fp32 (outputs in [0, 1]):")
    for size in PARITY_SIZES:
        image = torch.rand(size, generator=generator)
        with torch.no_grad():
            expected = model(image)
        actual = runtime(image)
        if actual.shape != expected.shape:
            raise ExportError(f"the ONNX graph gives {tuple(actual.shape)} for {size}, the network "
                              f"{tuple(expected.shape)}; no file was written")
        difference = float((actual - expected).abs().max())
        say(f"  {size[0]}×{size[2]}×{size[3]}: max difference {difference:.2e}")
        worst = max(worst, difference)
    if worst > PARITY_TOLERANCE:
        raise ExportError(f"the ONNX export does not compute what the network does (max difference {worst:.2e} > "
                          f"{PARITY_TOLERANCE}); no file was written")
    return worst
