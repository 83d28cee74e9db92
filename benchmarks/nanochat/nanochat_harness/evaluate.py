"""The trusted side of the split evaluation:
``python -m nanochat_harness.evaluate --config C --out O --socket S --model-dir D``.

Two processes evaluate a trained model. The model process (:mod:`nanochat_harness.model_server`,
sandboxed, in the fresh folder ``D`` that holds only the candidate's script and its
weights-only model) rebuilds the model and answers "logits of these token rows". This process
never imports candidate code: it checks ``model.pt`` weights-only (a pickle that would run
code is a violation), reads the fixed val and hidden_val rows, sends input batches over the
Unix socket ``S`` and computes

    bits per byte = Σ nats / (ln 2 · Σ target bytes)

over ``eval_tokens`` target tokens at ``seq_len`` per split: nats from the returned logits,
computed here in float32 and summed in float64; targets that are special tokens (0 bytes) are
left out of both sums.

What the model process is asked is decided here, from a fresh random source (not the run's
seed): the rows of both splits are shuffled together into batches of one shape, and probe
batches of real text are mixed in at random places: twins of metric batches whose text after
random cuts is replaced by other rows' text (causality on real text), exact repeats
(determinism, no state carried between calls) and row-permuted repeats (rows independent), plus
the random-token causality probe. The model process sees only input rows; it cannot tell a
probe from a metric batch, nor a val row from a hidden_val row. This process also makes itself
undumpable (no ptrace, no /proc/<pid>/mem by the same user).

The functions :func:`bits_per_byte`, :func:`causality_probe` and :func:`logits_probe` take any
callable ``model(idx) -> logits`` (an in-process module in tests, or :class:`RemoteModel`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import queue
import secrets
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from autolab.harnesskit import atomic_write_json, load_module

# Captured before the candidate module runs: the evaluation calls only these references, and the
# harness_intact probe checks that the public names still point at them afterwards.
_ORIG: dict[str, Any] = {
    "torch.nn.functional.log_softmax": F.log_softmax,
    "torch.nn.functional.cross_entropy": F.cross_entropy,
    "torch.log_softmax": torch.log_softmax,
    "torch.gather": torch.gather,
    "torch.isfinite": torch.isfinite,
    "torch.aminmax": torch.aminmax,
    "torch.no_grad": torch.no_grad,
    "torch.autocast": torch.autocast,
    "torch.load": torch.load,
    "torch.Tensor.float": torch.Tensor.float,
    "torch.Tensor.double": torch.Tensor.double,
    "torch.Tensor.sum": torch.Tensor.sum,
    "torch.Tensor.to": torch.Tensor.to,
    "torch.nn.Module.__call__": torch.nn.Module.__call__,
    "math.log": math.log,
}
_log_softmax = F.log_softmax
_gather = torch.gather
_isfinite = torch.isfinite
_aminmax = torch.aminmax
_no_grad = torch.no_grad
_autocast = torch.autocast
_load = torch.load
_to_float = torch.Tensor.float
_to_double = torch.Tensor.double
_tsum = torch.Tensor.sum
_LN2 = math.log(2.0)


def _abs_of(lo: float, hi: float) -> float:
    """max |x| from a tensor's min and max; NaN when either is NaN (aminmax propagates it)."""
    return math.nan if lo != lo or hi != hi else max(-lo, hi)


def _absmax(t: torch.Tensor) -> float:
    """``float(t.abs().max())`` (the same value: |x| is exact) from one min/max pass, without
    the |t| copy; NaN when t holds a NaN."""
    lo, hi = (float(v) for v in _aminmax(t))
    return _abs_of(lo, hi)


def _rel(x: float) -> float:
    """A relative change for the probes' comparisons: NaN (non-finite logits) counts as infinitely far."""
    return math.inf if x != x else x

CANDIDATE_MODULE = "__autolab_candidate__"


def _resolve(dotted: str) -> Any:
    mod, _, rest = dotted.partition(".")
    obj: Any = sys.modules[mod] if mod in sys.modules else __import__(mod)
    for part in rest.split("."):
        obj = getattr(obj, part)
    return obj


def harness_intact() -> dict[str, Any]:
    changed = []
    for name, fn in _ORIG.items():
        try:
            now = _resolve(name)
        except AttributeError:
            now = None
        if now is not fn:
            changed.append(name)
    return {"passed": not changed, "detail": "torch functions unchanged" if not changed else
            f"replaced after the candidate module ran: {', '.join(changed)}", "changed": changed}


# ----------------------------------------------------------------------------- the metric

def _forward(model, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        with _autocast("cuda", dtype=torch.bfloat16):
            return model(x)
    return model(x)


# Breaches of the logits contract that the evaluation could work around (reported by the logits probe).
CONTRACT: list[str] = []
_PlainTensor = torch.Tensor
_no_torch_function = torch._C.DisableTorchFunctionSubclass


def _logits_of(model, x: torch.Tensor, device: torch.device, vocab_size: int) -> torch.Tensor:
    out = _forward(model, x, device)
    if isinstance(out, (tuple, list)):
        raise ValueError(f"model(idx) returned a {type(out).__name__}; it must return the logits tensor only")
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"model(idx) returned {type(out).__name__}; it must return a tensor of logits")
    if type(out) is not _PlainTensor:
        # A Tensor subclass can override what the metric computes on it (__torch_function__): record
        # the breach, and measure a plain copy of its data instead.
        msg = (f"model(idx) returned a {type(out).__module__}.{type(out).__qualname__}, a Tensor subclass; "
               f"logits must be a plain torch.Tensor")
        if msg not in CONTRACT:
            CONTRACT.append(msg)
        with _no_torch_function():
            out = out.detach().clone()
        if type(out) is not _PlainTensor:
            raise ValueError(msg + " (and its data could not be read as one)")
    want = (x.shape[0], x.shape[1], vocab_size)
    if tuple(out.shape) != want:
        raise ValueError(f"model(idx) returned logits of shape {tuple(out.shape)}; expected {want} (B, T, vocab_size)")
    if not out.is_floating_point():
        raise ValueError(f"model(idx) returned logits of dtype {out.dtype}; expected a floating dtype")
    return out


