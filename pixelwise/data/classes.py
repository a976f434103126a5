"""Class metadata that travels with a data set: names, palette, ignore index."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from pixelwise.errors import InputError

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassInfo:
    """What a data set's class indices mean.

    Attributes:
        names: one name per class; index ``i`` of a mask means ``names[i]``.
        palette: one RGB colour per class, for colour masks and overlays.
        ignore_index: the mask value of pixels that no loss or metric counts.
    """

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] = field(default=())
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if not self.names:
            raise InputError("a data set needs at least one class name")
        if not self.palette:
            object.__setattr__(self, "palette", default_palette(len(self.names)))
        if len(self.palette) != len(self.names):
            raise InputError(f"{len(self.names)} class names but {len(self.palette)} palette colours")
        for index, colour in enumerate(self.palette):
            if len(colour) != 3 or not all(0 <= value <= 255 for value in colour):
                raise InputError(f"palette colour {index} is {list(colour)}, not three values 0–255 (R, G, B)")
        if 0 <= self.ignore_index < len(self.names):
            raise InputError(f"ignore_index {self.ignore_index} collides with class {self.names[self.ignore_index]!r}")

    @property
    def num_classes(self) -> int:
        """Number of classes (the ignore index excluded)."""
        return len(self.names)

    def to_dict(self) -> dict:
        """JSON-able form (saved in checkpoints and run folders)."""
        return {"names": list(self.names), "palette": [list(c) for c in self.palette],
                "ignore_index": self.ignore_index}

    @classmethod
    def from_dict(cls, data: dict) -> "ClassInfo":
        """Inverse of :meth:`to_dict`; only ``names`` is required (a hand-made record without a
        palette gets the default one, without an ignore index the default 255).

        Raises:
            ValueError: ``data`` is not such a record.
        """
        if not isinstance(data, dict) or not isinstance(data.get("names"), (list, tuple)):
            raise InputError(f"class record {data!r} needs a list of class names under 'names' (and optionally "
                             f"'palette' and 'ignore_index')")
        return class_info(data["names"], data.get("palette"), int(data.get("ignore_index", IGNORE_INDEX)))


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Pascal VOC's colour map (bit-interleaved, distinct for up to 256 classes)."""
    colours = []
    for index in range(num_classes):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def class_info(names: Sequence[str], palette: Sequence[Sequence[int]] | None = None,
               ignore_index: int = IGNORE_INDEX) -> ClassInfo:
    """Build a :class:`ClassInfo` from plain sequences."""
    return ClassInfo(tuple(names), tuple(tuple(int(v) for v in c) for c in palette or ()), ignore_index)
