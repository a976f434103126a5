"""One rule per torch operation: its output shape, its geometry and its size rule.

:func:`effect_of` picks the rule for a call; operations without one pass the geometry through,
as elementwise operations (two or more maps: a merge), or approximately, marked.
"""
from __future__ import annotations

import math
import operator
from fractions import Fraction
from typing import Any, Callable

import torch
from torch import Tensor

from pixelwise.geometry.axes import Axis, as_pair, hull, per_axis
from pixelwise.geometry.effects import (Call, Effect, Node, approximate_effect, is_image, pass_through, reshaped_dims,
                                        tensors_in)
from pixelwise.geometry.propagation import NONE, SAME, Rule, window_size
from pixelwise.geometry.sizes import conv_transpose_output_size


def _conv_padding(padding: Any, extents: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding before and after the input, per axis; ``"same"`` pads an odd pixel after, as PyTorch."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        return per_axis(lambda i: ((extents[i] - 1) // 2, extents[i] - 1 - (extents[i] - 1) // 2))
    return per_axis(lambda i: (as_pair(padding)[i],) * 2)


def _conv2d(call: Call) -> Effect:
    node, weight = call.node, call.arg(1, "weight")
    if not is_image(node):
        return approximate_effect(call)
    kernel, stride, dilation = weight.shape[-2:], as_pair(call.arg(3, "stride", 1)), as_pair(call.arg(5, "dilation", 1))
    extents = per_axis(lambda i: dilation[i] * (kernel[i] - 1) + 1)
    pads = _conv_padding(call.arg(4, "padding", 0), extents)
    args = per_axis(lambda i: (kernel[i], stride[i], pads[i][0], dilation[i], None, pads[i][1] - pads[i][0]))
    sizes = per_axis(lambda i: window_size(node.spatial()[i], *args[i]))
    axes = per_axis(lambda i: node.axes[i].window(extents[i], stride[i], pads[i][0]))
    shape = (node.tensor.shape[0], weight.shape[0], *sizes)
    macs = math.prod(shape) * weight[0].numel()  # each output value: in_channels / groups × kernel taps
    return Effect(axes, node.dims, shape, per_axis(lambda i: Rule("window", args[i])), "op", "conv2d", macs)


def _conv_transpose2d(call: Call) -> Effect:
    node, weight = call.node, call.arg(1, "weight")
    if not is_image(node):
        return approximate_effect(call)
    stride, padding = as_pair(call.arg(3, "stride", 1)), as_pair(call.arg(4, "padding", 0))
    output_padding, groups = as_pair(call.arg(5, "output_padding", 0)), call.arg(6, "groups", 1)
    kernel, dilation = weight.shape[-2:], as_pair(call.arg(7, "dilation", 1))
    args = per_axis(lambda i: (kernel[i], stride[i], padding[i], output_padding[i], dilation[i]))
    sizes = per_axis(lambda i: conv_transpose_output_size(node.spatial()[i], *args[i]))
    axes = per_axis(lambda i: node.axes[i].transposed(dilation[i] * (kernel[i] - 1) + 1, stride[i], padding[i]))
    shape = (node.tensor.shape[0], weight.shape[1] * groups, *sizes)
    macs = node.tensor.numel() * weight[0].numel()  # each input value scatters out_channels / groups kernels
    rules = per_axis(lambda i: Rule("transposed", args[i]))
    return Effect(axes, node.dims, shape, rules, "op", "conv_transpose2d", macs)


def _pool2d(call: Call) -> Effect:
    node = call.node
    if not is_image(node):
        return approximate_effect(call)
    is_max = call.op == "max_pool2d"  # avg_pool2d has no dilation argument
    kernel = as_pair(call.arg(1, "kernel_size"))
    stride = as_pair(call.arg(2, "stride") or kernel)
    padding = as_pair(call.arg(3, "padding", 0))
    dilation = as_pair(call.arg(4, "dilation", 1)) if is_max else (1, 1)
    ceil_mode = bool(call.arg(5 if is_max else 4, "ceil_mode", False))
    args = per_axis(lambda i: (kernel[i], stride[i], padding[i], dilation[i], ceil_mode, 0))
    sizes = per_axis(lambda i: window_size(node.spatial()[i], *args[i]))
    axes = per_axis(lambda i: node.axes[i].window(dilation[i] * (kernel[i] - 1) + 1, stride[i], padding[i]))
    rules = per_axis(lambda i: Rule("window", args[i]))
    return Effect(axes, node.dims, (*node.tensor.shape[:2], *sizes), rules, "op", call.op)


def _adaptive_pool2d(call: Call) -> Effect:
    node = call.node
    if not is_image(node):
        return approximate_effect(call)
    wanted = as_pair(call.arg(1, "output_size"))  # None keeps that axis's size
    sizes = per_axis(lambda i: node.spatial()[i] if wanted[i] is None else wanted[i])
    axes = per_axis(lambda i: node.axes[i].adaptive(node.spatial()[i], sizes[i]))
    rules = per_axis(lambda i: SAME if wanted[i] is None else Rule("fixed", (wanted[i],)))
    return Effect(axes, node.dims, (*node.tensor.shape[:2], *sizes), rules, "op", call.op)


_RESIZE_REACH = {"nearest": 0, "nearest-exact": 0, "bilinear": 1, "linear": 1, "bicubic": 3}


def _interpolate(call: Call) -> Effect:
    node = call.node
    mode = call.arg(3, "mode", "nearest")
    if not is_image(node) or (mode not in _RESIZE_REACH and mode != "area"):
        return approximate_effect(call)
    size, factor = call.arg(1, "size"), call.arg(2, "scale_factor")
    align_corners, recompute = call.arg(4, "align_corners"), call.arg(5, "recompute_scale_factor")
    before = node.spatial()
    if size is not None:
        after = as_pair(size)
        scales = per_axis(lambda i: Fraction(after[i], before[i]))
        rules = per_axis(lambda i: Rule("resize_to", (after[i],)))
    else:
        factors = as_pair(factor)
        after = per_axis(lambda i: math.floor(before[i] * float(factors[i])))
        # PyTorch maps coordinates with the factor given, unless asked to recompute it from the sizes.
        scales = per_axis(lambda i: Fraction(after[i], before[i]) if recompute
                      else Fraction(float(factors[i])).limit_denominator(10**6))
        rules = per_axis(lambda i: Rule("scale", (scales[i],)))
    axes = per_axis(lambda i: _resized(node.axes[i], mode, before[i], after[i], scales[i], align_corners))
    details = {"mode": mode, "scale": scales, "align_corners": bool(align_corners)}
    # Antialiased downsampling widens the kernel beyond what is modelled here.
    approximate = bool(call.arg(6, "antialias", False)) and min(scales) < 1
    return Effect(axes, node.dims, (*node.tensor.shape[:2], *after), rules, "resize", "interpolate",
                   approximate=approximate, details=details)


def _resized(axis: Axis, mode: str, before: int, after: int, scale: Fraction, align_corners: bool | None) -> Axis:
    if mode == "area":
        return axis.adaptive(before, after)
    reach = _RESIZE_REACH[mode] if before > 1 else 0
    if align_corners and mode != "nearest" and mode != "nearest-exact":
        return axis.corner_resample(Fraction(before - 1, after - 1) if after > 1 else Fraction(0), reach)
    return axis.resample(scale, reach)


def _pixel_shuffle(call: Call) -> Effect:
    node = call.node
    if not is_image(node):
        return approximate_effect(call)
    factor = call.arg(1, "upscale_factor" if call.op == "pixel_shuffle" else "downscale_factor")
    (batch, channels), (height, width) = node.tensor.shape[:2], node.spatial()
    if call.op == "pixel_shuffle":  # each input pixel's s² channels become an s×s block
        shape = (batch, channels // factor**2, height * factor, width * factor)
        axes = per_axis(lambda i: node.axes[i].resample(Fraction(factor)))
        rule = Rule("scale", (Fraction(factor),))
        return Effect(axes, node.dims, shape, (rule, rule), "resize", call.op,
                       details={"mode": "pixel shuffle", "scale": (Fraction(factor),) * 2})
    shape = (batch, channels * factor**2, height // factor, width // factor)
    axes = per_axis(lambda i: node.axes[i].window(factor, factor, 0))
    rule = Rule("window", (factor, factor, 0, 1, None, 0))
    return Effect(axes, node.dims, shape, (rule, rule), "op", call.op)


def _pad(call: Call) -> Effect:
    node, pads = call.node, list(call.arg(1, "pad"))
    if node.dims is None:
        return approximate_effect(call)
    shape = list(node.tensor.shape)
    sides: dict[int, tuple[int, int]] = {}
    for k in range(0, len(pads), 2):
        dim = node.tensor.dim() - 1 - k // 2
        shape[dim] += pads[k] + pads[k + 1]
        sides[dim] = (pads[k], pads[k + 1])
    (top, bottom), (left, right) = (sides.get(d, (0, 0)) for d in node.dims)
    axes = (node.axes[0].shift(-top), node.axes[1].shift(-left))
    rules = (Rule("border", (top + bottom,)), Rule("border", (left + right,)))
    kind = "pad" if any((top, bottom, left, right)) else None
    details = {"top": top, "bottom": bottom, "left": left, "right": right, "mode": call.arg(2, "mode", "constant")}
    return Effect(axes, node.dims, tuple(shape), rules, kind, "pad", details=details)


def _getitem(call: Call) -> Effect:
    node = call.node
    if node.dims is None:  # picking from flattened features (a class token): still everything seen
        return Effect(node.axes, None, None, (NONE, NONE))
    entries = _index_entries(call.arg(1, "index"), node.tensor.dim())
    if entries is None:
        return approximate_effect(call)
    shape: list[int] = []
    slices: dict[int, tuple[int, int, int]] = {}  # input dim -> (start, step, output dim)
    dim = 0
    for entry in entries:
        if entry is None:  # a new axis consumes no input dimension
            shape.append(1)
            continue
        if isinstance(entry, slice):
            start, stop, step = entry.indices(node.tensor.shape[dim])
            slices[dim] = (start, step, len(shape))
            shape.append(len(range(start, stop, step)))
        elif dim in node.dims:
            return approximate_effect(call)  # an integer index drops a spatial axis
        dim += 1
    return _crop_effect(node, slices, tuple(shape))


def _index_entries(index: Any, ndim: int) -> list | None:
    """One entry per input dimension, plus ``None`` entries (new axes); None when unsupported."""
    entries = list(index) if isinstance(index, tuple) else [index]
    for entry in entries:
        if isinstance(entry, (Tensor, bool, list)):
            return None  # advanced indexing
        if not (entry is None or entry is Ellipsis or isinstance(entry, slice)):
            try:
                operator.index(entry)
            except TypeError:
                return None
    consumed = sum(1 for e in entries if e is not None and e is not Ellipsis)
    fill = [slice(None)] * (ndim - consumed)
    at = next((i for i, e in enumerate(entries) if e is Ellipsis), len(entries))
    return entries[:at] + fill + entries[at + 1:]


def _crop_effect(node: Node, slices: dict[int, tuple[int, int, int]], shape: tuple[int, ...]) -> Effect:
    """Slicing: each spatial axis starts ``start`` pixels in and keeps every ``step``-th pixel."""
    spatial_dims = node.dims or (0, 0)
    start, step, out_dim = zip(*(slices[d] for d in spatial_dims))
    axes = per_axis(lambda i: node.axes[i].shift(start[i]).subsample(step[i]))
    changed = per_axis(lambda i: start[i] != 0 or step[i] != 1 or shape[out_dim[i]] != node.spatial()[i])
    rules = per_axis(lambda i: Rule("crop", (shape[out_dim[i]],)) if changed[i] else SAME)
    return Effect(axes, (out_dim[0], out_dim[1]), shape, rules, "crop" if any(changed) else None, "crop",
                   details={"offset": start, "input": node.spatial()})


def _cat(call: Call) -> Effect:
    tensors, dim = call.arg(0, "tensors"), call.arg(1, "dim", 0)
    dim %= call.result.dim()
    shape = list(tensors[0].shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    if len(call.inputs) < 2:
        return pass_through(call, tuple(shape))
    if any(n.dims is None for n in call.inputs):
        return approximate_effect(call)
    effect = _merge(call, "concat", tuple(shape))
    spatial_dims = call.node.dims or ()
    if dim in spatial_dims:  # joined along a spatial axis (tiles), not channels: sizes add up there
        effect.approximate = True
        effect.rules = per_axis(lambda i: Rule("sum") if spatial_dims[i] == dim else effect.rules[i])
    return effect


_ELEMENTWISE_MERGES = {"add": "add", "sub": "sub", "rsub": "sub", "mul": "mul", "div": "div",
                       "maximum": "max", "minimum": "min", "max": "max", "min": "min"}


def _merge(call: Call, label: str, shape: tuple[int, ...]) -> Effect:
    """Two or more maps combined: the first full-size input's grid, the union of the fields."""
    nodes = call.inputs
    out_spatial = (shape[nodes[0].dims[0]], shape[nodes[0].dims[1]]) if nodes[0].dims else (None, None)
    full = [i for i, n in enumerate(nodes) if n.spatial() == out_spatial] or [0]
    grid = nodes[full[0]]
    axes = per_axis(lambda i: hull([n.axes[i] for n in nodes], grid.axes[i]))
    details = _merge_details(label, [nodes[i] for i in full], nodes)
    rule = Rule("merge", (tuple(full),))
    return Effect(axes, grid.dims, shape, (rule, rule), "merge", label, details=details)


def _merge_details(label: str, full: list[Node], nodes: list[Node]) -> dict[str, Any]:
    same_stride = all(n.axes[i].stride == full[0].axes[i].stride for n in full for i in range(2))
    shift = [max(n.axes[i].center for n in full) - min(n.axes[i].center for n in full) for i in range(2)]
    inputs = [{"name": n.producer, "shape": tuple(n.tensor.shape), "stride": tuple(a.stride for a in n.axes),
               "center": tuple(a.center for a in n.axes), "rf": tuple(a.rf for a in n.axes),
               "broadcast": n not in full} for n in nodes]
    return {"op": label, "inputs": inputs, "aligned": same_stride and not any(shift),
            "misalignment": tuple(shift) if same_stride else None}


def _linear(call: Call) -> Effect:
    node, weight = call.node, call.arg(1, "weight")
    shape = (*node.tensor.shape[:-1], weight.shape[0])
    macs = math.prod(shape) * weight.shape[1]
    last = node.tensor.dim() - 1
    if node.dims is not None and last in node.dims:
        effect = approximate_effect(call)  # mixing along a spatial axis (token mixing)
        effect.macs = macs
        return effect
    return Effect(node.axes, node.dims, shape, (SAME, SAME), "op", "linear", macs)


def _matmul(call: Call) -> Effect:
    first = tensors_in(call.args)[0]
    one_map = len(call.inputs) == 1 and call.node.tensor is first
    effect = _linear_like(call) if one_map else approximate_effect(call)
    effect.macs = call.result.numel() * first.shape[-1]
    return effect


def _linear_like(call: Call) -> Effect:
    """``x @ W``: mixes the last dimension only."""
    node, result = call.node, call.result
    last = node.tensor.dim() - 1
    if node.dims is None or last in node.dims or result.dim() != node.tensor.dim():
        return approximate_effect(call)
    return Effect(node.axes, node.dims, tuple(result.shape), (SAME, SAME), "op", call.op)


def _reshape(call: Call) -> Effect:
    node, result = call.node, call.result
    if result.numel() != node.tensor.numel():
        return approximate_effect(call)
    dims = reshaped_dims(node, tuple(result.shape))
    if dims is not None or node.dims is None:
        return Effect(node.axes, dims, tuple(result.shape), (SAME, SAME))
    # Height and width flattened into features: every input pixel the map saw now reaches each value.
    sizes = node.spatial()
    axes = per_axis(lambda i: node.axes[i].window(sizes[i], sizes[i], 0))
    rules = per_axis(lambda i: Rule("require", (sizes[i],)))
    return Effect(axes, None, tuple(result.shape), rules, "op", call.op)


def _permute(call: Call) -> Effect:
    node = call.node
    ndim = node.tensor.dim()
    if call.op == "permute":
        order = call.args[1:] if len(call.args) > 2 else call.arg(1, "dims")
        order = [d % ndim for d in order]
    else:
        a, b = (d % ndim for d in (call.arg(1, "dim0"), call.arg(2, "dim1")))
        order = list(range(ndim))
        order[a], order[b] = order[b], order[a]
    shape = tuple(node.tensor.shape[d] for d in order)
    dims = None if node.dims is None else (order.index(node.dims[0]), order.index(node.dims[1]))
    return Effect(node.axes, dims, shape, (SAME, SAME))


_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "norm", "prod",
               "argmax", "argmin", "median", "nanmean", "nansum"}


def _reduce(call: Call) -> Effect:
    node = call.node
    if len(call.inputs) > 1 or isinstance(call.arg(1, "dim"), Tensor):
        return _elementwise(call)  # torch.max(a, b): elementwise
    dim = call.arg(2, "dim") if call.op == "norm" else call.arg(1, "dim")
    ndim = node.tensor.dim()
    reduced = set(range(ndim)) if dim is None else {d % ndim for d in ((dim,) if isinstance(dim, int) else dim)}
    keep = call.result.dim() == ndim
    if node.dims is None or not reduced & set(node.dims):  # over channels: the grid stays
        if node.dims is None or keep:
            return Effect(node.axes, node.dims, None, (SAME, SAME))
        before = node.dims
        dims = per_axis(lambda i: before[i] - sum(r < before[i] for r in reduced))  # removed dims move them up
        return Effect(node.axes, dims, None, (SAME, SAME))
    # Over the map: each value sees all of it.
    spatial_dims, sizes = node.dims, node.spatial()
    axes = per_axis(lambda i: node.axes[i].window(sizes[i], sizes[i], 0) if spatial_dims[i] in reduced
                    else node.axes[i])
    rule = Rule("fixed", (1,)) if keep else NONE
    partial = len(reduced & set(spatial_dims)) == 1 and not keep  # one spatial axis gone: no grid left
    return Effect(axes, spatial_dims if keep else None, None, (rule, rule), "op", call.op, approximate=partial)


def _split(call: Call) -> Effect:
    """Splitting the channels keeps every piece's grid; splitting a spatial axis cuts tiles."""
    node, dim = call.node, call.arg(2, "dim", 0)
    if node.dims is not None and dim % node.tensor.dim() not in node.dims:
        return Effect(node.axes, node.dims, None, (SAME, SAME))
    return approximate_effect(call)


def _elementwise(call: Call) -> Effect:
    """One map (with constants, parameters, statistics): its geometry; two or more maps: a merge."""
    shape = tuple(call.result.shape)
    if len(call.inputs) == 1:
        return pass_through(call) if shape == tuple(call.node.tensor.shape) else approximate_effect(call)
    try:
        merged = tuple(torch.broadcast_shapes(*(n.tensor.shape for n in call.inputs)))
    except RuntimeError:
        return approximate_effect(call)
    flattened = [n.dims is None for n in call.inputs]
    if merged != shape or (any(flattened) and not all(flattened)):
        return approximate_effect(call)
    if all(flattened):  # features flattened already (tokens, vectors): no grid to align
        axes = per_axis(lambda i: hull([n.axes[i] for n in call.inputs], call.node.axes[i]))
        return Effect(axes, None, shape, (NONE, NONE))
    return _merge(call, _ELEMENTWISE_MERGES.get(call.op, call.op), shape)


_MIXING = {"softmax", "log_softmax", "cumsum", "cumprod", "flip", "fliplr", "flipud", "roll", "rot90", "sort",
           "argsort", "topk", "unfold", "fold", "grid_sample", "affine_grid", "stack", "unbind",
           "index_select", "gather", "conv1d", "conv3d", "max_pool1d", "max_pool3d", "avg_pool1d", "avg_pool3d", "expand", "repeat", "tile"}

_HANDLERS: dict[str, Callable[[Call], Effect]] = {
    "conv2d": _conv2d, "conv_transpose2d": _conv_transpose2d, "max_pool2d": _pool2d, "avg_pool2d": _pool2d,
    "adaptive_avg_pool2d": _adaptive_pool2d, "adaptive_max_pool2d": _adaptive_pool2d, "interpolate": _interpolate,
    "upsample": _interpolate, "pixel_shuffle": _pixel_shuffle, "pixel_unshuffle": _pixel_shuffle, "pad": _pad,
    "getitem": _getitem, "cat": _cat, "concat": _cat, "concatenate": _cat, "linear": _linear,
    "matmul": _matmul, "mm": _matmul, "bmm": _matmul, "view": _reshape, "reshape": _reshape, "flatten": _reshape,
    "unflatten": _reshape, "squeeze": _reshape, "unsqueeze": _reshape, "view_as": _reshape, "reshape_as": _reshape,
    "permute": _permute, "transpose": _permute, "swapaxes": _permute, "split": _split, "chunk": _split,
    **{name: _reduce for name in _REDUCTIONS},
}


def effect_of(call: Call) -> Effect:
    handler = _HANDLERS.get(call.op)
    if handler is not None:
        return handler(call)
    if call.op in _MIXING:
        return _softmax_like(call) if call.op in ("softmax", "log_softmax") else approximate_effect(call)
    return _elementwise(call)


def _softmax_like(call: Call) -> Effect:
    """Softmax over channels (class scores) keeps the geometry; over a spatial axis it mixes it."""
    node, dim = call.node, call.arg(1, "dim")
    if dim is not None and node.dims is not None and dim % node.tensor.dim() not in node.dims:
        return pass_through(call)
    return approximate_effect(call)
