"""Where runs execute. Executors are plug-ins of :mod:`autolab.registry` (kind ``"executor"``):
the built-ins ``local`` and ``ray`` (imported only when asked for), plus the
``autolab.executors`` entry-point group."""

from __future__ import annotations

from typing import Callable

from .. import registry
from .base import Executor, Job, JobLimits, JobResult


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    """Make ``get_executor(name, **options)`` call ``factory(**options)`` in this process."""
    registry.register("executor", name, factory)


def get_executor(name: str = "local", **kwargs) -> Executor:
    """Build an executor by name: ``local`` (default) or ``ray``, or a plug-in's name."""
    return registry.get("executor", name)(**kwargs)


__all__ = ["Executor", "Job", "JobLimits", "JobResult", "get_executor", "register_executor"]
