"""Two checks that the candidate computes its answer in its own kernels, not with PyTorch.

1. ``scan_source``: a static scan (``ast``) of a candidate file. Code inside ``@triton.jit``
   functions is device code and is skipped; host code may allocate, view, copy and launch.
   Findings:
   - ``reference_op`` (violation): a call to a PyTorch compute op (matmul, softmax, sum,
     exp, ...) or the ``@`` operator in host code, or a name on the problem's BANNED list;
   - ``forbidden`` (violation): imports of threading, multiprocessing, subprocess, ctypes,
     socket, os, sys, io ... and ``open()`` (a kernel file has no business with files,
     processes or the interpreter: these are how a candidate would reach the report or
     the harness); ``torch._C``; CUDA stream creation or switching; assignments to attributes
     of torch / time / triton / the harness (monkeypatching); ``torch.compile``;
   - ``suspicious`` (reported, not a violation): ``data_ptr()`` use, ``functools`` caches,
     ``getattr`` on modules.
   The scan is a secondary signal: names can be hidden, so (2) checks what actually runs.

2. ``OpRecorder``: a ``TorchDispatchMode`` that records every ATen op the candidate's call
   dispatches. ``compute_ops`` keeps those that do arithmetic (anything but allocation,
   views, copies and casts) - a candidate that calls the reference op, however the call is
   spelled, shows up here.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Host-side PyTorch calls that compute: calling any of these is using PyTorch, not a kernel.
COMPUTE_NAMES = frozenset("""
matmul mm bmm addmm addmv addbmm baddbmm mv dot vdot inner outer einsum tensordot linear bilinear
_scaled_mm _int_mm scaled_dot_product_attention _scaled_dot_product_flash_attention
_scaled_dot_product_efficient_attention _scaled_dot_product_cudnn_attention
softmax log_softmax _softmax _log_softmax layer_norm native_layer_norm rms_norm group_norm batch_norm
gelu silu sigmoid tanh relu erf erfc exp exp2 expm1 log log1p log2 logsumexp
sum nansum mean amax amin max min aminmax prod cumsum cumprod var std var_mean std_mean norm
cross_entropy nll_loss rsqrt sqrt pow square reciprocal mul multiply div divide true_divide add
subtract sub neg abs maximum minimum clamp clip where masked_fill addcmul addcdiv lerp sort topk
argmax argmin baddbmm_ conv1d conv2d
""".split())
IGNORED_RECEIVERS = frozenset({"tl", "triton", "math", "libdevice", "language", "builtins"})
FORBIDDEN_MODULES = frozenset({
    "threading", "_thread", "multiprocessing", "concurrent", "subprocess", "ctypes", "cffi", "socket",
    "asyncio", "signal", "gc", "inspect", "builtins", "importlib", "pickle", "marshal", "shutil",
    "kernels_harness", "kernels_problems", "sys", "os", "io", "pathlib", "tempfile", "atexit", "weakref",
})
FORBIDDEN_CALLS = frozenset({"Stream", "stream", "set_stream", "ExternalStream", "compile", "exec", "eval",
                             "setattr", "delattr", "__import__", "settrace", "setprofile", "_getframe"})
PATCH_ROOTS = frozenset({"torch", "time", "triton", "kernels_harness", "F", "tl", "sys", "builtins", "threading"})
SUSPICIOUS_CALLS = frozenset({"data_ptr", "lru_cache", "cache", "getattr", "id", "hash"})


@dataclass(frozen=True)
class Finding:
    kind: str       # reference_op | forbidden | suspicious
    name: str
    line: int
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def _root(node) -> str:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.value if not isinstance(node, ast.Call) else node.func
    return node.id if isinstance(node, ast.Name) else ""


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _is_device_code(fn: ast.AST) -> bool:
    for d in getattr(fn, "decorator_list", []):
        target = d.func if isinstance(d, ast.Call) else d
        name = _dotted(target)
        if name.split(".")[-1] in ("jit", "autotune", "heuristics") and ("triton" in name or name in ("jit",)):
            return True
    return False


class _Scanner(ast.NodeVisitor):
    def __init__(self, banned: frozenset[str]):
        self.banned = banned
        self.findings: list[Finding] = []

    def add(self, kind, name, node, detail):
        self.findings.append(Finding(kind, name, getattr(node, "lineno", 0), detail))

    def visit_FunctionDef(self, node):
        if _is_device_code(node):
            return            # Triton device code: tl.sum, tl.exp ... are the kernel itself
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node):
        for a in node.names:
            if a.name.split(".")[0] in FORBIDDEN_MODULES:
                self.add("forbidden", a.name, node, f"imports {a.name}")
            if a.name.startswith("torch._C"):
                self.add("forbidden", a.name, node, "imports torch._C")
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        mod = node.module or ""
        if mod.split(".")[0] in FORBIDDEN_MODULES or mod.startswith("torch._C"):
            self.add("forbidden", mod, node, f"imports from {mod}")
        for a in node.names:
            if a.name in self.banned or (mod.startswith("torch") and a.name in COMPUTE_NAMES):
                self.add("reference_op", a.name, node, f"imports {a.name} from {mod}")
        self.generic_visit(node)

    def visit_Attribute(self, node):
        if node.attr == "_C" and _root(node) == "torch":
            self.add("forbidden", "torch._C", node, "uses torch._C")
        self.generic_visit(node)

    def visit_BinOp(self, node):
        if isinstance(node.op, ast.MatMult):
            self.add("reference_op", "@", node, "matrix product with the @ operator in host code")
        self.generic_visit(node)

    def _check_target(self, t, node):
        if isinstance(t, ast.Attribute) and _root(t) in PATCH_ROOTS:
            self.add("forbidden", _dotted(t) or t.attr, node, f"assigns to {_dotted(t) or t.attr} (monkeypatch)")

    def visit_Assign(self, node):
        for t in node.targets:
            for sub in (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]):
                self._check_target(sub, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self._check_target(node.target, node)
        self.generic_visit(node)

    def visit_Call(self, node):
        f = node.func
        if isinstance(f, ast.Attribute):
            name, recv = f.attr, _root(f)
            dotted = _dotted(f)
            if recv not in IGNORED_RECEIVERS:
                base = name.rstrip("_")
                if base in COMPUTE_NAMES or name in self.banned:
                    self.add("reference_op", name, node, f"host code calls {dotted or name}()")
            if name in FORBIDDEN_CALLS and recv in ("torch", "sys", "builtins"):
                self.add("forbidden", name, node, f"calls {dotted}()")
            if name in SUSPICIOUS_CALLS:
                self.add("suspicious", name, node, f"calls .{name}()")
        elif isinstance(f, ast.Name):
            if f.id in ("setattr", "delattr", "exec", "eval", "__import__", "compile", "open", "globals", "vars"):
                self.add("forbidden", f.id, node, f"calls {f.id}()")
            elif f.id in self.banned:
                self.add("reference_op", f.id, node, f"calls {f.id}()")
            elif f.id in SUSPICIOUS_CALLS:
                self.add("suspicious", f.id, node, f"calls {f.id}()")
        self.generic_visit(node)


def scan_source(src: str, banned=()) -> list[Finding]:
    """Findings for one candidate file's source (see the module docstring)."""
    try:
        tree = ast.parse(src)
    except SyntaxError as e:
        return [Finding("forbidden", "syntax", e.lineno or 0, f"does not parse: {e.msg}")]
    s = _Scanner(frozenset(banned))
    s.visit(tree)
    return s.findings


