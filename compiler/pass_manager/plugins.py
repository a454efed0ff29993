"""Passes from other installed packages, found through the entry-point group ``effarch.passes``.

A plugin package declares, in its pyproject.toml::

    [project.entry-points."effarch.passes"]
    my-pass = "my_package.passes"          # a module whose @register_pass classes register on import

or names a ``Pass`` subclass (``"my_package.passes:MyPass"``), which is registered for it. A plugin
that fails to load costs a one-line warning naming it, never the compile: effarch's own passes keep
working whatever is installed beside them.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points

from compiler.pass_manager.base import Pass
from compiler.pass_manager.registry import register_pass, registered_passes, set_package

log = logging.getLogger(__name__)

GROUP = "effarch.passes"


def load_plugins() -> list[str]:
    """Load every installed plugin's passes; returns the names of the passes they added."""
    added: list[str] = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            added += _load(ep)
        except Exception as exc:  # any failure of foreign code means "plugin not loaded"
            log.warning("plugin '%s' (%s) not loaded: %s: %s", ep.name, _package(ep), type(exc).__name__,
                        _first_line(exc))
    return added


def _load(ep: EntryPoint) -> list[str]:
    obj = ep.load()
    if isinstance(obj, type) and issubclass(obj, Pass):
        register_pass(obj)
        provided = [obj.name]
    else:  # a module: its @register_pass classes registered themselves when it was imported
        module = getattr(obj, "__name__", "")
        provided = [n for n, cls in registered_passes().items() if cls.__module__ == module]
    if not provided:
        raise ValueError(f"'{ep.value}' registered no pass; name a module with @register_pass classes or a Pass")
    for name in provided:
        set_package(name, _package(ep))
    return provided


def _package(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else ep.value.split(".")[0]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
