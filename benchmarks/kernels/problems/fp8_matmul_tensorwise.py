"""fp8 (e4m3) matmul with per-tensor scales: out = (A * sa) @ (B * sb)^T, as bf16.

B is stored (N, K) like a linear layer's weight. The reference dequantizes to bf16 (exact
for e4m3 values), multiplies with fp32 accumulation and applies sa * sb in fp32.
"""

import torch

from . import _common as C

TITLE = "fp8 matmul, per-tensor scales"
SIGNATURE = "kernel(a: (M, K) fp8e4m3, b: (N, K) fp8e4m3, sa: (1,) fp32, sb: (1,) fp32) -> (M, N) bf16"
PEAK = "fp8"
BANNED = ("matmul", "mm", "_scaled_mm", "linear", "einsum")

WORKLOADS = [
    {"M": 4096, "N": 4096, "K": 4096},
    {"M": 2048, "N": 8192, "K": 4096},
    {"M": 8192, "N": 4096, "K": 2048},
    {"M": 1024, "N": 8192, "K": 8192},
]
HIDDEN_WORKLOADS = [{"M": 3072, "N": 3072, "K": 1024}, {"M": 1000, "N": 2000, "K": 3008}]
TINY_WORKLOADS = [{"M": 16, "N": 16, "K": 32}, {"M": 17, "N": 24, "K": 48}]
TINY_HIDDEN_WORKLOADS = [{"M": 9, "N": 40, "K": 32}]


def make_inputs(w, gen, device):
    a, sa = C.quantize_tensorwise(C.randn((w["M"], w["K"]), gen, device, "fp32"))
    b, sb = C.quantize_tensorwise(C.randn((w["N"], w["K"]), gen, device, "fp32"))
    return [a, b, sa, sb]


def reference(a, b, sa, sb):
    acc = torch.matmul(a.to(torch.bfloat16), b.to(torch.bfloat16).t())
    return (acc.float() * (sa * sb)).to(torch.bfloat16)


def flops(w):
    # products and sums of the matmul, then one multiply per output by sa * sb
    return 2 * w["M"] * w["N"] * w["K"] + w["M"] * w["N"] + 1


def bytes_moved(w):
    return w["M"] * w["K"] + w["N"] * w["K"] + 4 + 4 + 2 * w["M"] * w["N"]
