"""Exact (erf) GELU, elementwise: y = 0.5 * x * (1 + erf(x / sqrt(2))), math in fp32."""

import torch
import torch.nn.functional as F

from . import _common as C

TITLE = "gelu (erf)"
SIGNATURE = "kernel(x: (M, N) bf16|fp32) -> (M, N) same dtype"
PEAK = "bf16"
BANNED = ("gelu",)

WORKLOADS = [
    {"M": 8192, "N": 8192, "dtype": "bf16"},
    {"M": 4096, "N": 14336, "dtype": "bf16"},
    {"M": 65536, "N": 1024, "dtype": "bf16"},
    {"M": 16384, "N": 4096, "dtype": "fp32"},
]
HIDDEN_WORKLOADS = [{"M": 3001, "N": 4999, "dtype": "bf16"}, {"M": 1, "N": 10000019, "dtype": "fp32"}]
TINY_WORKLOADS = [{"M": 4, "N": 50, "dtype": "bf16"}, {"M": 3, "N": 37, "dtype": "fp32"}]
TINY_HIDDEN_WORKLOADS = [{"M": 1, "N": 999, "dtype": "bf16"}]


def make_inputs(w, gen, device):
    return [C.randn((w["M"], w["N"]), gen, device, w["dtype"], scale=2.0)]


def reference(x):
    return F.gelu(x.float()).to(x.dtype)


def flops(w):
    # divide by sqrt(2), erf, add 1, multiply by x, multiply by 0.5
    return 5 * w["M"] * w["N"]


def bytes_moved(w):
    return 2 * w["M"] * w["N"] * C.size(w["dtype"])