# ---------------------------------------------------------------------------- dispatch

# ATen ops a host wrapper may dispatch without computing the answer: allocation, views,
# copies, casts, metadata. Everything else counts as compute.
NON_COMPUTE_OPS = frozenset("""
empty empty_like empty_strided new_empty new_empty_strided zeros zeros_like new_zeros ones ones_like new_ones
full full_like new_full fill zero arange scalar_tensor lift_fresh lift_fresh_copy
view _unsafe_view reshape as_strided t transpose permute expand expand_as unsqueeze squeeze select slice
split split_with_sizes narrow flatten unflatten unbind view_as alias detach movedim contiguous chunk
clone copy _to_copy to _copy_from _copy_from_and_resize resize _reshape_alias _local_scalar_dense
item is_same_size is_nonzero numpy cpu cuda set_ record_stream stride size sym_size sym_stride
""".split())


def _op_name(func) -> str:
    packet = getattr(func, "overloadpacket", None)
    name = getattr(packet, "__name__", None) or str(func).split(".")[-2 if str(func).count(".") > 1 else -1]
    return name.split("::")[-1]


class OpRecorder(TorchDispatchMode):
    """Records the ATen ops dispatched while it is active (``with OpRecorder() as r: ...``)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(_op_name(func))
        return func(*args, **(kwargs or {}))


def compute_ops(ops: list[str]) -> list[str]:
    """The recorded ops that compute (sorted, unique)."""
    return sorted({o for o in ops if o.rstrip("_") not in NON_COMPUTE_OPS and o not in NON_COMPUTE_OPS})
