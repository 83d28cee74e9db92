"""residual_rmsnorm: h = x + residual (bf16), y = rmsnorm(h) * weight (eps 1e-6); returns (h, y).

Seed kernel: one row per program (or a persistent grid striding over rows). Pass 1 forms
h (rounded to bf16, as the unfused add would), stores it and sums its squares; pass 2
forms h again from x and residual and writes y. With ROW_IN_REGISTERS a row of up to
MAX_ROW_IN_REGISTERS columns is read once and kept in registers.
"""

import torch
import triton
import triton.language as tl

# --- settings (one per line: the playbook edits these)
EPS = 1e-6                    # part of the problem: do not change
BLOCK_SIZE = 1024             # columns per step of the two-pass kernel
NUM_WARPS = 4                 # warps per program
PERSISTENT = False            # True: NUM_SMS * PROGRAMS_PER_SM programs striding over rows
PROGRAMS_PER_SM = 4           # resident programs per SM for the persistent grid
ROW_IN_REGISTERS = False      # True: rows up to MAX_ROW_IN_REGISTERS are read once and kept in registers
MAX_ROW_IN_REGISTERS = 8192   # longest row the single-pass kernel takes


# --- kernels
@triton.jit
def _add_rmsnorm_passes(x_ptr, r_ptr, w_ptr, h_ptr, y_ptr, M, N, eps, BLOCK: tl.constexpr):
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        base = tl.cast(row, tl.int64) * N
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, N, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + base + cols, mask=cols < N, other=0.0).to(tl.float32)
            r = tl.load(r_ptr + base + cols, mask=cols < N, other=0.0).to(tl.float32)
            h = (x + r).to(h_ptr.dtype.element_ty)
            tl.store(h_ptr + base + cols, h, mask=cols < N)
            hf = h.to(tl.float32)
            acc += hf * hf
        rstd = tl.rsqrt(tl.sum(acc, axis=0) / N + eps)
        for c0 in range(0, N, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + base + cols, mask=cols < N, other=0.0).to(tl.float32)
            r = tl.load(r_ptr + base + cols, mask=cols < N, other=0.0).to(tl.float32)
            hf = (x + r).to(h_ptr.dtype.element_ty).to(tl.float32)
            w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
            tl.store(y_ptr + base + cols, (hf * rstd * w).to(y_ptr.dtype.element_ty), mask=cols < N)


@triton.jit
def _add_rmsnorm_in_registers(x_ptr, r_ptr, w_ptr, h_ptr, y_ptr, M, N, eps, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        base = tl.cast(row, tl.int64) * N
        x = tl.load(x_ptr + base + cols, mask=cols < N, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + base + cols, mask=cols < N, other=0.0).to(tl.float32)
        h = (x + r).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + base + cols, h, mask=cols < N)
        hf = h.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(hf * hf, axis=0) / N + eps)
        tl.store(y_ptr + base + cols, (hf * rstd * w).to(y_ptr.dtype.element_ty), mask=cols < N)


# --- entry point
_SMS = {}


def _num_sms(device) -> int:
    if device.type != "cuda":
        return 4
    if device.index not in _SMS:
        _SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device.index]


def kernel(x, residual, weight):
    M, N = x.shape
    x, residual = x.contiguous(), residual.contiguous()
    h = torch.empty_like(x)
    y = torch.empty_like(x)
    grid = (min(M, _num_sms(x.device) * PROGRAMS_PER_SM) if PERSISTENT else M,)
    if ROW_IN_REGISTERS and N <= MAX_ROW_IN_REGISTERS:
        _add_rmsnorm_in_registers[grid](x, residual, weight, h, y, M, N, EPS, BLOCK=triton.next_power_of_2(N),
                                        num_warps=NUM_WARPS)
    else:
        _add_rmsnorm_passes[grid](x, residual, weight, h, y, M, N, EPS,
                                  BLOCK=min(BLOCK_SIZE, triton.next_power_of_2(N)), num_warps=NUM_WARPS)
    return h, y
