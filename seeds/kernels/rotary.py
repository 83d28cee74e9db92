"""rotary: rotate-half RoPE on x (B, S, H, D) bf16 with cos, sin (S, D/2) fp32; math in fp32, bf16 result.

out[..., :D/2] = x1 * cos - x2 * sin and out[..., D/2:] = x2 * cos + x1 * sin, where
x1, x2 are the two halves of each head vector. Seed kernel: tiles of BLOCK_ROWS head
vectors (rows of the flattened (B*S*H, D) view) per program.
"""

import torch
import triton
import triton.language as tl

# --- settings (one per line: the playbook edits these)
BLOCK_ROWS = 8        # head vectors per program
NUM_WARPS = 4         # warps per program


# --- kernel
@triton.jit
def _rope(x_ptr, cos_ptr, sin_ptr, y_ptr, R, S, H, HALF, BLOCK_ROWS: tl.constexpr, BLOCK_HALF: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_HALF)
    mask = (rows[:, None] < R) & (cols[None, :] < HALF)
    pos = (rows // H) % S                                     # sequence position of each head vector
    base = rows.to(tl.int64)[:, None] * (2 * HALF) + cols[None, :]
    x1 = tl.load(x_ptr + base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + base + HALF, mask=mask, other=0.0).to(tl.float32)
    trig = pos[:, None] * HALF + cols[None, :]
    c = tl.load(cos_ptr + trig, mask=mask, other=0.0)
    s = tl.load(sin_ptr + trig, mask=mask, other=0.0)
    tl.store(y_ptr + base, (x1 * c - x2 * s).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + base + HALF, (x2 * c + x1 * s).to(y_ptr.dtype.element_ty), mask=mask)


# --- entry point
def kernel(x, cos, sin):
    B, S, H, D = x.shape
    x, cos, sin = x.contiguous(), cos.contiguous(), sin.contiguous()
    y = torch.empty_like(x)
    rows = B * S * H
    half = D // 2
    _rope[(triton.cdiv(rows, BLOCK_ROWS),)](x, cos, sin, y, rows, S, H, half, BLOCK_ROWS=BLOCK_ROWS,
                                            BLOCK_HALF=triton.next_power_of_2(half), num_warps=NUM_WARPS)
    return y
