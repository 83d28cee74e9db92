"""LayerNorm over the last dimension with weight and bias (eps = 1e-5), stats in fp32."""

import torch
import torch.nn.functional as F

from . import _common as C

EPS = 1e-5
TITLE = "layernorm"
SIGNATURE = "kernel(x: (M, N), weight: (N,), bias: (N,)) -> (M, N); all bf16 or all fp32; eps = 1e-5"
PEAK = "bf16"
TOLERANCE = {"bf16": (2e-2, 1e-2), "fp32": (1e-4, 1e-4)}

WORKLOADS = [
    {"M": 8192, "N": 4096, "dtype": "bf16"},
    {"M": 32768, "N": 1024, "dtype": "bf16"},
    {"M": 4096, "N": 8192, "dtype": "bf16"},
    {"M": 16384, "N": 2048, "dtype": "fp32"},
]
HIDDEN_WORKLOADS = [{"M": 5000, "N": 3000, "dtype": "bf16"}, {"M": 100, "N": 20000, "dtype": "fp32"}]
TINY_WORKLOADS = [{"M": 6, "N": 40, "dtype": "bf16"}, {"M": 4, "N": 130, "dtype": "fp32"}]
TINY_HIDDEN_WORKLOADS = [{"M": 3, "N": 24, "dtype": "bf16"}]


def make_inputs(w, gen, device):
    dt = w["dtype"]
    return [
        C.randn((w["M"], w["N"]), gen, device, dt, scale=2.0, shift=0.5),
        C.randn((w["N"],), gen, device, dt, scale=0.1, shift=1.0),
        C.randn((w["N"],), gen, device, dt, scale=0.1),
    ]


def reference(x, weight, bias):
    y = F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), EPS)
    return y.to(x.dtype)


def flops(w):
    # mean (N adds, 1 div), centre N, square N, variance (N adds, 1 div), +eps and rsqrt 2,
    # scale by rstd N, weight N, bias N
    return w["M"] * (7 * w["N"] + 4)


def bytes_moved(w):
    s = C.size(w["dtype"])
    return s * (2 * w["M"] * w["N"] + 2 * w["N"])
