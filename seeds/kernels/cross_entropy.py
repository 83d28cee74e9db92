"""cross_entropy: loss[i] = logsumexp(logits[i]) - logits[i, target[i]] in fp32, bf16 logits (N, V).

Seed kernel: one row per program (or a persistent grid striding over rows), two passes
over the vocabulary (maximum, then sum of exp(x - max)) and one load of the target logit.
"""

import torch
import triton
import triton.language as tl

# --- settings (one per line: the playbook edits these)
BLOCK_SIZE = 2048     # vocabulary entries per step
NUM_WARPS = 8         # warps per program
PERSISTENT = False    # True: NUM_SMS * PROGRAMS_PER_SM programs striding over rows
PROGRAMS_PER_SM = 4   # resident programs per SM for the persistent grid


# --- kernel
@triton.jit
def _cross_entropy(x_ptr, t_ptr, loss_ptr, N, V, stride_xn, BLOCK: tl.constexpr):
    for row in range(tl.program_id(0), N, tl.num_programs(0)):
        xr = x_ptr + tl.cast(row, tl.int64) * stride_xn
        mx = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
        for c0 in range(0, V, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            mx = tl.maximum(mx, tl.load(xr + cols, mask=cols < V, other=float("-inf")).to(tl.float32))
        m = tl.max(mx, axis=0)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, V, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            acc += tl.exp(tl.load(xr + cols, mask=cols < V, other=float("-inf")).to(tl.float32) - m)
        target = tl.load(t_ptr + row)
        picked = tl.load(xr + target).to(tl.float32)
        tl.store(loss_ptr + row, m + tl.log(tl.sum(acc, axis=0)) - picked)


# --- entry point
_SMS = {}


def _num_sms(device) -> int:
    if device.type != "cuda":
        return 4
    if device.index not in _SMS:
        _SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device.index]


def kernel(logits, target):
    N, V = logits.shape
    loss = torch.empty((N,), device=logits.device, dtype=torch.float32)
    grid = (min(N, _num_sms(logits.device) * PROGRAMS_PER_SM) if PERSISTENT else N,)
    _cross_entropy[grid](logits, target, loss, N, V, logits.stride(0),
                         BLOCK=min(BLOCK_SIZE, triton.next_power_of_2(V)), num_warps=NUM_WARPS)
    return loss
