"""Causal self-attention forward: softmax(q k^T / sqrt(D), causal mask) v, bf16, small head dim."""

import torch
import torch.nn.functional as F

from . import _common as C

TITLE = "causal attention forward"
SIGNATURE = "kernel(q, k, v: (B, H, S, D) bf16) -> (B, H, S, D) bf16; scale 1/sqrt(D); D in {16, 32, 64, 128}"
PEAK = "bf16"
BANNED = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
          "_scaled_dot_product_efficient_attention", "matmul", "bmm", "softmax", "einsum")

WORKLOADS = [
    {"B": 8, "H": 16, "S": 1024, "D": 64},
    {"B": 4, "H": 16, "S": 2048, "D": 64},
    {"B": 2, "H": 8, "S": 4096, "D": 64},
    {"B": 16, "H": 16, "S": 512, "D": 32},
]
HIDDEN_WORKLOADS = [{"B": 3, "H": 5, "S": 1000, "D": 64}, {"B": 1, "H": 12, "S": 3001, "D": 32}]
TINY_WORKLOADS = [{"B": 1, "H": 2, "S": 16, "D": 16}, {"B": 2, "H": 1, "S": 20, "D": 16}]
TINY_HIDDEN_WORKLOADS = [{"B": 1, "H": 1, "S": 9, "D": 16}]


def make_inputs(w, gen, device):
    shape = (w["B"], w["H"], w["S"], w["D"])
    return [C.randn(shape, gen, device, "bf16") for _ in range(3)]


def reference(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def flops(w):
    # P = S(S+1)/2 visible (query, key) pairs per head: q.k (2D each), p.v (2D each),
    # scale, max, subtract, exp, sum (5 each), and the final division (S*D)
    B, H, S, D = w["B"], w["H"], w["S"], w["D"]
    pairs = S * (S + 1) // 2
    return B * H * (4 * D * pairs + 5 * pairs + S * D)


def bytes_moved(w):
    return 4 * 2 * w["B"] * w["H"] * w["S"] * w["D"]
