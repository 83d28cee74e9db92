"""Plain bf16 matrix product C = A @ B (fp32 accumulation, bf16 result)."""

import torch

from . import _common as C

TITLE = "bf16 matmul"
SIGNATURE = "kernel(a: (M, K) bf16, b: (K, N) bf16) -> (M, N) bf16"
PEAK = "bf16"
BANNED = ("matmul", "mm", "addmm", "linear", "einsum")

WORKLOADS = [
    {"M": 4096, "N": 4096, "K": 4096},
    {"M": 2048, "N": 8192, "K": 2048},
    {"M": 8192, "N": 2048, "K": 4096},
    {"M": 4000, "N": 3000, "K": 2000},
]
HIDDEN_WORKLOADS = [
    {"M": 3072, "N": 1536, "K": 5120},
    {"M": 1537, "N": 2049, "K": 1000},
]
TINY_WORKLOADS = [{"M": 16, "N": 24, "K": 32}, {"M": 33, "N": 17, "K": 40}]
TINY_HIDDEN_WORKLOADS = [{"M": 20, "N": 30, "K": 18}]


def make_inputs(w, gen, device):
    return [C.randn((w["M"], w["K"]), gen, device, "bf16"), C.randn((w["K"], w["N"]), gen, device, "bf16")]


def reference(a, b):
    return torch.matmul(a, b)


def flops(w):
    return 2 * w["M"] * w["N"] * w["K"]


def bytes_moved(w):
    return 2 * (w["M"] * w["K"] + w["K"] * w["N"] + w["M"] * w["N"])
