"""swiglu: y = silu(gate) * up = gate * sigmoid(gate) * up elementwise, bf16 or fp16; math in fp32.

Seed kernel: both tensors as one flat range, BLOCK_SIZE elements per program (or a
persistent grid striding over blocks).
"""

import torch
import triton
import triton.language as tl

# --- settings (one per line: the playbook edits these)
BLOCK_SIZE = 1024     # elements per program per step
NUM_WARPS = 4         # warps per program
PERSISTENT = False    # True: NUM_SMS * PROGRAMS_PER_SM programs striding over blocks
PROGRAMS_PER_SM = 8   # resident programs per SM for the persistent grid
VECTOR_HINTS = False  # True: tell the compiler each block is contiguous and aligned (wide loads)


# --- kernel
@triton.jit
def _swiglu(g_ptr, u_ptr, y_ptr, n, BLOCK: tl.constexpr, HINTS: tl.constexpr):
    for start in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        if HINTS:
            offs = tl.max_contiguous(tl.multiple_of(offs, BLOCK), BLOCK)
        g = tl.load(g_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
        y = g * tl.sigmoid(g) * u
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=offs < n)


# --- entry point
_SMS = {}


def _num_sms(device) -> int:
    if device.type != "cuda":
        return 4
    if device.index not in _SMS:
        _SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device.index]


def kernel(gate, up):
    gate, up = gate.contiguous(), up.contiguous()
    y = torch.empty_like(gate)
    n = gate.numel()
    blocks = triton.cdiv(n, BLOCK_SIZE)
    grid = (min(blocks, _num_sms(gate.device) * PROGRAMS_PER_SM) if PERSISTENT else blocks,)
    _swiglu[grid](gate, up, y, n, BLOCK=BLOCK_SIZE, HINTS=VECTOR_HINTS, num_warps=NUM_WARPS)
    return y
