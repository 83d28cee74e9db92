"""One registry for every kind of plug-in: executors, proposers, audit checks, CLI commands.

A plug-in is a *factory* registered under a kind and a name:

=========  ======================  ==========================================================
kind       entry-point group       the factory
=========  ======================  ==========================================================
executor   ``autolab.executors``   ``factory(**options) -> Executor``
proposer   ``autolab.proposers``   ``factory(**options) -> Proposer``; for ``"name:arg"``
                                   specs (``llm:openai/gpt-4o-mini``) ``factory(arg, **options)``
check      ``autolab.checks``      ``check(ctx: AuditContext) -> Check``; runs when a task lists
                                   its name in ``[audit] checks``
command    ``autolab.commands``    ``setup(add)``: ``add(name, fn, help)`` returns the argparse
                                   sub-parser (``--json`` already there); ``fn(args) -> int``
=========  ======================  ==========================================================

Each kind is filled on its first lookup, in one place (:func:`_load`): the built-ins below
(lazy ``"module:attribute"`` references, or modules whose definitions register themselves
with :func:`register`), then the kind's entry-point group. Nothing is imported before a kind
is looked up, and an entry point is imported only when its name is asked for. A name
registered in Python (:func:`register`) wins over a built-in, and a built-in over an entry
point of the same name.

This module imports only the standard library and :mod:`autolab.errors`, so any layer may use it.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from typing import Any, Callable

from .errors import AutolabError

GROUPS = {"executor": "autolab.executors", "proposer": "autolab.proposers", "check": "autolab.checks",
          "command": "autolab.commands"}

# name -> "module:attribute", imported on first use of that name
_BUILTINS: dict[str, dict[str, str]] = {
    "executor": {"local": "autolab.executors.local:LocalExecutor",
                 "ray": "autolab.executors.ray:RayExecutor"},
    "proposer": {"playbook": "autolab._propose:PlaybookProposer",
                 "random": "autolab._propose:RandomProposer",
                 "llm": "autolab.llm_propose:make_llm_proposer"},
    "check": {},
    "command": {"tasks": "autolab.cli:setup_tasks", "data": "autolab.cli:setup_data", "run": "autolab.cli:setup_run",
                "audit": "autolab.cli:setup_audit", "reopen": "autolab.cli:setup_reopen", "ablate": "autolab.cli:setup_ablate",
                "loop": "autolab.cli:setup_loop", "log": "autolab.cli:setup_log", "report": "autolab.cli:setup_report",
                "stop": "autolab.cli:setup_stop", "gc": "autolab.cli:setup_gc", "demo": "autolab.cli:setup_demo",
                "export-lab": "autolab.cli:setup_export_lab", "import-lab": "autolab.cli:setup_import_lab",
                "hardware": "autolab.cli:setup_hardware", "redteam": "autolab._audit.redteam:add_command"},
}
# modules whose definitions register themselves (``@register_check``): imported on the kind's first lookup
_BUILTIN_MODULES: dict[str, tuple[str, ...]] = {
    "check": ("autolab._audit.checks", "autolab._audit.probes"),
}

HOWTO = {
    "executor": "pass one of them (e.g. --executor local)",
    "proposer": "pass one of them (e.g. --proposer playbook, or --proposer llm:<litellm model>)",
    "check": "fix the name in the task's task.toml [audit] checks",
    "command": "run `autolab --help` for the commands",
}


class RegistryError(AutolabError):
    """An unknown plug-in name, or a plug-in that cannot be loaded."""


class _Entry:
    __slots__ = ("ref", "obj", "origin")

    def __init__(self, ref: Any, origin: str, obj: Any = None):
        self.ref, self.origin, self.obj = ref, origin, obj   # ref: "module:attr", an EntryPoint, or None (obj given)


_lock = threading.Lock()                        # guards the tables; never held while importing
_kind_locks = {kind: threading.RLock() for kind in GROUPS}   # one loader per kind at a time
_table: dict[str, dict[str, _Entry]] = {kind: {} for kind in GROUPS}   # kind -> name -> entry, in order
_loaded: set[str] = set()
_loading: set[str] = set()


def _check_kind(kind: str) -> None:
    if kind not in GROUPS:
        raise RegistryError(f"no plug-in kind {kind!r}; the kinds are {', '.join(GROUPS)}")


def _entry_points(group: str) -> list:
    from importlib.metadata import entry_points

    try:
        return list(entry_points(group=group))
    except Exception:  # noqa: BLE001 - a damaged installed distribution must not hide the built-ins
        return []


def _add(kind: str, name: str, entry: _Entry, *, replace: bool) -> None:
    with _lock:
        if replace or name not in _table[kind]:
            _table[kind][name] = entry


def _load(kind: str) -> dict[str, _Entry]:
    """The kind's table, filled on first use: built-ins, self-registering modules, entry points.
    (A module being imported for this kind that looks the kind up sees the table as filled so far.)"""
    _check_kind(kind)
    if kind in _loaded:
        return _table[kind]
    with _kind_locks[kind]:
        if kind in _loaded or kind in _loading:
            return _table[kind]
        _loading.add(kind)
        try:
            for name, ref in _BUILTINS.get(kind, {}).items():
                _add(kind, name, _Entry(ref, "autolab"), replace=False)
            for module in _BUILTIN_MODULES.get(kind, ()):
                importlib.import_module(module)      # its @register... decorators fill the table
            for ep in _entry_points(GROUPS[kind]):
                dist = getattr(getattr(ep, "dist", None), "name", None)
                where = f"entry point {ep.value!r} in group {GROUPS[kind]!r}" + (f" (distribution {dist})" if dist else "")
                _add(kind, ep.name, _Entry(ep, where), replace=False)
            _loaded.add(kind)
        finally:
            _loading.discard(kind)
    return _table[kind]


def register(kind: str, name: str, factory: Any) -> Any:
    """Register ``factory`` under ``kind`` / ``name`` (replacing any plug-in of that name);
    returns the factory, so it can be used as a decorator's last step."""
    _check_kind(kind)
    if not name or not isinstance(name, str) or ":" in name:
        raise RegistryError(f"a {kind} name must be a non-empty string without ':' (got {name!r})")
    _add(kind, name, _Entry(None, "registered in Python", factory), replace=True)
    return factory


