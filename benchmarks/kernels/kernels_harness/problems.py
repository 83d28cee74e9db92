"""Load and validate the problem definitions in ``benchmarks/kernels/problems/``.

The folder is imported as the package ``kernels_problems`` (by path, so the generic
folder name never clashes with anything on sys.path).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

PROBLEMS_DIR = Path(__file__).resolve().parent.parent / "problems"
PACKAGE = "kernels_problems"
PEAKS = ("bf16", "fp8")
REQUIRED = ("TITLE", "SIGNATURE", "PEAK", "WORKLOADS", "HIDDEN_WORKLOADS", "TINY_WORKLOADS",
            "TINY_HIDDEN_WORKLOADS", "make_inputs", "reference", "flops", "bytes_moved")


class ProblemError(Exception):
    """A problem module is missing, malformed, or was asked for by a wrong name."""


@dataclass(frozen=True)
class Problem:
    name: str
    module: ModuleType
    path: Path

    # -- declared data
    @property
    def title(self) -> str:
        return self.module.TITLE

    @property
    def signature(self) -> str:
        return self.module.SIGNATURE

    @property
    def peak(self) -> str:
        return self.module.PEAK

    @property
    def banned(self) -> tuple[str, ...]:
        return tuple(getattr(self.module, "BANNED", ()))

    @property
    def minimal_bytes(self) -> bool:
        return bool(getattr(self.module, "MINIMAL_BYTES", False))

    def workloads(self, shapes: str = "full", hidden: bool = False) -> list[dict[str, Any]]:
        """Public (or hidden) workloads at full size ("full") or interpreter size ("tiny")."""
        if shapes not in ("full", "tiny"):
            raise ProblemError(f"shapes must be 'full' or 'tiny', got {shapes!r}")
        attr = ("TINY_" if shapes == "tiny" else "") + ("HIDDEN_WORKLOADS" if hidden else "WORKLOADS")
        return [dict(w) for w in getattr(self.module, attr)]

    # -- behaviour
    def make_inputs(self, w: dict, gen, device) -> list:
        return list(self.module.make_inputs(w, gen, device))

    def reference(self, *inputs):
        return self.module.reference(*inputs)

    def flops(self, w: dict) -> int:
        return int(self.module.flops(w))

    def bytes_moved(self, w: dict) -> int:
        return int(self.module.bytes_moved(w))

    def tolerance(self, index: int, dtype_name: str) -> tuple[float, float]:
        """(atol, rtol) for output ``index`` whose dtype is ``dtype_name`` ('bf16', ...)."""
        per_output = getattr(self.module, "OUTPUT_TOLERANCE", None)
        if per_output is not None:
            atol, rtol = per_output[index]
            return float(atol), float(rtol)
        own = getattr(self.module, "TOLERANCE", {})
        if dtype_name in own:
            atol, rtol = own[dtype_name]
            return float(atol), float(rtol)
        from kernels_problems import _common

        atol, rtol = _common.TOLERANCE.get(dtype_name, (0.0, 0.0))
        return float(atol), float(rtol)

    def sha256(self) -> str:
        """Hash of the definition and the shared helpers: a cache key for baselines."""
        h = hashlib.sha256(self.path.read_bytes())
        h.update((self.path.parent / "_common.py").read_bytes())
        return h.hexdigest()


def _import_package(problems_dir: Path) -> ModuleType:
    pkg = sys.modules.get(PACKAGE)
    if pkg is not None and Path(pkg.__file__).resolve().parent == problems_dir.resolve():
        return pkg
    for key in [k for k in sys.modules if k == PACKAGE or k.startswith(PACKAGE + ".")]:
        del sys.modules[key]
    spec = importlib.util.spec_from_file_location(
        PACKAGE, problems_dir / "__init__.py", submodule_search_locations=[str(problems_dir)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = pkg
    spec.loader.exec_module(pkg)
    return pkg


def problem_names(problems_dir: Path | None = None) -> list[str]:
    d = Path(problems_dir or PROBLEMS_DIR)
    return sorted(p.stem for p in d.glob("*.py") if not p.stem.startswith("_"))


def _validate(name: str, mod: ModuleType, path: Path) -> None:
    def fail(what: str, fix: str) -> ProblemError:
        return ProblemError(f"{path}: {what}; fix: {fix}")

    for attr in REQUIRED:
        if not hasattr(mod, attr):
            raise fail(f"'{attr}' is missing", f"define {attr} (see problems/__init__.py)")
    if mod.PEAK not in PEAKS:
        raise fail(f"PEAK is {mod.PEAK!r}", f"use one of {PEAKS}")
    if not 4 <= len(mod.WORKLOADS) <= 8:
        raise fail(f"{len(mod.WORKLOADS)} public workloads", "give 4 to 8")
    if len(mod.HIDDEN_WORKLOADS) < 2:
        raise fail("fewer than 2 hidden workloads", "add hidden workloads for the audit")
    if not mod.TINY_WORKLOADS or not mod.TINY_HIDDEN_WORKLOADS:
        raise fail("no tiny workloads", "add TINY_WORKLOADS and TINY_HIDDEN_WORKLOADS for the CPU interpreter")
    public = [tuple(sorted(w.items())) for w in mod.WORKLOADS]
    for w in mod.HIDDEN_WORKLOADS:
        if tuple(sorted(w.items())) in public:
            raise fail(f"hidden workload {w} is also public", "make hidden shapes differ from the public ones")
    for w in list(mod.WORKLOADS) + list(mod.HIDDEN_WORKLOADS):
        if int(mod.flops(w)) <= 0 or int(mod.bytes_moved(w)) <= 0:
            raise fail(f"flops/bytes_moved of {w} are not positive", "return exact positive counts")


def load_problems(names: list[str] | None = None, problems_dir: Path | None = None) -> dict[str, Problem]:
    """Load the named problems (all when ``names`` is None or empty), in a stable order."""
    d = Path(problems_dir or PROBLEMS_DIR).resolve()
    _import_package(d)
    known = problem_names(d)
    wanted = list(names) if names else known
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ProblemError(f"unknown problem(s) {unknown}; known: {', '.join(known)}")
    out: dict[str, Problem] = {}
    for name in wanted:
        mod = importlib.import_module(f"{PACKAGE}.{name}")
        path = d / f"{name}.py"
        _validate(name, mod, path)
        out[name] = Problem(name, mod, path)
    return out


def label(w: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in w.items())
