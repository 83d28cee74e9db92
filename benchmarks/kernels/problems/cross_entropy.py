"""Per-row cross-entropy from bf16 logits: loss[i] = logsumexp(logits[i]) - logits[i, target[i]], fp32."""

import torch
import torch.nn.functional as F

from . import _common as C

TITLE = "cross-entropy (fused logsumexp)"
SIGNATURE = "kernel(logits: (N, V) bf16, target: (N,) int64) -> (N,) fp32 per-row losses"
PEAK = "bf16"
BANNED = ("cross_entropy", "nll_loss", "log_softmax", "logsumexp")
TOLERANCE = {"fp32": (1e-4, 1e-5)}

WORKLOADS = [
    {"N": 4096, "V": 32000},
    {"N": 8192, "V": 50257},
    {"N": 2048, "V": 128256},
    {"N": 16384, "V": 8192},
]
HIDDEN_WORKLOADS = [{"N": 1000, "V": 32003}, {"N": 3, "V": 151936}]
TINY_WORKLOADS = [{"N": 6, "V": 50}, {"N": 4, "V": 300}]
TINY_HIDDEN_WORKLOADS = [{"N": 3, "V": 9}]


def make_inputs(w, gen, device):
    logits = C.randn((w["N"], w["V"]), gen, device, "bf16", scale=3.0)
    target = torch.randint(0, w["V"], (w["N"],), generator=gen, device=device, dtype=torch.int64)
    return [logits, target]


def reference(logits, target):
    return F.cross_entropy(logits.float(), target, reduction="none")


def flops(w):
    # max (V-1), subtract V, exp V, sum V-1, log 1, add max 1, subtract the target logit 1
    return w["N"] * (4 * w["V"] + 1)


def bytes_moved(w):
    return 2 * w["N"] * w["V"] + 8 * w["N"] + 4 * w["N"]
