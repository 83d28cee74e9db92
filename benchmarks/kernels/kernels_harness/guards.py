"""Runtime integrity checks around candidate code (run inside the candidate's process).

``Guard()`` is built after torch, triton and the harness are imported and before any
candidate module is: it records

- the identity of every public attribute of ``torch``, ``torch.nn.functional``,
  ``torch.cuda``, the ``torch.Tensor`` and ``torch.cuda.Event`` / ``Stream`` classes,
  ``time``, ``threading``, ``gc``, ``builtins``, ``triton.testing``, every
  ``kernels_harness`` and ``kernels_problems`` module and the classes they define (so a
  replaced timer, reference op, reference function or harness function shows);
- the threads alive (``threading.enumerate`` and ``sys._current_frames``, which also sees
  threads started through ``_thread``).

``guard.check()`` returns violations ({"kind", "detail"}) for whatever changed since.
Output checks (``output_problems``) reject anything but plain ``torch.Tensor`` objects.
"""

from __future__ import annotations

import builtins
import gc
import sys
import threading
import time

import torch

_current_frames = sys._current_frames
_enumerate = threading.enumerate


def _public(obj) -> dict:
    try:
        items = vars(obj).items()
    except TypeError:
        return {}
    return {k: v for k, v in items if not k.startswith("_") or (k.startswith("__") and k.endswith("__"))}


def _targets() -> dict[str, object]:
    import torch.nn.functional as F

    t = {
        "torch": torch, "torch.nn.functional": F, "torch.cuda": torch.cuda, "torch.Tensor": torch.Tensor,
        "torch.cuda.Event": torch.cuda.Event, "torch.cuda.Stream": torch.cuda.Stream,
        "time": time, "threading": threading, "gc": gc, "builtins": builtins,
    }
    try:
        import triton.testing

        t["triton.testing"] = triton.testing
    except Exception:   # triton is optional on a CPU-only host
        pass
    for name, mod in list(sys.modules.items()):
        if name.split(".")[0] in ("kernels_harness", "kernels_problems") and mod is not None:
            t[name] = mod
            for attr, obj in list(vars(mod).items()):      # and the classes they define
                if isinstance(obj, type) and getattr(obj, "__module__", "") == name:
                    t[f"{name}.{attr}"] = obj
    return t


def thread_idents() -> set[int]:
    return {t.ident for t in _enumerate()} | set(_current_frames())


class Guard:
    """Snapshot of identities and threads; ``check()`` lists what changed."""

    def __init__(self):
        try:   # importing torch._dynamo rewraps torch.manual_seed: let that happen before the snapshot
            import torch._dynamo  # noqa: F401
        except Exception:
            pass
        self._snap = {name: _public(obj) for name, obj in _targets().items()}
        self._objs = _targets()
        self.threads = thread_idents()

    def changed(self) -> list[str]:
        out = []
        for name, before in self._snap.items():
            now = _public(self._objs[name])
            for key, val in before.items():
                if key in ("__dict__", "__weakref__", "__doc__"):
                    continue
                if key not in now:
                    out.append(f"{name}.{key} deleted")
                elif now[key] is not val:
                    out.append(f"{name}.{key} replaced")
        return out

    def new_threads(self) -> list[str]:
        extra = thread_idents() - self.threads
        names = {t.ident: t.name for t in _enumerate()}
        return [f"{names.get(i, 'unnamed (_thread)')} (ident {i})" for i in sorted(extra)]

    def check(self) -> list[dict]:
        v = [{"kind": "monkeypatch", "detail": d} for d in self.changed()]
        v += [{"kind": "thread", "detail": f"thread started by the candidate still running: {d}"}
              for d in self.new_threads()]
        return v


def as_outputs(out) -> tuple:
    """The candidate's result as a tuple of outputs (a bare object becomes a 1-tuple)."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def output_problems(outs: tuple, n_expected: int, device) -> list[dict]:
    """Violations for outputs that are not plain, materialized tensors on ``device``."""
    v = []
    if len(outs) != n_expected:
        v.append({"kind": "output_type", "detail": f"returned {len(outs)} outputs, expected {n_expected}"})
        return v
    want = torch.device(device)
    for i, o in enumerate(outs):
        if type(o) is not torch.Tensor:
            v.append({"kind": "output_type",
                      "detail": f"output {i} is {type(o).__module__}.{type(o).__qualname__}, not a plain torch.Tensor"})
            continue
        if o.is_meta or o.layout != torch.strided:
            v.append({"kind": "output_type", "detail": f"output {i} is not a materialized strided tensor"})
        elif o.device.type != want.type:
            v.append({"kind": "output_type", "detail": f"output {i} is on {o.device}, expected {want}"})
    return v


def aliases(outs: tuple, inputs) -> list[dict]:
    """Outputs that share memory with an input (the harness keeps inputs read-only)."""
    v = []
    spans = []
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.numel():
            s = t.untyped_storage()
            spans.append((s.data_ptr(), s.data_ptr() + s.nbytes()))
    for i, o in enumerate(outs):
        if type(o) is torch.Tensor and o.numel():
            p = o.data_ptr()
            if any(a <= p < b for a, b in spans):
                v.append({"kind": "output_alias", "detail": f"output {i} lies inside an input's memory"})
    return v
