"""softmax: y = softmax(x, dim=-1) for x (M, N) bf16, fp16 or fp32; math in fp32, result in x's dtype.

Seed kernel: one row per program (or a persistent grid striding over rows), three passes
over the row in BLOCK_SIZE chunks: maximum, sum of exp(x - max), then the normalized
values. With ROW_IN_REGISTERS a row of up to MAX_ROW_IN_REGISTERS columns is read once
and kept in registers instead (one read, one write).
"""

import torch
import triton
import triton.language as tl

# --- settings (one per line: the playbook edits these)
BLOCK_SIZE = 1024             # columns per step of the multi-pass kernel
NUM_WARPS = 4                 # warps per program
PERSISTENT = True             # True: NUM_SMS * PROGRAMS_PER_SM programs striding over rows
PROGRAMS_PER_SM = 4           # resident programs per SM for the persistent grid
ROW_IN_REGISTERS = False      # True: rows up to MAX_ROW_IN_REGISTERS are read once and kept in registers
MAX_ROW_IN_REGISTERS = 8192   # longest row the single-pass kernel takes


# --- kernels
@triton.jit
def _softmax_passes(x_ptr, y_ptr, M, N, stride_xm, stride_ym, BLOCK: tl.constexpr):
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        xr = x_ptr + tl.cast(row, tl.int64) * stride_xm
        yr = y_ptr + tl.cast(row, tl.int64) * stride_ym
        mx = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
        for c0 in range(0, N, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            mx = tl.maximum(mx, tl.load(xr + cols, mask=cols < N, other=float("-inf")).to(tl.float32))
        m = tl.max(mx, axis=0)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, N, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            acc += tl.exp(tl.load(xr + cols, mask=cols < N, other=float("-inf")).to(tl.float32) - m)
        total = tl.sum(acc, axis=0)
        for c0 in range(0, N, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            v = tl.load(xr + cols, mask=cols < N, other=float("-inf")).to(tl.float32)
            tl.store(yr + cols, (tl.exp(v - m) / total).to(y_ptr.dtype.element_ty), mask=cols < N)


@triton.jit
def _softmax_in_registers(x_ptr, y_ptr, M, N, stride_xm, stride_ym, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        v = tl.load(x_ptr + tl.cast(row, tl.int64) * stride_xm + cols, mask=cols < N, other=float("-inf")).to(tl.float32)
        e = tl.exp(v - tl.max(v, axis=0))
        y = e / tl.sum(e, axis=0)
        tl.store(y_ptr + tl.cast(row, tl.int64) * stride_ym + cols, y.to(y_ptr.dtype.element_ty), mask=cols < N)


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
    y = torch.empty_like(x)
    grid = (min(M, _num_sms(x.device) * PROGRAMS_PER_SM) if PERSISTENT else M,)
    if ROW_IN_REGISTERS and N <= MAX_ROW_IN_REGISTERS:
        _softmax_in_registers[grid](x, y, M, N, x.stride(0), y.stride(0), BLOCK=triton.next_power_of_2(N),
                                    num_warps=NUM_WARPS)
    else:
        _softmax_passes[grid](x, y, M, N, x.stride(0), y.stride(0), BLOCK=min(BLOCK_SIZE, triton.next_power_of_2(N)),
                              num_warps=NUM_WARPS)
    return y
