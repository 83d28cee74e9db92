"""Fused RMSNorm + linear: h = rmsnorm(x) * g (eps 1e-6, rounded to bf16), y = h @ w^T, bf16."""

import torch
import torch.nn.functional as F

from . import _common as C

EPS = 1e-6
TITLE = "fused rmsnorm + matmul"
SIGNATURE = "kernel(x: (M, K) bf16, g: (K,) bf16, w: (N, K) bf16) -> (M, N) bf16; eps = 1e-6"
PEAK = "bf16"
BANNED = ("matmul", "mm", "addmm", "linear", "rms_norm", "einsum")
TOLERANCE = {"bf16": (2e-2, 2e-2)}

WORKLOADS = [
    {"M": 4096, "N": 4096, "K": 4096},
    {"M": 8192, "N": 1024, "K": 4096},
    {"M": 2048, "N": 14336, "K": 4096},
    {"M": 4096, "N": 6144, "K": 2048},
]
HIDDEN_WORKLOADS = [{"M": 1000, "N": 2000, "K": 3072}, {"M": 3000, "N": 1024, "K": 1000}]
TINY_WORKLOADS = [{"M": 16, "N": 24, "K": 32}, {"M": 7, "N": 40, "K": 48}]
TINY_HIDDEN_WORKLOADS = [{"M": 20, "N": 16, "K": 24}]


def make_inputs(w, gen, device):
    M, N, K = w["M"], w["N"], w["K"]
    return [
        C.randn((M, K), gen, device, "bf16"),
        C.randn((K,), gen, device, "bf16", scale=0.1, shift=1.0),
        C.randn((N, K), gen, device, "bf16", scale=K ** -0.5),
    ]


def reference(x, g, w):
    xf = x.float()
    h = (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + EPS) * g.float()).to(torch.bfloat16)
    return F.linear(h, w)


def flops(w):
    # rmsnorm on (M, K): square, sum, divide, +eps, rsqrt, scale, weight; then the matmul
    M, N, K = w["M"], w["N"], w["K"]
    return M * (4 * K + 2) + 2 * M * N * K


def bytes_moved(w):
    M, N, K = w["M"], w["N"], w["K"]
    return 2 * (M * K + K + N * K + M * N)
