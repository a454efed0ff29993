"""The pass registry: ``@register_pass`` on a ``Pass`` subclass makes it usable from pipeline text.

Importing the ``passes`` package registers every pass that ships with effarch and those of installed
plugins (``compiler.pass_manager.plugins``). The registry is the one piece of module state here; it
is written only at import time.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, TypeVar

from compiler.errors import EffarchError
from compiler.pass_manager.base import Pass

_REGISTRY: dict[str, type[Pass]] = {}
_PACKAGE: dict[str, str] = {}  # pass name -> the distribution that provides it, for plugins
EFFARCH = "effarch"
PASS_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")

P = TypeVar("P", bound=type[Pass])


def register_pass(cls: P) -> P:
    if not PASS_NAME.fullmatch(cls.name):
        raise ValueError(f"{cls.__qualname__}.name {cls.name!r} must be kebab-case like 'fold-constants'")
    if not cls.description or "\n" in cls.description:
        raise ValueError(f"{cls.__qualname__} needs a one-line description")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"pass name '{cls.name}' is taken by {existing.__module__}.{existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    return dict(sorted(_REGISTRY.items()))


def set_package(name: str, package: str) -> None:
    """Record which installed distribution provides pass ``name`` (the plugin loader knows it)."""
    _PACKAGE[name] = package


def pass_package(name: str) -> str:
    """The distribution a registered pass comes from: 'effarch', a plugin's, or its top module."""
    if name in _PACKAGE:
        return _PACKAGE[name]
    top = _REGISTRY[name].__module__.split(".")[0]
    return EFFARCH if top in ("passes", "compiler") else top


def get_pass(name: str, **options: Any) -> Pass:
    cls = _REGISTRY.get(name)
    if cls is None:
        raise EffarchError(unknown_pass_message(name))
    return cls(**options)


def unknown_pass_message(name: str) -> str:
    known = sorted(_REGISTRY)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    listed = ", ".join(known) if known else "none registered (import passes)"
    return f"unknown pass '{name}'; {hint}known passes: {listed}"
