"""Fused residual add + RMSNorm: h = x + residual (bf16), y = rmsnorm(h) * weight (eps 1e-6). Returns (h, y)."""

import torch

from . import _common as C

EPS = 1e-6
TITLE = "fused residual add + rmsnorm"
SIGNATURE = "kernel(x: (M, N) bf16, residual: (M, N) bf16, weight: (N,) bf16) -> (h: (M, N) bf16, y: (M, N) bf16)"
PEAK = "bf16"
BANNED = ("rms_norm",)
OUTPUT_TOLERANCE = [(0.0, 4e-3), (1e-2, 1e-2)]   # h is one rounded add: at most one bf16 step off

WORKLOADS = [
    {"M": 8192, "N": 4096},
    {"M": 32768, "N": 1024},
    {"M": 4096, "N": 8192},
    {"M": 16384, "N": 2048},
]
HIDDEN_WORKLOADS = [{"M": 3000, "N": 5120}, {"M": 50000, "N": 100}]
TINY_WORKLOADS = [{"M": 6, "N": 40}, {"M": 3, "N": 130}]
TINY_HIDDEN_WORKLOADS = [{"M": 2, "N": 24}]


def make_inputs(w, gen, device):
    M, N = w["M"], w["N"]
    return [
        C.randn((M, N), gen, device, "bf16"),
        C.randn((M, N), gen, device, "bf16", scale=2.0),
        C.randn((N,), gen, device, "bf16", scale=0.1, shift=1.0),
    ]


def reference(x, residual, weight):
    h = x + residual
    hf = h.float()
    y = (hf * torch.rsqrt(hf.pow(2).mean(dim=-1, keepdim=True) + EPS) * weight.float()).to(torch.bfloat16)
    return h, y


def flops(w):
    # add N, then rmsnorm: square N, sum N-1, divide, +eps, rsqrt, scale N, weight N
    return w["M"] * (5 * w["N"] + 2)


def bytes_moved(w):
    M, N = w["M"], w["N"]
    return 2 * (2 * M * N + N) + 2 * (2 * M * N)
