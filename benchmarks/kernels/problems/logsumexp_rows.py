"""Row log-sum-exp of a bf16 matrix, computed and returned in fp32 (stable: max-shifted)."""

import torch

from . import _common as C

TITLE = "row logsumexp"
SIGNATURE = "kernel(x: (M, N) bf16) -> (M,) fp32"
PEAK = "bf16"
TOLERANCE = {"fp32": (1e-4, 1e-5)}

WORKLOADS = [
    {"M": 8192, "N": 8192},
    {"M": 4096, "N": 32000},
    {"M": 32768, "N": 1024},
    {"M": 1024, "N": 131072},
]
HIDDEN_WORKLOADS = [{"M": 2000, "N": 50257}, {"M": 33, "N": 4099}]
TINY_WORKLOADS = [{"M": 6, "N": 50}, {"M": 4, "N": 300}]
TINY_HIDDEN_WORKLOADS = [{"M": 3, "N": 9}]


def make_inputs(w, gen, device):
    return [C.randn((w["M"], w["N"]), gen, device, "bf16", scale=3.0)]


def reference(x):
    return torch.logsumexp(x.float(), dim=-1)


def flops(w):
    # max (N-1), subtract N, exp N, sum N-1, log 1, add back the max 1
    return w["M"] * 4 * w["N"]


def bytes_moved(w):
    return 2 * w["M"] * w["N"] + 4 * w["M"]
