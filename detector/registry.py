"""A name -> factory registry, one instance per kind of thing (methods, model architectures).

Contract: every entry is registered once under a unique, lower-case name; registering a name
twice is an error (silently replacing an entry hides import-order bugs), except for the very
same class again (same module and qualified name: a module imported a second time). Entries
are built by name, so configuration files, the CLI and the server refer to them by string, and
benchmarks and tests iterate over ``names()`` so that a new entry is tested the day it is
added. A registry may be given ``plugins``, a loader run once, before the first lookup, in
every process that looks (entry points of installed packages); ``atomic`` undoes what a
failing plugin registered.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import re
import threading
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

    def __init__(self, kind: str, plugins: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._plugins = plugins  # run once, at the first lookup (``_load``)
        self._loaded = plugins is None
        self._lock = threading.RLock()  # re-entrant: a plugin may look names up as it loads
        # plugin -> why it did not load: named where a lookup fails (``get``)
        self.plugin_errors: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""
        if not _NAME.match(name):
            raise RegistryError(f"invalid {self.kind} name {name!r}: use lower_snake_case")

        def deco(obj: T) -> T:
            if name in self._entries and not _same(self._entries[name], obj):
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return deco

    def _load(self) -> None:
        """Run the plugin loader if it has not run (in this process)."""
        if self._loaded:
            return
        with self._lock:  # another thread waits here until the loader has run
            if self._plugins is not None:  # None here: this thread is inside the loader
                load, self._plugins = self._plugins, None
                try:
                    load()
                finally:
                    self._loaded = True

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Entries registered inside are removed again if it raises: a plugin that fails
        half-way leaves nothing of itself (its method ran although reported unavailable)."""
        self._load()  # plugins a lookup inside would load are not this block's to undo
        with self._lock:
            before = dict(self._entries)
            try:
                yield
            except BaseException:
                self._entries.clear()
                self._entries.update(before)
                raise

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            failed = "".join(
                f"; plugin {p!r} failed to load: {why}" for p, why in self.plugin_errors.items()
            )
            raise RegistryError(f"unknown {self.kind} {name!r} (known: {known}){failed}") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)


def _same(old: object, new: object) -> bool:
    """The same object, or the same class defined again (its module imported once more)."""
    if old is new:
        return True
    key = ("__module__", "__qualname__")
    return (
        isinstance(old, type)
        and isinstance(new, type)
        and all(getattr(old, k) == getattr(new, k) for k in key)
    )


def import_plugins(package: str, path: Iterable[str], skip: Iterable[str] = ()) -> None:
    """Import every module of ``package`` (its ``__path__``), in name order, but ``skip``:
    a module that registers itself is picked up by being there (no list to keep in step)."""
    skipped = set(skip)
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda m: m.name):
        if info.name not in skipped and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
