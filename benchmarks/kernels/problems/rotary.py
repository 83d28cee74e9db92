"""Rotary position embedding, rotate-half (GPT-NeoX) layout.

x: (B, S, H, D) bf16; cos, sin: (S, D/2) fp32. With x1 = x[..., :D/2], x2 = x[..., D/2:]:
out = cat(x1 * cos - x2 * sin, x2 * cos + x1 * sin), math in fp32, result bf16.
"""

import torch

from . import _common as C

TITLE = "rotary embedding"
SIGNATURE = "kernel(x: (B, S, H, D) bf16, cos: (S, D/2) fp32, sin: (S, D/2) fp32) -> (B, S, H, D) bf16"
PEAK = "bf16"

WORKLOADS = [
    {"B": 4, "S": 2048, "H": 32, "D": 128},
    {"B": 8, "S": 1024, "H": 16, "D": 64},
    {"B": 1, "S": 8192, "H": 32, "D": 128},
    {"B": 16, "S": 512, "H": 8, "D": 64},
]
HIDDEN_WORKLOADS = [{"B": 3, "S": 1000, "H": 12, "D": 64}, {"B": 2, "S": 4099, "H": 5, "D": 128}]
TINY_WORKLOADS = [{"B": 1, "S": 8, "H": 2, "D": 16}, {"B": 2, "S": 5, "H": 3, "D": 32}]
TINY_HIDDEN_WORKLOADS = [{"B": 1, "S": 3, "H": 1, "D": 16}]


def make_inputs(w, gen, device):
    B, S, H, D = w["B"], w["S"], w["H"], w["D"]
    x = C.randn((B, S, H, D), gen, device, "bf16")
    # angles: position * frequency, with a random phase so no two draws are alike
    inv_freq = 10000.0 ** (-torch.arange(0, D // 2, device=device, dtype=torch.float32) / (D // 2))
    pos = torch.arange(S, device=device, dtype=torch.float32)[:, None]
    phase = torch.rand((1, D // 2), generator=gen, device=device) * 6.2832
    ang = pos * inv_freq[None, :] + phase
    return [x, torch.cos(ang), torch.sin(ang)]


def reference(x, cos, sin):
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def flops(w):
    # per (x1, x2) pair: 4 multiplies, 1 subtract, 1 add
    return 3 * w["B"] * w["S"] * w["H"] * w["D"]


def bytes_moved(w):
    B, S, H, D = w["B"], w["S"], w["H"], w["D"]
    return 2 * 2 * B * S * H * D + 2 * 4 * S * (D // 2)