def bits_per_byte(model, rows: np.ndarray, token_bytes: torch.Tensor, device: torch.device, vocab_size: int,
                  batch_rows: int = 8, causal_check: dict[str, Any] | None = None) -> dict[str, Any]:
    """Σ nats / (ln 2 · Σ bytes) over all targets of ``rows`` (n, T+1); targets of 0 bytes are
    excluded. Also reports whether every logit was finite.

    ``causal_check`` ({"seed", "batches", "tolerance"}): on that many randomly chosen batches of
    the metric itself, each row's text after a random cut is replaced by another row's text (real
    text, same batch shape, the twin forward run before or after the measured one at random) and
    the logits up to the cut must not move. A model cannot tell this check from the metric, as it
    can tell random-token probes from real text. The largest relative change is returned as
    ``causal_max_rel``."""
    sum_nats, sum_bytes, n_tokens, finite = 0.0, 0, 0, True
    tb = token_bytes.to(device)
    n_batches = (len(rows) + batch_rows - 1) // batch_rows
    rng = np.random.default_rng(int((causal_check or {}).get("seed", 0)) + 7919)
    checked = set(rng.choice(n_batches, size=min(n_batches, int((causal_check or {}).get("batches", 0))),
                             replace=False).tolist()) if causal_check and n_batches else set()
    causal_max, causal_n = 0.0, 0
    with _no_grad():
        for i in range(0, len(rows), batch_rows):
            chunk = torch.from_numpy(rows[i:i + batch_rows]).to(device)
            x, y = chunk[:, :-1], chunk[:, 1:]
            twin = cuts = None
            if i // batch_rows in checked and x.shape[0] > 1 and x.shape[1] > 2:
                T = x.shape[1]
                cuts = torch.from_numpy(rng.integers(0, T - 1, size=x.shape[0]))
                later = torch.arange(T)[None, :] > cuts[:, None]                  # (B, T): positions after the cut
                other = torch.roll(x, shifts=1, dims=0)                            # another row's real text
                x2 = torch.where(later.to(device), other, x)
                twin_first = bool(rng.integers(0, 2))
                if twin_first:
                    twin = _to_float(_logits_of(model, x2, device, vocab_size))
            logits = _to_float(_logits_of(model, x, device, vocab_size))
            if cuts is not None:
                if twin is None:
                    twin = _to_float(_logits_of(model, x2, device, vocab_size))
                scale = float(logits.abs().max()) + 1.0
                keep = (~later).to(device)[:, :, None]
                moved = float(((twin - logits).abs() * keep).max()) / scale
                causal_max, causal_n = max(causal_max, moved), causal_n + x.shape[0]
            finite = finite and bool(_isfinite(logits).all())
            logp = _log_softmax(logits, dim=-1)
            nats = -_gather(logp, -1, y.unsqueeze(-1)).squeeze(-1)          # (B, T) float32
            nb = tb[y]                                                          # (B, T) int64
            mask = nb > 0
            sum_nats += float(_tsum(_to_double(nats)[mask]))
            sum_bytes += int(_tsum(nb))
            n_tokens += int(_tsum(mask))
    bpb = sum_nats / (_LN2 * sum_bytes) if sum_bytes else float("nan")
    return {"bpb": bpb, "nats": sum_nats, "bytes": sum_bytes, "tokens": n_tokens, "finite": finite,
            "causal_max_rel": causal_max, "causal_rows": causal_n}


# ----------------------------------------------------------------------------- probes

