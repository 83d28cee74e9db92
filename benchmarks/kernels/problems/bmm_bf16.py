"""Batched bf16 matrix product C[b] = A[b] @ B[b]."""

import torch

from . import _common as C

TITLE = "batched bf16 matmul"
SIGNATURE = "kernel(a: (B, M, K) bf16, b: (B, K, N) bf16) -> (B, M, N) bf16"
PEAK = "bf16"
BANNED = ("matmul", "bmm", "baddbmm", "einsum")

WORKLOADS = [
    {"B": 16, "M": 1024, "N": 1024, "K": 1024},
    {"B": 64, "M": 512, "N": 512, "K": 256},
    {"B": 8, "M": 2048, "N": 2048, "K": 512},
    {"B": 128, "M": 256, "N": 256, "K": 128},
]
HIDDEN_WORKLOADS = [
    {"B": 12, "M": 777, "N": 1000, "K": 96},
    {"B": 4, "M": 1024, "N": 3000, "K": 256},
]
TINY_WORKLOADS = [{"B": 2, "M": 16, "N": 24, "K": 16}, {"B": 3, "M": 9, "N": 17, "K": 20}]
TINY_HIDDEN_WORKLOADS = [{"B": 2, "M": 5, "N": 33, "K": 12}]


def make_inputs(w, gen, device):
    return [
        C.randn((w["B"], w["M"], w["K"]), gen, device, "bf16"),
        C.randn((w["B"], w["K"], w["N"]), gen, device, "bf16"),
    ]


def reference(a, b):
    return torch.bmm(a, b)


def flops(w):
    return 2 * w["B"] * w["M"] * w["N"] * w["K"]


def bytes_moved(w):
    return 2 * w["B"] * (w["M"] * w["K"] + w["K"] * w["N"] + w["M"] * w["N"])
