"""scaled_causal_softmax: y = softmax(x * 0.125 with row i seeing columns 0..i) for bf16 x (B, H, S, S).

Seed kernel: one score row per program (or a persistent grid striding over rows). Row i
reads only its visible columns 0..i (three passes: maximum, sum of exp, output) and
writes zeros for the masked rest of the row.
"""

import torch
import triton
import triton.language as tl

# --- settings (one per line: the playbook edits these)
SCALE = 0.125         # part of the problem: do not change
BLOCK_SIZE = 1024     # columns per step
NUM_WARPS = 4         # warps per program
PERSISTENT = False    # True: NUM_SMS * PROGRAMS_PER_SM programs striding over rows
PROGRAMS_PER_SM = 4   # resident programs per SM for the persistent grid


# --- kernel
@triton.jit
def _causal_softmax(x_ptr, y_ptr, R, S, scale, BLOCK: tl.constexpr):
    for row in range(tl.program_id(0), R, tl.num_programs(0)):
        i = row % S                                   # query position: columns 0..i are visible
        xr = x_ptr + tl.cast(row, tl.int64) * S
        yr = y_ptr + tl.cast(row, tl.int64) * S
        mx = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
        for c0 in range(0, i + 1, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            v = tl.load(xr + cols, mask=cols <= i, other=float("-inf")).to(tl.float32) * scale
            mx = tl.maximum(mx, v)
        m = tl.max(mx, axis=0)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, i + 1, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            v = tl.load(xr + cols, mask=cols <= i, other=float("-inf")).to(tl.float32) * scale
            acc += tl.exp(v - m)
        total = tl.sum(acc, axis=0)
        for c0 in range(0, S, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            v = tl.load(xr + cols, mask=cols <= i, other=float("-inf")).to(tl.float32) * scale
            p = tl.where(cols <= i, tl.exp(v - m) / total, 0.0)
            tl.store(yr + cols, p.to(y_ptr.dtype.element_ty), mask=cols < S)


# --- entry point
_SMS = {}


def _num_sms(device) -> int:
    if device.type != "cuda":
        return 4
    if device.index not in _SMS:
        _SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device.index]


def kernel(x):
    B, H, S, _ = x.shape
    x = x.contiguous()
    y = torch.empty_like(x)
    rows = B * H * S
    grid = (min(rows, _num_sms(x.device) * PROGRAMS_PER_SM) if PERSISTENT else rows,)
    _causal_softmax[grid](x, y, rows, S, SCALE, BLOCK=min(BLOCK_SIZE, triton.next_power_of_2(S)), num_warps=NUM_WARPS)
    return y
