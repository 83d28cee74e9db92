"""Inclusive prefix sum along the last dimension, fp32."""

import torch

from . import _common as C

TITLE = "row cumulative sum"
SIGNATURE = "kernel(x: (M, N) fp32) -> (M, N) fp32"
PEAK = "bf16"
TOLERANCE = {"fp32": (1e-3, 1e-4)}   # long scans: reassociation error grows with N

WORKLOADS = [
    {"M": 4096, "N": 4096},
    {"M": 65536, "N": 256},
    {"M": 512, "N": 32768},
    {"M": 16384, "N": 1024},
]
HIDDEN_WORKLOADS = [{"M": 3000, "N": 3001}, {"M": 7, "N": 200000}]
TINY_WORKLOADS = [{"M": 6, "N": 40}, {"M": 3, "N": 130}]
TINY_HIDDEN_WORKLOADS = [{"M": 2, "N": 9}]


def make_inputs(w, gen, device):
    return [C.randn((w["M"], w["N"]), gen, device, "fp32")]


def reference(x):
    return torch.cumsum(x, dim=-1)


def flops(w):
    return w["M"] * (w["N"] - 1)


def bytes_moved(w):
    return 8 * w["M"] * w["N"]