def names(kind: str) -> list[str]:
    """Every name of this kind (built-ins, registered, entry points), without importing them."""
    table = _load(kind)
    with _lock:
        return list(table)


def _resolve(kind: str, name: str, entry: _Entry) -> Any:
    if entry.obj is not None:
        return entry.obj
    try:
        if isinstance(entry.ref, str):
            module, _, attr = entry.ref.partition(":")
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        else:
            obj = entry.ref.load()
    except AutolabError:
        raise
    except Exception as e:  # noqa: BLE001 - say which plug-in failed and how to fix it
        raise RegistryError(f"the {kind} {name!r} ({entry.origin}) cannot be loaded: {type(e).__name__}: {e}; "
                            "install what it needs, or fix or remove the plug-in") from e
    entry.obj = obj
    return obj


def get(kind: str, name: str) -> Any:
    """The factory registered as ``kind`` / ``name``; an unknown name raises :class:`RegistryError`
    listing the names there are and what to do."""
    table = _load(kind)
    with _lock:
        entry = table.get(name)
    if entry is None:
        known = ", ".join(names(kind)) or "none"
        raise RegistryError(f"no {kind} named {name!r}; available: {known}. Fix: {HOWTO[kind]}, or install the "
                            f"plug-in that provides {name!r} (an entry point named {name!r} in the "
                            f"{GROUPS[kind]!r} group)")
    return _resolve(kind, name, entry)


def items(kind: str) -> dict[str, Any]:
    """Every plug-in of this kind, loaded: ``{name: factory}`` in registration order."""
    table = _load(kind)
    with _lock:
        entries = list(table.items())
    return {name: _resolve(kind, name, entry) for name, entry in entries}


def accepted_options(factory: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """The ``options`` that ``factory`` takes: all of them if it has ``**kwargs``, else those it
    names (so one call site can offer, e.g., ``seed`` and ``log`` to every proposer)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):   # no signature to read (a C callable): offer everything
        return dict(options)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(options)
    named = {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {k: v for k, v in options.items() if k in named}


def origin(kind: str, name: str) -> str:
    """Where a plug-in comes from (``"autolab"``, ``"registered in Python"``, the entry point)."""
    get(kind, name)
    return _table[kind][name].origin


def unregister(kind: str, name: str) -> None:
    """Forget a plug-in registered in Python (tests, notebooks); unknown names are ignored."""
    with _lock:
        _table.get(kind, {}).pop(name, None)


__all__ = ["GROUPS", "RegistryError", "accepted_options", "get", "items", "names", "origin", "register", "unregister"]
