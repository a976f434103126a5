"""What one torch call does to the geometry: the tensors followed, the call, and its effect.

The operator rules of :mod:`pixelwise.geometry.ops` turn a :class:`Call` into an
:class:`Effect`; :func:`pass_through` and :func:`approximate_effect` are the rules every other rule falls
back on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from torch.utils._pytree import tree_flatten

from pixelwise.geometry.axes import Axes, per_axis
from pixelwise.geometry.propagation import SAME, Rule


@dataclass(eq=False)  # compared by identity: the held tensor has no truth value
class Node:
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
class Effect:
    """What one operation does to the geometry, and how to check and record it."""

    axes: Axes
    dims: tuple[int, int] | None
    shape: tuple[int, ...] | None  # analytic output shape, compared with the real one
    rules: tuple[Rule, Rule]
    kind: str | None = None  # the row kind when it happens in a model's own code; None: no row
    type: str = ""
    macs: int = 0
    approximate: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Call:
    op: str
    args: tuple
    kwargs: dict
    out: Any
    inputs: list[Node]

    def arg(self, position: int, name: str, default: Any = None) -> Any:
        if len(self.args) > position:
            return self.args[position]
        return self.kwargs.get(name, default)

    @property
    def node(self) -> Node:
        return self.inputs[0]

    @property
    def result(self) -> Tensor:
        return tensors_in(self.out)[0]


def tensors_in(value: Any) -> list[Tensor]:
    leaves, _ = tree_flatten(value)
    return [leaf for leaf in leaves if isinstance(leaf, Tensor)]


def is_image(node: Node) -> bool:
    """NCHW with height and width last: the layout the 2-D operations assume."""
    return node.tensor.dim() == 4 and node.dims == (2, 3)


def pass_through(call: Call, shape: tuple[int, ...] | None = None) -> Effect:
    """Geometry unchanged (elementwise operations, normalisation, dropout, ...)."""
    node = call.node
    return Effect(node.axes, node.dims, shape or tuple(node.tensor.shape), (SAME, SAME))


def approximate_effect(call: Call) -> Effect:
    """An operation the tracer does not know: pass the first input's geometry through, marked."""
    node, result = call.node, call.result
    dims = node.dims if result.dim() == node.tensor.dim() else reshaped_dims(node, tuple(result.shape))
    before = node.spatial()
    after = (result.shape[dims[0]], result.shape[dims[1]]) if dims else (None, None)
    rules = per_axis(lambda i: SAME if before[i] == after[i] else Rule("fixed", (after[i],)))
    return Effect(node.axes, dims, None, rules, "op", call.op, approximate=True)


def reshaped_dims(node: Node, shape: tuple[int, ...]) -> tuple[int, int] | None:
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
