"""The encoder contract and the pieces every encoder shares.

An encoder maps an image batch to a list of feature maps, highest resolution first, and says
what it returns: ``channels[i]``, ``reductions[i]`` (the stride of feature ``i`` relative to the
input) and ``grids[i]`` (where that map's pixels sit on the input, found by tracing the encoder).
Decoders consume only this, so any encoder works with any decoder.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from pixelwise.errors import InputError
from pixelwise.geometry.tracer import feature_geometry
from pixelwise.layers.align import Grid


class Encoder(nn.Module):
    """Base class: subclasses set ``channels`` and ``reductions`` and implement ``forward``."""

    channels: list[int]
    reductions: list[int]

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def grids(self) -> list[Grid]:
        """Where each returned map sits on the input: pixel ``j`` of feature ``i`` is centred on
        input position ``grids[i].offset + reductions[i]·j``. ResNet and MobileNet, whose stride-2
        layers pad evenly, give offset 0 at every stride; VGG's 2×2 poolings ``(stride - 1)/2``;
        TensorFlow-style "same" padding ``stride - 1``. Found by tracing the encoder once
        (:func:`pixelwise.geometry.feature_geometry`), not read from a table, so any encoder
        (timm's included) declares it."""
        grids = self.__dict__.get("_grids")
        if grids is None:
            grids = traced_grids(self)
            self._grids = grids
        return list(grids)

    @property
    def output_stride(self) -> int:
        """The stride of the deepest feature."""
        return self.reductions[-1]


def stage_reductions(natural: Sequence[int], output_stride: int) -> list[int]:
    """Strides of the stages once every stride past ``output_stride`` is replaced by dilation."""
    if output_stride not in (8, 16, 32):
        raise InputError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    return [min(r, output_stride) for r in natural]


def dilate_stage(stage: nn.Module, previous_dilation: int, dilation: int) -> None:
    """Remove the downsampling of ``stage`` and dilate what follows it instead (atrous
    convolution), keeping every weight and parameter name.

    Walking the stage in definition order: the strided layer keeps ``previous_dilation`` and
    gets stride 1; every later convolution or pooling wider than 1×1 gets ``dilation``. For a
    torchvision ResNet this is exactly ``replace_stride_with_dilation``.
    """
    current = previous_dilation
    for module in stage.modules():
        if isinstance(module, nn.Conv2d):
            strided = module.stride != (1, 1)
            if strided:
                module.stride = (1, 1)
            if module.kernel_size != (1, 1):
                module.dilation = (current, current)
                module.padding = tuple(current * (k - 1) // 2 for k in module.kernel_size)
            if strided:
                current = dilation
        elif isinstance(module, nn.MaxPool2d) and module.stride not in (1, (1, 1)):
            # DeepLab-LargeFOV's rule for VGG: a 3×3 window at stride 1 keeps the size.
            module.kernel_size, module.stride, module.padding = 3, 1, 1
            current = dilation


def dilate_for_output_stride(stages: Sequence[nn.Module], natural: Sequence[int], output_stride: int) -> list[int]:
    """Dilate every stage whose natural stride exceeds ``output_stride``; return the new strides.

    Args:
        stages: the encoder's stages in order, one per returned feature.
        natural: the stride of each stage's output without dilation.
        output_stride: the largest stride to keep.
    """
    reductions = stage_reductions(natural, output_stride)
    dilation, previous_natural = 1, 1
    for stage, natural_stride, reduction in zip(stages, natural, reductions):
        if natural_stride > reduction:
            new_dilation = dilation * natural_stride // previous_natural
            dilate_stage(stage, dilation, new_dilation)
            dilation = new_dilation
        previous_natural = natural_stride
    return reductions


def traced_grids(encoder: Encoder) -> list[Grid]:
    """The grid of each feature ``encoder`` returns, from one traced forward pass at a size every
    stride divides twice (the sizes the models pad their inputs to).

    Raises:
        ValueError: a map's stride differs from the declared reduction, or its pixels sit
            differently along the height and the width (no single grid describes it).
    """
    size = 2 * max(32, max(encoder.reductions))
    grids = []
    for index, (axes, reduction) in enumerate(zip(feature_geometry(encoder, size), encoder.reductions)):
        if axes is None:
            raise InputError(f"{type(encoder).__name__} feature {index} is not a 2-D map on its input")
        height, width = axes
        if (height.stride, height.center) != (width.stride, width.center):
            raise InputError(f"{type(encoder).__name__} feature {index} sits differently along the height "
                             f"({height}) and the width ({width}); decoders need one grid per map")
        if height.stride != reduction:
            raise InputError(f"{type(encoder).__name__} declares reduction {reduction} for feature {index}, "
                             f"but tracing finds stride {height.stride}")
        grids.append(Grid(height.stride, height.center))
    return grids
