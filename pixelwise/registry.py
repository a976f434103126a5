"""Named tables of builders (models, data set formats, encoders, layers, losses) with one lookup error.

A :class:`Registry` maps names to objects, is filled by its :meth:`~Registry.register` decorator
and refuses a name twice. Looking up a name it does not hold raises :class:`UnknownNameError`,
whose message has the same form for every table::

    unknown model 'unet34'; did you mean 'unet'? (known: deeplabv3, fcn8s, unet)
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

from pixelwise.errors import InputError, PixelwiseError

T = TypeVar("T")


class UnknownNameError(PixelwiseError, KeyError, ValueError):
    """A name that is not in a registry.

    A ``KeyError``, so a :class:`Registry` behaves as a ``Mapping`` (``registry.get(name)``
    returns ``None``), and a ``ValueError``, the error a bad argument raises everywhere else.

    Attributes:
        what: what the names are ("model", "loss").
        name: the name asked for.
        known: the valid names, in the order the message lists them.
    """

    def __init__(self, what: str, name: object, known: Iterable[str]) -> None:
        self.what, self.name, self.known = what, name, list(known)
        super().__init__(self._message())

    def _message(self) -> str:
        message = f"unknown {self.what} {self.name!r}"
        close = [repr(match) for match in difflib.get_close_matches(str(self.name), self.known, n=3)]
        if close:
            alternatives = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
            message += f"; did you mean {alternatives}?"
        return f"{message} (known: {', '.join(self.known)})"

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self) -> tuple:
        return type(self), (self.what, self.name, self.known)


class Registry(Mapping[str, T]):
    """A read-only mapping from names to objects, filled by :meth:`register`.

    Args:
        what: what the names are, for error messages ("model", "norm layer").
        normalize: maps a name to its key before storing and looking up (``str.lower`` for
            case-insensitive names); ``None`` keeps names as given.
        patterns: accepted names outside the table (``"timm:NAME"``), listed after the known names
            in the error message; the caller resolves them before looking up.
    """

    def __init__(self, what: str, normalize: Callable[[str], str] | None = None,
                 patterns: Iterable[str] = ()) -> None:
        self.what = what
        self._normalize = normalize or (lambda name: name)
        self._patterns = tuple(patterns)
        self._entries: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator that registers an object under ``names`` (default: its ``__name__``) and
        returns it unchanged; a name already registered is a ``ValueError``."""

        def decorator(obj: T) -> T:
            for name in names or (obj.__name__,):
                self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; a name already registered is a ``ValueError``."""
        key = self._normalize(name)
        if key in self._entries:
            raise InputError(f"{self.what} {name!r} is already registered")
        self._entries[key] = obj

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __getitem__(self, name: str) -> T:
        key = self._normalize(name) if isinstance(name, str) else name
        if key not in self._entries:
            raise UnknownNameError(self.what, name, [*self.names(), *self._patterns])
        return self._entries[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._normalize(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {self.names()})"
