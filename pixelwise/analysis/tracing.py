"""Layer-by-layer tracing: output shapes, strides, receptive fields, parameters and MACs.

:func:`trace` runs one real forward pass of any ``nn.Module`` under a
:class:`torch.overrides.TorchFunctionMode` that sees every torch operation, while module hooks
say which layer is running. Each operation's effect is computed *analytically* — its output
shape, and how its output grid sits on the input image — and the analytic shape is checked
against the real tensor's, so the arithmetic is tested on every layer of every model traced.

Geometry of one axis, for output pixel 0 (input pixel centres are at integer coordinates):

- **stride** (the "jump"): input pixels between neighbouring output pixels;
- **rf**: receptive-field size, in input pixels;
- **center**: input coordinate of the receptive field's centre (fractional, or negative).

A convolution or pooling window of extent ``e = dilation·(kernel - 1) + 1``, stride ``t`` and
left padding ``p`` maps ``(j, r, c)`` to ``(j·t, r + (e - 1)·j, c + ((e - 1)/2 - p)·j)``; a
transposed convolution places output ``y`` at input ``(y + p - (e - 1)/2) / t``; resizing by
``s`` with half-pixel centres (``align_corners=False``, pixel shuffle) places output ``y`` at
``(y + 1/2)/s - 1/2``; a crop at ``a`` adds ``a·j`` and a padding of ``p`` subtracts ``p·j``.
Two feature maps merged (added, concatenated) are *aligned* when their strides and centres
agree: then every output pixel combines features of the same input location.

Rows are one per leaf-module call, plus one per operation in a model's own code that changes
the geometry or merges maps (FCN's skip additions and crops, U-Net's crop-and-concatenate,
DeepLab's ASPP concatenation and resizes). MACs count the multiply-accumulates of
convolutions, transposed convolutions, linear layers and matrix products, for one image.

Reference values: Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural
Networks", Distill 2019 (VGG16 pool5: 212, AlexNet pool5: 195).
"""
from __future__ import annotations

import io
import math
import operator
from collections import Counter
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from pixelwise.analysis.sizes import conv_output_size, conv_transpose_output_size, pool_output_size


class TraceError(RuntimeError):
    """An analytic shape disagreed with the real one: a bug in this module, not in the model."""


# --- geometry of one axis ----------------------------------------------------------------------

HALF = Fraction(1, 2)


