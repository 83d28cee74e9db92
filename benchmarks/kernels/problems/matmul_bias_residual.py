"""Fused linear + bias + residual: y = x @ w^T + b + r, bf16, w stored (N, K)."""

import torch
import torch.nn.functional as F

from . import _common as C

TITLE = "fused matmul + bias + residual"
SIGNATURE = "kernel(x: (M, K) bf16, w: (N, K) bf16, b: (N,) bf16, r: (M, N) bf16) -> (M, N) bf16"
PEAK = "bf16"
BANNED = ("matmul", "mm", "addmm", "linear", "einsum")
TOLERANCE = {"bf16": (2e-2, 2e-2)}   # the reference rounds twice (linear, then + r)

WORKLOADS = [
    {"M": 4096, "N": 4096, "K": 4096},
    {"M": 8192, "N": 4096, "K": 1024},
    {"M": 2048, "N": 8192, "K": 8192},
    {"M": 16384, "N": 1024, "K": 4096},
]
HIDDEN_WORKLOADS = [{"M": 1000, "N": 3000, "K": 2048}, {"M": 4096, "N": 1536, "K": 777}]
TINY_WORKLOADS = [{"M": 16, "N": 24, "K": 32}, {"M": 9, "N": 40, "K": 16}]
TINY_HIDDEN_WORKLOADS = [{"M": 20, "N": 17, "K": 48}]


def make_inputs(w, gen, device):
    M, N, K = w["M"], w["N"], w["K"]
    return [
        C.randn((M, K), gen, device, "bf16"),
        C.randn((N, K), gen, device, "bf16", scale=K ** -0.5),
        C.randn((N,), gen, device, "bf16", scale=0.5),
        C.randn((M, N), gen, device, "bf16"),
    ]


def reference(x, w, b, r):
    return F.linear(x, w, b) + r


def flops(w):
    M, N, K = w["M"], w["N"], w["K"]
    return 2 * M * N * K + 2 * M * N


def bytes_moved(w):
    M, N, K = w["M"], w["N"], w["K"]
    return 2 * (M * K + N * K + N + 2 * M * N)
