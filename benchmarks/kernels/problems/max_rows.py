"""Row maxima: y[m] = max_n x[m, n] (exact: the result must equal the reference bit for bit)."""

import torch

from . import _common as C

TITLE = "row max"
SIGNATURE = "kernel(x: (M, N) bf16|fp32) -> (M,) same dtype"
PEAK = "bf16"
TOLERANCE = {"bf16": (0.0, 0.0), "fp32": (0.0, 0.0)}

WORKLOADS = [
    {"M": 8192, "N": 8192, "dtype": "bf16"},
    {"M": 32768, "N": 2048, "dtype": "bf16"},
    {"M": 4096, "N": 16384, "dtype": "fp32"},
    {"M": 65536, "N": 256, "dtype": "fp32"},
]
HIDDEN_WORKLOADS = [{"M": 999, "N": 12345, "dtype": "bf16"}, {"M": 4097, "N": 1000, "dtype": "fp32"}]
TINY_WORKLOADS = [{"M": 8, "N": 50, "dtype": "bf16"}, {"M": 5, "N": 70, "dtype": "fp32"}]
TINY_HIDDEN_WORKLOADS = [{"M": 2, "N": 300, "dtype": "fp32"}]


def make_inputs(w, gen, device):
    return [C.randn((w["M"], w["N"]), gen, device, w["dtype"], shift=-3.0)]   # mostly negative: 0 is no answer


def reference(x):
    return torch.amax(x, dim=-1)


def flops(w):
    return w["M"] * (w["N"] - 1)


def bytes_moved(w):
    s = C.size(w["dtype"])
    return s * w["M"] * w["N"] + s * w["M"]
