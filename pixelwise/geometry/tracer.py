"""Layer-by-layer tracing: output shapes, strides, receptive fields, parameters and MACs.

:func:`trace` runs one real forward pass of any ``nn.Module`` under a
:class:`torch.overrides.TorchFunctionMode` that sees every torch operation, while module hooks
say which layer is running. Each operation's effect is computed *analytically* — its output
shape, and how its output grid sits on the input image (:mod:`pixelwise.geometry.axes`) —
and the analytic shape is checked against the real tensor's, so the arithmetic is tested on
every layer of every model traced.

Rows are one per leaf-module call, plus one per operation in a model's own code that changes
the geometry or merges maps (FCN's skip additions and crops, U-Net's crop-and-concatenate,
DeepLab's ASPP concatenation and resizes). MACs count the multiply-accumulates of
convolutions, transposed convolutions, linear layers and matrix products, for one image.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from pixelwise.geometry.effects import Call, Effect, Node, tensors_in
from pixelwise.geometry.axes import INPUT_AXES, as_pair, Axes, Axis, per_axis
from pixelwise.geometry.ops import effect_of
from pixelwise.geometry.propagation import Graph, resolve_rules, Rule, SizeOp
from pixelwise.geometry.report import Row, Trace


class TraceError(RuntimeError):
    """An analytic shape disagreed with the real one: a bug in the operator rules, not in the model."""


@dataclass
class _Frame:
    name: str
    module: nn.Module
    leaf: bool
    macs: int = 0
    approximate: bool = False


def _op_name(func: Callable) -> str:
    """A canonical name: ``Tensor.__iadd__`` and ``add_`` are ``add``; ``__getitem__`` is ``getitem``."""
    name = getattr(func, "__name__", type(func).__name__).strip("_")
    if name[:1] in "ir" and name[1:] in ("add", "sub", "mul", "truediv", "div", "matmul"):
        name = name[1:]
    return {"truediv": "div"}.get(name, name)


class _Tracer(TorchFunctionMode):
    """Sees every torch operation and every module call of one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[int, Node] = {}
        self.frames: list[_Frame] = []
        self.rows: list[Row] = []
        self.graph = Graph()
        self.names: Counter[str] = Counter()
        self.counted: set[int] = set()

    def add_input(self, tensor: Tensor) -> None:
        self._add_node(tensor, INPUT_AXES, (tensor.dim() - 2, tensor.dim() - 1), "input")

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = self._tracked(args, kwargs)
        if inputs and tensors_in(out):
            self._record(Call(_op_name(func), args, kwargs, out, inputs))
        return out

    def _tracked(self, args: tuple, kwargs: dict) -> list[Node]:
        nodes: list[Node] = []
        for tensor in tensors_in((args, kwargs)):
            node = self.nodes.get(id(tensor))
            if node is not None and node.tensor is tensor and node not in nodes:
                nodes.append(node)
        return nodes

    def _record(self, call: Call) -> None:
        effect = effect_of(call)
        result = call.result
        if effect.shape is not None and tuple(result.shape) != tuple(effect.shape):
            raise TraceError(f"analytic shape {tuple(effect.shape)} of {call.op} in {self._context() or 'the model'} "
                             f"differs from the real {tuple(result.shape)}: a bug in pixelwise.geometry.ops")
        producer = self._account(call, effect)
        for tensor in tensors_in(call.out):
            node = self._add_node(tensor, effect.axes, effect.dims, producer)
            self.graph.ops.append(SizeOp(tuple(n.index for n in call.inputs), node.index, effect.rules))

    def _account(self, call: Call, effect: Effect) -> str:
        """Add the effect to the running leaf module, or make it a row; returns the producer's name."""
        frame = self.frames[-1] if self.frames else None
        if frame is not None and frame.leaf:
            frame.macs += effect.macs
            frame.approximate |= effect.approximate
            return frame.name
        if effect.kind is None and not effect.macs and not effect.approximate:
            return call.node.producer
        kind = effect.kind or "op"
        label = kind if kind in ("crop", "pad", "resize") else effect.type
        base = self._context() or call.node.producer.split(":")[0].split("#")[0]
        row = Row(self._unique(f"{base}:{label}"), effect.type, kind, tuple(call.result.shape), effect.axes,
                  self._new_params(p for p in tensors_in((call.args, call.kwargs)) if isinstance(p, nn.Parameter)),
                  effect.macs, effect.dims is None, effect.approximate, effect.details)
        self.rows.append(row)
        return row.name

    def _add_node(self, tensor: Tensor, axes: Axes, dims: tuple[int, int] | None, producer: str) -> Node:
        node = Node(tensor, axes, dims, producer, len(self.graph.traced))
        self.nodes[id(tensor)] = node
        self.graph.traced[node.index] = node.spatial()
        return node

    def _context(self) -> str:
        return self.frames[-1].name if self.frames else ""

    def _unique(self, name: str) -> str:
        self.names[name] += 1
        count = self.names[name]
        return name if count == 1 else f"{name}#{count}"

    def _new_params(self, params: Any) -> int:
        total = 0
        for param in params:
            if id(param) not in self.counted:
                self.counted.add(id(param))
                total += param.numel()
        return total

    def enter(self, name: str, module: nn.Module) -> None:
        leaf = next(module.children(), None) is None
        # The root's own code names its events after the layers they take (name "").
        label = self._unique(name or type(module).__name__) if leaf else name
        self.frames.append(_Frame(label, module, leaf))

    def exit(self, inputs: tuple, output: Any) -> None:
        frame = self.frames.pop()
        sampling = getattr(frame.module, "sampling", None)
        if sampling is not None:
            self._declared_sampling(sampling, inputs, output)
        if frame.leaf:
            self._layer_row(frame, output)

    def _declared_sampling(self, sampling: tuple[int, Fraction], inputs: tuple, output: Any) -> None:
        """A module that declares ``sampling = (scale, shift)`` (the upsamplers of
        :mod:`pixelwise.layers.upsample`) puts output pixel ``j`` at its input's coordinate
        ``shift + j/scale``, whatever its operations look like (learned kernels, gathers): that
        is its geometry, with the receptive field the operations traced."""
        source = self.nodes.get(id(inputs[0])) if inputs and isinstance(inputs[0], Tensor) else None
        target = self.nodes.get(id(output)) if isinstance(output, Tensor) else None
        if source is None or target is None or source.dims is None or target.dims is None:
            return
        scale, shift = Fraction(sampling[0]), Fraction(sampling[1])
        axes = per_axis(lambda i: Axis(source.axes[i].stride / scale, target.axes[i].rf,
                                   source.axes[i].center + shift * source.axes[i].stride))
        before, after = source.spatial(), target.spatial()
        rules = per_axis(lambda i: Rule("scale", (scale,)) if after[i] == before[i] * scale
                     else Rule("resize_to", (after[i],)))
        node = self._add_node(output, axes, target.dims, target.producer)
        self.graph.ops.append(SizeOp((source.index,), node.index, rules))

    def _layer_row(self, frame: _Frame, output: Any) -> None:
        nodes = [self.nodes.get(id(t)) for t in tensors_in(output)]
        nodes = [n for n in nodes if n is not None]
        if not nodes:
            return  # the module was not on the input's path
        node = nodes[0]
        node.producer = frame.name  # an identity layer passes its input on under its own name
        self.rows.append(Row(frame.name, type(frame.module).__name__, "layer", tuple(node.tensor.shape), node.axes,
                             self._new_params(frame.module.parameters()), frame.macs, node.dims is None,
                             frame.approximate))


