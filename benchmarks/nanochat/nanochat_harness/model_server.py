"""The model process of the split evaluation (nanochat and speedrun):
``python -m nanochat_harness.model_server --socket S --script train.py [--device cpu|cuda] [--threads N]``.

The runner starts it sandboxed, in a fresh folder that holds only a copy of the candidate's
script, ``model.pt`` (a state dict) and ``model.json`` (how to rebuild the model, plain data).
It holds no targets, no split files and nothing of the harness worth taking. The runner starts
it (and the trusted evaluator) while the model still trains, so that interpreter start-up,
``import torch`` and the CUDA context are paid off the critical path. In this order:

1. start torch (and CUDA) while the trusted evaluator starts its own, connect to its socket, send
   ``warm`` with the run's token (``AUTOLAB_EVAL_NONCE``), and wait for ``load``: the trusted side
   sends it once training has ended and ``model.pt`` is in this folder (before any candidate code
   runs);
2. load the weights with ``torch.load(..., weights_only=True)``: a pickle that would run code
   is refused here, before the candidate's module is imported;
3. import the script as ``__autolab_candidate__`` (its ``__main__`` block does not run), call
   ``<factory>(**init_kwargs)`` and ``load_state_dict(strict=True)``;
4. answer ``forward`` requests (int32 token rows (B, T)) with the logits of ``model(idx)``, as
   raw bytes, until the evaluator says ``bye``. On CUDA, a request may ask for the logits in a
   CUDA IPC buffer instead (two buffers, alternating by request id, shared once with the
   evaluator): no copy through host memory.

Nothing here is trusted by the evaluator: it checks every reply's shape, dtype and size itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from . import wire

CANDIDATE_MODULE = "__autolab_candidate__"
MODEL_FILE = "model.pt"
MODEL_SPEC = "model.json"
MAX_REQUEST = 1 << 28
TOKEN_ENV = "AUTOLAB_EVAL_NONCE"   # the run's secret the model process proves itself with


def load_weights(path: Path) -> dict:
    """The state dict in ``path``, loaded weights-only (no code runs); a dict of tensors."""
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise TypeError(f"{path.name} must hold a state dict (a dict of name -> tensor); it holds "
                        f"{type(sd).__name__}: save the model with H.finish(model, init_kwargs)")
    return sd


def read_spec(path: Path) -> tuple[str, dict[str, Any]]:
    spec = json.loads(path.read_text())
    name, kwargs = spec.get("factory"), spec.get("init_kwargs")
    if not isinstance(name, str) or not name.isidentifier() or not isinstance(kwargs, dict):
        raise ValueError(f"{path.name} must hold {{'factory': <name>, 'init_kwargs': {{...}}}}; save the model with "
                         f"H.finish(model, init_kwargs)")
    return name, kwargs


def import_script(path: Path) -> Any:
    from autolab.harnesskit import load_module

    return load_module(path, CANDIDATE_MODULE)


def rebuild(folder: Path, script: str, state: dict | None = None):
    """Import ``script`` and rebuild its model from ``model.json`` and the weights."""
    import torch

    name, kwargs = read_spec(folder / MODEL_SPEC)
    if state is None:
        state = load_weights(folder / MODEL_FILE)
    module = import_script(folder / script)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise AttributeError(f"{script} has no module-level {name!r} to rebuild the model with (model.json names it)")
    model = factory(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name}(**init_kwargs) returned {type(model).__name__}, not an nn.Module")
    model.load_state_dict(state, strict=True)
    return model


def _plain(out):
    """(tensor, subclass name or None): a Tensor subclass is read as a plain tensor of its data."""
    import torch

    if type(out) is torch.Tensor:
        return out, None
    name = f"{type(out).__module__}.{type(out).__qualname__}"
    with torch._C.DisableTorchFunctionSubclass():
        plain = out.detach().clone()
    return plain, name


def _b64(v):
    import base64

    return {"b64": base64.b64encode(bytes(v)).decode()} if isinstance(v, (bytes, bytearray)) else v


def _share(buf) -> dict[str, Any]:
    """The CUDA IPC description of ``buf``'s storage (torch's own, as plain JSON data)."""
    dev, handle, size, off, rc_h, rc_off, ev_h, ev_sync = buf.untyped_storage()._share_cuda_()
    return {"device": dev, "handle": _b64(handle), "size": size, "offset": off, "rc_handle": _b64(rc_h),
            "rc_offset": rc_off, "event": _b64(ev_h), "event_sync": bool(ev_sync)}


def serve(sock, model, device) -> None:
    import torch

    allowed = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    slots: dict[int, Any] = {}
    while True:
        head, payload = wire.recv(sock, MAX_REQUEST)
        op = head.get("op")
        if op == "bye":
            return
        if op != "forward":
            raise wire.WireError(f"unknown request {op!r}")
        rid, shape = head.get("id"), head.get("shape")
        try:
            B, T = int(shape[0]), int(shape[1])
            x = torch.frombuffer(payload, dtype=torch.int32).view(B, T).to(device=device, dtype=torch.int64)
            with torch.no_grad():
                if device.type == "cuda":
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        out = model(x)
                else:
                    out = model(x)
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"model(idx) returned {type(out).__name__}; it must return the logits tensor only")
            out, subclass = _plain(out)
            if out.dtype not in allowed:
                if not out.is_floating_point():
                    raise ValueError(f"model(idx) returned logits of dtype {out.dtype}; expected a floating dtype")
                out = out.float()
            out = out.detach().contiguous()
            head_out = {"op": "logits", "id": rid, "shape": list(out.shape), "dtype": allowed[out.dtype],
                        "subclass": subclass}
            if head.get("ipc") and out.is_cuda:
                slot, need = int(rid) % 2, out.numel() * out.element_size()
                buf = slots.get(slot)
                if buf is None or buf.numel() < need:
                    buf = slots[slot] = torch.empty(need, dtype=torch.uint8, device=out.device)
                    head_out["ipc"] = _share(buf)
                buf[:need].view(out.dtype).view(out.shape).copy_(out)
                torch.cuda.synchronize(out.device)
                head_out["slot"] = slot
                wire.send(sock, head_out)
                continue
            data = out.to("cpu")
        except Exception as e:  # noqa: BLE001 - reported to the evaluator, which fails the run with it
            wire.send(sock, {"op": "error", "id": rid, "error": f"{type(e).__name__}: {e}"})
            continue
        wire.send(sock, head_out, data.view(torch.uint8).numpy().data if data.numel() else b"")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nanochat_harness.model_server", description=__doc__.split("\n")[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--script", default="train.py")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    folder = Path.cwd()
    if a.device != "cuda":
        # the logits and the forward's activations (32 MiB tensors on cpu-tiny) reuse the memory of
        # the last call instead of fresh pages the kernel zeroes and faults in: a third of a small
        # model's forward on CPU (wire.reuse_freed_memory)
        wire.reuse_freed_memory()
    failed = None
    try:        # torch first, then the socket: the two processes start torch side by side
        import torch

        device = torch.device("cuda:0" if a.device == "cuda" else "cpu")
        if device.type == "cpu" and a.threads:
            torch.set_num_threads(a.threads)
        if device.type == "cuda":
            torch.zeros(1, device=device)             # the CUDA context, while the model still trains
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        failed = e
    sock = wire.connect(a.socket)
    if failed is not None:
        wire.send(sock, {"op": "error", "stage": "start", "error": f"{type(failed).__name__}: {failed}",
                         "token": os.environ.get(TOKEN_ENV, "")})
        return 2
    # warm: say so (with the run's token: only this process may serve the model) and wait until
    # the trusted side says the model is in this folder; an evaluation cancelled before (the
    # training failed) closes the socket instead
    wire.send(sock, {"op": "warm", "token": os.environ.get(TOKEN_ENV, "")})
    try:
        head, _ = wire.recv(sock, 0)
    except (OSError, wire.WireError):
        return 0
    if head.get("op") != "load":
        return 0
    try:
        state = load_weights(folder / MODEL_FILE)     # before any candidate code: weights only
        model = rebuild(folder, a.script, state).to(device)
        model.eval()
    except Exception as e:  # noqa: BLE001 - the evaluator records it as a failed run
        traceback.print_exc()
        wire.send(sock, {"op": "error", "stage": "load", "error": f"{type(e).__name__}: {e}"})
        return 2
    wire.send(sock, {"op": "ready"})
    try:
        serve(sock, model, device)
    except wire.WireError as e:
        print(f"[model server] {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
