"""Training state: a fingerprint of a model and its optimizers, a snapshot, and the restore.

The speedrun's warm-up rule rests on this: ``H.begin(model, *optimizers)`` fingerprints the
state before the untimed warm-up, and ``H.warmup_done(...)`` (after restoring the snapshot,
or after the candidate reset the state itself) fingerprints it again; the clock starts only
when the two agree.

What the fingerprint covers, per tensor: name, shape, dtype and the exact bytes of

* every parameter and every buffer of the model (non-persistent buffers included);
* every tensor in each optimizer's ``state`` and every number in its ``param_groups``
  (learning rates, momenta, step counters, ...; the ``params`` lists are left out).

It also records whether any parameter holds a non-zero ``.grad`` (a gradient computed during
the warm-up and applied after it would be training outside the clock).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any, Iterable

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "_orig_mod") and isinstance(getattr(model, "_orig_mod"), torch.nn.Module):
            model = model._orig_mod
        elif type(model).__name__ == "DistributedDataParallel" and isinstance(getattr(model, "module", None),
                                                                               torch.nn.Module):
            model = model.module
        else:
            break
    return model


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach()
    if t.is_sparse:
        t = t.to_dense()
    t = t.contiguous().cpu()
    if t.numel() == 0:
        return b""
    t = t.reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes()


def _feed(h: "hashlib._Hash", key: str, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        h.update(f"{key}|T|{tuple(value.shape)}|{value.dtype}|".encode())
        h.update(_tensor_bytes(value))
    elif isinstance(value, dict):
        for k in sorted(value, key=repr):
            _feed(h, f"{key}.{k!r}", value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"{key}|L{len(value)}|".encode())
        for i, v in enumerate(value):
            _feed(h, f"{key}[{i}]", v)
    else:
        h.update(f"{key}|{type(value).__name__}|{value!r}|".encode())


def _groups(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def fingerprint(model: torch.nn.Module, optimizers: Iterable[torch.optim.Optimizer]) -> dict[str, Any]:
    """{"sha256", "model_sha256", "optim_sha256", "tensors", "elements", "nonzero_grads"}."""
    model = unwrap(model)
    hm, ho = hashlib.sha256(), hashlib.sha256()
    n_t = n_e = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        _feed(hm, "param:" + name, p)
        n_t, n_e = n_t + 1, n_e + p.numel()
    for name, b in model.named_buffers(remove_duplicate=False):
        _feed(hm, "buffer:" + name, b)
        n_t, n_e = n_t + 1, n_e + b.numel()
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        _feed(ho, f"opt{i}:{type(opt).__name__}:state", sd.get("state", {}))
        _feed(ho, f"opt{i}:groups", _groups(opt))
        for st in sd.get("state", {}).values():
            for v in (st.values() if isinstance(st, dict) else ()):
                if isinstance(v, torch.Tensor):
                    n_t, n_e = n_t + 1, n_e + v.numel()
    grads = [n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.detach().ne(0).any())]
    both = hashlib.sha256((hm.hexdigest() + ho.hexdigest()).encode()).hexdigest()
    return {"sha256": both, "model_sha256": hm.hexdigest(), "optim_sha256": ho.hexdigest(), "tensors": n_t,
            "elements": n_e, "nonzero_grads": grads[:10], "n_nonzero_grads": len(grads)}


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def snapshot(model: torch.nn.Module, optimizers: Iterable[torch.optim.Optimizer]) -> dict[str, Any]:
    """A CPU copy of every parameter, buffer and optimizer state_dict (for :func:`restore`)."""
    model = unwrap(model)
    return {
        "params": {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters(remove_duplicate=False)},
        "buffers": {n: b.detach().to("cpu", copy=True) for n, b in model.named_buffers(remove_duplicate=False)},
        "optims": [_to_cpu(opt.state_dict()) for opt in optimizers],
    }


@torch.no_grad()
def restore(model: torch.nn.Module, optimizers: Iterable[torch.optim.Optimizer], snap: dict[str, Any]) -> None:
    """Copy the snapshot back in place (parameters keep their identity, so optimizers and
    compiled graphs stay valid), reload each optimizer's state_dict and drop every gradient."""
    model = unwrap(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    if set(params) != set(snap["params"]) or set(buffers) != set(snap["buffers"]):
        raise RuntimeError("the model's parameters or buffers changed names since H.begin(); the harness cannot "
                           "restore it (build the whole model before H.begin)")
    for n, t in params.items():
        t.copy_(snap["params"][n])
        t.grad = None
    for n, t in buffers.items():
        t.copy_(snap["buffers"][n])
    optimizers = list(optimizers)
    if len(optimizers) != len(snap["optims"]):
        raise RuntimeError(f"H.warmup_done got {len(optimizers)} optimizers, H.begin got {len(snap['optims'])}; "
                           f"pass the same ones")
    for opt, sd in zip(optimizers, snap["optims"]):
        opt.load_state_dict(copy.deepcopy(sd))
        if not sd.get("state"):
            opt.state.clear()
