"""fp8 (e4m3) matmul with row-wise scales: out[m, n] = sa[m] * sb[n] * sum_k A[m, k] B[n, k], as bf16."""

import torch

from . import _common as C

TITLE = "fp8 matmul, row-wise scales"
SIGNATURE = "kernel(a: (M, K) fp8e4m3, b: (N, K) fp8e4m3, sa: (M,) fp32, sb: (N,) fp32) -> (M, N) bf16"
PEAK = "fp8"
BANNED = ("matmul", "mm", "_scaled_mm", "linear", "einsum")

WORKLOADS = [
    {"M": 4096, "N": 4096, "K": 4096},
    {"M": 8192, "N": 8192, "K": 2048},
    {"M": 2048, "N": 4096, "K": 8192},
    {"M": 4096, "N": 14336, "K": 4096},
]
HIDDEN_WORKLOADS = [{"M": 2500, "N": 3000, "K": 2048}, {"M": 4096, "N": 1024, "K": 4096}]
TINY_WORKLOADS = [{"M": 16, "N": 32, "K": 32}, {"M": 20, "N": 17, "K": 64}]
TINY_HIDDEN_WORKLOADS = [{"M": 33, "N": 16, "K": 48}]


def make_inputs(w, gen, device):
    a, sa = C.quantize_rowwise(C.randn((w["M"], w["K"]), gen, device, "fp32"))
    b, sb = C.quantize_rowwise(C.randn((w["N"], w["K"]), gen, device, "fp32"))
    return [a, b, sa, sb]


def reference(a, b, sa, sb):
    acc = torch.matmul(a.to(torch.bfloat16), b.to(torch.bfloat16).t())
    return (acc.float() * sa[:, None] * sb[None, :]).to(torch.bfloat16)


def flops(w):
    # products and sums of the matmul, then two scale multiplies per output
    return 2 * w["M"] * w["N"] * w["K"] + 2 * w["M"] * w["N"]


def bytes_moved(w):
    return w["M"] * w["K"] + w["N"] * w["K"] + 4 * (w["M"] + w["N"]) + 2 * w["M"] * w["N"]
