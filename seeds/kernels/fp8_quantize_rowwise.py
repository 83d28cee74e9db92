"""fp8_quantize_rowwise: per row, scale = max(amax|x|, 1e-12) / 448 and q = clamp(x / scale) as e4m3.

Returns (q (M, N) float8_e4m3fn, scale (M,) fp32) for bf16 x (M, N).
Seed kernel: one row per program (or a persistent grid striding over rows), two passes:
the absolute maximum, then the scaled, clamped, rounded values.
"""

import torch
import triton
import triton.language as tl

# --- settings (one per line: the playbook edits these)
FP8_MAX = 448.0       # part of the problem: do not change
BLOCK_SIZE = 1024     # columns per step
NUM_WARPS = 4         # warps per program
PERSISTENT = False    # True: NUM_SMS * PROGRAMS_PER_SM programs striding over rows
PROGRAMS_PER_SM = 4   # resident programs per SM for the persistent grid


# --- kernel
@triton.jit
def _quantize_rows(x_ptr, q_ptr, s_ptr, M, N, stride_xm, stride_qm, fp8_max, BLOCK: tl.constexpr):
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        xr = x_ptr + tl.cast(row, tl.int64) * stride_xm
        qr = q_ptr + tl.cast(row, tl.int64) * stride_qm
        amax = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, N, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            amax = tl.maximum(amax, tl.abs(tl.load(xr + cols, mask=cols < N, other=0.0).to(tl.float32)))
        scale = tl.maximum(tl.max(amax, axis=0), 1e-12) / fp8_max
        tl.store(s_ptr + row, scale)
        for c0 in range(0, N, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            v = tl.load(xr + cols, mask=cols < N, other=0.0).to(tl.float32) / scale
            v = tl.minimum(tl.maximum(v, -fp8_max), fp8_max)
            tl.store(qr + cols, v.to(q_ptr.dtype.element_ty), mask=cols < N)


# --- entry point
_SMS = {}


def _num_sms(device) -> int:
    if device.type != "cuda":
        return 4
    if device.index not in _SMS:
        _SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device.index]


def kernel(x):
    M, N = x.shape
    q = torch.empty((M, N), device=x.device, dtype=torch.float8_e4m3fn)
    scale = torch.empty((M,), device=x.device, dtype=torch.float32)
    grid = (min(M, _num_sms(x.device) * PROGRAMS_PER_SM) if PERSISTENT else M,)
    _quantize_rows[grid](x, q, scale, M, N, x.stride(0), q.stride(0), FP8_MAX,
                         BLOCK=min(BLOCK_SIZE, triton.next_power_of_2(N)), num_warps=NUM_WARPS)
    return q, scale
