"""Two checks that the candidate computes its answer in its own kernels, not with PyTorch.

1. ``scan_source``: a static scan (``ast``) of a candidate file. Code inside ``@triton.jit``
   functions is device code and is skipped; host code may allocate, view, copy and launch.
   The scan judges a call **by what it is called on**: a small, flow-insensitive type pass
   (``_Types``) gives every name of every host scope a kind - a torch module or class (any
   alias: ``import torch as T``, ``import torch.nn.functional as F``), a torch function
   (``from torch import sum as s``, ``f = torch.sum``), a tensor (the parameters of
   ``kernel``, results of torch calls and tensor methods, helper-function parameters that get
   a tensor at a call site or are used as one), a plain Python value (literals, containers,
   shapes, numbers, builtins' results) or unknown. Findings:
   - ``reference_op`` (violation): a call of a torch compute function (matmul, softmax, sum,
     exp, ...; however it is imported or aliased, ``getattr(torch, "softmax")`` included), a
     compute method on a tensor (``x.sum()``, ``x.float().exp()``, ``f = x.softmax; f()``),
     a builtin ``sum``/``max``/``min``/``abs``/``pow`` over a tensor, the ``@`` operator in
     host code, or a name on the problem's BANNED list. The same method on a Python value is
     no op: ``seen.add(shape)``, ``cache.update(...)``, ``sum(sizes)``, ``max(1, M)``;
   - ``forbidden`` (violation): imports of threading, multiprocessing, subprocess, ctypes,
     socket, os, sys, io ... and ``open()`` (a kernel file has no business with files,
     processes or the interpreter: these are how a candidate would reach the report or
     the harness); ``torch._C``; CUDA stream creation or switching; assignments to
     attributes of torch / time / triton / the harness (monkeypatching); ``torch.compile``;
   - ``evasion`` (violation, reported under the ``reference_ops`` probe): the dispatch
     machinery the recorder below is built on (``torch.utils._python_dispatch``,
     ``_disable_current_modes``, ``_get_current_dispatch_mode``, ``TorchDispatchMode``,
     ``torch.overrides``, the profiler ..., by attribute, import or string constant) and CUDA
     graphs (``torch.cuda.graph``, ``CUDAGraph``: work captured once replays unseen): with it
     a kernel could see whether it is watched, or compute with PyTorch where the recorder is blind;
   - ``suspicious`` (reported, not a violation): a compute-named method on a value the pass
     cannot type (``_CACHE.get(k).exp()``), a ``getattr`` on torch or a tensor whose name is
     computed (``getattr(torch, "su" + "m")``), ``data_ptr()`` use, ``functools`` caches,
     ``getattr`` on modules.
   The scan is a secondary signal: names can be hidden, so (2) checks what actually runs.

2. ``OpRecorder``: a ``TorchDispatchMode`` that records every ATen op the candidate's call
   dispatches. ``compute_ops`` keeps those that do arithmetic (anything but allocation,
   views, copies and casts) - a candidate that calls the reference op, however the call is
   spelled, shows up here. ``evaluate`` runs every correctness and hidden call under it, and
   ``timing`` a random sample of the timed calls.
"""

from __future__ import annotations

import ast
import inspect
import weakref
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
FORBIDDEN_MODULES = frozenset({
    "threading", "_thread", "multiprocessing", "concurrent", "subprocess", "ctypes", "cffi", "socket",
    "asyncio", "signal", "gc", "inspect", "builtins", "importlib", "pickle", "marshal", "shutil",
    "kernels_harness", "kernels_problems", "sys", "os", "io", "pathlib", "tempfile", "atexit", "weakref",
})
FORBIDDEN_CALLS = frozenset({"Stream", "stream", "set_stream", "ExternalStream", "compile", "exec", "eval",
                             "setattr", "delattr", "__import__", "settrace", "setprofile", "_getframe"})
