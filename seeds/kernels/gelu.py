"""gelu: y = 0.5 * x * (1 + erf(x / sqrt(2))) elementwise for x bf16 or fp32; math in fp32.

Seed kernel: the tensor as one flat range, BLOCK_SIZE elements per program (or a
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
def _gelu(x_ptr, y_ptr, n, BLOCK: tl.constexpr, HINTS: tl.constexpr):
    for start in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        if HINTS:
            offs = tl.max_contiguous(tl.multiple_of(offs, BLOCK), BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=offs < n)


# --- entry point
_SMS = {}


def _num_sms(device) -> int:
    if device.type != "cuda":
        return 4
    if device.index not in _SMS:
        _SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device.index]


def kernel(x):
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    blocks = triton.cdiv(n, BLOCK_SIZE)
    grid = (min(blocks, _num_sms(x.device) * PROGRAMS_PER_SM) if PERSISTENT else blocks,)
    _gelu[grid](x, y, n, BLOCK=BLOCK_SIZE, HINTS=VECTOR_HINTS, num_warps=NUM_WARPS)
    return y
