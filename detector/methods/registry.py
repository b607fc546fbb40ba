"""The method registry: every method, of every kind, registered by name.

The built-in methods register when ``detector.methods`` is imported. Other installed packages
add theirs through the entry-point group ``synthdetect.methods``: each entry names a module
that registers its methods on import (``register_method``). Those modules are imported at the
registry's first lookup, in every process that looks (a ``serve --processes`` child, a scan
worker, a script that never ran the command line); one that fails to import is logged, named
in ``METHODS.plugin_errors`` and leaves nothing registered, and the other methods work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from typing import Any

from detector.methods.base import Kind, Method
from detector.registry import Registry, RegistryError

__all__ = [
    "METHODS",
    "PLUGIN_GROUP",
    "MethodUnavailable",
    "create_method",
    "create_methods",
    "default_method_names",
    "method_names",
    "register_method",
]

PLUGIN_GROUP = "synthdetect.methods"
_log = logging.getLogger(__name__)


def _load_method_plugins() -> None:
    """Import the module of every ``synthdetect.methods`` entry point, in name order; one that
    fails is reported and rolled back (module docstring)."""
    for ep in sorted(metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            with METHODS.atomic():
                ep.load()
        except Exception as exc:
            METHODS.plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"
            _log.warning(
                "synthdetect: method plugin %r (%s) failed to load: %s",
                ep.name,
                ep.value,
                METHODS.plugin_errors[ep.name],
            )


METHODS: Registry[type[Method]] = Registry("method", plugins=_load_method_plugins)


class MethodUnavailable(RuntimeError, ValueError):
    """A registered method cannot run in this environment, or failed to start (the message
    says why). A ``ValueError`` too: every command reports a method it was asked for and
    cannot run as it reports a bad option (``serve`` and ``bench accuracy`` stopped with a
    traceback), and the server answers it as it answers an unavailable method."""


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a ``Method`` subclass and set its ``name``; its ``kind`` must
    be a ``Kind`` (or its value, "metadata"), else every verdict and the listing failed."""
    outer = METHODS.register(name)

    def deco(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise RegistryError(f"{cls!r} is not a Method subclass")
        kind = getattr(cls, "kind", None)
        try:
            cls.kind = Kind(kind)
        except ValueError:
            kinds = ", ".join(k.value for k in Kind)
            raise RegistryError(
                f"method {name!r}: kind {kind!r} is not a Kind (one of {kinds})"
            ) from None
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
        if available_only and cls.unavailable_reason() is not None:
            continue
        names.append(name)
    return names


def default_method_names(also: Iterable[str] = ()) -> list[str]:
    """The methods a detector runs when none are named: available here and ``in_default``,
    plus ``also`` (the ones an option implies, e.g. ``known_image`` for a memory database)."""
    names = {n for n in method_names(available_only=True) if METHODS.get(n).in_default}
    return sorted(names | set(also))


def create_method(name: str, **options: Any) -> Method:
    """Build a method by name; raises ``MethodUnavailable`` if it cannot run here or its
    constructor fails. A ``ValueError`` or ``OSError`` (an option's bad value or file: a model
    path, trust anchors) is raised as it is, for the caller to name the option."""
    cls = METHODS.get(name)
    reason = cls.unavailable_reason(**options)
    if reason is not None:
        raise MethodUnavailable(f"method {name!r} is unavailable: {reason}")
    try:
        return cls(**options)
    except (ValueError, OSError):
        raise
    except Exception as exc:  # the method's own fault: named, not a traceback
        raise MethodUnavailable(
            f"method {name!r} failed to start: {type(exc).__name__}: {exc}"
        ) from exc


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