PATCH_ROOTS = frozenset({"torch", "time", "triton", "kernels_harness", "F", "tl", "sys", "builtins", "threading"})
SUSPICIOUS_CALLS = frozenset({"data_ptr", "lru_cache", "cache", "getattr", "id", "hash"})
# The machinery the dispatch recorder is built on: a kernel that names it can see whether it is
# being watched, or switch the recorder off around a PyTorch call. No kernel needs it.
DISPATCH_INTERNALS = frozenset({
    "_python_dispatch", "_disable_current_modes", "_pop_mode", "_pop_mode_temporarily", "_push_mode",
    "_get_current_dispatch_mode", "_get_current_dispatch_mode_stack", "_len_torch_dispatch_stack",
    "_get_dispatch_stack_at", "_pop_torch_dispatch_mode", "_push_on_torch_dispatch_stack", "TorchDispatchMode",
    "TorchFunctionMode", "_DisableTorchDispatch", "DisableTorchFunction", "DisableTorchFunctionSubclass",
    "_ExcludeDispatchKeyGuard", "_ForceDispatchKeyGuard", "_IncludeDispatchKeyGuard", "no_dispatch",
    "_is_torch_function_mode_enabled", "_profiler_enabled", "_is_in_torch_dispatch_mode", "is_in_torch_dispatch_mode",
    "__torch_dispatch__", "__torch_function__", "_dispatch_tls_local_exclude_set", "_dispatch_tls_is_dispatch_key_excluded",
    "_dispatch_tls_set_dispatch_key_excluded", "overrides", "profiler", "CUDAGraph", "graph", "graphs",
    "make_graphed_callables", "_graph_pool_handle",
})
TORCH_ONLY_INTERNALS = frozenset({"overrides", "profiler", "CUDAGraph", "graph", "graphs", "make_graphed_callables",
                                  "_graph_pool_handle"})   # common words: only as attributes of torch
# (CUDA graphs: work captured once, e.g. at import, replays with no op the recorder can see)
DISPATCH_MODULES = ("torch.utils._python_dispatch", "torch.overrides", "torch.profiler", "torch.autograd.profiler",
                    "torch._C", "torch._ops")

# Where the receiver-aware scan gets its types from (see _Types below).
EXT_MODULES = frozenset({"triton", "math", "numpy", "operator", "functools", "itertools", "collections", "dataclasses",
                         "typing", "enum", "statistics", "random"})
BUILTIN_FUNCS = frozenset({
    "set", "dict", "list", "tuple", "frozenset", "int", "float", "bool", "str", "bytes", "len", "range", "enumerate",
    "zip", "sorted", "reversed", "isinstance", "issubclass", "hash", "id", "repr", "divmod", "round", "abs", "min",
    "max", "sum", "any", "all", "pow", "map", "filter", "iter", "next", "print", "type", "callable", "hasattr",
    "getattr", "ord", "chr", "format", "slice", "object", "super", "property", "staticmethod", "classmethod",
})
TENSOR_BUILTINS = frozenset({"abs", "min", "max", "sum", "pow", "round", "sorted", "divmod"})   # compute on tensors
TENSOR_DATA_ATTRS = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad", "is_leaf",
                               "itemsize", "nbytes", "names", "is_meta", "is_sparse", "is_quantized"})
TENSOR_VIEW_ATTRS = frozenset({"T", "mT", "H", "mH", "real", "imag", "data", "grad"})
TENSOR_PY_METHODS = frozenset({"size", "stride", "numel", "dim", "item", "tolist", "data_ptr", "element_size",
                               "is_contiguous", "nelement", "storage_offset", "get_device", "is_floating_point",
                               "untyped_storage", "ndimension", "is_complex", "__len__", "type"})
TENSOR_EVIDENCE = frozenset({"shape", "dtype", "device", "stride", "data_ptr", "numel", "is_contiguous", "contiguous",
                             "element_size", "is_cuda", "ndim", "view", "reshape", "untyped_storage", "dim",
                             "empty_like", "new_empty", "storage_offset"})
