"""layernorm: y = (x - mean) * rsqrt(var + 1e-5) * weight + bias over the last dim; x (M, N) bf16 or fp32.

Seed kernel: one row per program (or a persistent grid striding over rows), three passes
over the row: the mean, the variance around it, then the output. With ROW_IN_REGISTERS a
row of up to MAX_ROW_IN_REGISTERS columns is read once and kept in registers.
"""

import torch
import triton
import triton.language as tl

# --- settings (one per line: the playbook edits these)
EPS = 1e-5                    # part of the problem: do not change
BLOCK_SIZE = 1024             # columns per step of the multi-pass kernel
NUM_WARPS = 4                 # warps per program
PERSISTENT = False            # True: NUM_SMS * PROGRAMS_PER_SM programs striding over rows
PROGRAMS_PER_SM = 4           # resident programs per SM for the persistent grid
ROW_IN_REGISTERS = False      # True: rows up to MAX_ROW_IN_REGISTERS are read once and kept in registers
MAX_ROW_IN_REGISTERS = 8192   # longest row the single-pass kernel takes


# --- kernels
@triton.jit
def _layernorm_passes(x_ptr, w_ptr, b_ptr, y_ptr, M, N, stride_xm, stride_ym, eps, BLOCK: tl.constexpr):
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        xr = x_ptr + tl.cast(row, tl.int64) * stride_xm
        yr = y_ptr + tl.cast(row, tl.int64) * stride_ym
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, N, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            acc += tl.load(xr + cols, mask=cols < N, other=0.0).to(tl.float32)
        mean = tl.sum(acc, axis=0) / N
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, N, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            d = tl.load(xr + cols, mask=cols < N, other=0.0).to(tl.float32) - mean
            acc += tl.where(cols < N, d * d, 0.0)
        rstd = tl.rsqrt(tl.sum(acc, axis=0) / N + eps)
        for c0 in range(0, N, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            v = tl.load(xr + cols, mask=cols < N, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
            tl.store(yr + cols, ((v - mean) * rstd * w + b).to(y_ptr.dtype.element_ty), mask=cols < N)


@triton.jit
def _layernorm_in_registers(x_ptr, w_ptr, b_ptr, y_ptr, M, N, stride_xm, stride_ym, eps, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        v = tl.load(x_ptr + tl.cast(row, tl.int64) * stride_xm + cols, mask=cols < N, other=0.0).to(tl.float32)
        mean = tl.sum(v, axis=0) / N
        d = tl.where(cols < N, v - mean, 0.0)
        rstd = tl.rsqrt(tl.sum(d * d, axis=0) / N + eps)
        tl.store(y_ptr + tl.cast(row, tl.int64) * stride_ym + cols, (d * rstd * w + b).to(y_ptr.dtype.element_ty),
                 mask=cols < N)


# --- entry point
_SMS = {}


def _num_sms(device) -> int:
    if device.type != "cuda":
        return 4
    if device.index not in _SMS:
        _SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device.index]


def kernel(x, weight, bias):
    M, N = x.shape
    y = torch.empty_like(x)
    grid = (min(M, _num_sms(x.device) * PROGRAMS_PER_SM) if PERSISTENT else M,)
    if ROW_IN_REGISTERS and N <= MAX_ROW_IN_REGISTERS:
        _layernorm_in_registers[grid](x, weight, bias, y, M, N, x.stride(0), y.stride(0), EPS,
                                      BLOCK=triton.next_power_of_2(N), num_warps=NUM_WARPS)
    else:
        _layernorm_passes[grid](x, weight, bias, y, M, N, x.stride(0), y.stride(0), EPS,
                                BLOCK=min(BLOCK_SIZE, triton.next_power_of_2(N)), num_warps=NUM_WARPS)
    return y
