"""attention_causal: o = softmax(q k^T / sqrt(D), causal) v for bf16 q, k, v (B, H, S, D).

Seed kernel: one block of BLOCK_M queries of one head per program; it walks the key/value
blocks up to the diagonal with an online softmax (running maximum and sum, the output
rescaled as the maximum grows), so the S x S scores never go to memory.
"""

import math

import torch
import triton
import triton.language as tl

# --- settings (one per line: the playbook edits these)
BLOCK_M = 64          # queries per program
BLOCK_N = 64          # keys per step
NUM_WARPS = 4         # warps per program
NUM_STAGES = 2        # software-pipelining depth of the key loop


# --- kernel
@triton.jit
def _attention(q_ptr, k_ptr, v_ptr, o_ptr, S, scale,
               D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    qblock = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64) * S * D            # offset of this (batch, head)
    rows = qblock * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D)
    q = tl.load(q_ptr + head + rows[:, None] * D + dims[None, :], mask=rows[:, None] < S, other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    end = tl.minimum((qblock + 1) * BLOCK_M, S)               # causal: no key beyond the last query
    for n0 in range(0, end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        kt = tl.load(k_ptr + head + cols[None, :] * D + dims[:, None], mask=cols[None, :] < S, other=0.0)
        s = tl.dot(q, kt) * scale
        s = tl.where((cols[None, :] <= rows[:, None]) & (cols[None, :] < S), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + head + cols[:, None] * D + dims[None, :], mask=cols[:, None] < S, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(o_ptr + head + rows[:, None] * D + dims[None, :], out.to(o_ptr.dtype.element_ty), mask=rows[:, None] < S)


# --- entry point
def kernel(q, k, v):
    B, H, S, D = q.shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(q)
    grid = (triton.cdiv(S, BLOCK_M), B * H)
    _attention[grid](q, k, v, o, S, 1.0 / math.sqrt(D), D=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                     num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return o