def _probe(model: nn.Module, size: tuple[int, int], in_channels: int | None) -> Tensor:
    """A ``1 × C × H × W`` input on the model's device, in its dtype."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    shape = (1, in_channels or _first_conv_channels(model), *size)
    if device.type == "meta":  # a model built on the meta device: shapes from PyTorch's shape functions
        return torch.empty(shape, device=device, dtype=dtype)
    return torch.randn(shape, device=device, dtype=dtype, generator=torch.Generator(device=device).manual_seed(0))


def _first_conv_channels(model: nn.Module) -> int:
    """Channels the model expects: its ``in_channels`` attribute, else its first convolution's, else 3."""
    channels = getattr(model, "in_channels", None)
    if isinstance(channels, int):
        return channels
    conv = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))), None)
    return conv.in_channels if conv is not None else 3


def trace(model: nn.Module, input_size: int | tuple[int, int], *, in_channels: int | None = None,
          forward: Callable[[Tensor], Any] | None = None) -> Trace:
    """Trace one forward pass of ``model`` on a ``1 × C × H × W`` input, layer by layer.

    The model runs in eval mode without gradients (its modes are restored after); every
    operation's output shape is derived analytically and checked against the real one.

    Args:
        model: any module taking an NCHW image batch.
        input_size: ``H`` (square) or ``(H, W)``.
        in_channels: input channels; default: the model's ``in_channels`` attribute, else its
            first convolution's.
        forward: what to run instead of ``model(x)``, e.g. ``model.forward_core`` (U-Net's
            valid network without the overlap-tile padding); hooks still name ``model``'s layers.

    Returns:
        The :class:`Trace`.

    Raises:
        TraceError: an analytic shape disagreed with the real one (a bug in :mod:`pixelwise.geometry.ops`).
    """
    x = _probe(model, as_pair(input_size), in_channels)
    tracer = _Tracer()
    tracer.add_input(x)
    modes = {module: module.training for module in model.modules()}
    handles = _hook(model, tracer)
    try:
        model.eval()  # batch norm on one image, dropout off
        with torch.no_grad(), tracer:
            out = (forward or model)(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.train(training)
    resolve_rules(tracer.graph)
    total = sum(p.numel() for p in model.parameters())
    outputs = tuple(_output_axes(tracer, tensor) for tensor in tensors_in(out))
    return Trace(tracer.rows, tuple(x.shape), total, type(model).__name__, tracer.graph, outputs)


def _output_axes(tracer: _Tracer, tensor: Tensor) -> Axes | None:
    node = tracer.nodes.get(id(tensor))
    return node.axes if node is not None and node.tensor is tensor and node.dims is not None else None


def feature_geometry(module: nn.Module, input_size: int | tuple[int, int] = 64, *,
                     in_channels: int | None = None) -> list[tuple[Axis, Axis] | None]:
    """Where each feature map a module returns sits on its input, found by tracing it (on the
    meta device when its weights are there too, so no memory is spent).

    Returns:
        Per returned tensor, its (height, width) :class:`~pixelwise.geometry.axes.Axis`:
        ``stride`` and ``center`` (the input position of its pixel 0). For an encoder, the
        strides are its ``reductions``, and the centres say whether its maps are centred on
        ``stride·y`` (0 for ResNet's even-padded strides) or elsewhere (VGG's 2×2 pooling:
        ``(stride - 1)/2``).
    """
    return list(trace(module, input_size, in_channels=in_channels).outputs)


def _hook(model: nn.Module, tracer: _Tracer) -> list[Any]:
    """Tell the tracer which module runs; ``always_call`` keeps its stack right if one raises."""
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, args, name=name: tracer.enter(name, m)))
        handles.append(module.register_forward_hook(lambda m, args, out: tracer.exit(args, out), always_call=True))
    return handles