def causality_probe(model, device: torch.device, vocab_size: int, seq_len: int, seed: int = 0,
                    rows: int = 2, cuts: int = 4) -> dict[str, Any]:
    """Change the tokens after position t; logits at positions <= t must not change.

    A causal model gives bit-identical prefixes (seen on CPU fp32 and on H100 with bf16
    autocast); the tolerance, relative to the largest logit, allows for a little kernel noise
    and is raised to 4x the noise of two identical forward passes if the model is not
    deterministic. A randomly initialized model attending to the future already moves earlier
    logits by about 2% of that scale."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab_size, (rows, seq_len), generator=g)
    positions = sorted({0, seq_len // 2, seq_len - 2} | {int(v) for v in torch.randint(0, seq_len - 1, (cuts,), generator=g)})
    with _no_grad():
        base = _to_float(_logits_of(model, x.to(device), device, vocab_size))
        again = _to_float(_logits_of(model, x.to(device), device, vocab_size))
        scale = _absmax(base) + 1.0
        noise = _absmax(again - base) / scale
        tol = max(1e-3 if device.type == "cuda" else 1e-4, 4 * noise)
        worst, worst_t, moved = 0.0, None, 0.0
        for t in positions:
            x2 = x.clone()
            x2[:, t + 1:] = (x[:, t + 1:] + 1 + torch.randint(0, vocab_size - 1, x[:, t + 1:].shape, generator=g)) % vocab_size
            other = _to_float(_logits_of(model, x2.to(device), device, vocab_size))
            at = (other - base).abs_().amax(dim=-1)          # (rows, T): the largest change at each position
            diff = _rel(float(at[:, :t + 1].max()) / scale)
            if t + 1 < seq_len:
                moved = max(moved, float(at[:, t + 1:].max()) / scale)
            if diff > worst:
                worst, worst_t = diff, t
    passed = worst <= tol
    detail = (f"logits up to t unchanged when tokens after t change (max relative change {worst:.2e} <= {tol:.0e}; "
              f"later logits moved {moved:.2e})"
              if passed else f"logits at positions <= {worst_t} changed by {worst:.2e} (relative, > {tol:.0e}) when only "
                             f"later tokens changed: the model sees the future")
    return {"passed": passed, "detail": detail, "max_rel_diff": worst, "positions": positions, "tolerance": tol,
            "noise": noise, "later_moved": moved}


def logits_probe(model, rows: np.ndarray, device: torch.device, vocab_size: int,
                 batch_rows: int = 4) -> dict[str, Any]:
    """The logits contract: a plain floating tensor (B, T, vocab) of finite values, the same
    for the same input (deterministic, no state carried between calls), and each row's logits
    independent of the other rows of the batch (rows of packed text continue one another, so a
    model that looks across rows sees the future). Breaches found while measuring (CONTRACT)
    are added when the evaluation ends."""
    b = max(2, min(int(batch_rows), len(rows)))
    x = torch.from_numpy(rows[:b, :-1]).to(device)
    problems: list[str] = []
    try:
        with _no_grad():
            raw = _forward(model, x, device)
            if isinstance(raw, torch.Tensor) and type(raw) is not _PlainTensor:
                problems.append(f"model(idx) returned a {type(raw).__qualname__}, a Tensor subclass: logits must be "
                                f"a plain torch.Tensor (a subclass can change what the metric computes)")
            out = _to_float(_logits_of(model, x, device, vocab_size))
            finite = bool(_isfinite(out).all())
            other = _to_float(_logits_of(model, torch.from_numpy(rows[b:2 * b, :-1]).to(device), device, vocab_size)) \
                if len(rows) >= 2 * b else None
            again = _to_float(_logits_of(model, x, device, vocab_size))
            flipped = _to_float(_logits_of(model, x.flip(0), device, vocab_size)).flip(0)
    except Exception as e:  # noqa: BLE001 - reported as a failed probe
        return {"passed": False, "detail": f"{type(e).__name__}: {e}"}
    scale = float(out.abs().max()) + 1.0
    noise = float((again - out).abs().max()) / scale
    max_noise = 1e-2 if device.type == "cuda" else 1e-3
    tol = max(1e-3 if device.type == "cuda" else 1e-4, 4 * noise)
    cross = float((flipped - out).abs().max()) / scale
    if not finite:
        problems.append("NOT all finite")
    if noise > max_noise:
        problems.append(f"the same input gave logits {noise:.1e} apart (relative; > {max_noise:.0e}): the model is "
                        f"not deterministic in eval mode or carries state between calls")
    if cross > tol:
        problems.append(f"a row's logits changed by {cross:.1e} (relative, > {tol:.0e}) when the other rows of the "
                        f"batch were reordered: rows must not see each other")
    detail = f"shape {tuple(out.shape)}, {type(raw).__qualname__}, " + ("all finite" if finite else "NOT all finite")
    if not problems:
        detail += f"; deterministic (noise {noise:.1e}), rows independent (max change {cross:.1e})"
    return {"passed": not problems, "shape": list(out.shape), "dtype": "float32", "noise": noise,
            "cross_row": cross, "detail": detail if not problems else "; ".join(problems),
            "called_between": other is not None}


# ----------------------------------------------------------------------------- candidate loading (in-process; tests)

def load_candidate(workdir: Path) -> Any:
    """Import ``train.py`` as ``__autolab_candidate__`` (its ``__main__`` block does not run)."""
    return load_module(workdir / "train.py", CANDIDATE_MODULE)


def load_model(workdir: Path, module: Any) -> torch.nn.Module:
    """Rebuild the model ``H.finish`` saved in ``workdir``: ``model.json``'s factory of ``module``
    called with its init_kwargs, then the weights-only state dict of ``model.pt``."""
    from .model_server import MODEL_FILE, load_weights, read_spec

    name, kwargs = read_spec(workdir / "model.json")
    state = load_weights(workdir / MODEL_FILE)
    model = getattr(module, name)(**kwargs)
    model.load_state_dict(state, strict=True)
    return model


class UnsafeModelFile(ValueError):
    """model.pt is not a weights-only file: unpickling it would run code or build other objects."""


def check_weights(path: Path) -> dict[str, Any]:
    """Load ``path`` weights-only here (no code runs, memory-mapped) and describe it; raises
    UnsafeModelFile for a pickle that needs more than tensors and plain containers."""
    try:
        sd = _load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        import re

        first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()[0][:300]
        raise UnsafeModelFile(f"{path.name} is not weights-only: torch.load(weights_only=True) refused it ({first}); "
                              f"save the model with H.finish(model, init_kwargs), which writes a plain state dict") \
            from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise ValueError(f"{path.name} must hold a state dict (name -> tensor), not {type(sd).__name__}; save the "
                         f"model with H.finish(model, init_kwargs)")
    seen, n = set(), 0
    for v in sd.values():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if v.is_floating_point() and key not in seen:
            seen.add(key)
            n += v.numel()
    return {"tensors": len(sd), "num_params": n}


# ----------------------------------------------------------------------------- the remote model

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _host_buffer(head: dict, n: int) -> np.ndarray:
    """Where a reply's n bytes are received: an array of this process, not zeroed first (the
    socket fills it; the wire checks every byte arrives)."""
    return np.empty(n, dtype=np.uint8)


class RemoteModel:
    """The candidate's model in the model process, seen from here: ``remote(idx)`` sends the
    rows and returns the logits (on ``device``, float32), after checking their shape and dtype.
    ``submit``/``result`` keep a few requests in flight (a sender thread, so a large reply never
    blocks a request). On CUDA the logits come through CUDA IPC buffers when ``ipc`` allows and
    the mapping works (tried on the first request; else raw bytes through the socket). Breaches
    of the logits contract that could be worked around (a Tensor subclass) are appended to
    CONTRACT."""

    def __init__(self, sock: socket.socket, device: torch.device, vocab_size: int, timeout_s: float = 300.0,
                 ipc: bool = True):
        self.sock, self.device, self.vocab = sock, device, int(vocab_size)
        self.sock.settimeout(timeout_s)
        self._next, self._outbox = 0, queue.Queue()
        self._pending: dict[int, np.ndarray] = {}
        self._stash: dict[int, tuple[dict, bytearray]] = {}
        self._slots: dict[int, torch.Tensor] = {}
        self._send_error: list[BaseException] = []
        self.ipc: bool | None = None if (ipc and device.type == "cuda") else False
        self.ipc_error = ""
        self.calls, self.bytes = 0, 0
        self._sender = threading.Thread(target=self._send_loop, daemon=True, name="eval-sender")
        self._sender.start()

    def _send_loop(self) -> None:
        from . import wire

        while True:
            item = self._outbox.get()
            if item is None:
                return
            head, payload = item
            try:
                wire.send(self.sock, head, payload)
            except (OSError, wire.WireError) as e:
                self._send_error.append(e)
                return

    def _send(self, arr: np.ndarray, ipc: bool) -> int:
        rid = self._next
        self._next += 1
        self._pending[rid] = arr
        self._outbox.put(({"op": "forward", "id": rid, "shape": list(arr.shape), "ipc": ipc}, arr.tobytes()))
        return rid

    def submit(self, x) -> int:
        arr = np.ascontiguousarray(x.cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.int32)
        if self.ipc is None:          # the first request tries CUDA IPC; the others wait for its answer
            self.ipc = "trying"       # type: ignore[assignment]
            return self._send(arr, True)
        return self._send(arr, self.ipc is True)

    def _reply(self, rid: int) -> tuple[dict, bytearray]:
        from . import wire

        while rid not in self._stash:
            B, T = self._pending.get(rid, np.zeros((0, 0))).shape
            try:
                head, payload = wire.recv(self.sock, max(B * T * self.vocab * 4, 1 << 20), alloc=_host_buffer)
            except (OSError, wire.WireError) as e:
                why = f"; sending failed: {self._send_error[0]}" if self._send_error else ""
                raise RuntimeError(f"the model process stopped answering ({type(e).__name__}: {e}{why}); see "
                                   f"eval.log") from None
            got = head.get("id")
            if not isinstance(got, int) or got not in self._pending:
                raise RuntimeError(f"the model process answered request {got!r}, which was not asked")
            self._stash[got] = (head, payload)
        return self._stash.pop(rid)

    def _open_slot(self, info: dict) -> torch.Tensor:
        import base64

        def dec(v):
            return base64.b64decode(v["b64"]) if isinstance(v, dict) and "b64" in v else v

        import re

        rc = dec(info["rc_handle"])
        # the ref counter names a shared-memory file that this process opens and writes to: only a
        # name of the form torch gives its own (never a path), only the device this process uses
        if not isinstance(rc, bytes) or not re.fullmatch(rb"/torch_[0-9]+_[0-9]+(_[0-9]+)?", rc) \
                or int(info["device"]) != (self.device.index or 0) or not 0 <= int(info["rc_offset"]) < 1 << 20:
            raise ValueError("unexpected CUDA IPC description")
        st = torch.UntypedStorage._new_shared_cuda(int(info["device"]), dec(info["handle"]), int(info["size"]),
                                                   int(info["offset"]), dec(info["rc_handle"]), int(info["rc_offset"]),
                                                   dec(info["event"]), bool(info["event_sync"]))
        return torch._utils._rebuild_tensor(torch.storage.TypedStorage(wrap_storage=st, dtype=torch.uint8,
                                                                       _internal=True), 0, (int(info["size"]),), (1,))

    def result(self, rid: int) -> torch.Tensor:
        head, payload = self._reply(rid)
        arr = self._pending.pop(rid)
        B, T = arr.shape
        if head.get("op") == "error":
            raise ValueError(str(head.get("error"))[:2000])
        want = (B, T, self.vocab)
        shape, dtype = head.get("shape"), _DTYPES.get(str(head.get("dtype")))
        if not isinstance(shape, list) or tuple(shape) != want:
            raise ValueError(f"model(idx) returned logits of shape {tuple(shape or ())}; expected {want} (B, T, vocab_size)")
        if dtype is None:
            raise ValueError(f"model(idx) returned logits of dtype {head.get('dtype')!r}; expected a floating dtype")
        nbytes = B * T * self.vocab * torch.tensor([], dtype=dtype).element_size()
        if head.get("subclass"):
            msg = (f"model(idx) returned a {str(head['subclass'])[:200]}, a Tensor subclass; logits must be a plain "
                   f"torch.Tensor")
            if msg not in CONTRACT:
                CONTRACT.append(msg)
        if "slot" in head:
            if self.ipc is False and not isinstance(head.get("ipc"), dict) and head.get("slot") not in self._slots:
                raise RuntimeError("the model process answered through CUDA IPC, which was not asked")
            try:
                slot = int(head["slot"])
                if isinstance(head.get("ipc"), dict):
                    self._slots[slot] = self._open_slot(head["ipc"])
                buf = self._slots[slot]
                if buf.numel() < nbytes:
                    raise ValueError("the CUDA IPC buffer is smaller than the logits")
                out = buf[:nbytes].view(dtype).view(*want).clone()    # ours, before the buffer is reused
                torch.cuda.synchronize(self.device)
            except Exception as e:  # noqa: BLE001 - no IPC here: the same rows again, as bytes
                self.ipc, self.ipc_error = False, f"{type(e).__name__}: {e}"[:300]
                self._slots.clear()
                return self.result(self._send(arr, False))
            if self.ipc != True:   # noqa: E712 - "trying" -> True
                self.ipc = True
            self.calls += 1
            return _to_float(out)
        if self.ipc == "trying":
            self.ipc = False
        if len(payload) != nbytes:
            raise ValueError("the model process sent logits of the wrong size")
        self.calls += 1
        self.bytes += len(payload)
        out = torch.from_numpy(payload).view(dtype).view(*want)      # this process's buffer: no copy
        return _to_float(out.to(self.device, non_blocking=False))

    def __call__(self, x) -> torch.Tensor:
        return self.result(self.submit(x))

    def close(self) -> None:
        self._outbox.put(({"op": "bye"}, b""))
        self._outbox.put(None)
        self._sender.join(timeout=10)
        try:
            self.sock.close()
        except OSError:
            pass

    def eval(self):   # so the in-process probes can call model.eval() on it
        return self


# ----------------------------------------------------------------------------- the shuffled plan

def split_metric(model, sets: dict[str, np.ndarray], device: torch.device, vocab_size: int, batch_rows: int,
                 token_bytes: torch.Tensor | None = None, rng: np.random.Generator | None = None,
                 twins: int = 2, repeats: int = 2, window: int = 2,
                 extra: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Nats over every target of every split in ``sets`` ({name: rows (n, T+1)}), asked of
    ``model`` in batches of ``batch_rows`` rows drawn from all splits at random, with probe
    batches of real text mixed in at random places (see the module docstring).

    ``token_bytes`` given: targets of 0 bytes are left out and their bytes summed (``bytes``);
    without it every target counts. ``extra``: called once at a random point of the stream (a
    probe that makes its own calls). Returns {split: {nats, tokens, bytes, finite, causal_max_rel,
    causal_rows}, "probes": {noise, cross_row, causal_max_rel, twin_rows, repeats, requests},
    "extra": what extra returned}."""
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    names = list(sets)
    rows = np.concatenate([sets[n] for n in names], axis=0)
    split_of = np.concatenate([np.full(len(sets[n]), i) for i, n in enumerate(names)])
    N, T1 = rows.shape
    T = T1 - 1
    B = max(1, min(int(batch_rows), N))
    order = rng.permutation(N)
    pad = (-N) % B
    order = np.concatenate([order, rng.choice(N, size=pad, replace=True)]) if pad else order
    counted = np.concatenate([np.ones(N, bool), np.zeros(pad, bool)])
    n_batches = len(order) // B
    batches = [(order[i * B:(i + 1) * B], counted[i * B:(i + 1) * B]) for i in range(n_batches)]

    # the request list: ("real", b) for every batch, probe variants of a few, shuffled together
    reqs: list[tuple] = [("real", b, None) for b in range(n_batches)]
    variants: dict[int, int] = {}
    if T > 2 and B > 1 and n_batches:
        for b in rng.choice(n_batches, size=min(n_batches, int(twins)), replace=False).tolist():
            cuts = rng.integers(0, T - 1, size=B)
            donors = rng.integers(0, N, size=B)
            reqs.append(("twin", b, (cuts, donors)))
            variants[b] = variants.get(b, 0) + 1
        for j, b in enumerate(rng.choice(n_batches, size=min(n_batches, int(repeats)), replace=False).tolist()):
            perm = np.arange(B) if j % 2 == 0 else rng.permutation(B)
            if j % 2 and (perm == np.arange(B)).all():
                perm = np.roll(perm, 1)
            reqs.append(("repeat" if j % 2 == 0 else "perm", b, perm))
            variants[b] = variants.get(b, 0) + 1
    reqs = [reqs[i] for i in rng.permutation(len(reqs))]
    extra_at = int(rng.integers(0, len(reqs) + 1)) if extra is not None else -1

    def tokens_of(req) -> np.ndarray:
        kind, b, arg = req
        x = rows[batches[b][0], :-1]
        if kind == "twin":
            cuts, donors = arg
            later = np.arange(T)[None, :] > cuts[:, None]
            x = np.where(later, rows[donors, :-1], x)
        elif kind in ("repeat", "perm"):
            x = x[arg]
        return x

    tb = token_bytes.to(device) if token_bytes is not None else None
    acc = {n: {"nats": 0.0, "tokens": 0, "bytes": 0, "finite": True, "causal_max_rel": 0.0, "causal_rows": 0}
           for n in names}
    kept: dict[int, tuple[torch.Tensor, float]] = {}      # a metric batch's logits and scale, for its probes
    waiting: dict[int, list] = {}
    probe = {"noise": 0.0, "cross_row": 0.0, "causal_max_rel": 0.0, "twin_rows": 0, "repeats": 0}
    extra_result: list[Any] = []

    def compare(b: int, real: tuple[torch.Tensor, float], kind: str, arg, logits: torch.Tensor) -> None:
        real, scale = real                         # the metric batch's logits and 1 + max |logit| (on_real)
        if kind == "twin":
            cuts, _ = arg
            keep = torch.from_numpy(np.arange(T)[None, :] <= cuts[:, None]).to(device)        # (B, T)
            at = (logits - real).abs_().amax(dim=-1)                 # (B, T): the largest change at each position
            moved = [_rel(v) for v in (torch.where(keep, at, 0.0).amax(dim=1) / scale).tolist()]   # (B,)
            idx, cnt = batches[b]
            for r in range(B):
                if cnt[r]:
                    a = acc[names[split_of[idx[r]]]]
                    a["causal_max_rel"] = max(a["causal_max_rel"], moved[r])
                    a["causal_rows"] += 1
            probe["causal_max_rel"] = max(probe["causal_max_rel"], max(moved))
            probe["twin_rows"] += B
        elif kind == "repeat":
            probe["noise"] = max(probe["noise"], _rel(_absmax(logits - real) / scale))
            probe["repeats"] += 1
        else:
            inv = torch.from_numpy(np.argsort(arg)).to(device)
            probe["cross_row"] = max(probe["cross_row"], _rel(_absmax(logits[inv] - real) / scale))
            probe["repeats"] += 1

    def on_real(b: int, logits: torch.Tensor) -> None:
        idx, cnt = batches[b]
        y = torch.from_numpy(rows[idx, 1:].astype(np.int64)).to(device)
        lo, hi = (float(v) for v in _aminmax(logits))       # one pass: finiteness and the probes' scale
        if math.isfinite(lo) and math.isfinite(hi):
            fin = torch.ones(B, dtype=torch.bool, device=device)
        else:                                                 # (aminmax propagates NaN): which rows
            fin = _isfinite(logits).flatten(1).all(dim=1)
        logp = _log_softmax(logits, dim=-1)
        nats = -_gather(logp, -1, y.unsqueeze(-1)).squeeze(-1)                  # (B, T) float32
        del logp
        nb = tb[y] if tb is not None else None
        for i, n in enumerate(names):
            sel = torch.from_numpy(cnt & (split_of[idx] == i)).to(device)
            if not bool(sel.any()):
                continue
            a = acc[n]
            if nb is not None:
                mask = (nb > 0) & sel[:, None]
                a["bytes"] += int(_tsum(nb[sel]))
            else:
                mask = sel[:, None].expand(B, T)
            a["nats"] += float(_tsum(_to_double(nats)[mask]))
            a["tokens"] += int(_tsum(mask))
            a["finite"] = a["finite"] and bool(fin[sel].all())
        if variants.get(b):
            kept[b] = (logits, _abs_of(lo, hi) + 1.0)
            for kind, arg, other in waiting.pop(b, []):
                compare(b, kept[b], kind, arg, other)
                done_variant(b)

    def done_variant(b: int) -> None:
        variants[b] -= 1
        if variants[b] == 0:
            kept.pop(b, None)

    def on_reply(req, logits: torch.Tensor) -> None:
        kind, b, arg = req
        if kind == "real":
            on_real(b, logits)
        elif b in kept:
            compare(b, kept[b], kind, arg, logits)
            done_variant(b)
        else:
            waiting.setdefault(b, []).append((kind, arg, logits))

    with _no_grad():
        pending: list[tuple[int, tuple]] = []
        i = 0
        while i < len(reqs) or pending:
            if i == extra_at and not pending:
                extra_result.append(extra())
                extra_at = -1
            while i < len(reqs) and len(pending) < window and not (i == extra_at):
                pending.append((_submit(model, tokens_of(reqs[i]), device, vocab_size), reqs[i]))
                i += 1
            if not pending:
                continue
            handle, req = pending.pop(0)
            on_reply(req, _result(model, handle, device, vocab_size))
        if extra_at >= 0:
            extra_result.append(extra())
    probe["requests"] = len(reqs)
    out: dict[str, Any] = {n: acc[n] for n in names}
    out["probes"] = probe
    out["extra"] = extra_result[0] if extra_result else None
    return out


