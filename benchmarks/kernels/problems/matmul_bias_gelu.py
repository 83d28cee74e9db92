"""Fused linear + bias + GELU: y = gelu(x @ w^T + b) (erf GELU), bf16 in and out, w stored (N, K)."""

import torch
import torch.nn.functional as F

from . import _common as C

TITLE = "fused matmul + bias + gelu"
SIGNATURE = "kernel(x: (M, K) bf16, w: (N, K) bf16, b: (N,) bf16) -> (M, N) bf16"
PEAK = "bf16"
BANNED = ("matmul", "mm", "addmm", "linear", "gelu", "einsum")
TOLERANCE = {"bf16": (2e-2, 2e-2)}   # the reference rounds x @ w^T + b to bf16 before gelu

WORKLOADS = [
    {"M": 4096, "N": 4096, "K": 4096},
    {"M": 2048, "N": 11008, "K": 4096},
    {"M": 8192, "N": 3072, "K": 768},
    {"M": 1024, "N": 16384, "K": 2048},
]
HIDDEN_WORKLOADS = [{"M": 1000, "N": 3000, "K": 1024}, {"M": 3072, "N": 1000, "K": 2048}]
TINY_WORKLOADS = [{"M": 16, "N": 24, "K": 32}, {"M": 9, "N": 40, "K": 16}]
TINY_HIDDEN_WORKLOADS = [{"M": 20, "N": 17, "K": 48}]


def make_inputs(w, gen, device):
    M, N, K = w["M"], w["N"], w["K"]
    return [
        C.randn((M, K), gen, device, "bf16"),
        C.randn((N, K), gen, device, "bf16", scale=K ** -0.5),
        C.randn((N,), gen, device, "bf16", scale=0.5),
    ]


def reference(x, w, b):
    return F.gelu(F.linear(x, w, b))


def flops(w):
    # matmul, bias add (1 per output), gelu (5 per output)
    M, N, K = w["M"], w["N"], w["K"]
    return 2 * M * N * K + 6 * M * N


def bytes_moved(w):
    M, N, K = w["M"], w["N"], w["K"]
    return 2 * (M * K + N * K + N + M * N)
