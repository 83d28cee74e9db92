"""Dynamic row-wise fp8 quantization: scale[m] = max(amax(|x[m]|), 1e-12) / 448; q = clamp(x / scale) as e4m3.

Returns (q, scale). q is compared in float with one e4m3 step of slack (rtol 0.13), since a
value on a rounding boundary may land on either neighbour.
"""

import torch

from . import _common as C

TITLE = "fp8 row-wise quantize"
SIGNATURE = "kernel(x: (M, N) bf16) -> (q: (M, N) fp8e4m3, scale: (M,) fp32)"
PEAK = "bf16"
OUTPUT_TOLERANCE = [(2.0 ** -9, 0.13), (0.0, 1e-6)]

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
    x = C.randn((w["M"], w["N"]), gen, device, "fp32")
    x.mul_(torch.rand((w["M"], 1), generator=gen, device=device) * 10 + 0.01)   # rows of different ranges
    return [x.to(torch.bfloat16)]


def reference(x):
    xf = x.float()
    scale = xf.abs().amax(dim=-1).clamp_min(C.FP8_MIN_SCALE) / C.FP8_MAX
    q = (xf / scale[:, None]).clamp(-C.FP8_MAX, C.FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def flops(w):
    # abs N, max N-1, one division per row, divide N, clamp 2N
    return w["M"] * (5 * w["N"])


def bytes_moved(w):
    return 2 * w["M"] * w["N"] + w["M"] * w["N"] + 4 * w["M"]
