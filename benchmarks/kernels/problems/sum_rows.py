"""Row sums in fp32: y[m] = sum_n x[m, n] (input fp32 or bf16, fp32 accumulation and result)."""

import torch

from . import _common as C

TITLE = "row sum"
SIGNATURE = "kernel(x: (M, N) fp32|bf16) -> (M,) fp32"
PEAK = "bf16"
TOLERANCE = {"fp32": (1e-3, 1e-4)}   # sums of up to 32k values: fp32 reassociation, not bf16 accumulation

WORKLOADS = [
    {"M": 8192, "N": 8192, "dtype": "fp32"},
    {"M": 32768, "N": 1024, "dtype": "fp32"},
    {"M": 1024, "N": 32768, "dtype": "fp32"},
    {"M": 16384, "N": 4096, "dtype": "bf16"},
]
HIDDEN_WORKLOADS = [{"M": 3000, "N": 5001, "dtype": "fp32"}, {"M": 77, "N": 100003, "dtype": "bf16"}]
TINY_WORKLOADS = [{"M": 8, "N": 50, "dtype": "fp32"}, {"M": 5, "N": 33, "dtype": "bf16"}]
TINY_HIDDEN_WORKLOADS = [{"M": 3, "N": 130, "dtype": "fp32"}]


def make_inputs(w, gen, device):
    return [C.randn((w["M"], w["N"]), gen, device, w["dtype"])]


def reference(x):
    return torch.sum(x, dim=-1, dtype=torch.float32)


def flops(w):
    return w["M"] * (w["N"] - 1)


def bytes_moved(w):
    return w["M"] * w["N"] * C.size(w["dtype"]) + 4 * w["M"]
