"""fp8_dequantize_rowwise: y[m, n] = q[m, n] * scale[m] as bf16, for float8 e4m3 q (M, N), fp32 scale (M,).

Seed kernel: 2-D tiles of BLOCK_ROWS rows x BLOCK_COLS columns, one tile per program;
each row's scale is loaded once per tile.
"""

import torch
import triton
import triton.language as tl

# --- settings (one per line: the playbook edits these)
BLOCK_ROWS = 4        # rows per tile
BLOCK_COLS = 1024     # columns per tile
NUM_WARPS = 4         # warps per program


# --- kernel
@triton.jit
def _dequantize(q_ptr, s_ptr, y_ptr, M, N, stride_qm, stride_ym, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    r64 = rows.to(tl.int64)[:, None]
    q = tl.load(q_ptr + r64 * stride_qm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + rows, mask=rows < M, other=0.0)
    tl.store(y_ptr + r64 * stride_ym + cols[None, :], (q * s[:, None]).to(y_ptr.dtype.element_ty), mask=mask)


# --- entry point
def kernel(q, scale):
    M, N = q.shape
    y = torch.empty((M, N), device=q.device, dtype=torch.bfloat16)
    block_cols = min(BLOCK_COLS, triton.next_power_of_2(N))
    grid = (triton.cdiv(M, BLOCK_ROWS), triton.cdiv(N, block_cols))
    _dequantize[grid](q, scale, y, M, N, q.stride(0), y.stride(0), BLOCK_ROWS=BLOCK_ROWS, BLOCK_COLS=block_cols,
                      num_warps=NUM_WARPS)
    return y
