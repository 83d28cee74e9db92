"""What the three task harnesses (nanochat, speedrun, kernels) share: the result JSON's
skeleton, atomic JSON writes, and importing a candidate's file as a module.

It lives in the autolab package rather than in a task folder because every harness process
imports it: the papermill kernel that runs ``<task>_harness.runner``, and the sandboxed training,
evaluation and kernel-worker processes (their runners put the folder holding ``autolab`` on
``PYTHONPATH``, as they already do for ``autolab.sandbox``). A candidate cannot change it: its
editable files are the task's globs, the sandbox confines its writes to its own workspace, and
the package is the trusted code that hashes the protected files in the first place; a file in one
task folder would be protected for that task only. Standard library only: importing it loads no
pandas, torch or litellm, nor any other part of autolab.

    from autolab.harnesskit import atomic_write_json, load_module, result_skeleton
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

CANDIDATE_MODULE = "__autolab_candidate__"


def result_skeleton(task: str, preset: str, seed: int, candidate_dir: str | os.PathLike, *,
                    timings: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A run's result JSON before anything is known: ``status`` "failed" with an empty reason,
    empty metrics, summary, curve, violations and probes (the contract in docs/ARCHITECTURE.md).
    ``timings`` starts the timings (e.g. the budget); ``extra`` adds task-specific keys after
    the common ones (``corpus``, ``target``, ``details``...)."""
    common = {"task", "preset", "seed", "candidate_dir", "status", "reason", "metrics", "timings", "summary",
              "curve", "violations", "probes"}
    clash = sorted(common & set(extra))
    if clash:
        raise TypeError(f"result_skeleton: {', '.join(clash)} are common keys; set them on the returned dict instead")
    return {"task": str(task), "preset": str(preset), "seed": int(seed), "candidate_dir": str(candidate_dir),
            "status": "failed", "reason": "", "metrics": {}, "timings": dict(timings or {}), "summary": {},
            "curve": [], "violations": [], "probes": {}, **extra}


def _tmp_name(path: Path) -> Path:
    # same folder (os.replace is atomic only within one file system), hidden, unique per writer
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")


def _atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, never
    a part: a temporary file in the same folder, fsynced, then ``os.replace``. A crash mid-write
    leaves the old file (and at most a hidden ``.<name>.tmp-*`` file next to it)."""
    _atomic(path, lambda fh: fh.write(data), "wb")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = True,
                      default: Callable[[Any], Any] | None = None, newline: bool = True) -> None:
    """``obj`` as JSON at ``path``, atomically (see :func:`atomic_write_bytes`); the text is
    ``json.dumps(obj, indent=, sort_keys=, default=)`` plus a final newline when ``newline``."""
    def write(fh) -> None:
        json.dump(obj, fh, indent=indent, sort_keys=sort_keys, default=default)
        if newline:
            fh.write("\n")

    _atomic(path, write, "w")


def load_module(path: str | os.PathLike, name: str = CANDIDATE_MODULE) -> ModuleType:
    """Import the Python file ``path`` as module ``name`` (registered in ``sys.modules``, so the
    classes it defines pickle and unpickle under that name); its ``if __name__ == "__main__":``
    block does not run. A file that fails to import is not left in ``sys.modules``."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}: not a Python source file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        if sys.modules.get(name) is mod:
            del sys.modules[name]
        raise
    return mod