@dataclass(frozen=True)
class Axis:
    """How one axis of a feature map sits on the input, seen from its pixel 0.

    Attributes:
        stride: input pixels between neighbouring pixels of the map (below 1 once upsampled).
        rf: receptive-field size in input pixels (the largest over the map's pixels).
        center: input coordinate of pixel 0's receptive-field centre.
    """

    stride: Fraction = Fraction(1)
    rf: Fraction = Fraction(1)
    center: Fraction = Fraction(0)

    def window(self, extent: int, stride: int, padding: int | Fraction) -> Axis:
        """A sliding window (convolution, pooling) ``extent`` pixels wide."""
        return Axis(self.stride * stride, self.rf + (extent - 1) * self.stride,
                    self.center + (Fraction(extent - 1, 2) - padding) * self.stride)

    def transposed(self, extent: int, stride: int, padding: int) -> Axis:
        """A transposed convolution: output ``y`` gathers the inputs ``x`` with
        ``0 ≤ y + padding - x·stride < extent``, so it sits at ``(y + padding - (extent - 1)/2) / stride``
        and at most ``ceil(extent / stride)`` inputs reach it."""
        reach = -(-extent // stride) - 1
        return Axis(self.stride / stride, self.rf + reach * self.stride,
                    self.center + (padding - Fraction(extent - 1, 2)) / stride * self.stride)

    def resample(self, scale: Fraction, reach: int = 0) -> Axis:
        """Half-pixel-centre resampling by ``scale``: output ``y`` reads input ``(y + 1/2)/scale - 1/2``.

        For nearest neighbour, which reads ``floor(y / scale)``, that is the best straight-line fit
        over a period of outputs. ``reach``: extra input pixels read (1 bilinear, 3 bicubic).
        """
        return Axis(self.stride / scale, self.rf + reach * self.stride,
                    self.center + (HALF / scale - HALF) * self.stride)

    def corner_resample(self, ratio: Fraction, reach: int = 0) -> Axis:
        """``align_corners=True``: output ``y`` reads input ``y·ratio``; the corners stay put."""
        return Axis(self.stride * ratio, self.rf + reach * self.stride, self.center)

    def shift(self, pixels: int) -> Axis:
        """Start ``pixels`` later on this axis (a crop; negative for padding)."""
        return replace(self, center=self.center + pixels * self.stride)

    def subsample(self, step: int) -> Axis:
        """Keep every ``step``-th pixel."""
        return replace(self, stride=self.stride * step)

    def adaptive(self, size: int, out: int) -> Axis:
        """Adaptive pooling of ``size`` pixels into ``out`` bins (PyTorch's floor/ceil bin edges)."""
        if size % out == 0:
            return self.window(size // out, size // out, 0)
        widths = [-(-(i + 1) * size // out) - i * size // out for i in range(out)]
        return Axis(self.stride * Fraction(size, out), self.rf + (max(widths) - 1) * self.stride,
                    self.center + Fraction(widths[0] - 1, 2) * self.stride)

    def interval(self) -> tuple[Fraction, Fraction]:
        """First and last input pixel centre of pixel 0's receptive field."""
        half = (self.rf - 1) / 2
        return self.center - half, self.center + half


def _hull(axes: Sequence[Axis], grid: Axis) -> Axis:
    """``grid``'s stride and centre with a receptive field covering every one of ``axes``."""
    low = min(axis.interval()[0] for axis in axes)
    high = max(axis.interval()[1] for axis in axes)
    return replace(grid, rf=high - low + 1)


Axes = tuple[Axis, Axis]
INPUT_AXES: Axes = (Axis(), Axis())


# --- rows and the trace ------------------------------------------------------------------------


def _number(value: Fraction) -> int | float:
    """A JSON-friendly number: an int when whole."""
    return int(value) if value.denominator == 1 else float(value)


def _text(value: Fraction) -> str:
    """Up to three decimals, trailing zeros dropped (``15.5``, ``-11.5``, ``0.333``)."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.3f}".rstrip("0").rstrip(".")


def _pair_text(values: tuple[Fraction, Fraction], joiner: str = ",") -> str:
    return _text(values[0]) if values[0] == values[1] else joiner.join(map(_text, values))


def _jsonable(value: Any) -> Any:
    """Details with Fractions and tuples, as JSON values."""
    if isinstance(value, Fraction):
        return _number(value)
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _human(count: int) -> str:
    """``1234567`` → ``1.23M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return str(count)


@dataclass(frozen=True)
class Row:
    """One layer call or one geometric event of a trace.

    Attributes:
        name: module path (``features.30``), ``#2`` appended on a module's second call; events
            are ``WHERE:KIND`` where ``WHERE`` is the module whose code did it, or, in the
            model's own forward, the layer whose output it takes (``score_pool4:crop``).
        type: module class, or the operation (``add``, ``concat``, ``crop``, ``pad``, ``interpolate``).
        kind: ``"layer"``, ``"merge"``, ``"crop"``, ``"pad"``, ``"resize"`` or ``"op"``.
        shape: output shape, batch included.
        axes: height and width geometry (see :class:`Axis`).
        params: parameters of the layer, counted at its first call only.
        macs: multiply-accumulates for one image.
        flattened: the spatial axes were flattened or reduced away (a classifier's head); the
            receptive field then covers everything the input reached.
        approximate: an operation the tracer does not know passed the geometry through unchanged.
        details: merges: ``op``, ``inputs`` (name, shape, stride, center, rf), ``aligned``,
            ``misalignment`` (input pixels, per axis, when strides agree); crops: ``offset``;
            pads: ``top``, ``bottom``, ``left``, ``right``, ``mode``; resizes: ``mode``, ``scale``.
    """

    name: str
    type: str
    kind: str
    shape: tuple[int, ...]
    axes: Axes
    params: int = 0
    macs: int = 0
    flattened: bool = False
    approximate: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stride(self) -> tuple[Fraction, Fraction]:
        """Cumulative stride per axis (height, width)."""
        return self.axes[0].stride, self.axes[1].stride

    @property
    def rf(self) -> tuple[Fraction, Fraction]:
        """Receptive-field size per axis, in input pixels."""
        return self.axes[0].rf, self.axes[1].rf

    @property
    def center(self) -> tuple[Fraction, Fraction]:
        """Input coordinates of output pixel (0, 0)'s receptive-field centre."""
        return self.axes[0].center, self.axes[1].center

    @property
    def aligned(self) -> bool | None:
        """For a merge, whether its inputs share stride and centre; ``None`` for other rows."""
        return self.details.get("aligned")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "name": self.name, "type": self.type, "kind": self.kind, "shape": list(self.shape),
            "stride": _jsonable(self.stride), "rf": _jsonable(self.rf), "center": _jsonable(self.center),
            "params": self.params, "macs": self.macs, "flattened": self.flattened,
            "approximate": self.approximate, "details": _jsonable(self.details),
        }

    def note(self) -> str:
        """A short description of an event for the table."""
        parts = []
        if self.kind == "merge":
            mark = "aligned" if self.aligned else _misalignment_text(self.details)
            parts.append(f"{self.type} of {len(self.details['inputs'])}: {mark}")
        elif self.kind == "crop":
            parts.append(f"crop at {_pair_text(tuple(map(Fraction, self.details['offset'])))}")
        elif self.kind == "pad":
            sides = [self.details[side] for side in ("top", "bottom", "left", "right")]
            parts.append(f"pad t{sides[0]} b{sides[1]} l{sides[2]} r{sides[3]} {self.details['mode']}")
        elif self.kind == "resize":
            parts.append(f"{self.details['mode']} ×{_pair_text(self.details['scale'], '×')}")
        if self.approximate:
            parts.append("≈ unknown op")
        return "; ".join(parts)


def _misalignment_text(details: Mapping[str, Any]) -> str:
    shift = details.get("misalignment")
    if shift is None:
        return "MISALIGNED (strides differ)"
    return f"MISALIGNED by {_pair_text(tuple(shift))} px"


@dataclass
class Trace:
    """The rows of a traced forward pass, with totals and renderings.

    Attributes:
        rows: one per layer call and per geometric event, in execution order.
        input_shape: shape of the traced input, batch of one included.
        total_params: ``sum(p.numel() for p in model.parameters())`` (layers never called included).
        model_type: class name of the traced model.
    """

    rows: list[Row]
    input_shape: tuple[int, ...]
    total_params: int
    model_type: str
    graph: _Graph = field(default_factory=lambda: _Graph(), repr=False, compare=False)

    @property
    def total_macs(self) -> int:
        """Multiply-accumulates of the whole forward pass, for one image."""
        return sum(row.macs for row in self.rows)

    @property
    def merges(self) -> list[Row]:
        """The merge rows (additions, concatenations, ...)."""
        return self.of_kind("merge")

    def of_kind(self, kind: str) -> list[Row]:
        """Rows of one kind: ``"layer"``, ``"merge"``, ``"crop"``, ``"pad"``, ``"resize"``, ``"op"``."""
        return [row for row in self.rows if row.kind == kind]

    def __getitem__(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        close = [row.name for row in self.rows if name in row.name][:5]
        raise KeyError(f"no row named {name!r}" + (f"; rows containing it: {close}" if close else ""))

    def __contains__(self, name: object) -> bool:
        return any(row.name == name for row in self.rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def summary(self) -> str:
        """Totals in one line: parameters, MACs, and how many merges are aligned."""
        merges = self.merges
        aligned = sum(1 for row in merges if row.aligned)
        size = "×".join(map(str, self.input_shape[-2:]))
        text = (f"{self.model_type} at {size}: {self.total_params:,} parameters ({_human(self.total_params)}), "
                f"{self.total_macs:,} MACs ({_human(self.total_macs)}) per image")
        if merges:
            text += f"; {aligned} of {len(merges)} merges aligned"
        if any(row.approximate for row in self.rows):
            text += "; rows marked ≈ passed an unknown operation through"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: input shape, totals and every row."""
        return {
            "model": self.model_type, "input_shape": list(self.input_shape),
            "total_params": self.total_params, "total_macs": self.total_macs,
            "rows": [row.to_dict() for row in self.rows],
        }

    def rich_table(self, title: str | None = None) -> Table:
        """The rows as a ``rich`` table; events are highlighted, misaligned merges in red."""
        table = Table(title=title or f"{self.model_type}, input {'×'.join(map(str, self.input_shape[1:]))}")
        for column in ("name", "type", "output", "stride", "RF", "centre", "params", "MACs", "note"):
            justify = "right" if column in ("stride", "RF", "centre", "params", "MACs") else "left"
            table.add_column(column, justify=justify, overflow="fold")
        for row in self.rows:
            table.add_row(*_cells(row), style=_style(row))
        return table

    def to_table(self, width: int = 160) -> str:
        """The table as plain text."""
        buffer = io.StringIO()
        Console(file=buffer, width=width, color_system=None).print(self.rich_table())
        return buffer.getvalue()


def _cells(row: Row) -> list[str]:
    stride = "global" if row.flattened else _pair_text(row.stride)
    return [row.name, row.type, "×".join(map(str, row.shape[1:])), stride, _pair_text(row.rf, "×"),
            _pair_text(row.center), f"{row.params:,}" if row.params else "", _human(row.macs) if row.macs else "",
            row.note()]


def _style(row: Row) -> str:
    if row.kind == "merge":
        return "bold green" if row.aligned else "bold red"
    return {"crop": "yellow", "pad": "yellow", "resize": "cyan", "op": "magenta"}.get(row.kind, "")


# --- sizes, re-propagated without a forward pass ----------------------------------------------


class _Invalid(Exception):
    """This input size fails: a layer floors away pixels, gets an empty input, or a merge mismatches."""


@dataclass(frozen=True)
class _Rule:
    """How one operation maps its inputs' sizes on one axis to its output's size."""

    kind: str
    args: tuple = ()


SAME, NONE = _Rule("same"), _Rule("none")


@dataclass(frozen=True)
class _SizeOp:
    inputs: tuple[int, ...]
    output: int
    rules: tuple[_Rule, _Rule]


@dataclass
class _Graph:
    """Every operation on tracked tensors, for re-propagating other input sizes."""

    ops: list[_SizeOp] = field(default_factory=list)
    traced: dict[int, tuple[int | None, int | None]] = field(default_factory=dict)


def _apply(rule: _Rule, sizes: list[int | None], known: dict[int, int | None]) -> int | None:
    """The output size on one axis; raises :class:`_Invalid` when that size would not be exact."""
    if rule.kind == "none" or (rule.kind not in ("fixed", "follow") and sizes[0] is None):
        return None
    size = sizes[0]
    try:
        return _RULES[rule.kind](size, sizes, known, *rule.args)
    except ValueError as error:  # sizes.py refuses inputs too small for a window
        raise _Invalid(str(error)) from error


def _window_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool | None,
                 extra: int = 0) -> int:
    """Output size of a convolution (``ceil_mode`` None) or pooling; ``extra`` pixels of padding
    after the input on top of ``padding`` (convolutions with ``padding="same"`` and an even extent)."""
    if ceil_mode is None:
        return conv_output_size(size + extra, kernel, stride, padding, dilation)
    return pool_output_size(size + extra, kernel, stride, padding, dilation, ceil_mode)


def _window_rule(size: int, sizes: list, known: dict, *args: Any) -> int:
    kernel, stride, padding, dilation, _, extra = args
    # Exact: the windows tile the padded input with no remainder left to the floor (or ceiling).
    if (size + extra + 2 * padding - dilation * (kernel - 1) - 1) % stride:
        raise _Invalid("remainder")
    return _window_size(size, *args)


def _scale_rule(size: int, sizes: list, known: dict, factor: Fraction) -> int:
    scaled = size * factor
    if scaled.denominator != 1 or scaled < 1:
        raise _Invalid("fractional resize")
    return int(scaled)


def _merge_rule(size: int, sizes: list, known: dict, full: tuple[int, ...]) -> int:
    matched = {sizes[i] for i in full}
    if len(matched) != 1:
        raise _Invalid("merged maps differ in size")
    return matched.pop()


def _require_rule(size: int, sizes: list, known: dict, traced: int) -> None:
    # Flattening a map into features fixes its size (a linear layer usually follows).
    if size != traced:
        raise _Invalid("flattened size differs")
    return None


def _positive(size: int) -> int:
    if size < 1:
        raise _Invalid("empty")
    return size


_RULES: dict[str, Callable[..., int | None]] = {
    "same": lambda size, sizes, known: size,
    "window": _window_rule,
    "transposed": lambda size, sizes, known, *args: conv_transpose_output_size(size, *args),
    "scale": _scale_rule,
    "fixed": lambda size, sizes, known, out: out,
    "follow": lambda size, sizes, known, node: known[node],
    "border": lambda size, sizes, known, delta: _positive(size + delta),
    "merge": _merge_rule,
    "sum": lambda size, sizes, known: sum(sizes),
    "require": _require_rule,
}


def _propagate(graph: _Graph, axis: int, size: int) -> bool:
    """Whether an input of ``size`` on ``axis`` goes through every operation exactly."""
    known: dict[int, int | None] = {0: size}
    try:
        for op in graph.ops:
            sizes = [known.get(i) for i in op.inputs]
            known[op.output] = _apply(op.rules[axis], sizes, known)
    except _Invalid:
        return False
    return True


def _resolve_rules(graph: _Graph) -> None:
    """Crops and resizes to a computed size follow the map they are matched to."""
    consumers: dict[int, list[_SizeOp]] = {}
    for op in graph.ops:
        for node in op.inputs:
            consumers.setdefault(node, []).append(op)
    for position, op in enumerate(graph.ops):
        rules = tuple(_resolve(rule, op, axis, graph, consumers, position) for axis, rule in enumerate(op.rules))
        graph.ops[position] = replace(op, rules=rules)


def _resolve(rule: _Rule, op: _SizeOp, axis: int, graph: _Graph, consumers: dict[int, list[_SizeOp]],
             position: int) -> _Rule:
    if rule.kind not in ("crop", "resize_to"):
        return rule
    (target,) = rule.args
    # A crop feeding a merge is made to match the merge's other input (FCN, U-Net), when that
    # input exists already (of two crops feeding one merge, the later one follows the earlier).
    for consumer in consumers.get(op.output, []):
        if consumer.rules[axis].kind == "merge":
            partners = [n for n in consumer.inputs if n < op.output and graph.traced[n][axis] == target]
            if partners:
                return _Rule("follow", (partners[0],))
    # A resize to a computed size usually targets the input, or a map just computed.
    earlier = [0] + [o.output for o in reversed(graph.ops[:position])]
    matches = [n for n in earlier if graph.traced.get(n, (None, None))[axis] == target and n not in op.inputs]
    if rule.kind == "resize_to":
        return _Rule("follow", (matches[0],)) if matches else _Rule("fixed", (target,))
    return _Rule("border", (target - graph.traced[op.inputs[0]][axis],))


# --- the tracer ---------------------------------------------------------------------------------


@dataclass(eq=False)  # compared by identity: the held tensor has no truth value
class _Node:
    """A tensor computed from the input, with its geometry."""

    tensor: Tensor  # held so that id() stays unique while tracing
    axes: Axes
    dims: tuple[int, int] | None  # tensor dimensions of height and width; None once flattened
    producer: str
    index: int

    def spatial(self) -> tuple[int | None, int | None]:
        if self.dims is None:
            return None, None
        return self.tensor.shape[self.dims[0]], self.tensor.shape[self.dims[1]]


@dataclass
class _Effect:
    """What one operation does to the geometry, and how to check and record it."""

    axes: Axes
    dims: tuple[int, int] | None
    shape: tuple[int, ...] | None  # analytic output shape, compared with the real one
    rules: tuple[_Rule, _Rule]
    kind: str | None = None  # the row kind when it happens in a model's own code; None: no row
    type: str = ""
    macs: int = 0
    approximate: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Call:
    op: str
    args: tuple
    kwargs: dict
    out: Any
    inputs: list[_Node]

    def arg(self, position: int, name: str, default: Any = None) -> Any:
        if len(self.args) > position:
            return self.args[position]
        return self.kwargs.get(name, default)

    @property
    def node(self) -> _Node:
        return self.inputs[0]

    @property
    def result(self) -> Tensor:
        return _tensors(self.out)[0]


@dataclass
class _Frame:
    name: str
    module: nn.Module
    leaf: bool
    macs: int = 0
    approximate: bool = False


def _tensors(value: Any) -> list[Tensor]:
    leaves, _ = tree_flatten(value)
    return [leaf for leaf in leaves if isinstance(leaf, Tensor)]


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
        self.nodes: dict[int, _Node] = {}
        self.frames: list[_Frame] = []
        self.rows: list[Row] = []
        self.graph = _Graph()
        self.names: Counter[str] = Counter()
        self.counted: set[int] = set()

    def add_input(self, tensor: Tensor) -> None:
        self._add_node(tensor, INPUT_AXES, (tensor.dim() - 2, tensor.dim() - 1), "input")

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = self._tracked(args, kwargs)
        if inputs and _tensors(out):
            self._record(_Call(_op_name(func), args, kwargs, out, inputs))
        return out

    def _tracked(self, args: tuple, kwargs: dict) -> list[_Node]:
        nodes: list[_Node] = []
        for tensor in _tensors((args, kwargs)):
            node = self.nodes.get(id(tensor))
            if node is not None and node.tensor is tensor and node not in nodes:
                nodes.append(node)
        return nodes

    def _record(self, call: _Call) -> None:
        effect = _effect(call)
        result = call.result
        if effect.shape is not None and tuple(result.shape) != tuple(effect.shape):
            raise TraceError(f"analytic shape {tuple(effect.shape)} of {call.op} in {self._context() or 'the model'} "
                             f"differs from the real {tuple(result.shape)}: a bug in pixelwise.analysis.tracing")
        producer = self._account(call, effect)
        for tensor in _tensors(call.out):
            node = self._add_node(tensor, effect.axes, effect.dims, producer)
            self.graph.ops.append(_SizeOp(tuple(n.index for n in call.inputs), node.index, effect.rules))

    def _account(self, call: _Call, effect: _Effect) -> str:
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
                  self._new_params(p for p in _tensors((call.args, call.kwargs)) if isinstance(p, nn.Parameter)),
                  effect.macs, effect.dims is None, effect.approximate, effect.details)
        self.rows.append(row)
        return row.name

    def _add_node(self, tensor: Tensor, axes: Axes, dims: tuple[int, int] | None, producer: str) -> _Node:
        node = _Node(tensor, axes, dims, producer, len(self.graph.traced))
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

    def exit(self, output: Any) -> None:
        frame = self.frames.pop()
        if frame.leaf:
            self._layer_row(frame, output)

    def _layer_row(self, frame: _Frame, output: Any) -> None:
        nodes = [self.nodes.get(id(t)) for t in _tensors(output)]
        nodes = [n for n in nodes if n is not None]
        if not nodes:
            return  # the module was not on the input's path
        node = nodes[0]
        node.producer = frame.name  # an identity layer passes its input on under its own name
        self.rows.append(Row(frame.name, type(frame.module).__name__, "layer", tuple(node.tensor.shape), node.axes,
                             self._new_params(frame.module.parameters()), frame.macs, node.dims is None,
                             frame.approximate))


# --- per-operation effects -----------------------------------------------------------------------


T = TypeVar("T")


def _two(value: Callable[[int], T]) -> tuple[T, T]:
    """``(value(0), value(1))``: height, then width."""
    return value(0), value(1)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])
    return value, value


def _is_image(node: _Node) -> bool:
    """NCHW with height and width last: the layout the 2-D operations assume."""
    return node.tensor.dim() == 4 and node.dims == (2, 3)


def _pass(call: _Call, shape: tuple[int, ...] | None = None) -> _Effect:
    """Geometry unchanged (elementwise operations, normalisation, dropout, ...)."""
    node = call.node
    return _Effect(node.axes, node.dims, shape or tuple(node.tensor.shape), (SAME, SAME))


def _approximate(call: _Call) -> _Effect:
    """An operation the tracer does not know: pass the first input's geometry through, marked."""
    node, result = call.node, call.result
    dims = node.dims if result.dim() == node.tensor.dim() else _reshaped_dims(node, tuple(result.shape))
    before = node.spatial()
    after = (result.shape[dims[0]], result.shape[dims[1]]) if dims else (None, None)
    rules = _two(lambda i: SAME if before[i] == after[i] else _Rule("fixed", (after[i],)))
    return _Effect(node.axes, dims, None, rules, "op", call.op, approximate=True)


def _conv_padding(padding: Any, extents: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding before and after the input, per axis; ``"same"`` pads an odd pixel after, as PyTorch."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        return _two(lambda i: ((extents[i] - 1) // 2, extents[i] - 1 - (extents[i] - 1) // 2))
    return _two(lambda i: (_pair(padding)[i],) * 2)


def _conv2d(call: _Call) -> _Effect:
    node, weight = call.node, call.arg(1, "weight")
    if not _is_image(node):
        return _approximate(call)
    kernel, stride, dilation = weight.shape[-2:], _pair(call.arg(3, "stride", 1)), _pair(call.arg(5, "dilation", 1))
    extents = _two(lambda i: dilation[i] * (kernel[i] - 1) + 1)
    pads = _conv_padding(call.arg(4, "padding", 0), extents)
    args = _two(lambda i: (kernel[i], stride[i], pads[i][0], dilation[i], None, pads[i][1] - pads[i][0]))
    sizes = _two(lambda i: _window_size(node.spatial()[i], *args[i]))
    axes = _two(lambda i: node.axes[i].window(extents[i], stride[i], pads[i][0]))
    shape = (node.tensor.shape[0], weight.shape[0], *sizes)
    macs = math.prod(shape) * weight[0].numel()  # each output value: in_channels / groups × kernel taps
    return _Effect(axes, node.dims, shape, _two(lambda i: _Rule("window", args[i])), "op", "conv2d", macs)


def _conv_transpose2d(call: _Call) -> _Effect:
    node, weight = call.node, call.arg(1, "weight")
    if not _is_image(node):
        return _approximate(call)
    stride, padding = _pair(call.arg(3, "stride", 1)), _pair(call.arg(4, "padding", 0))
    output_padding, groups = _pair(call.arg(5, "output_padding", 0)), call.arg(6, "groups", 1)
    kernel, dilation = weight.shape[-2:], _pair(call.arg(7, "dilation", 1))
    args = _two(lambda i: (kernel[i], stride[i], padding[i], output_padding[i], dilation[i]))
    sizes = _two(lambda i: conv_transpose_output_size(node.spatial()[i], *args[i]))
    axes = _two(lambda i: node.axes[i].transposed(dilation[i] * (kernel[i] - 1) + 1, stride[i], padding[i]))
    shape = (node.tensor.shape[0], weight.shape[1] * groups, *sizes)
    macs = node.tensor.numel() * weight[0].numel()  # each input value scatters out_channels / groups kernels
    rules = _two(lambda i: _Rule("transposed", args[i]))
    return _Effect(axes, node.dims, shape, rules, "op", "conv_transpose2d", macs)


def _pool2d(call: _Call) -> _Effect:
    node = call.node
    if not _is_image(node):
        return _approximate(call)
    is_max = call.op == "max_pool2d"  # avg_pool2d has no dilation argument
    kernel = _pair(call.arg(1, "kernel_size"))
    stride = _pair(call.arg(2, "stride") or kernel)
    padding = _pair(call.arg(3, "padding", 0))
    dilation = _pair(call.arg(4, "dilation", 1)) if is_max else (1, 1)
    ceil_mode = bool(call.arg(5 if is_max else 4, "ceil_mode", False))
    args = _two(lambda i: (kernel[i], stride[i], padding[i], dilation[i], ceil_mode, 0))
    sizes = _two(lambda i: _window_size(node.spatial()[i], *args[i]))
    axes = _two(lambda i: node.axes[i].window(dilation[i] * (kernel[i] - 1) + 1, stride[i], padding[i]))
    rules = _two(lambda i: _Rule("window", args[i]))
    return _Effect(axes, node.dims, (*node.tensor.shape[:2], *sizes), rules, "op", call.op)


def _adaptive_pool2d(call: _Call) -> _Effect:
    node = call.node
    if not _is_image(node):
        return _approximate(call)
    wanted = _pair(call.arg(1, "output_size"))  # None keeps that axis's size
    sizes = _two(lambda i: node.spatial()[i] if wanted[i] is None else wanted[i])
    axes = _two(lambda i: node.axes[i].adaptive(node.spatial()[i], sizes[i]))
    rules = _two(lambda i: SAME if wanted[i] is None else _Rule("fixed", (wanted[i],)))
    return _Effect(axes, node.dims, (*node.tensor.shape[:2], *sizes), rules, "op", call.op)


_RESIZE_REACH = {"nearest": 0, "nearest-exact": 0, "bilinear": 1, "linear": 1, "bicubic": 3}


def _interpolate(call: _Call) -> _Effect:
    node = call.node
    mode = call.arg(3, "mode", "nearest")
    if not _is_image(node) or (mode not in _RESIZE_REACH and mode != "area"):
        return _approximate(call)
    size, factor = call.arg(1, "size"), call.arg(2, "scale_factor")
    align_corners, recompute = call.arg(4, "align_corners"), call.arg(5, "recompute_scale_factor")
    before = node.spatial()
    if size is not None:
        after = _pair(size)
        scales = _two(lambda i: Fraction(after[i], before[i]))
        rules = _two(lambda i: _Rule("resize_to", (after[i],)))
    else:
        factors = _pair(factor)
        after = _two(lambda i: math.floor(before[i] * float(factors[i])))
        # PyTorch maps coordinates with the factor given, unless asked to recompute it from the sizes.
        scales = _two(lambda i: Fraction(after[i], before[i]) if recompute
                      else Fraction(float(factors[i])).limit_denominator(10**6))
        rules = _two(lambda i: _Rule("scale", (scales[i],)))
    axes = _two(lambda i: _resized(node.axes[i], mode, before[i], after[i], scales[i], align_corners))
    details = {"mode": mode, "scale": scales, "align_corners": bool(align_corners)}
    # Antialiased downsampling widens the kernel beyond what is modelled here.
    approximate = bool(call.arg(6, "antialias", False)) and min(scales) < 1
    return _Effect(axes, node.dims, (*node.tensor.shape[:2], *after), rules, "resize", "interpolate",
                   approximate=approximate, details=details)


def _resized(axis: Axis, mode: str, before: int, after: int, scale: Fraction, align_corners: bool | None) -> Axis:
    if mode == "area":
        return axis.adaptive(before, after)
    reach = _RESIZE_REACH[mode] if before > 1 else 0
    if align_corners and mode != "nearest" and mode != "nearest-exact":
        return axis.corner_resample(Fraction(before - 1, after - 1) if after > 1 else Fraction(0), reach)
    return axis.resample(scale, reach)


def _pixel_shuffle(call: _Call) -> _Effect:
    node = call.node
    if not _is_image(node):
        return _approximate(call)
    factor = call.arg(1, "upscale_factor" if call.op == "pixel_shuffle" else "downscale_factor")
    (batch, channels), (height, width) = node.tensor.shape[:2], node.spatial()
    if call.op == "pixel_shuffle":  # each input pixel's s² channels become an s×s block
        shape = (batch, channels // factor**2, height * factor, width * factor)
        axes = _two(lambda i: node.axes[i].resample(Fraction(factor)))
        rule = _Rule("scale", (Fraction(factor),))
        return _Effect(axes, node.dims, shape, (rule, rule), "resize", call.op,
                       details={"mode": "pixel shuffle", "scale": (Fraction(factor),) * 2})
    shape = (batch, channels * factor**2, height // factor, width // factor)
    axes = _two(lambda i: node.axes[i].window(factor, factor, 0))
    rule = _Rule("window", (factor, factor, 0, 1, None, 0))
    return _Effect(axes, node.dims, shape, (rule, rule), "op", call.op)


def _pad(call: _Call) -> _Effect:
    node, pads = call.node, list(call.arg(1, "pad"))
    if node.dims is None:
        return _approximate(call)
    shape = list(node.tensor.shape)
    sides: dict[int, tuple[int, int]] = {}
    for k in range(0, len(pads), 2):
        dim = node.tensor.dim() - 1 - k // 2
        shape[dim] += pads[k] + pads[k + 1]
        sides[dim] = (pads[k], pads[k + 1])
    (top, bottom), (left, right) = (sides.get(d, (0, 0)) for d in node.dims)
    axes = (node.axes[0].shift(-top), node.axes[1].shift(-left))
    rules = (_Rule("border", (top + bottom,)), _Rule("border", (left + right,)))
    kind = "pad" if any((top, bottom, left, right)) else None
    details = {"top": top, "bottom": bottom, "left": left, "right": right, "mode": call.arg(2, "mode", "constant")}
    return _Effect(axes, node.dims, tuple(shape), rules, kind, "pad", details=details)


def _getitem(call: _Call) -> _Effect:
    node = call.node
    if node.dims is None:  # picking from flattened features (a class token): still everything seen
        return _Effect(node.axes, None, None, (NONE, NONE))
    entries = _index_entries(call.arg(1, "index"), node.tensor.dim())
    if entries is None:
        return _approximate(call)
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
            return _approximate(call)  # an integer index drops a spatial axis
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


def _crop_effect(node: _Node, slices: dict[int, tuple[int, int, int]], shape: tuple[int, ...]) -> _Effect:
    """Slicing: each spatial axis starts ``start`` pixels in and keeps every ``step``-th pixel."""
    spatial_dims = node.dims or (0, 0)
    start, step, out_dim = zip(*(slices[d] for d in spatial_dims))
    axes = _two(lambda i: node.axes[i].shift(start[i]).subsample(step[i]))
    changed = _two(lambda i: start[i] != 0 or step[i] != 1 or shape[out_dim[i]] != node.spatial()[i])
    rules = _two(lambda i: _Rule("crop", (shape[out_dim[i]],)) if changed[i] else SAME)
    return _Effect(axes, (out_dim[0], out_dim[1]), shape, rules, "crop" if any(changed) else None, "crop",
                   details={"offset": start, "input": node.spatial()})


def _cat(call: _Call) -> _Effect:
    tensors, dim = call.arg(0, "tensors"), call.arg(1, "dim", 0)
    dim %= call.result.dim()
    shape = list(tensors[0].shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    if len(call.inputs) < 2:
        return _pass(call, tuple(shape))
    if any(n.dims is None for n in call.inputs):
        return _approximate(call)
    effect = _merge(call, "concat", tuple(shape))
    spatial_dims = call.node.dims or ()
    if dim in spatial_dims:  # joined along a spatial axis (tiles), not channels: sizes add up there
        effect.approximate = True
        effect.rules = _two(lambda i: _Rule("sum") if spatial_dims[i] == dim else effect.rules[i])
    return effect


_ELEMENTWISE_MERGES = {"add": "add", "sub": "sub", "rsub": "sub", "mul": "mul", "div": "div",
                       "maximum": "max", "minimum": "min", "max": "max", "min": "min"}


def _merge(call: _Call, label: str, shape: tuple[int, ...]) -> _Effect:
    """Two or more maps combined: the first full-size input's grid, the union of the fields."""
    nodes = call.inputs
    out_spatial = (shape[nodes[0].dims[0]], shape[nodes[0].dims[1]]) if nodes[0].dims else (None, None)
    full = [i for i, n in enumerate(nodes) if n.spatial() == out_spatial] or [0]
    grid = nodes[full[0]]
    axes = _two(lambda i: _hull([n.axes[i] for n in nodes], grid.axes[i]))
    details = _merge_details(label, [nodes[i] for i in full], nodes)
    rule = _Rule("merge", (tuple(full),))
    return _Effect(axes, grid.dims, shape, (rule, rule), "merge", label, details=details)


def _merge_details(label: str, full: list[_Node], nodes: list[_Node]) -> dict[str, Any]:
    same_stride = all(n.axes[i].stride == full[0].axes[i].stride for n in full for i in range(2))
    shift = [max(n.axes[i].center for n in full) - min(n.axes[i].center for n in full) for i in range(2)]
    inputs = [{"name": n.producer, "shape": tuple(n.tensor.shape), "stride": tuple(a.stride for a in n.axes),
               "center": tuple(a.center for a in n.axes), "rf": tuple(a.rf for a in n.axes),
               "broadcast": n not in full} for n in nodes]
    return {"op": label, "inputs": inputs, "aligned": same_stride and not any(shift),
            "misalignment": tuple(shift) if same_stride else None}


def _linear(call: _Call) -> _Effect:
    node, weight = call.node, call.arg(1, "weight")
    shape = (*node.tensor.shape[:-1], weight.shape[0])
    macs = math.prod(shape) * weight.shape[1]
    last = node.tensor.dim() - 1
    if node.dims is not None and last in node.dims:
        effect = _approximate(call)  # mixing along a spatial axis (token mixing)
        effect.macs = macs
        return effect
    return _Effect(node.axes, node.dims, shape, (SAME, SAME), "op", "linear", macs)


def _matmul(call: _Call) -> _Effect:
    first = _tensors(call.args)[0]
    one_map = len(call.inputs) == 1 and call.node.tensor is first
    effect = _linear_like(call) if one_map else _approximate(call)
    effect.macs = call.result.numel() * first.shape[-1]
    return effect


def _linear_like(call: _Call) -> _Effect:
    """``x @ W``: mixes the last dimension only."""
    node, result = call.node, call.result
    last = node.tensor.dim() - 1
    if node.dims is None or last in node.dims or result.dim() != node.tensor.dim():
        return _approximate(call)
    return _Effect(node.axes, node.dims, tuple(result.shape), (SAME, SAME), "op", call.op)


def _reshaped_dims(node: _Node, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """Where height and width went in a reshape, or None if they were merged or split."""
    if node.dims is None or node.dims[1] != node.dims[0] + 1:
        return None
    before = node.tensor.shape
    height, width = node.spatial()
    outer, inner = math.prod(before[:node.dims[0]]), math.prod(before[node.dims[1] + 1:])
    for at in range(len(shape) - 1):
        if (shape[at], shape[at + 1]) == (height, width) and math.prod(shape[:at]) == outer \
                and math.prod(shape[at + 2:]) == inner:
            return at, at + 1
    return None


def _reshape(call: _Call) -> _Effect:
    node, result = call.node, call.result
    if result.numel() != node.tensor.numel():
        return _approximate(call)
    dims = _reshaped_dims(node, tuple(result.shape))
    if dims is not None or node.dims is None:
        return _Effect(node.axes, dims, tuple(result.shape), (SAME, SAME))
    # Height and width flattened into features: every input pixel the map saw now reaches each value.
    sizes = node.spatial()
    axes = _two(lambda i: node.axes[i].window(sizes[i], sizes[i], 0))
    rules = _two(lambda i: _Rule("require", (sizes[i],)))
    return _Effect(axes, None, tuple(result.shape), rules, "op", call.op)


def _permute(call: _Call) -> _Effect:
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
    return _Effect(node.axes, dims, shape, (SAME, SAME))


_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "norm", "prod",
               "argmax", "argmin", "median", "nanmean", "nansum"}


def _reduce(call: _Call) -> _Effect:
    node = call.node
    if len(call.inputs) > 1 or isinstance(call.arg(1, "dim"), Tensor):
        return _elementwise(call)  # torch.max(a, b): elementwise
    dim = call.arg(2, "dim") if call.op == "norm" else call.arg(1, "dim")
    ndim = node.tensor.dim()
    reduced = set(range(ndim)) if dim is None else {d % ndim for d in ((dim,) if isinstance(dim, int) else dim)}
    keep = call.result.dim() == ndim
    if node.dims is None or not reduced & set(node.dims):  # over channels: the grid stays
        if node.dims is None or keep:
            return _Effect(node.axes, node.dims, None, (SAME, SAME))
        before = node.dims
        dims = _two(lambda i: before[i] - sum(r < before[i] for r in reduced))  # removed dims move them up
        return _Effect(node.axes, dims, None, (SAME, SAME))
    # Over the map: each value sees all of it.
    spatial_dims, sizes = node.dims, node.spatial()
    axes = _two(lambda i: node.axes[i].window(sizes[i], sizes[i], 0) if spatial_dims[i] in reduced else node.axes[i])
    rule = _Rule("fixed", (1,)) if keep else NONE
    partial = len(reduced & set(spatial_dims)) == 1 and not keep  # one spatial axis gone: no grid left
    return _Effect(axes, spatial_dims if keep else None, None, (rule, rule), "op", call.op, approximate=partial)


def _split(call: _Call) -> _Effect:
    """Splitting the channels keeps every piece's grid; splitting a spatial axis cuts tiles."""
    node, dim = call.node, call.arg(2, "dim", 0)
    if node.dims is not None and dim % node.tensor.dim() not in node.dims:
        return _Effect(node.axes, node.dims, None, (SAME, SAME))
    return _approximate(call)


def _elementwise(call: _Call) -> _Effect:
    """One map (with constants, parameters, statistics): its geometry; two or more maps: a merge."""
    shape = tuple(call.result.shape)
    if len(call.inputs) == 1:
        return _pass(call) if shape == tuple(call.node.tensor.shape) else _approximate(call)
    try:
        merged = tuple(torch.broadcast_shapes(*(n.tensor.shape for n in call.inputs)))
    except RuntimeError:
        return _approximate(call)
    flattened = [n.dims is None for n in call.inputs]
    if merged != shape or (any(flattened) and not all(flattened)):
        return _approximate(call)
    if all(flattened):  # features flattened already (tokens, vectors): no grid to align
        axes = _two(lambda i: _hull([n.axes[i] for n in call.inputs], call.node.axes[i]))
        return _Effect(axes, None, shape, (NONE, NONE))
    return _merge(call, _ELEMENTWISE_MERGES.get(call.op, call.op), shape)


_MIXING = {"softmax", "log_softmax", "cumsum", "cumprod", "flip", "fliplr", "flipud", "roll", "rot90", "sort",
           "argsort", "topk", "unfold", "fold", "grid_sample", "affine_grid", "stack", "unbind",
           "conv1d", "conv3d", "max_pool1d", "max_pool3d", "avg_pool1d", "avg_pool3d", "expand", "repeat", "tile"}

_HANDLERS: dict[str, Callable[[_Call], _Effect]] = {
    "conv2d": _conv2d, "conv_transpose2d": _conv_transpose2d, "max_pool2d": _pool2d, "avg_pool2d": _pool2d,
    "adaptive_avg_pool2d": _adaptive_pool2d, "adaptive_max_pool2d": _adaptive_pool2d, "interpolate": _interpolate,
    "upsample": _interpolate, "pixel_shuffle": _pixel_shuffle, "pixel_unshuffle": _pixel_shuffle, "pad": _pad,
    "getitem": _getitem, "cat": _cat, "concat": _cat, "concatenate": _cat, "linear": _linear,
    "matmul": _matmul, "mm": _matmul, "bmm": _matmul, "view": _reshape, "reshape": _reshape, "flatten": _reshape,
    "unflatten": _reshape, "squeeze": _reshape, "unsqueeze": _reshape, "view_as": _reshape, "reshape_as": _reshape,
    "permute": _permute, "transpose": _permute, "swapaxes": _permute, "split": _split, "chunk": _split,
    **{name: _reduce for name in _REDUCTIONS},
}


def _effect(call: _Call) -> _Effect:
    handler = _HANDLERS.get(call.op)
    if handler is not None:
        return handler(call)
    if call.op in _MIXING:
        return _softmax_like(call) if call.op in ("softmax", "log_softmax") else _approximate(call)
    return _elementwise(call)


def _softmax_like(call: _Call) -> _Effect:
    """Softmax over channels (class scores) keeps the geometry; over a spatial axis it mixes it."""
    node, dim = call.node, call.arg(1, "dim")
    if dim is not None and node.dims is not None and dim % node.tensor.dim() not in node.dims:
        return _pass(call)
    return _approximate(call)


# --- tracing -------------------------------------------------------------------------------------


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
        TraceError: an analytic shape disagreed with the real one (a bug in this module).
    """
    x = _probe(model, _pair(input_size), in_channels)
    tracer = _Tracer()
    tracer.add_input(x)
    modes = {module: module.training for module in model.modules()}
    handles = _hook(model, tracer)
    try:
        model.eval()  # batch norm on one image, dropout off
        with torch.no_grad(), tracer:
            (forward or model)(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.train(training)
    _resolve_rules(tracer.graph)
    total = sum(p.numel() for p in model.parameters())
    return Trace(tracer.rows, tuple(x.shape), total, type(model).__name__, tracer.graph)


def _hook(model: nn.Module, tracer: _Tracer) -> list[Any]:
    """Tell the tracer which module runs; ``always_call`` keeps its stack right if one raises."""
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, args, name=name: tracer.enter(name, m)))
        handles.append(module.register_forward_hook(lambda m, args, out: tracer.exit(out), always_call=True))
    return handles


# --- which input sizes need no padding -----------------------------------------------------------


@dataclass(frozen=True)
class ValidSizes:
    """Input sizes a model takes as they are: nothing padded, nothing floored away.

    Attributes:
        heights: valid heights in the range asked about.
        widths: valid widths (the same as ``heights`` for every model with square kernels).
        period: the sizes repeat every ``period`` pixels from ``offset`` on (None when they do not).
        offset: the smallest valid size of that progression.
        explanation: the rule, in a sentence.
    """

    heights: tuple[int, ...]
    widths: tuple[int, ...]
    period: int | None
    offset: int | None
    explanation: str

    @property
    def sizes(self) -> tuple[int, ...]:
        """The valid sizes, where heights and widths agree."""
        if self.heights != self.widths:
            raise ValueError("valid heights and widths differ for this model; read .heights and .widths")
        return self.heights

    def __contains__(self, size: object) -> bool:
        return size in self.heights and size in self.widths


def valid_input_sizes(model: nn.Module, max_size: int = 1024, min_size: int = 1, *, traced: Trace | None = None,
                      probe_size: int | tuple[int, int] = 224) -> ValidSizes:
    """Which input sizes need no padding?

    For pixelwise models the answer follows from their design: models that pad to a multiple
    of ``size_divisor`` need none at its multiples (from twice it, the smallest they pad to);
    the paper FCN takes every size (its 100-pixel padding, ceil-mode pooling and crops); the
    paper U-Net always mirrors its margin outward, and needs nothing more at the sizes its
    valid network maps onto. For any other module, sizes are re-propagated through the traced
    operations (no forward pass per size): a size is valid when every strided window tiles its
    input exactly (no remainder left to the floor), every merge gets equal sizes, and any
    flattened map keeps its traced size.

    Args:
        model: the model.
        max_size: largest size considered.
        min_size: smallest size considered.
        traced: a trace of ``model`` to reuse (generic modules only).
        probe_size: the size to trace at when ``traced`` is not given.
    """
    if max_size < min_size:
        raise ValueError(f"max_size {max_size} is below min_size {min_size}")
    known = _designed_sizes(model, min_size, max_size)
    if known is not None:
        return known
    traced = traced or trace(model, probe_size)
    heights, widths = (tuple(n for n in range(min_size, max_size + 1) if _propagate(traced.graph, axis, n))
                       for axis in range(2))
    return _described(type(model).__name__, heights, widths, min_size, max_size)


def _designed_sizes(model: nn.Module, min_size: int, max_size: int) -> ValidSizes | None:
    """The rule a pixelwise model was built around, or None for a generic analysis."""
    from pixelwise.models.base import SegmentationModel
    from pixelwise.models.fcn import FCN
    from pixelwise.models.unet import UNet, unet_input_size, unet_margin

    if not isinstance(model, SegmentationModel):
        return None
    name, span = type(model).__name__, range(min_size, max_size + 1)
    if isinstance(model, FCN) and model.paper:
        return ValidSizes(tuple(span), tuple(span), 1, min_size, (
            f"The paper {model.variant.upper()} takes every size as it is: conv1_1's 100 pixels of padding keep "
            f"fc6 valid even for tiny inputs, ceil-mode pooling keeps partial windows, and the crops "
            f"({', '.join(f'{k} {v}' for k, v in model.crop_offsets.items())}) cut the output back onto the input."))
    if isinstance(model, UNet):
        margin = unet_margin(model.depth)
        sizes = tuple(n for n in span if unet_input_size(n, model.depth) - n == 2 * margin)
        return _progression(sizes, sizes, (
            f"The paper U-Net (depth {model.depth}) always mirrors {margin} pixels onto each side (overlap-tile); "
            f"sizes {_listing(sizes)} need nothing more (its valid network then sees "
            f"{_listing(tuple(n + 2 * margin for n in sizes))})."))
    if model.size_divisor > 1:
        divisor = model.size_divisor
        sizes = tuple(n for n in span if n % divisor == 0 and n >= 2 * divisor)
        return _progression(sizes, sizes, (
            f"{name} pads every input to a multiple of {divisor}, at least {2 * divisor}; "
            f"multiples of {divisor} from {2 * divisor} ({_listing(sizes)}) need no padding."))
    return None


def _listing(sizes: tuple[int, ...], head: int = 4) -> str:
    if not sizes:
        return "none in range"
    shown = ", ".join(map(str, sizes[:head]))
    return shown + (f", …, {sizes[-1]}" if len(sizes) > head else "")


def _progression(heights: tuple[int, ...], widths: tuple[int, ...], explanation: str) -> ValidSizes:
    """Attach the period and offset when the heights are evenly spaced."""
    gaps = {b - a for a, b in zip(heights, heights[1:])}
    period = gaps.pop() if len(gaps) == 1 else None
    return ValidSizes(heights, widths, period, heights[0] if period else None, explanation)


def _described(name: str, heights: tuple[int, ...], widths: tuple[int, ...], low: int, high: int) -> ValidSizes:
    result = _progression(heights, widths, "")
    if not heights:
        text = f"No size from {low} to {high} passes {name}'s strided layers exactly"
    elif result.period:
        rule = (f"multiples of {result.period}" if result.offset % result.period == 0
                else f"sizes {result.offset} + {result.period}·k")
        text = (f"{name} keeps every pixel (each strided window tiles its input exactly) at {rule}: "
                f"{_listing(heights)}")
    else:
        text = f"{name} keeps every pixel (each strided window tiles its input exactly) at sizes {_listing(heights)}"
    if widths != heights:
        text += f"; widths: {_listing(widths)}"
    return replace(result, explanation=text + ".")


# --- models by name, for the command line --------------------------------------------------------


def build_model(spec: str, num_classes: int | None = None, **options: Any) -> nn.Module:
    """A model to trace: a registered pixelwise name, or ``torchvision:NAME`` (built without weights).

    Args:
        spec: ``"fcn8s"``, ``"unet"``, ... or ``"torchvision:vgg16"``.
        num_classes: classes; ``None`` keeps the builder's default (21, or ImageNet's 1000).
        **options: builder arguments (``paper=True``, ``encoder="resnet18"``).
    """
    if spec.startswith("torchvision:"):
        from torchvision import models as tvm

        name = spec.removeprefix("torchvision:")
        available = tvm.list_models(module=tvm)  # image classifiers only
        if name not in available:
            raise ValueError(f"unknown torchvision classifier {name!r}; choose one of {', '.join(available)}")
        if options.pop("weights", None) is not None:
            raise ValueError("shapes need no weights: torchvision models are built with weights=None")
        if num_classes is not None:
            options["num_classes"] = num_classes
        return tvm.get_model(name, weights=None, **options)
    from pixelwise.models import create_model

    return create_model(spec, **({"num_classes": num_classes} if num_classes is not None else {}), **options)