TORCH_PY_FUNCS = frozenset({"is_tensor", "is_floating_point", "numel", "finfo", "iinfo", "device", "Size", "Generator",
                            "get_default_dtype", "is_grad_enabled", "result_type", "promote_types", "can_cast",
                            "is_complex", "is_storage", "dtype", "get_device_properties", "current_device",
                            "device_count", "is_available", "get_device_name", "get_device_capability",
                            "current_stream", "default_stream", "Event"})
TENSOR_TYPES = frozenset({"Tensor", "torch.Tensor"})


@dataclass(frozen=True)
class Finding:
    kind: str       # reference_op | evasion | forbidden | suspicious
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


# ---------------------------------------------------------------------------- types
#
# A kind is a tuple: ("torch", path) a torch module or class (torch, torch.nn.functional,
# torch.Tensor), ("fn", path) a torch function, ("tensor",), ("tmethod", name) a tensor's bound
# method, ("py",) a plain Python value (number, string, container, shape), ("pymethod", name)
# a method of one, ("ext", path) triton / math / numpy and things derived from them, ("local",
# name) a host function of the file, ("builtin", name) and ("unknown",).

UNKNOWN, PY, TENSOR = ("unknown",), ("py",), ("tensor",)
TENSORS = ("tensors",)        # a tuple of tensors: kernel(*inputs)


def _resolve_torch(path: str) -> tuple:
    """The kind of a dotted torch path, from the real objects (torch.nn.functional.softmax -> fn).
    Looked up statically (``inspect.getattr_static``): the candidate's names trigger no lazy
    import, property or ``__getattr__`` in the harness's process; what is not found is a function."""
    parts = path.split(".")
    obj = torch
    for part in parts[1:]:
        nxt = inspect.getattr_static(obj, part, None)
        if nxt is None:
            return ("fn", path)
        obj = nxt
    if isinstance(obj, type(torch)) or isinstance(obj, type):
        return ("torch", path)
    if isinstance(obj, (torch.dtype, torch.device, torch.layout, torch.memory_format, int, float, str, bool)):
        return PY
    return ("fn", path)


def _join(a: tuple, b: tuple | None) -> tuple:
    if b is None or a == b:
        return a
    return UNKNOWN


class _Env:
    def __init__(self, parent: "_Env | None" = None):
        self.parent = parent
        self.names: dict[str, tuple] = {}

    def get(self, name: str) -> tuple:
        e = self
        while e is not None:
            if name in e.names:
                return e.names[name]
            e = e.parent
        return ("builtin", name) if name in BUILTIN_FUNCS else UNKNOWN


def kind_of(node, env: _Env) -> tuple:
    """What ``node`` evaluates to, as far as the file's own text tells (see the kinds above)."""
    if isinstance(node, ast.Name):
        return env.get(node.id)
    if isinstance(node, (ast.Constant, ast.JoinedStr, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.ListComp,
                         ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Compare, ast.BoolOp)):
        return PY
    if isinstance(node, ast.Attribute):
        return _attr_kind(kind_of(node.value, env), node.attr)
    if isinstance(node, ast.Call):
        return _call_kind(node, env)
    if isinstance(node, ast.Subscript):
        base = kind_of(node.value, env)
        if base == TENSORS:
            return TENSORS if isinstance(node.slice, ast.Slice) else TENSOR
        if base == TENSOR or base[0] == "ext":
            return base
        if isinstance(node.value, ast.Attribute) and node.value.attr in ("shape", "stride") \
                and kind_of(node.value.value, env) == TENSOR:
            return PY
        if isinstance(node.value, ast.Call) and kind_of(node.value, env) == PY \
                and isinstance(node.value.func, ast.Attribute) and node.value.func.attr in ("size", "stride"):
            return PY
        return UNKNOWN
    if isinstance(node, ast.BinOp):
        a, b = kind_of(node.left, env), kind_of(node.right, env)
        if TENSOR in (a, b):
            return TENSOR
        return PY if a == b == PY else UNKNOWN
    if isinstance(node, ast.UnaryOp):
        return kind_of(node.operand, env)
    if isinstance(node, ast.IfExp):
        return _join(kind_of(node.body, env), kind_of(node.orelse, env))
    if isinstance(node, (ast.Starred, ast.NamedExpr)):
        return kind_of(node.value, env)
    return UNKNOWN


