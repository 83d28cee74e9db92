"""Helpers shared by the problem definitions: dtype names, random inputs, fp8 quantization.

Workloads are plain dicts of JSON-able values (ints and dtype *names*), so they can be
written into result files and cache keys as they are.
"""

from __future__ import annotations

import torch

DTYPES = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp8e4m3": torch.float8_e4m3fn,
    "i64": torch.int64,
}
SIZES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8e4m3": 1, "i64": 8}
FP8_MAX = 448.0          # largest finite float8 e4m3fn value
FP8_MIN_SCALE = 1e-12    # floor for amax before dividing (all-zero rows)

# Default tolerances by *output* dtype: (atol, rtol). A problem may override.
TOLERANCE = {
    "bf16": (1e-2, 1e-2),
    "fp16": (1e-3, 2e-3),
    "fp32": (1e-5, 1e-4),
}


def dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def size(name: str) -> int:
    return SIZES[name]


def randn(shape, gen: torch.Generator, device, dt: str = "fp32", scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """Standard normal values (drawn in fp32 from ``gen``), scaled, shifted, then cast."""
    t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
    if scale != 1.0:
        t.mul_(scale)
    if shift != 0.0:
        t.add_(shift)
    return t.to(DTYPES[dt])


def quantize_tensorwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 x -> (float8 e4m3 values, fp32 scale of shape (1,)) with x ~ q * scale."""
    scale = x.abs().amax().clamp_min(FP8_MIN_SCALE) / FP8_MAX
    q = (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale.reshape(1).to(torch.float32)


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 x (R, C) -> (float8 e4m3 values, fp32 scales of shape (R,)) with x[r] ~ q[r] * scale[r]."""
    scale = x.abs().amax(dim=-1).clamp_min(FP8_MIN_SCALE) / FP8_MAX
    q = (x / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale.to(torch.float32)


def label(w: dict) -> str:
    """A stable, readable key for one workload: 'M=4096,N=4096,dtype=bf16'."""
    return ",".join(f"{k}={v}" for k, v in w.items())
