"""Scaled, causally masked softmax over attention scores: y = softmax(x * 0.125 + causal mask) per row.

x: (B, H, S, S) bf16 scores; row i keeps columns 0..i; masked positions come out exactly 0.
Byte count is the minimum a kernel needs: the visible (lower-triangle) scores read once and
the whole output written once, so a kernel that skips masked reads cannot beat the bound.
"""

import torch

from . import _common as C

SCALE = 0.125
TITLE = "scaled causal softmax"
SIGNATURE = "kernel(x: (B, H, S, S) bf16) -> (B, H, S, S) bf16; scale 0.125, causal"
PEAK = "bf16"
TOLERANCE = {"bf16": (1e-4, 1e-2)}
MINIMAL_BYTES = True   # bytes_moved counts visible inputs only (see docstring)

WORKLOADS = [
    {"B": 4, "H": 16, "S": 1024},
    {"B": 1, "H": 32, "S": 2048},
    {"B": 8, "H": 8, "S": 512},
    {"B": 1, "H": 16, "S": 4096},
]
HIDDEN_WORKLOADS = [{"B": 2, "H": 3, "S": 1000}, {"B": 1, "H": 4, "S": 3001}]
TINY_WORKLOADS = [{"B": 1, "H": 2, "S": 16}, {"B": 2, "H": 1, "S": 33}]
TINY_HIDDEN_WORKLOADS = [{"B": 1, "H": 1, "S": 7}]


def make_inputs(w, gen, device):
    return [C.randn((w["B"], w["H"], w["S"], w["S"]), gen, device, "bf16", scale=8.0)]


def reference(x):
    S = x.shape[-1]
    mask = torch.ones((S, S), dtype=torch.bool, device=x.device).tril()
    z = (x.float() * SCALE).masked_fill(~mask, float("-inf"))
    return torch.softmax(z, dim=-1).to(x.dtype)


def flops(w):
    # per visible element: scale, max, subtract, exp, sum, divide
    pairs = w["S"] * (w["S"] + 1) // 2
    return 6 * w["B"] * w["H"] * pairs


def bytes_moved(w):
    B, H, S = w["B"], w["H"], w["S"]
    return 2 * B * H * (S * (S + 1) // 2) + 2 * B * H * S * S
