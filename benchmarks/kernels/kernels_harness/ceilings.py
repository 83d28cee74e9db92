"""Machine ceilings for the roofline, measured once per device and cached as JSON.

Cache: ``$AUTOLAB_CACHE/kernels/ceilings-<device slug>.json`` (AUTOLAB_CACHE defaults to
``~/.cache/autolab``). The same folder holds the baseline-time cache (``baselines.py``).

On a GPU:
- ``peak_flops.bf16``: 4096^3 and 8192^3 bf16 matmuls (torch.matmul: cuBLAS), the best of
  the medians (v2 measured 8192^3 only: cuBLAS reached that rate at 4096^3 too, so T_b fell
  on T_SOL for matmul_bf16);
- ``peak_flops.fp8``: the same products in float8 e4m3 through ``torch._scaled_mm`` (with and
  without fast accumulation, the faster) when it runs; otherwise twice the bf16 rate (Hopper's
  fp8 tensor-core rate is twice bf16's);
- ``peak_bw``: the largest of a 1 GiB device-to-device copy (bytes read + bytes written),
  a read-only pass (a sum) and a write-only pass (a fill) over 1 GiB. The brief names the
  copy; we also take the one-way streams because a read-only kernel (a reduction) can beat
  a copy's rate, and a ceiling below what honest kernels reach would flag them as S > 1.
On the CPU the same quantities are measured at small sizes; they are smoke numbers only.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from . import timing

VERSION = 3


def cache_dir() -> Path:
    root = os.environ.get("AUTOLAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "autolab")
    return Path(root) / "kernels"


def device_name(device) -> str:
    if timing.is_cuda(device):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def _gpu_time(fn, warmup=3, reps=10) -> float:
    """Median seconds of fn() with CUDA events (no flush: the operands exceed L2 anyway)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) / 1e3)
    return statistics.median(ts)


def _cpu_time(fn, warmup=1, reps=5) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def measure(device) -> dict:
    """Measure the ceilings on ``device`` now (seconds to a minute on a GPU)."""
    cuda = timing.is_cuda(device)
    tm = _gpu_time if cuda else _cpu_time
    out: dict = {"version": VERSION, "device": device_name(device), "torch": torch.__version__,
                 "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "notes": []}
    gen = torch.Generator(device=device).manual_seed(0)
    mm_dtype = torch.bfloat16 if cuda else torch.float32
    bf16 = fp8 = 0.0
    # the best of two sizes: a ceiling below what a library reaches at some size turns the
    # baseline itself into a "faster than light" kernel (T_b <= T_SOL)
    for n in ((4096, 8192) if cuda else (256, 512)):
        a = torch.randn((n, n), generator=gen, device=device).to(mm_dtype)
        b = torch.randn((n, n), generator=gen, device=device).to(mm_dtype)
        bf16 = max([bf16] + [2 * n ** 3 / tm(lambda: torch.matmul(a, b)) for _ in range(2)])
        if cuda:
            try:
                a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t().contiguous().t()
                one = torch.ones((), device=device, dtype=torch.float32)
                fp8 = max([fp8] + [2 * n ** 3 / tm(lambda: torch._scaled_mm(a8, b8, one, one, out_dtype=torch.bfloat16,
                                                                           use_fast_accum=fast))
                                   for fast in (False, True)])
            except Exception as e:  # no fp8 GEMM on this GPU / build
                out["notes"].append(f"fp8 matmul not measurable at {n} ({type(e).__name__})")
        del a, b
    if not fp8:
        out["notes"].append("fp8 rate taken as 2 x bf16")
        fp8 = 2 * bf16
    out["peak_flops"] = {"bf16": bf16, "fp8": max(fp8, bf16)}

    nbytes = (1 << 30) if cuda else (64 << 20)
    src = torch.randn(nbytes // 4, generator=gen, device=device)
    dst = torch.empty_like(src)
    copy = max(2 * nbytes / tm(lambda: dst.copy_(src)) for _ in range(2))
    read = max(nbytes / tm(lambda: src.sum()) for _ in range(2))
    write = max(nbytes / tm(lambda: dst.fill_(1.0)) for _ in range(2))
    del src, dst
    out["bw"] = {"copy": copy, "read": read, "write": write}
    out["peak_bw"] = max(copy, read, write)
    if cuda:
        torch.cuda.empty_cache()
    return out


def get(device, refresh: bool = False) -> dict:
    """Cached ceilings for this device (measured and written on first use)."""
    path = cache_dir() / f"ceilings-{slug(device_name(device))}.json"
    if not refresh and path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("version") == VERSION:
                data["cached"] = True
                return data
        except (OSError, ValueError):
            pass
    data = measure(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")   # two processes measuring at once each write their own
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    data["cached"] = False
    return data
