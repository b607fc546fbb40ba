"""A name -> factory registry, one instance per kind of thing (methods, model architectures).

Contract: every entry is registered once under a unique, lower-case name; registering a name
twice is an error (silently replacing an entry hides import-order bugs). Entries are built by
name, so configuration files, the CLI and the server refer to them by string, and benchmarks and
tests iterate over ``names()`` so that a new entry is tested the day it is added.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry", "RegistryError", "import_plugins"]

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class RegistryError(KeyError):
    """An unknown or duplicate name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to classes or factories of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""
        if not _NAME.match(name):
            raise RegistryError(f"invalid {self.kind} name {name!r}: use lower_snake_case")

        def deco(obj: T) -> T:
            if name in self._entries:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise RegistryError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def import_plugins(package: str, path: Iterable[str], skip: Iterable[str] = ()) -> None:
    """Import every module of ``package`` (its ``__path__``), in name order, but ``skip``:
    a module that registers itself is picked up by being there (no list to keep in step)."""
    skipped = set(skip)
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda m: m.name):
        if info.name not in skipped and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