def _attr_kind(base: tuple, attr: str) -> tuple:
    if base[0] == "torch":
        return _resolve_torch(f"{base[1]}.{attr}")
    if base[0] == "fn":               # torch.ops.aten._softmax, torch.softmax.__call__
        return ("fn", f"{base[1]}.{attr}")
    if base == TENSOR:
        if attr in TENSOR_DATA_ATTRS:
            return PY
        if attr in TENSOR_VIEW_ATTRS:
            return TENSOR
        return ("tmethod", attr)
    if base[0] == "ext":
        return ("ext", f"{base[1]}.{attr}")
    if base in (PY, TENSORS):
        return ("pymethod", attr)
    return ("umethod", attr)


def _getattr_name(node: ast.Call) -> str | None:
    """The constant name of a ``getattr(obj, "name"[, default])`` call, else None."""
    if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
        return node.args[1].value
    return None


def _call_kind(node: ast.Call, env: _Env) -> tuple:
    f = kind_of(node.func, env)
    if f[0] == "builtin":
        if f[1] == "getattr" and node.args:
            name = _getattr_name(node)
            return _attr_kind(kind_of(node.args[0], env), name) if name else UNKNOWN
        if f[1] in TENSOR_BUILTINS and any(kind_of(a, env) == TENSOR for a in node.args):
            return TENSOR
        return PY if f[1] not in ("next", "map", "filter", "iter", "super", "type", "object") else UNKNOWN
    if f[0] == "fn":
        last = f[1].rsplit(".", 1)[-1]
        if last in TORCH_PY_FUNCS or f[1].startswith("torch.cuda.") or f[1].startswith("torch.backends."):
            return PY
        return TENSOR
    if f[0] == "torch":
        return TENSOR if f[1] in ("torch.Tensor", "torch.tensor") else UNKNOWN
    if f[0] == "tmethod":
        return PY if f[1] in TENSOR_PY_METHODS else TENSOR
    if f[0] == "ext":
        return ("ext", f[1] + "()")
    return UNKNOWN


def _bind(target, value_kind: tuple, env: _Env, joined: dict) -> None:
    if isinstance(target, ast.Name):
        joined[target.id] = _join(value_kind, joined.get(target.id))
    elif isinstance(target, (ast.Tuple, ast.List)):
        elem = TENSOR if value_kind in (TENSOR, TENSORS) else (PY if value_kind == PY else UNKNOWN)
        for t in target.elts:
            _bind(t, elem, env, joined)
    elif isinstance(target, ast.Starred):
        _bind(target.value, UNKNOWN, env, joined)


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _scope_nodes(body):
    """The nodes of a scope; nested functions, classes and lambdas are yielded, not entered."""
    stack = list(body)
    while stack:
        n = stack.pop()
        yield n
        if not isinstance(n, _SCOPES):
            stack.extend(ast.iter_child_nodes(n))


