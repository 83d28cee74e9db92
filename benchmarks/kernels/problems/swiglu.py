"""SwiGLU gate: y = silu(gate) * up = gate * sigmoid(gate) * up, math in fp32."""

import torch
import torch.nn.functional as F

from . import _common as C

TITLE = "swiglu"
SIGNATURE = "kernel(gate: (M, H), up: (M, H)) -> (M, H); bf16 or fp16"
PEAK = "bf16"
BANNED = ("silu", "sigmoid")

WORKLOADS = [
    {"M": 4096, "H": 11008, "dtype": "bf16"},
    {"M": 16384, "H": 4096, "dtype": "bf16"},
    {"M": 65536, "H": 1024, "dtype": "bf16"},
    {"M": 8192, "H": 14336, "dtype": "fp16"},
]
HIDDEN_WORKLOADS = [{"M": 3000, "H": 5555, "dtype": "bf16"}, {"M": 17, "H": 100003, "dtype": "fp16"}]
TINY_WORKLOADS = [{"M": 5, "H": 40, "dtype": "bf16"}, {"M": 3, "H": 33, "dtype": "fp16"}]
TINY_HIDDEN_WORKLOADS = [{"M": 2, "H": 77, "dtype": "bf16"}]


def make_inputs(w, gen, device):
    shape = (w["M"], w["H"])
    return [C.randn(shape, gen, device, w["dtype"], scale=2.0), C.randn(shape, gen, device, w["dtype"])]


def reference(gate, up):
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def flops(w):
    # sigmoid as negate, exp, add 1, divide (4), times gate, times up
    return 6 * w["M"] * w["H"]


def bytes_moved(w):
    return 3 * w["M"] * w["H"] * C.size(w["dtype"])
