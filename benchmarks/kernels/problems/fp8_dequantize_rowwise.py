"""Row-wise fp8 dequantization: y[m, n] = q[m, n] * scale[m], fp32 math, bf16 result."""

import torch

from . import _common as C

TITLE = "fp8 row-wise dequantize"
SIGNATURE = "kernel(q: (M, N) fp8e4m3, scale: (M,) fp32) -> (M, N) bf16"
PEAK = "bf16"

WORKLOADS = [
    {"M": 8192, "N": 8192},
    {"M": 32768, "N": 2048},
    {"M": 4096, "N": 16384},
    {"M": 65536, "N": 1024},
]
HIDDEN_WORKLOADS = [{"M": 3000, "N": 5001}, {"M": 7, "N": 100000}]
TINY_WORKLOADS = [{"M": 6, "N": 40}, {"M": 3, "N": 130}]
TINY_HIDDEN_WORKLOADS = [{"M": 2, "N": 9}]


def make_inputs(w, gen, device):
    q, scale = C.quantize_rowwise(C.randn((w["M"], w["N"]), gen, device, "fp32", scale=3.0))
    return [q, scale]


def reference(q, scale):
    return (q.float() * scale[:, None]).to(torch.bfloat16)


def flops(w):
    return w["M"] * w["N"]


def bytes_moved(w):
    return w["M"] * w["N"] + 4 * w["M"] + 2 * w["M"] * w["N"]
