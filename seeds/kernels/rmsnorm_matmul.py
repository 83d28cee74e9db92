"""rmsnorm_matmul: y = (rmsnorm(x) * g) @ w^T for bf16 x (M, K), g (K,), w (N, K); eps = 1e-6.

Seed kernels: (1) one fp32 rstd per row of x; (2) a tiled matmul that normalizes each x
tile as it loads it (x * rstd * g, rounded to bf16 as the unfused layer would) - the
normalized activations never go to memory.
"""

import torch
import triton
import triton.language as tl

# --- settings (one per line: the playbook edits these)
EPS = 1e-6            # part of the problem: do not change
BLOCK_M = 128         # rows of y per tile
BLOCK_N = 128         # columns of y per tile
BLOCK_K = 64          # depth of each step along K
GROUP_M = 8           # row-tiles per group in the tile order
NUM_WARPS = 8         # warps per program (matmul)
NUM_STAGES = 3        # software-pipelining depth of the K loop
NORM_BLOCK = 1024     # columns per step of the rstd kernel


# --- kernels
@triton.jit
def _row_rstd(x_ptr, rstd_ptr, M, K, stride_xm, eps, BLOCK: tl.constexpr):
    for row in range(tl.program_id(0), M, tl.num_programs(0)):
        base = x_ptr + tl.cast(row, tl.int64) * stride_xm
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, K, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            v = tl.load(base + cols, mask=cols < K, other=0.0).to(tl.float32)
            acc += v * v
        tl.store(rstd_ptr + row, tl.rsqrt(tl.sum(acc, axis=0) / K + eps))


@triton.jit
def _norm_matmul(x_ptr, g_ptr, rstd_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk,
                 stride_ym, stride_yn,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    tile = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (tile // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    tm = first_m + (tile % per_group) % group_rows
    tn = (tile % per_group) // group_rows
    rm = tm * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tn * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    rstd = tl.load(rstd_ptr + rm, mask=rm < M, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        g = tl.load(g_ptr + kk, mask=kk < K, other=0.0)
        h = (x.to(tl.float32) * rstd[:, None] * g.to(tl.float32)[None, :]).to(x_ptr.dtype.element_ty)
        w = tl.load(w_ptr + rn[None, :] * stride_wn + kk[:, None] * stride_wk,
                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(h, w, acc)
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :] * stride_yn, acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


# --- entry point
def kernel(x, g, w):
    M, K = x.shape
    N = w.shape[0]
    rstd = torch.empty((M,), device=x.device, dtype=torch.float32)
    _row_rstd[(M,)](x, rstd, M, K, x.stride(0), EPS, BLOCK=min(NORM_BLOCK, triton.next_power_of_2(K)), num_warps=4)
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(M, BLOCK_M) * triton.cdiv(N, BLOCK_N),)
    _norm_matmul[grid](x, g, rstd, w, y, M, N, K, x.stride(0), x.stride(1), w.stride(0), w.stride(1),
                       y.stride(0), y.stride(1), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, GROUP_M=GROUP_M,
                       num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return y
