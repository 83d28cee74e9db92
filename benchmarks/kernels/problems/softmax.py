"""Softmax over the last dimension, math in fp32, result in the input dtype."""

import torch

from . import _common as C

TITLE = "row softmax"
SIGNATURE = "kernel(x: (M, N) bf16|fp16|fp32) -> (M, N) same dtype"
PEAK = "bf16"
TOLERANCE = {"bf16": (1e-4, 1e-2), "fp16": (1e-5, 2e-3), "fp32": (1e-7, 1e-4)}   # probabilities are small: tight atol

WORKLOADS = [
    {"M": 4096, "N": 4096, "dtype": "bf16"},
    {"M": 16384, "N": 1024, "dtype": "bf16"},
    {"M": 1024, "N": 32768, "dtype": "bf16"},
    {"M": 8192, "N": 2048, "dtype": "fp16"},
    {"M": 4096, "N": 8192, "dtype": "fp32"},
]
HIDDEN_WORKLOADS = [{"M": 3333, "N": 5000, "dtype": "bf16"}, {"M": 64, "N": 151936, "dtype": "fp32"}]
TINY_WORKLOADS = [{"M": 6, "N": 40, "dtype": "bf16"}, {"M": 3, "N": 130, "dtype": "fp32"}]
TINY_HIDDEN_WORKLOADS = [{"M": 5, "N": 7, "dtype": "fp16"}]


def make_inputs(w, gen, device):
    return [C.randn((w["M"], w["N"]), gen, device, w["dtype"], scale=2.0)]


def reference(x):
    return torch.softmax(x.float(), dim=-1).to(x.dtype)


def flops(w):
    # max (N-1), subtract N, exp N, sum N-1, divide N
    return w["M"] * (5 * w["N"] - 2)


def bytes_moved(w):
    return 2 * w["M"] * w["N"] * C.size(w["dtype"])
