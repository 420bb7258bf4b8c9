"""A small generic name → object registry (timm style) with did-you-mean errors.

Models, samplers, losses, schedules, optimizers and export modes each own one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from kcnn.errors import KcnnError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    """``" (did you mean 'x'?)"`` for the closest choices, or ``""``."""
    close = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


class Registry(Generic[T]):
    """Maps names to objects; unknown names raise :class:`KcnnError` listing close matches.

    Example:
        >>> samplers = Registry("sampler")
        >>> @samplers.register("shuffle")
        ... def make_shuffle(labels): ...
        >>> samplers.get("shufle")  # KcnnError: unknown sampler 'shufle' (did you mean 'shuffle'?) ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or obj.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KcnnError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        names = self.names()
        return (
            f"unknown {self.kind} {name!r}{did_you_mean(name, names)}; "
            f"valid names: {', '.join(names)}"
        )

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, Any]]:
        return sorted(self._items.items())
