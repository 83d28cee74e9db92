"""RMSNorm over the last dimension (eps = 1e-6): y = x * rsqrt(mean(x^2) + eps) * weight, math in fp32."""

import torch

from . import _common as C

EPS = 1e-6
TITLE = "rmsnorm"
SIGNATURE = "kernel(x: (M, N), weight: (N,)) -> (M, N); bf16 or fp16; eps = 1e-6"
PEAK = "bf16"
BANNED = ("rms_norm",)

WORKLOADS = [
    {"M": 8192, "N": 4096, "dtype": "bf16"},
    {"M": 32768, "N": 1024, "dtype": "bf16"},
    {"M": 2048, "N": 16384, "dtype": "bf16"},
    {"M": 16384, "N": 2048, "dtype": "fp16"},
]
HIDDEN_WORKLOADS = [{"M": 4321, "N": 5120, "dtype": "bf16"}, {"M": 77777, "N": 200, "dtype": "fp16"}]
TINY_WORKLOADS = [{"M": 6, "N": 40, "dtype": "bf16"}, {"M": 4, "N": 130, "dtype": "fp16"}]
TINY_HIDDEN_WORKLOADS = [{"M": 3, "N": 24, "dtype": "bf16"}]


def make_inputs(w, gen, device):
    dt = w["dtype"]
    return [C.randn((w["M"], w["N"]), gen, device, dt), C.randn((w["N"],), gen, device, dt, scale=0.1, shift=1.0)]


def reference(x, weight):
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + EPS)
    return (xf * rstd * weight.float()).to(x.dtype)


def flops(w):
    # square N, sum N-1, divide 1, +eps 1, rsqrt 1, scale N, weight N
    return w["M"] * (4 * w["N"] + 2)


def bytes_moved(w):
    s = C.size(w["dtype"])
    return s * (2 * w["M"] * w["N"] + w["N"])