def _submit(model, x: np.ndarray, device: torch.device, vocab_size: int):
    """Ask for the logits of rows x: a request id (remote) or the logits themselves (in-process)."""
    if isinstance(model, RemoteModel):
        return model.submit(x)
    idx = torch.from_numpy(np.ascontiguousarray(x).astype(np.int64)).to(device)
    return _to_float(_logits_of(model, idx, device, vocab_size))


def _result(model, handle, device: torch.device, vocab_size: int) -> torch.Tensor:
    return model.result(handle) if isinstance(model, RemoteModel) else handle


# ----------------------------------------------------------------------------- main

def _undumpable() -> bool:
    """prctl(PR_SET_DUMPABLE, 0): no ptrace of this process and no /proc/<pid>/mem by its user."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def load_sets(cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    from .data import load_split
    from .loader import eval_rows

    seq_len = int(cfg["seq_len"])
    n_rows = max(1, int(cfg.get("eval_tokens", 32768)) // seq_len)
    sets: dict[str, np.ndarray] = {}
    for split in ("val", "hidden_val"):
        tokens, offsets = load_split(cfg["data"][split])
        rows = eval_rows(tokens, offsets, seq_len, n_rows, int(cfg["bos_id"]),
                         chunk_tokens=int(cfg.get("doc_chunk_tokens", 0) or 0),
                         buffer_docs=int(cfg.get("pack_buffer", 256)))
        if rows is None:
            raise ValueError(f"the {split} split holds fewer than {n_rows} rows of {seq_len + 1} tokens; lower "
                             f"eval_tokens in the preset (task.toml) or use a larger corpus")
        sets[split] = rows
    return sets


def accept_model(listener: socket.socket, timeout_s: float) -> socket.socket:
    """The model process's connection, and its first message (ready, or why it could not load)."""
    from . import wire

    listener.settimeout(timeout_s)
    try:
        conn, _ = listener.accept()
    except socket.timeout:
        raise RuntimeError(f"the model process did not connect within {timeout_s:g}s; see eval.log") from None
    conn.settimeout(timeout_s)
    try:
        head, _ = wire.recv(conn, 0)
    except (OSError, wire.WireError) as e:
        raise RuntimeError(f"the model process ended before it was ready ({e}); see eval.log") from None
    if head.get("op") != "ready":
        raise RuntimeError(f"the model could not be rebuilt: {str(head.get('error'))[:2000]}")
    return conn