def _import_bindings(node) -> dict[str, tuple]:
    out = {}
    if isinstance(node, ast.Import):
        for a in node.names:
            top = a.name.split(".")[0]
            bound = a.asname or top
            full = a.name if a.asname else top
            if top == "torch":
                out[bound] = _resolve_torch(full) if full != "torch" else ("torch", "torch")
            elif top in EXT_MODULES:
                out[bound] = ("ext", full)
            else:
                out[bound] = UNKNOWN
    elif isinstance(node, ast.ImportFrom):
        mod = node.module or ""
        for a in node.names:
            bound = a.asname or a.name
            if mod.split(".")[0] == "torch":
                out[bound] = _resolve_torch(f"{mod}.{a.name}")
            elif mod.split(".")[0] in EXT_MODULES:
                out[bound] = ("ext", f"{mod}.{a.name}")
            else:
                out[bound] = UNKNOWN
    return out


def _param_kinds(fn, forced: dict[str, tuple]) -> dict[str, tuple]:
    """Kinds of a host function's parameters: every parameter of ``kernel`` is a tensor (the
    harness passes tensors); elsewhere a Tensor annotation, a literal default, tensor-only use in
    the body (``p.shape``, ``p.stride(0)``, ...) or a tensor argument at a call site decides."""
    a = fn.args
    params = a.posonlyargs + a.args + a.kwonlyargs
    defaults = dict(zip([p.arg for p in (a.posonlyargs + a.args)][::-1], a.defaults[::-1]))
    defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
    used = {n.value.id for n in _scope_nodes(fn.body)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.attr in TENSOR_EVIDENCE}
    out = {}
    for p in params:
        ann = _dotted(p.annotation) if p.annotation is not None else ""
        if fn.name == "kernel" or ann.split(".")[-1] == "Tensor" or p.arg in used:
            out[p.arg] = TENSOR
        elif ann in ("int", "float", "str", "bool", "tuple", "list", "dict", "set", "frozenset"):
            out[p.arg] = PY
        elif p.arg in defaults and isinstance(defaults[p.arg], (ast.Constant, ast.Tuple, ast.List, ast.Dict)):
            out[p.arg] = PY
        else:
            out[p.arg] = forced.get(p.arg, UNKNOWN)
    if a.vararg is not None:
        out[a.vararg.arg] = TENSORS if fn.name == "kernel" else PY
    if a.kwarg is not None:
        out[a.kwarg.arg] = PY
    return out


