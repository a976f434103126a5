"""The result of a trace: its rows, totals, and renderings as text, tables and JSON."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator, Mapping

from rich.console import Console
from rich.table import Table

from pixelwise.geometry.axes import Axes, human_count, jsonable, pair_text
from pixelwise.geometry.propagation import Graph


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
            "stride": jsonable(self.stride), "rf": jsonable(self.rf), "center": jsonable(self.center),
            "params": self.params, "macs": self.macs, "flattened": self.flattened,
            "approximate": self.approximate, "details": jsonable(self.details),
        }

    def note(self) -> str:
        """A short description of an event for the table."""
        parts = []
        if self.kind == "merge":
            mark = "aligned" if self.aligned else _misalignment_text(self.details)
            parts.append(f"{self.type} of {len(self.details['inputs'])}: {mark}")
        elif self.kind == "crop":
            parts.append(f"crop at {pair_text(tuple(map(Fraction, self.details['offset'])))}")
        elif self.kind == "pad":
            sides = [self.details[side] for side in ("top", "bottom", "left", "right")]
            parts.append(f"pad t{sides[0]} b{sides[1]} l{sides[2]} r{sides[3]} {self.details['mode']}")
        elif self.kind == "resize":
            parts.append(f"{self.details['mode']} ×{pair_text(self.details['scale'], '×')}")
        if self.approximate:
            parts.append("≈ unknown op")
        return "; ".join(parts)


def _misalignment_text(details: Mapping[str, Any]) -> str:
    shift = details.get("misalignment")
    if shift is None:
        return "MISALIGNED (strides differ)"
    return f"MISALIGNED by {pair_text(tuple(shift))} px"


@dataclass
class Trace:
    """The rows of a traced forward pass, with totals and renderings.

    Attributes:
        rows: one per layer call and per geometric event, in execution order.
        input_shape: shape of the traced input, batch of one included.
        total_params: ``sum(p.numel() for p in model.parameters())`` (layers never called included).
        model_type: class name of the traced model.
        outputs: the geometry (height axis, width axis) of each tensor the forward pass returned,
            in the order of its flattened output (``None`` for one not computed from the input,
            or flattened); e.g. an encoder's feature maps, highest resolution first.
    """

    rows: list[Row]
    input_shape: tuple[int, ...]
    total_params: int
    model_type: str
    graph: Graph = field(default_factory=lambda: Graph(), repr=False, compare=False)
    outputs: tuple[Axes | None, ...] = field(default=(), compare=False)

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
        text = (f"{self.model_type} at {size}: {self.total_params:,} parameters ({human_count(self.total_params)}), "
                f"{self.total_macs:,} MACs ({human_count(self.total_macs)}) per image")
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
    stride = "global" if row.flattened else pair_text(row.stride)
    return [row.name, row.type, "×".join(map(str, row.shape[1:])), stride, pair_text(row.rf, "×"),
            pair_text(row.center), f"{row.params:,}" if row.params else "", human_count(row.macs) if row.macs else "",
            row.note()]


def _style(row: Row) -> str:
    if row.kind == "merge":
        return "bold green" if row.aligned else "bold red"
    return {"crop": "yellow", "pad": "yellow", "resize": "cyan", "op": "magenta"}.get(row.kind, "")