TOKEN_ENV = "AUTOLAB_EVAL_NONCE"   # model_server.TOKEN_ENV: the run's secret the model process proves itself with


def accept_warm(listener: socket.socket, timeout_s: float, token: str) -> socket.socket:
    """The model process's connection, once it has started torch (its ``warm`` message, which
    must carry the run's nonce). A connection without it (a process that found the socket, say
    another run's model process) is closed and recorded in ``IMPOSTORS``, and the wait goes on: an
    impostor can neither take the evaluation's place nor stop it."""
    import hmac

    from . import wire

    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"the model process did not connect within {timeout_s:g}s; see eval.log"
                               + (f" ({len(IMPOSTORS)} connection(s) without the run's nonce were refused)"
                                  if IMPOSTORS else ""))
        listener.settimeout(left)
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        conn.settimeout(min(30.0, max(1.0, left)))
        try:
            head, _ = wire.recv(conn, 0)
        except (OSError, wire.WireError) as e:
            IMPOSTORS.append(f"a connection that sent no hello ({e})")
            conn.close()
            continue
        if head.get("op") in ("warm", "error") and hmac.compare_digest(str(head.get("token", "")), token):
            if head.get("op") == "error":
                raise RuntimeError(f"the model process could not start: {str(head.get('error'))[:2000]}")
            conn.settimeout(None)
            return conn
        IMPOSTORS.append(f"a connection without the run's nonce (op {str(head.get('op'))[:20]!r})")
        conn.close()


