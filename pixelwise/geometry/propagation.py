"""Input sizes re-propagated through a traced forward pass, without running it again.

Every operation the tracer sees records, per axis, a :class:`Rule` mapping its inputs' sizes
to its output's size; :func:`propagates` replays them for another input size and says whether
every strided window tiles its input exactly, every merge gets equal sizes and every flattened
map keeps its traced size.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Callable

from pixelwise.geometry.sizes import conv_output_size, conv_transpose_output_size, pool_output_size


class _Invalid(Exception):
    """This input size fails: a layer floors away pixels, gets an empty input, or a merge mismatches."""


@dataclass(frozen=True)
class Rule:
    """How one operation maps its inputs' sizes on one axis to its output's size."""

    kind: str
    args: tuple = ()


SAME, NONE = Rule("same"), Rule("none")


@dataclass(frozen=True)
class SizeOp:
    inputs: tuple[int, ...]
    output: int
    rules: tuple[Rule, Rule]


@dataclass
class Graph:
    """Every operation on tracked tensors, for re-propagating other input sizes."""

    ops: list[SizeOp] = field(default_factory=list)
    traced: dict[int, tuple[int | None, int | None]] = field(default_factory=dict)


def _apply(rule: Rule, sizes: list[int | None], known: dict[int, int | None]) -> int | None:
    """The output size on one axis; raises :class:`_Invalid` when that size would not be exact."""
    if rule.kind == "none" or (rule.kind not in ("fixed", "follow") and sizes[0] is None):
        return None
    size = sizes[0]
    try:
        return _RULES[rule.kind](size, sizes, known, *rule.args)
    except ValueError as error:  # sizes.py refuses inputs too small for a window
        raise _Invalid(str(error)) from error


def window_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool | None,
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
    return window_size(size, *args)


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


def propagates(graph: Graph, axis: int, size: int) -> bool:
    """Whether an input of ``size`` on ``axis`` goes through every operation exactly."""
    known: dict[int, int | None] = {0: size}
    try:
        for op in graph.ops:
            sizes = [known.get(i) for i in op.inputs]
            known[op.output] = _apply(op.rules[axis], sizes, known)
    except _Invalid:
        return False
    return True


def resolve_rules(graph: Graph) -> None:
    """Crops and resizes to a computed size follow the map they are matched to."""
    consumers: dict[int, list[SizeOp]] = {}
    for op in graph.ops:
        for node in op.inputs:
            consumers.setdefault(node, []).append(op)
    for position, op in enumerate(graph.ops):
        rules = tuple(_resolve(rule, op, axis, graph, consumers, position) for axis, rule in enumerate(op.rules))
        graph.ops[position] = replace(op, rules=rules)


def _resolve(rule: Rule, op: SizeOp, axis: int, graph: Graph, consumers: dict[int, list[SizeOp]],
             position: int) -> Rule:
    if rule.kind not in ("crop", "resize_to"):
        return rule
    (target,) = rule.args
    # A crop feeding a merge is made to match the merge's other input (FCN, U-Net), when that
    # input exists already (of two crops feeding one merge, the later one follows the earlier).
    for consumer in consumers.get(op.output, []):
        if consumer.rules[axis].kind == "merge":
            partners = [n for n in consumer.inputs if n < op.output and graph.traced[n][axis] == target]
            if partners:
                return Rule("follow", (partners[0],))
    # A resize to a computed size usually targets the input, or a map just computed.
    earlier = [0] + [o.output for o in reversed(graph.ops[:position])]
    matches = [n for n in earlier if graph.traced.get(n, (None, None))[axis] == target and n not in op.inputs]
    if rule.kind == "resize_to":
        return Rule("follow", (matches[0],)) if matches else Rule("fixed", (target,))
    return Rule("border", (target - graph.traced[op.inputs[0]][axis],))
