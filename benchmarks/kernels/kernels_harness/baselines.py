"""T_b: the faster of the eager and the ``torch.compile`` reference, timed like a kernel.

Baselines are a property of (GPU, torch version, problem definition, workload), not of the
candidate, so they are measured once and cached next to the ceilings
(``$AUTOLAB_CACHE/kernels/baselines-<device slug>.json``), keyed by the torch version, the
problem file's hash and the workload label. They are timed in the harness process (never in
the candidate's) with ``timing.time_kernel`` on the same input draws the candidate gets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from . import ceilings, timing
from .evaluate import Settings, input_seed, make
from .problems import Problem, label


def cache_path(device) -> Path:
    return ceilings.cache_dir() / f"baselines-{ceilings.slug(ceilings.device_name(device))}.json"


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def _key(problem: Problem, w: dict, settings: Settings, compile_: bool) -> str:
    return "|".join([torch.__version__, timing.METHOD, problem.name, problem.sha256()[:16], label(w),
                     f"w{settings.warmup}i{settings.iters}", "compile" if compile_ else "eager"])


def measure_problem(problem: Problem, settings: Settings, compile_: bool = True, use_cache: bool = True,
                    log: Callable[[str], None] | None = None) -> dict:
    """{label: {"eager": s, "compile": s | None, "t_b": s, "compile_error": str}} for the public workloads."""
    device = settings.device
    path = cache_path(device)
    cache = _load(path) if use_cache else {}
    out: dict = {}
    compiled = None
    compile_error = ""
    dirty = False
    for w in problem.workloads(settings.shapes):
        lab = label(w)

        def make_i(i, w=w):
            return make(problem, w, input_seed(settings, problem.name, w, 100_000 + i), device)

        row = {"eager": None, "compile": None, "compile_error": ""}
        k_e = _key(problem, w, settings, False)
        if k_e in cache:
            row["eager"] = cache[k_e]
        else:
            res = timing.time_kernel(problem.reference, make_i, device, settings.warmup, settings.iters)
            row["eager"] = cache[k_e] = res["median_s"]
            dirty = True
        k_c = _key(problem, w, settings, True)
        if k_c in cache:                       # a cached compile time counts even when not measuring
            row["compile"] = cache[k_c]
        elif compile_:
            if not compile_error:
                try:
                    if compiled is None:   # the module's own function: one dynamo cache per problem
                        compiled = torch.compile(problem.module.reference)
                    res = timing.time_kernel(compiled, make_i, device, max(settings.warmup, 3), settings.iters)
                    row["compile"] = cache[k_c] = res["median_s"]
                    dirty = True
                except Exception as e:   # compile is a baseline, not a requirement
                    compile_error = f"{type(e).__name__}: {e}"[:300]
            row["compile_error"] = compile_error
        times = [t for t in (row["eager"], row["compile"]) if t]
        row["t_b"] = min(times)
        out[lab] = row
        if log:
            c = f"{row['compile'] * 1e6:.1f}" if row["compile"] else "-"
            log(f"baseline {problem.name} [{lab}] eager {row['eager'] * 1e6:.1f} us, compile {c} us")
    if dirty and use_cache:
        merged = _load(path)
        merged.update(cache)
        _save(path, merged)
    if timing.is_cuda(device):
        torch.cuda.empty_cache()
    return out