class _Types:
    """Per-scope name kinds for a whole file (flow-insensitive: a name bound to both a tensor and
    a Python value is unknown), with tensor arguments at call sites of the file's own host
    functions flowing into their parameters."""

    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.envs: dict[int, _Env] = {}
        self.node_env: dict[int, _Env] = {}
        self.forced: dict[str, dict[str, tuple]] = {}
        for _ in range(3):
            before = {k: dict(v) for k, v in self.forced.items()}
            self.envs, self.node_env = {}, {}
            self._scope(self.tree, self.tree.body, None, {})
            self._propagate_calls()
            if before == self.forced:
                break

    def env(self, node) -> _Env:
        return self.envs[id(node)]

    def _scope(self, owner, body, parent: _Env | None, params: dict) -> None:
        env = _Env(parent)
        self.envs[id(owner)] = env
        nodes = list(_scope_nodes(body))
        base = dict(params)
        children = []
        for n in nodes:
            self.node_env[id(n)] = env
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                base.update(_import_bindings(n))
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                base[n.name] = ("ext", "jit") if _is_device_code(n) else ("local", n.name)
                children.append(n)
            elif isinstance(n, ast.ClassDef):
                base[n.name] = UNKNOWN
                children.append(n)
            elif isinstance(n, ast.Lambda):
                children.append(n)
        env.names = dict(base)
        for _ in range(3):       # kinds depend on each other (y = x.float(); z = y.view(...))
            joined: dict[str, tuple] = {}
            for n in nodes:
                if isinstance(n, ast.Assign):
                    k = kind_of(n.value, env)
                    for t in n.targets:
                        _bind(t, k, env, joined)
                elif isinstance(n, ast.AnnAssign) and n.value is not None:
                    _bind(n.target, kind_of(n.value, env), env, joined)
                elif isinstance(n, ast.AugAssign):
                    _bind(n.target, kind_of(ast.BinOp(n.target, n.op, n.value), env), env, joined)
                elif isinstance(n, (ast.For, ast.AsyncFor, ast.comprehension)):
                    it = kind_of(n.iter, env)
                    rng = isinstance(n.iter, ast.Call) and isinstance(n.iter.func, ast.Name) \
                        and n.iter.func.id == "range"
                    _bind(n.target, TENSOR if it in (TENSOR, TENSORS) else (PY if rng else UNKNOWN), env, joined)
                elif isinstance(n, ast.withitem) and n.optional_vars is not None:
                    _bind(n.optional_vars, UNKNOWN, env, joined)
                elif isinstance(n, ast.NamedExpr):
                    _bind(n.target, kind_of(n.value, env), env, joined)
            env.names = {**base, **{k: _join(v, base.get(k)) for k, v in joined.items()}}
        for c in children:
            if isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not _is_device_code(c):
                    self._scope(c, c.body, env, _param_kinds(c, self.forced.get(c.name, {})))
            elif isinstance(c, ast.Lambda):
                self._scope(c, [c.body], env, {a.arg: UNKNOWN for a in c.args.args})
            else:
                self._scope(c, c.body, env, {})

    def _propagate_calls(self) -> None:
        defs = {n.name: n for n in ast.walk(self.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for node in ast.walk(self.tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defs):
                continue
            env = self.node_env.get(id(node))
            if env is None or env.get(node.func.id)[0] != "local":
                continue
            fn = defs[node.func.id]
            names = [p.arg for p in fn.args.posonlyargs + fn.args.args]
            for i, arg in enumerate(node.args):
                if i < len(names) and kind_of(arg, env) == TENSOR:
                    self.forced.setdefault(fn.name, {})[names[i]] = TENSOR
            for kw in node.keywords:
                if kw.arg and kind_of(kw.value, env) == TENSOR:
                    self.forced.setdefault(fn.name, {})[kw.arg] = TENSOR


def _is_compute(name: str, banned: frozenset[str]) -> bool:
    return name.rstrip("_") in COMPUTE_NAMES or name in banned


class _Scanner(ast.NodeVisitor):
    def __init__(self, banned: frozenset[str], types: _Types):
        self.banned = banned
        self.types = types
        self.env = types.env(types.tree)
        self.findings: list[Finding] = []

    def add(self, kind, name, node, detail):
        self.findings.append(Finding(kind, name, getattr(node, "lineno", 0), detail))

    def _in_scope(self, node, body_fn):
        saved = self.env
        self.env = self.types.envs.get(id(node), self.env)
        try:
            body_fn()
        finally:
            self.env = saved

    def visit_FunctionDef(self, node):
        if _is_device_code(node):
            return            # Triton device code: tl.sum, tl.exp ... are the kernel itself
        for d in node.decorator_list:
            self.visit(d)
        self._in_scope(node, lambda: [self.visit(n) for n in node.body])

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        self._in_scope(node, lambda: self.visit(node.body))

    def visit_ClassDef(self, node):
        self._in_scope(node, lambda: [self.visit(n) for n in node.body])

    def visit_Import(self, node):
        for a in node.names:
            if a.name.split(".")[0] in FORBIDDEN_MODULES:
                self.add("forbidden", a.name, node, f"imports {a.name}")
            if a.name.startswith("torch._C"):
                self.add("forbidden", a.name, node, "imports torch._C")
            elif a.name.startswith(DISPATCH_MODULES):
                self.add("evasion", a.name, node, f"imports {a.name}, the machinery the harness watches PyTorch "
                                                    "calls with")
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        mod = node.module or ""
        if mod.split(".")[0] in FORBIDDEN_MODULES or mod.startswith("torch._C"):
            self.add("forbidden", mod, node, f"imports from {mod}")
        elif mod.startswith(DISPATCH_MODULES):
            self.add("evasion", mod, node, f"imports from {mod}, the machinery the harness watches PyTorch calls with")
        for a in node.names:
            if a.name in DISPATCH_INTERNALS and (a.name not in TORCH_ONLY_INTERNALS or mod.split(".")[0] == "torch"):
                self.add("evasion", a.name, node, f"imports {a.name} (the dispatch recorder's machinery)")
            full = _resolve_torch(f"{mod}.{a.name}") if mod.split(".")[0] == "torch" else None
            if a.name in self.banned or (full is not None and full[0] == "fn" and _is_compute(a.name, frozenset())):
                self.add("reference_op", a.name, node, f"imports {a.name} from {mod}")
        self.generic_visit(node)

    def visit_Attribute(self, node):
        if node.attr == "_C" and _root(node) == "torch":
            self.add("forbidden", "torch._C", node, "uses torch._C")
        elif node.attr in DISPATCH_INTERNALS and (node.attr not in TORCH_ONLY_INTERNALS
                                                  or kind_of(node.value, self.env)[0] == "torch"):
            self.add("evasion", node.attr, node, f"uses .{node.attr} (the dispatch recorder's machinery: a kernel "
                                                   "has no business looking at or switching off what watches it)")
        self.generic_visit(node)

    def visit_Name(self, node):
        if node.id in DISPATCH_INTERNALS and node.id not in TORCH_ONLY_INTERNALS:
            self.add("evasion", node.id, node, f"uses {node.id} (the dispatch recorder's machinery)")

    def visit_Constant(self, node):
        if isinstance(node.value, str) and node.value in DISPATCH_INTERNALS and node.value not in TORCH_ONLY_INTERNALS:
            self.add("evasion", node.value, node, f"names {node.value!r} in a string (the dispatch recorder's "
                                                    "machinery, reached by name)")

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
        env = self.env
        fk = kind_of(f, env)
        shown = _dotted(f) or (f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "?"))
        if fk[0] == "fn" and _is_compute(fk[1].rsplit(".", 1)[-1], self.banned):
            self.add("reference_op", fk[1].rsplit(".", 1)[-1], node, f"host code calls {shown}() ({fk[1]})")
        elif fk[0] == "tmethod" and _is_compute(fk[1], self.banned):
            self.add("reference_op", fk[1], node, f"host code calls {shown}() on a tensor")
        elif fk[0] == "umethod" and _is_compute(fk[1], self.banned):
            self.add("suspicious", fk[1], node, f"host code calls {shown}() on a value the scan cannot type "
                                                "(the dispatch recorder decides)")
        elif fk[0] == "builtin" and fk[1] in TENSOR_BUILTINS and any(kind_of(a, env) == TENSOR for a in node.args):
            self.add("reference_op", fk[1], node, f"builtin {fk[1]}() over a tensor (it dispatches PyTorch ops)")
        elif isinstance(f, ast.Name) and f.id in self.banned and fk[0] not in ("local", "ext"):
            self.add("reference_op", f.id, node, f"calls {f.id}()")
        dynamic = False
        if fk == ("builtin", "getattr") and node.args and _getattr_name(node) is None:
            target = kind_of(node.args[0], env)
            if target[0] in ("torch", "fn") or target == TENSOR:
                dynamic = True
                self.add("suspicious", "getattr", node, f"dynamic getattr on {_dotted(node.args[0]) or 'a torch object'}"
                                                        ": the scan cannot see which name it reaches")
        if isinstance(f, ast.Attribute):
            name, recv = f.attr, _root(f)
            dotted = _dotted(f)
            if name in FORBIDDEN_CALLS and recv in ("torch", "sys", "builtins"):
                self.add("forbidden", name, node, f"calls {dotted}()")
            if name in SUSPICIOUS_CALLS:
                self.add("suspicious", name, node, f"calls .{name}()")
        elif isinstance(f, ast.Name):
            if f.id in ("setattr", "delattr", "exec", "eval", "__import__", "compile", "open", "globals", "vars"):
                self.add("forbidden", f.id, node, f"calls {f.id}()")
            elif f.id in SUSPICIOUS_CALLS and not dynamic:
                self.add("suspicious", f.id, node, f"calls {f.id}()")
        self.generic_visit(node)


def scan_source(src: str, banned=()) -> list[Finding]:
    """Findings for one candidate file's source (see the module docstring)."""
    try:
        tree = ast.parse(src)
    except SyntaxError as e:
        return [Finding("forbidden", "syntax", e.lineno or 0, f"does not parse: {e.msg}")]
    s = _Scanner(frozenset(banned), _Types(tree))
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


# every storage an OpRecorder saw an op produce, in this process: its address -> a weak reference
# to the storage object itself (PyTorch keeps one Python object per live storage). An address alone
# is not enough: once a recorded buffer is freed the allocator hands the same address to the next
# block of that size, so an output computed with the recorder off would pass as recorded.
_recorded_storages: dict[int, "weakref.ref"] = {}


def _storages(objs) -> dict[int, object]:
    """{address: storage} of the tensors in ``objs`` (nested tuples and lists too)."""
    out: dict[int, object] = {}
    for t in objs:
        if isinstance(t, (tuple, list)):
            out.update(_storages(t))
        elif isinstance(t, torch.Tensor):
            try:
                st = t.untyped_storage()
                out[st.data_ptr()] = st
            except Exception:       # meta, sparse: no storage to speak of
                pass
    return out


_LIFT_OPS = frozenset({"lift", "lift_fresh", "lift_fresh_copy"})   # torch.tensor(data), torch.from_numpy(a)


def _note_storages(name: str, out, args, kwargs) -> None:
    """Remember the storages an op created (not those of its arguments: an in-place op, a view
    or an ``out=`` op on a buffer made elsewhere does not make that buffer recorded). A tensor
    built from host data under the recorder (``lift_fresh``) counts as created there."""
    made = _storages(out if isinstance(out, (tuple, list)) else (out,))
    if made:
        if name not in _LIFT_OPS:
            for ptr in _storages(list(args) + list(kwargs.values())):
                made.pop(ptr, None)
        for ptr, st in made.items():
            try:
                _recorded_storages[ptr] = weakref.ref(st)
            except TypeError:       # a storage type without weak references: never counts as recorded
                pass


def recorded(t: torch.Tensor) -> bool:
    """True when a recorder saw an op create ``t``'s storage, and that very storage is still alive
    (not another allocation that reuses its address)."""
    try:
        st = t.untyped_storage()
        ref = _recorded_storages.get(st.data_ptr())
    except Exception:
        return False
    return ref is not None and ref() is st


class OpRecorder(TorchDispatchMode):
    """Records the ATen ops dispatched while it is active (``with OpRecorder() as r: ...``), and
    the storages they produce (``unrecorded``)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = _op_name(func)
        self.ops.append(name)
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        _note_storages(name, out, args, kwargs)
        return out


def unrecorded(outs) -> list[int]:
    """Indices of the plain, non-empty output tensors whose memory no recorder ever saw being
    allocated. A kernel must allocate its outputs with PyTorch, under the recorder, in this or
    an earlier watched call; an output made with the recorder switched off (a PyTorch op run
    around it) or before any watched call (a buffer prepared at import) has no such record."""
    bad = []
    for i, o in enumerate(outs):
        if type(o) is torch.Tensor and o.numel() and not o.is_meta:
            if not recorded(o):
                bad.append(i)
    return bad


def compute_ops(ops: list[str]) -> list[str]:
    """The recorded ops that compute (sorted, unique)."""
    return sorted({o for o in ops if o.rstrip("_") not in NON_COMPUTE_OPS and o not in NON_COMPUTE_OPS})