IMPOSTORS: list[str] = []   # connections accept_warm refused (the trusted side reports them)


def accept_loaded(listener: socket.socket, timeout_s: float, token: str = "") -> socket.socket:
    """:func:`accept_warm`, then ``load`` at once and the model's ``ready`` (:func:`accept_model`):
    for a caller that starts the model process only once the model is saved."""
    from . import wire

    conn = accept_warm(listener, timeout_s, token)
    wire.send(conn, {"op": "load"})
    return accept_model(_Accepted(conn), timeout_s)


class _Accepted:
    """A listener that hands out the one connection already accepted (by :func:`accept_warm`)."""

    def __init__(self, conn: socket.socket):
        self.conn = conn

    def settimeout(self, t: float | None) -> None:
        pass

    def accept(self) -> tuple[socket.socket, None]:
        return self.conn, None

    def close(self) -> None:
        pass


def probes_from(stream: dict[str, Any], causal: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The logits and causality probes from what the shuffled stream measured."""
    p = stream["probes"]
    finite = all(stream[n]["finite"] for n in stream if n not in ("probes", "extra"))
    max_noise = 1e-2 if device.type == "cuda" else 1e-3
    tol = max(1e-3 if device.type == "cuda" else 1e-4, 4 * p["noise"], float(causal.get("tolerance", 0.0)))
    problems = list(CONTRACT)
    if not finite:
        problems.append("NOT all finite")
    if p["noise"] > max_noise:
        problems.append(f"the same input gave logits {p['noise']:.1e} apart (relative; > {max_noise:.0e}): the model is "
                        f"not deterministic in eval mode or carries state between calls")
    if p["cross_row"] > tol:
        problems.append(f"a row's logits changed by {p['cross_row']:.1e} (relative, > {tol:.0e}) when the rows of the "
                        f"batch were reordered: rows must not see each other")
    logits = {"passed": not problems, "noise": p["noise"], "cross_row": p["cross_row"], "repeats": p["repeats"],
              "dtype": "float32",
              "detail": "; ".join(problems) if problems else
              f"all finite; deterministic (noise {p['noise']:.1e}), rows independent (max change {p['cross_row']:.1e}) "
              f"over {p['repeats']} repeated batches mixed into the metric's"}
    c = dict(causal)
    in_metric = p["causal_max_rel"]
    c["in_metric_max_rel"], c["in_metric_rows"] = in_metric, p["twin_rows"]
    if in_metric > tol:
        c["passed"] = False
        c["detail"] = (f"on real evaluation text, logits up to a cut changed by {in_metric:.2e} (relative, > {tol:.0e}) "
                       f"when only the text after the cut changed: the model sees the future"
                       + ("" if causal.get("passed") else "; " + str(causal.get("detail"))))
    elif c.get("passed"):
        c["detail"] = str(c.get("detail")) + f"; also on real text inside the metric ({p['twin_rows']} rows, max {in_metric:.1e})"
    return {"logits": logits, "causality": c}


def connect_model(listener: socket.socket, cfg: dict[str, Any], vocab: int) -> tuple[torch.device, "RemoteModel"]:
    """The trusted side's end of the wire (shared with speedrun): the evaluation's device and the
    model process, once it has connected."""
    device = torch.device("cuda:0" if cfg.get("device") == "cuda" else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(int(cfg.get("threads", 0) or os.cpu_count() or 1))
    conn = accept_model(listener, float(cfg.get("connect_timeout_s", 120)))
    return device, RemoteModel(conn, device, vocab, timeout_s=float(cfg.get("eval_timeout_s", 300)),
                               ipc=bool(cfg.get("eval_cuda_ipc", True)))


def fresh_randomness() -> tuple[np.random.Generator, int]:
    """Where the probes are drawn from: fresh each run from the OS, never the run's seed."""
    rng = np.random.default_rng(secrets.randbits(128))
    return rng, int(rng.integers(0, 2**31 - 1))


def evaluate(cfg: dict[str, Any], listener: socket.socket, model_dir: Path,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    t0 = time.monotonic()
    seq_len, vocab = int(cfg["seq_len"]), int(cfg["vocab_size"])
    weights = check_weights(model_dir / "model.pt")
    sets = load_sets(cfg)
    token_bytes = torch.from_numpy(np.load(cfg["data"]["token_bytes"]).astype(np.int64))
    device, remote = connect_model(listener, cfg, vocab)
    t_load = time.monotonic() - t0
    batch_rows = int(cfg.get("eval_batch_size", 8))
    rng, probe_seed = fresh_randomness()
    t1 = time.monotonic()
    try:
        stream = split_metric(remote, sets, device, vocab, batch_rows, token_bytes=token_bytes, rng=rng,
                              twins=2 * int(cfg.get("causal_check_batches", 2)), repeats=2,
                              extra=lambda: causality_probe(remote, device, vocab, seq_len, seed=probe_seed,
                                                            rows=min(batch_rows, 8)))
    finally:
        remote.close()
    t_metric = time.monotonic() - t1
    probes = probes_from(stream, stream["extra"] or {"passed": False, "detail": "not run"}, device)
    probes["harness_intact"] = {**harness_intact(), "detail": "the metric was computed in a process that never ran "
                                "candidate code (split evaluation); its torch functions are unchanged"}
    res: dict[str, Any] = {}
    for n in ("val", "hidden_val"):
        a = stream[n]
        a["bpb"] = a["nats"] / (_LN2 * a["bytes"]) if a["bytes"] else float("nan")
        res[n] = a
    log(f"val_bpb {res['val']['bpb']:.6f}  hidden_val_bpb {res['hidden_val']['bpb']:.6f}  "
        f"({res['val']['tokens']} tokens, {t_metric:.1f}s, {remote.calls} batches, {remote.bytes / 2**20:.0f} MiB of logits)")
    return {
        "val_bpb": res["val"]["bpb"], "hidden_val_bpb": res["hidden_val"]["bpb"],
        "val": res["val"], "hidden_val": res["hidden_val"], "eval_rows": len(sets["val"]), "seq_len": seq_len,
        "num_params": weights["num_params"], "probes": probes,
        "transport": {"kind": "cuda-ipc" if remote.ipc is True else "unix-socket", "batches": remote.calls,
                      "logits_mib_through_host": round(remote.bytes / 2**20, 1), "ipc_error": remote.ipc_error},
        "timings": {"load_s": round(t_load, 3), "metric_s": round(t_metric, 3), "total_s": round(time.monotonic() - t0, 3)},
    }


def serve_main(argv: list[str] | None, evaluate_fn: Callable, prog: str) -> int:
    """The trusted process's command line (shared with speedrun): undumpable, listening on the
    socket before anything else, the result JSON written whatever happens."""
    ap = argparse.ArgumentParser(prog=prog, description=(evaluate_fn.__doc__ or prog).split("\n")[0])
    ap.add_argument("--config", required=True, type=Path, help="the evaluation config JSON written by the runner")
    ap.add_argument("--out", required=True, type=Path, help="where to write the evaluation JSON")
    ap.add_argument("--socket", required=True, help="the Unix socket to listen on for the model process")
    ap.add_argument("--model-dir", required=True, type=Path, help="the model process's folder (model.pt, model.json)")
    ap.add_argument("--wait-go", action="store_true",
                    help="start early: wait for a line 'go' on stdin (the model is saved) before evaluating")
    a = ap.parse_args(argv)
    undumpable = _undumpable()
    from . import wire

    listener = wire.listen(a.socket)
    cfg = json.loads(a.config.read_text())
    out = a.out.resolve()
    if cfg.get("device") != "cuda":
        wire.reuse_freed_memory()      # the logits' buffers are reused from call to call, not faulted in anew
    try:
        if cfg.get("device") == "cuda":
            torch.zeros(1, device="cuda:0")          # the CUDA context, while the model still trains
        conn = accept_warm(listener, float(cfg.get("connect_timeout_s", 120)), os.environ.get(TOKEN_ENV, ""))
        if a.wait_go and sys.stdin.readline().strip() != "go":
            conn.close()
            listener.close()
            atomic_write_json(out, {"ok": False, "error": "cancelled before the model was saved",
                                    "undumpable": undumpable}, sort_keys=False, newline=False)
            return 1
        wire.send(conn, {"op": "load"})
        res = {"ok": True, **evaluate_fn(cfg, _Accepted(conn), a.model_dir.resolve())}
    except UnsafeModelFile as e:
        res = {"ok": False, "error": str(e), "violation": {"kind": "unsafe_pickle", "detail": str(e)}}
    except Exception as e:  # noqa: BLE001 - the runner records it as a failed run
        traceback.print_exc()
        res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    finally:
        listener.close()
    res["undumpable"] = undumpable
    if IMPOSTORS:
        res["impostors"] = IMPOSTORS[:10]
    atomic_write_json(out, res, sort_keys=False, default=str, newline=False)
    return 0 if res["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    return serve_main(argv, evaluate, "python -m nanochat_harness.evaluate")


if __name__ == "__main__":
    sys.exit(main())
