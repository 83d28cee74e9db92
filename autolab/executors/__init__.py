"""Where runs execute. Executors are found through a registry, like papermill's engines:
built-ins plus the ``autolab.executors`` entry-point group."""

from __future__ import annotations

from typing import Callable

from ..errors import AutolabError
from .base import Executor, Job, JobLimits, JobResult

_REGISTRY: dict[str, Callable[..., Executor]] = {}


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    _REGISTRY[name] = factory


def get_executor(name: str = "local", **kwargs) -> Executor:
    """Build an executor by name: ``local`` (default) or ``ray``, or a plug-in's name."""
    if name not in _REGISTRY:
        try:
            from importlib.metadata import entry_points

            for ep in entry_points(group="autolab.executors"):
                _REGISTRY.setdefault(ep.name, ep.load())
        except Exception:
            pass
    if name == "ray" and name not in _REGISTRY:
        from .ray import RayExecutor  # noqa: F401  (registers itself)
    if name not in _REGISTRY:
        raise AutolabError(f"no executor named {name!r}; available: {', '.join(sorted(_REGISTRY)) or 'none'}. "
                           "Use --executor local, or install the plug-in that provides it.")
    return _REGISTRY[name](**kwargs)


def _register_builtins() -> None:
    from .local import LocalExecutor

    register_executor("local", LocalExecutor)


_register_builtins()

__all__ = ["Executor", "Job", "JobLimits", "JobResult", "get_executor", "register_executor"]
