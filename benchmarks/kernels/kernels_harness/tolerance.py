"""Output checks: the rule a workload must pass, as a pure function of two tensors.

A candidate output ``x`` passes against the reference ``y`` when it has exactly y's shape
and dtype, holds no NaN or Inf, is not all zero where y is not, and
|x - y| <= atol + rtol * |y| holds for at least ``min_fraction`` (99%) of the elements.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

DTYPE_NAMES = {
    torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
    torch.float8_e4m3fn: "fp8e4m3", torch.int64: "i64", torch.int32: "i32",
}


def dtype_name(dt: torch.dtype) -> str:
    return DTYPE_NAMES.get(dt, str(dt).replace("torch.", ""))


@dataclass(frozen=True)
class Check:
    ok: bool
    reason: str = ""              # "" when ok; else shape | dtype | nonfinite | all_zero | tolerance
    fraction_ok: float = 0.0      # share of elements within tolerance
    max_abs_err: float = float("nan")
    numel: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def check_output(x: torch.Tensor, y: torch.Tensor, atol: float, rtol: float, min_fraction: float = 0.99) -> Check:
    if tuple(x.shape) != tuple(y.shape):
        return Check(False, f"shape: got {tuple(x.shape)}, expected {tuple(y.shape)}")
    if x.dtype != y.dtype:
        return Check(False, f"dtype: got {dtype_name(x.dtype)}, expected {dtype_name(y.dtype)}")
    n = y.numel()
    if n == 0:
        return Check(True, "", 1.0, 0.0, 0)
    xf = x.detach().to(torch.float32)
    yf = y.detach().to(torch.float32)
    finite = torch.isfinite(xf)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        return Check(False, f"nonfinite: {bad} of {n} elements are NaN or Inf", 0.0, float("inf"), n)
    if not bool(xf.any()) and bool(yf.any()):
        return Check(False, "all_zero: output is all zeros where the reference is not", 0.0, float(yf.abs().max()), n)
    err = (xf - yf).abs()
    within = err <= (atol + rtol * yf.abs())
    frac = float(within.float().mean())
    max_err = float(err.max())
    if frac < min_fraction:
        return Check(False, f"tolerance: {frac:.4%} of elements within atol={atol:g} rtol={rtol:g} "
                            f"(need {min_fraction:.0%}); max abs error {max_err:.3g}", frac, max_err, n)
    return Check(True, "", frac, max_err, n)
