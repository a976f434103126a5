"""Looking a name up in a registry, with an error that suggests the closest names."""
from __future__ import annotations

import difflib
from typing import Mapping, TypeVar

T = TypeVar("T")


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """``table[name]``, or a ValueError naming the closest matches and every valid name.

    Args:
        table: the registry.
        name: the name asked for.
        what: what the names are, for the message ("model", "data set format").
    """
    if name not in table:
        close = difflib.get_close_matches(name, table, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown {what} {name!r}.{hint} Available: {', '.join(sorted(table))}")
    return table[name]
