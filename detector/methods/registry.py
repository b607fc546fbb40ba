"""The method registry: every method, of every kind, registered by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from detector.methods.base import Kind, Method
from detector.registry import Registry, RegistryError

__all__ = [
    "METHODS",
    "MethodUnavailable",
    "create_method",
    "create_methods",
    "default_method_names",
    "method_names",
    "register_method",
]

METHODS: Registry[type[Method]] = Registry("method")


class MethodUnavailable(RuntimeError):
    """A registered method cannot run in this environment (the message says why)."""


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a ``Method`` subclass and set its ``name``."""
    outer = METHODS.register(name)

    def deco(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise RegistryError(f"{cls!r} is not a Method subclass")
        cls.name = name
        return outer(cls)

    return deco


def method_names(kind: Kind | str | None = None, available_only: bool = False) -> list[str]:
    """Registered method names, optionally of one kind and only those that can run here."""
    kind = Kind(kind) if kind is not None else None
    names = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        if kind is not None and cls.kind != kind:
            continue
        if available_only and cls.availability() is not None:
            continue
        names.append(name)
    return names


def default_method_names(also: Iterable[str] = ()) -> list[str]:
    """The methods a detector runs when none are named: available here and ``in_default``,
    plus ``also`` (the ones an option implies, e.g. ``known_image`` for a memory database)."""
    names = {n for n in method_names(available_only=True) if METHODS.get(n).in_default}
    return sorted(names | set(also))


def create_method(name: str, **options: Any) -> Method:
    """Build a method by name; raises ``MethodUnavailable`` if it cannot run here."""
    cls = METHODS.get(name)
    reason = cls.availability(**options)
    if reason is not None:
        raise MethodUnavailable(f"method {name!r} is unavailable: {reason}")
    return cls(**options)


def create_methods(names: Sequence[str] | None = None, **options: Any) -> list[Method]:
    """Build the named methods (default: ``default_method_names()``).

    ``options`` are passed to each method whose constructor accepts them, so one flag such as
    ``include_prompt`` reaches the methods that understand it.
    """
    known = {o for n in METHODS.names() for o in getattr(METHODS.get(n), "options", ())}
    unknown = sorted(set(options) - known)
    if unknown:  # a misspelt option (modle_path=) was dropped and the default used
        raise TypeError(f"unknown method options {unknown}; the methods take {sorted(known)}")
    # A name given twice runs once (its evidence would count twice in fusion otherwise).
    chosen = list(dict.fromkeys(names)) if names is not None else default_method_names()
    methods = []
    for name in chosen:
        cls = METHODS.get(name)
        accepted = getattr(cls, "options", ())
        methods.append(create_method(name, **{k: v for k, v in options.items() if k in accepted}))
    return methods
