"""gemv_bf16: y = W @ x for bf16 W (M, K), x (K,); fp32 accumulation, bf16 result.

Seed kernel: each program owns BLOCK_M rows and walks K in BLOCK_K steps, keeping a
(BLOCK_M, BLOCK_K) fp32 partial sum that it reduces once at the end. Memory-bound: W is
read once.
"""

import torch
import triton
import triton.language as tl

# --- settings (one per line: the playbook edits these)
BLOCK_M = 4           # rows of W per program
BLOCK_K = 512         # columns per step
NUM_WARPS = 4         # warps per program
NUM_STAGES = 2        # software-pipelining depth of the K loop


# --- kernel
@triton.jit
def _gemv(w_ptr, x_ptr, y_ptr, M, K, stride_wm, stride_wk, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
          NUM_STAGES: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_wm
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        w = tl.load(w_rows + ks[None, :] * stride_wk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        x = tl.load(x_ptr + ks, mask=k_ok, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


# --- entry point
def kernel(w, x):
    M, K = w.shape
    y = torch.empty((M,), device=w.device, dtype=w.dtype)
    _gemv[(triton.cdiv(M, BLOCK_M),)](w, x, y, M, K, w.stride(0), w.stride(1), BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K,
                                      NUM_STAGES=NUM_STAGES, num_warps=NUM_WARPS)
    return y
