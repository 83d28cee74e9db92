"""A fix for Triton's CPU interpreter (TRITON_INTERPRET=1), applied by the harness only.

Two faults seen with triton 3.9's interpreter, both on bfloat16 (stored there as uint16):

- ``tl.dot`` hands the raw uint16 words to ``numpy.matmul`` (a bf16 dot returns ~1e10);
- a float32 -> bfloat16 cast truncates instead of rounding to nearest even as the GPU does
  (errors up to one bf16 step, 2**-7 relative);
- a cast to float8 neither carries a rounded-up mantissa into the exponent (-127.9 becomes
  -64) nor breaks ties to even.

``patch()`` widens bf16 dot operands to float32 (exact), rounds fp32 -> bf16 casts to
nearest even, and does float8 casts through torch's own conversion (nearest even). It touches nothing when the interpreter is off, so GPU runs are unaffected.
"""

from __future__ import annotations

import os

_PATCHED = False


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def patch() -> bool:
    """Install the bf16 dot fix once; returns True when it is (now) installed."""
    global _PATCHED
    if _PATCHED:
        return True
    if not interpreting():
        return False
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as I

    builder = getattr(I, "InterpreterBuilder", None)
    if builder is None or not hasattr(builder, "create_dot"):
        return False
    original = builder.create_dot

    def widen(h):
        if getattr(h.dtype, "scalar", h.dtype) == tl.bfloat16:
            data = (h.data.astype(np.uint32) << 16).view(np.float32)
            return I.TensorHandle(data, tl.float32)
        return h

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    original_cast = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            nan = np.isnan(src.data)
            if np.any(nan):
                rounded = np.where(nan, np.uint16(0x7FC0), rounded)
            return I.TensorHandle(rounded, tl.bfloat16)
        return original_cast(self, src, dst_type)

    original_fp_to_fp = builder.create_fp_to_fp
    fp8 = {tl.float8e4nv: "float8_e4m3fn", tl.float8e5: "float8_e5m2"}
    wide = {tl.float32: np.float32, tl.float16: np.float16}

    def to_f32(h):
        if h.dtype.scalar == tl.bfloat16:
            return (h.data.astype(np.uint32) << 16).view(np.float32)
        return h.data.astype(np.float32)

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        import torch

        s, d = src.dtype.scalar, dst_type.scalar
        if d in fp8 and (s in wide or s == tl.bfloat16):
            t = torch.from_numpy(np.ascontiguousarray(to_f32(src))).to(getattr(torch, fp8[d]))
            return I.TensorHandle(t.view(torch.uint8).numpy().copy(), d)
        if s in fp8 and d in wide:
            t = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.uint8)).view(getattr(torch, fp8[s]))
            return I.TensorHandle(t.float().numpy().astype(wide[d]), d)
        return original_fp_to_fp(self, src, dst_type, rounding_mode)

    builder.create_dot = create_dot
    builder.cast_impl = cast_impl
    builder.create_fp_to_fp = create_fp_to_fp
    _PATCHED = True
    return True
