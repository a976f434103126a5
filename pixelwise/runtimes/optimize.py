"""Making a trained model fast for inference, without changing what it computes.

:func:`optimize_for_inference` folds every batch norm into the convolution that feeds it (an
eval-mode batch norm is a per-channel affine map, so ``bn(conv(x))`` is one convolution with
rescaled weights and a shifted bias) and switches to the channels-last memory layout, which
oneDNN's CPU convolutions (and cuDNN's tensor-core kernels) run faster. The result is checked
against the original model on an example input before it is returned.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pixelwise.models.base import SegmentationModel


def conv_bn_pairs(model: nn.Module, example: Tensor) -> list[tuple[str, str]]:
    """Names of (convolution, batch norm) pairs where the batch norm consumes the convolution's
    output directly, found by running ``example`` through the model.

    Data flow, not module order, decides: a pair is kept only if each module ran exactly once
    and the batch norm's input *is* the convolution's output tensor.
    """
    produced: dict[int, tuple[Tensor, str]] = {}  # keeps outputs alive, so ids stay unique
    consumed: list[tuple[Tensor, str]] = []
    calls: dict[str, int] = {}

    def record(name: str, is_conv: bool):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            if is_conv:
                produced[id(output)] = (output, name)
            else:
                consumed.append((inputs[0], name))
        return hook

    handles = [module.register_forward_hook(record(name, isinstance(module, nn.Conv2d)))
               for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.BatchNorm2d))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    pairs = []
    for tensor, bn_name in consumed:
        source = produced.get(id(tensor))
        if source is not None and source[0] is tensor and calls[source[1]] == 1 and calls[bn_name] == 1:
            pairs.append((source[1], bn_name))
    return pairs


def fold_batch_norms(model: nn.Module, example: Tensor) -> int:
    """Fold, in place, each batch norm that directly follows a convolution into it (eval mode).

    Returns:
        The number of batch norms folded (each is replaced by ``nn.Identity``).
    """
    model.eval()
    pairs = conv_bn_pairs(model, example)
    for conv_name, bn_name in pairs:
        fused = fuse_conv_bn_eval(model.get_submodule(conv_name), model.get_submodule(bn_name))
        _replace(model, conv_name, fused)
        _replace(model, bn_name, nn.Identity())
    return len(pairs)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def optimize_for_inference(model: nn.Module, example: Tensor | None = None, channels_last: bool = True,
                           fold_batch_norm: bool = True, tolerance: float = 1e-3) -> nn.Module:
    """An eval-mode copy of ``model`` that computes the same logits faster.

    Args:
        model: a segmentation model. Its weights and layout are not changed (the result is a copy),
            but it is switched to eval mode to check the copy against it, and stays there.
        example: an input to trace the data flow with and to check the result on; by default a
            random ``1×3×64×64`` image.
        channels_last: store weights in the channels-last layout (a
            :class:`~pixelwise.models.SegmentationModel` converts its inputs to it too).
        fold_batch_norm: fold batch norms into the convolutions they follow.
        tolerance: largest accepted absolute difference of the logits, relative to their scale.

    Raises:
        RuntimeError: the optimised model does not reproduce the original's logits.
    """
    example = torch.randn(1, 3, 64, 64) if example is None else example
    original = model.eval()
    optimized = copy.deepcopy(model).eval()
    if fold_batch_norm:
        fold_batch_norms(optimized, example)
    if channels_last and isinstance(optimized, SegmentationModel):
        optimized.to_channels_last()
    elif channels_last:
        optimized.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, actual = original(example), optimized(example)
    error = (expected - actual).abs().max().item()
    scale = expected.abs().max().item() or 1.0
    if error > tolerance * scale:
        raise RuntimeError(f"optimised model differs from the original by {error:.3g} (scale {scale:.3g}); "
                           f"use optimize_for_inference(..., fold_batch_norm=False)")
    return optimized
