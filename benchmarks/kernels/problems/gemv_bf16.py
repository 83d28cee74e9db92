"""Matrix-vector product y = W @ x in bf16 (the decode-time linear layer; memory-bound)."""

import torch

from . import _common as C

TITLE = "bf16 matrix-vector product"
SIGNATURE = "kernel(w: (M, K) bf16, x: (K,) bf16) -> (M,) bf16"
PEAK = "bf16"
BANNED = ("matmul", "mv", "mm", "linear", "einsum")

WORKLOADS = [
    {"M": 8192, "K": 8192},
    {"M": 4096, "K": 14336},
    {"M": 28672, "K": 4096},
    {"M": 16384, "K": 2048},
]
HIDDEN_WORKLOADS = [{"M": 11008, "K": 4096}, {"M": 5000, "K": 3001}]
TINY_WORKLOADS = [{"M": 24, "K": 40}, {"M": 7, "K": 33}]
TINY_HIDDEN_WORKLOADS = [{"M": 13, "K": 64}]


def make_inputs(w, gen, device):
    return [C.randn((w["M"], w["K"]), gen, device, "bf16"), C.randn((w["K"],), gen, device, "bf16")]


def reference(w, x):
    return torch.mv(w, x)


def flops(w):
    return 2 * w["M"] * w["K"]


def bytes_moved(w):
    return 2 * (w["M"] * w["K"] + w["K"] + w["M"])
