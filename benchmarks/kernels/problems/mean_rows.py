"""Row means of a bf16 matrix, accumulated in fp32, result bf16."""

import torch

from . import _common as C

TITLE = "row mean"
SIGNATURE = "kernel(x: (M, N) bf16) -> (M,) bf16"
PEAK = "bf16"
TOLERANCE = {"bf16": (1e-3, 1e-2)}   # means are small (~1/sqrt(N)): a tight atol catches bf16 accumulation

WORKLOADS = [
    {"M": 8192, "N": 8192},
    {"M": 65536, "N": 512},
    {"M": 2048, "N": 32768},
    {"M": 16384, "N": 4096},
]
HIDDEN_WORKLOADS = [{"M": 1234, "N": 7777}, {"M": 100000, "N": 96}]
TINY_WORKLOADS = [{"M": 8, "N": 50}, {"M": 3, "N": 200}]
TINY_HIDDEN_WORKLOADS = [{"M": 7, "N": 17}]


def make_inputs(w, gen, device):
    return [C.randn((w["M"], w["N"]), gen, device, "bf16", shift=0.1)]


def reference(x):
    return torch.mean(x.float(), dim=-1).to(torch.bfloat16)


def flops(w):
    return w["M"] * (w["N"] - 1) + w["M"]


def bytes_moved(w):
    return 2 * w["M"] * w["N"] + 2 * w["M"]
