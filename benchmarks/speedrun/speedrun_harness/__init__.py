"""The speedrun harness: what a candidate's ``train_gpt.py`` may use (``import speedrun_harness as H``).

The harness, not the candidate, owns the clock, the data streams, the validation and the
target. The runner (``speedrun_harness.runner``) starts ``python train_gpt.py`` (or
``torchrun --nproc_per_node=N train_gpt.py`` when the preset has ``gpus`` > 1) in a sandbox
with ``$AUTOLAB_SPEEDRUN_CONFIG`` naming a JSON file; everything below reads it. Importing
this package is cheap: no torch and no data until a function needs them.

API (every process of a multi-process run calls the same functions in the same order)
---
``init() -> Dist``
    Set the process up: the seed (the same on every process), CPU threads, the CUDA device
    (``cuda:LOCAL_RANK``) and, under torchrun, the process group (NCCL on CUDA, gloo on CPU).
    Returns ``Dist(rank, local_rank, world_size, device, is_main)``.
``config() -> dict``
    The preset's settings plus ``seed``, ``device``, ``budget_s``, ``target``, ``val_tokens``,
    ``seq_len``, ``vocab_size``, ``bos_id``, ``world_size``; model-size hints (``depth``,
    ``n_embd``, ``n_head``, ``batch_size``, ``total_batch_size``, ``train_steps``,
    ``val_every``) that the seed reads and a candidate may ignore.
``begin(model, *optimizers)``
    Before the warm-up: the harness fingerprints (and copies) the model's parameters and
    buffers and the optimizers' state, and measures the validation loss of this initial state
    (it must be that of an untrained model: ``init_untrained`` probe).
``warmup_batch(batch_size=None, seq_len=None) -> (x, y)``
    Random tokens for the untimed warm-up (compilation, autotuning). Train data is not
    available before the clock runs.
``warmup_done(model, *optimizers, restore=True)``
    End of the warm-up. With ``restore`` the harness puts the snapshot of ``begin`` back
    (parameters in place, optimizer state dicts, gradients dropped); without it the candidate
    must have reset the state itself. Either way the state is fingerprinted again and must
    equal the one of ``begin`` on every process, with no gradient left: otherwise
    :class:`ResetError` is raised and the run fails. Then the clock starts.
``train_loader(batch_size=None, seq_len=None) -> iterator of (x, y)``
    int64 (B, T) tensors on this process's device, forever: this process's share of one global
    stream (each global batch holds ``B * world_size`` rows packed from train-split documents,
    each starting with BOS; process ``r`` gets rows ``r*B .. r*B+B-1``). Drawing a batch before
    ``warmup_done`` raises; drawing one while the clock is stopped is recorded as a violation.
``validate(model) -> float``
    The validation loss (mean cross-entropy in nats over exactly ``val_tokens`` fixed target
    tokens of the val split, computed by the harness from ``model(x)``'s logits). The clock is
    stopped while it runs (after a device synchronize). Pass the model as you call it for
    training (compiled is fine; a DistributedDataParallel wrapper is taken off). Before
    ``warmup_done`` it is a warm-up validation (to compile the evaluation path) and counts
    for nothing.
``target() -> float``, ``target_reached() -> bool``
    The preset's target, and whether the last validation reached it (loss <= target).
``elapsed() -> float``, ``time_left() -> float``, ``out_of_time() -> bool``
    Seconds on the clock (validation excluded), the budget left (never negative; also capped
    by the process's hard limit), and whether the budget was spent at the last validation
    (the same answer on every process: stop on it in multi-process runs).

    What the clock counts is the preset's ``clock`` key. ``"wall"`` (the GPU presets): wall
    seconds. ``"cpu"`` (the CPU presets): CPU seconds (user + system) of the whole train process
    tree (every thread of the train process, its children that were waited for and its live
    descendants; under torchrun, the launcher's whole tree), read from ``/proc``. Sleeping or
    waiting for a busy machine uses none of the budget; helper processes and threads are
    charged for the CPU they use. The hard limit is then ``allowance_s + budget_s +
    val_allowance_s`` CPU seconds of the tree since launch, and a wall-clock limit of
    ``wall_factor`` times that is only a safety net.
``log(step, loss, **extra)``
    One point of the live training curve (process 0 writes it).
``finish(model, step=None, init_kwargs=None, factory=None) -> float``
    Stop the clock for good, run the final validation (the run's result), save the model for
    the harness's out-of-process re-check, weights only (``model.pt``: the state dict, loadable
    with ``torch.load(..., weights_only=True)``; ``model.json``: ``factory`` or the model's class
    name, and ``init_kwargs``, plain JSON data), and write the harness's records. Call it last,
    then print the closing ``---`` block of ``key: value`` lines.

The re-check runs in two processes: a sandboxed model process, in a fresh folder holding only a
copy of ``train_gpt.py``, ``model.pt`` and ``model.json``, imports the script as a module (its
training must sit under ``if __name__ == "__main__":``), rebuilds the model with
``<factory or class>(**init_kwargs)`` and ``load_state_dict(strict=True)``, and answers
``model(idx)`` calls; a trusted process that never imports candidate code holds the targets and
computes the losses and probes (``nanochat_harness.evaluate``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from autolab.harnesskit import TreeCPU

__all__ = ["init", "config", "begin", "warmup_batch", "warmup_done", "train_loader", "validate", "target",
           "target_reached", "elapsed", "time_left", "out_of_time", "log", "finish", "Dist", "ResetError"]

ENV_CONFIG = "AUTOLAB_SPEEDRUN_CONFIG"
_HERE = Path(__file__).resolve().parent
_NANOCHAT = _HERE.parent.parent / "nanochat"           # nanochat_harness: data, tokenizer, token caches, packing
if _NANOCHAT.is_dir() and str(_NANOCHAT) not in sys.path:
    sys.path.append(str(_NANOCHAT))

# The clock reads these, captured when the harness is imported.
_perf = time.perf_counter
_monotonic = time.monotonic
_wall = time.time
_IMPORT_T = _perf()
# The CPU clock's reader (clock = "cpu"): this process's tree, or under torchrun the launcher's
# (every process of the run).
_TREE = TreeCPU(os.getppid() if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else None)
_TREE_CALL = TreeCPU.__call__


class Dist(NamedTuple):
    rank: int
    local_rank: int
    world_size: int
    device: str
    is_main: bool


class ResetError(RuntimeError):
    """The model or optimizer state after the warm-up differs from the state at H.begin()."""


class _State:
    def __init__(self) -> None:
        self.cfg: dict[str, Any] | None = None
        self.dist: Dist | None = None
        self.events = None
        self.phase = "setup"              # setup -> warmup -> timed -> finished
        self.acc = 0.0                    # clock seconds accumulated
        self.since: float | None = None   # the clock's reading (_now) when it last (re)started; None: stopped
        self.cpu = False                  # the clock counts CPU seconds of the tree (clock = "cpu"), fixed at its start
        self.cpu_at_start: float | None = None   # the tree's CPU seconds when the clock started (start-up)
        self.clock_start_wall: float | None = None
        self.val_s = 0.0                  # seconds spent in timed validations (clock stopped)
        self.warmup_val_s = 0.0
        self.validations: list[dict[str, Any]] = []
        self.warmup_validations = 0
        self.begin_fp: dict[str, Any] | None = None
        self.snap: dict[str, Any] | None = None
        self.init_loss: float | None = None
        self.reset: dict[str, Any] | None = None
        self.batches = 0                  # train batches drawn while the clock ran
        self.batches_outside = 0          # drawn while it was stopped (validation, after finish)
        self.loader_opening = False       # True while H.train_loader opens the train split (its reads are allowed)
        self.train_reads: list[dict[str, Any]] = []   # other opens of the train split's files, with the phase
        self.out_of_time = False
        self.rows = None                  # fixed validation rows (numpy, n x (T+1))
        self.final: dict[str, Any] | None = None
        self.step = 0
        self.pre_s: float | None = None   # import -> clock start
        self.finished_at: float | None = None
        self.tamper: list[str] = []      # calls of the clock's private functions from outside the harness


_S = _State()


# ----------------------------------------------------------------------------- configuration

def config() -> dict[str, Any]:
    """The run's configuration (a copy); see the module docstring for the keys."""
    if _S.cfg is None:
        path = os.environ.get(ENV_CONFIG)
        if not path:
            raise RuntimeError(
                f"speedrun_harness: ${ENV_CONFIG} is not set, so there is no run configuration; run the script "
                f"through the harness: `python -m speedrun_harness.runner --candidate DIR` (from benchmarks/speedrun) "
                f"or the benchmark notebook")
        try:
            with open(path) as fh:
                _S.cfg = json.load(fh)
        except (OSError, ValueError) as e:
            raise RuntimeError(f"speedrun_harness: cannot read the run configuration {path} ({e}); start the run "
                               f"through speedrun_harness.runner") from None
    return json.loads(json.dumps(_S.cfg))


def _cfg() -> dict[str, Any]:
    if _S.cfg is None:
        config()
    return _S.cfg  # type: ignore[return-value]


def target() -> float:
    return float(_cfg()["target"])


# ----------------------------------------------------------------------------- processes

def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def init() -> Dist:
    """Seed, threads, device and (under torchrun) the process group; returns :class:`Dist`."""
    if _S.dist is not None:
        return _S.dist
    import torch

    cfg = _cfg()
    rank, local_rank, world = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1)
    want = int(cfg.get("world_size", 1))
    if world != want:
        raise RuntimeError(f"speedrun_harness: {world} processes, but the run was launched for {want}; "
                           f"the runner starts torchrun itself when the preset has gpus > 1")
    if cfg.get("device", "cpu") == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("speedrun_harness: the preset's device is cuda but no GPU is visible")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
        torch.set_num_threads(max(1, int(cfg.get("threads", 2)) // max(1, world)))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            kw = {"device_id": torch.device(device)} if device != "cpu" else {}
            dist.init_process_group(backend="nccl" if device != "cpu" else "gloo", **kw)
    torch.manual_seed(int(cfg.get("seed", 0)))
    _S.dist = Dist(rank, local_rank, world, device, rank == 0)
    _event({"ev": "init", "world_size": world})
    return _S.dist


def _dist() -> Dist:
    return _S.dist if _S.dist is not None else init()


def _sync() -> None:
    """Wait for this process's device work, then for every process (the clock's edges)."""
    import torch

    d = _dist()
    if d.device != "cpu":
        torch.cuda.synchronize()
    if d.world_size > 1:
        import torch.distributed as dist

        t = torch.zeros(1, device=d.device)
        dist.all_reduce(t)
        if d.device != "cpu":
            torch.cuda.synchronize()


def _broadcast_float(v: float) -> float:
    d = _dist()
    if d.world_size == 1:
        return v
    import torch
    import torch.distributed as dist

    t = torch.tensor([v], dtype=torch.float64, device=d.device)
    dist.broadcast(t, src=0)
    return float(t.item())


def _gather_objects(obj: Any) -> list[Any]:
    d = _dist()
    if d.world_size == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- records

def _event(obj: dict[str, Any]) -> None:
    """Append one JSON line to the events file (process 0 only), flushed at once: the runner
    time-stamps clock events from outside as they arrive."""
    if _S.dist is not None and not _S.dist.is_main:
        return
    if _S.dist is None and _env_int("RANK", 0) != 0:
        return
    if _S.events is None:
        path = _cfg().get("events_path") or "events.jsonl"
        _S.events = open(path, "a", buffering=1)
    _S.events.write(json.dumps(obj) + "\n")
    _S.events.flush()


def _num(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


def log(step: int, loss: float, **extra: Any) -> None:
    """Append one curve point {step, t, loss, **extra} (process 0)."""
    _S.step = max(_S.step, int(step))
    if _S.dist is not None and not _S.dist.is_main:
        return
    _event({"step": int(step), "t": round(elapsed(), 4), "loss": float(_num(loss)),
            **{k: _num(v) for k, v in extra.items()}})


def _write_record(extra: dict[str, Any] | None = None) -> None:
    """This process's harness record (``harness.rank<r>.json`` in the working folder)."""
    d = _S.dist
    r = d.rank if d else _env_int("RANK", 0)
    rec = {
        "rank": r, "world_size": d.world_size if d else 1, "phase": _S.phase,
        "timed_s": round(_clock(), 6), "val_s": round(_S.val_s, 6), "warmup_val_s": round(_S.warmup_val_s, 6),
        "pre_s": _S.pre_s, "clock_start_wall": _S.clock_start_wall, "clock": "cpu" if _S.cpu else "wall",
        "cpu_at_clock_start": _S.cpu_at_start,
        "validations": _S.validations, "warmup_validations": _S.warmup_validations,
        "begin": _S.begin_fp, "reset": _S.reset, "init_loss": _S.init_loss,
        "batches": _S.batches, "batches_outside": _S.batches_outside, "final": _S.final,
        "train_reads": _S.train_reads[:20],
        "config_seen": {k: _cfg().get(k) for k in ("target", "val_tokens", "seq_len", "vocab_size", "budget_s")},
        "clock_intact": _clock_intact(), **(extra or {}),
    }
    folder = Path(_cfg().get("record_dir") or ".")
    tmp = folder / f".harness.rank{r}.json.tmp"
    tmp.write_text(json.dumps(rec, indent=1, default=str))
    os.replace(tmp, folder / f"harness.rank{r}.json")


def _clock_intact() -> dict[str, Any]:
    """The clock's functions are still the ones captured at import, and builtins."""
    bad = [n for n, f, now in (("time.perf_counter", _perf, time.perf_counter),
                               ("time.monotonic", _monotonic, time.monotonic),
                               ("time.time", _wall, time.time)) if f is not now or type(f).__name__ != "builtin_function_or_method"]
    mod = sys.modules.get(__name__)
    mine = [n for n in _ORIGINALS if getattr(mod, n, None) is not _ORIGINALS[n]]
    if getattr(mod, "_TREE", None) is not _TREE_ORIG or type(_TREE_ORIG).__call__ is not _TREE_CALL:
        mine.append("_TREE")
    return {"passed": not bad and not mine and not _S.tamper,
            "replaced": bad + [f"speedrun_harness.{n}" for n in mine] + _S.tamper[:5]}


# ----------------------------------------------------------------------------- the clock

def _now() -> float:
    """The clock's time source: perf_counter, or on a cpu-clock preset the tree's CPU seconds."""
    return _TREE() if _S.cpu else _perf()


def _clock() -> float:
    return _S.acc + (_now() - _S.since if _S.since is not None else 0.0)


def elapsed() -> float:
    """Seconds on the clock so far (0 before warmup_done; validations excluded)."""
    return _clock()


def time_left() -> float:
    """Budget seconds left (never negative), also capped by the hard limit of the process (wall:
    its deadline; cpu clock: allowance + budget + val_allowance CPU seconds of the tree)."""
    cfg = _cfg()
    left = float(cfg["budget_s"]) - _clock()
    reserve = float(cfg.get("finish_reserve_s", 5.0))
    if cfg.get("clock", "wall") == "cpu":
        if cfg.get("cpu_limit_s"):
            left = min(left, float(cfg["cpu_limit_s"]) - _TREE() - reserve)
    elif cfg.get("deadline"):
        left = min(left, float(cfg["deadline"]) - _wall() - reserve)
    return max(0.0, left)


def out_of_time() -> bool:
    """True once a validation found the budget spent (the same on every process)."""
    return _S.out_of_time


def _called_from_outside(what: str) -> None:
    """The clock's private functions are the harness's own: a call from elsewhere (the candidate
    pausing or restarting the clock) is recorded, and fails the clock_intact probe."""
    caller = sys._getframe(2)
    if caller.f_globals.get("__name__") != __name__:
        _S.tamper.append(f"{what} called from {caller.f_code.co_filename}:{caller.f_lineno}")


def _stop_clock() -> None:
    _called_from_outside("_stop_clock")
    if _S.since is not None:
        _S.acc += _now() - _S.since
        _S.since = None


def _start_clock() -> None:
    _called_from_outside("_start_clock")
    if _S.phase == "timed" and _S.since is None:
        _S.since = _now()


# ----------------------------------------------------------------------------- warm-up and reset

def _optims(optimizers: tuple) -> list:
    out = []
    for o in optimizers:
        out.extend(o if isinstance(o, (list, tuple)) else [o])
    return out


def begin(model, *optimizers) -> None:
    """Fingerprint and copy the initial state, and measure its validation loss (untimed)."""
    from . import state

    if _S.phase != "setup":
        raise RuntimeError(f"H.begin() called in phase {_S.phase!r}; call it once, before the warm-up")
    _dist()
    opts = _optims(optimizers)
    _S.begin_fp = state.fingerprint(model, opts)
    _S.snap = state.snapshot(model, opts)
    _S.init_loss = _val_loss(state.unwrap(model))["loss"]
    _S.phase = "warmup"
    _event({"ev": "begin", "init_loss": _S.init_loss})


def warmup_batch(batch_size: int | None = None, seq_len: int | None = None):
    """(x, y): random tokens of shape (B, T) on this process's device, for the warm-up."""
    import torch

    cfg = _cfg()
    d = _dist()
    B, T = int(batch_size or cfg.get("batch_size", 8)), int(seq_len or cfg["seq_len"])
    g = torch.Generator().manual_seed(12345 + d.rank)
    t = torch.randint(0, int(cfg["vocab_size"]), (B, T + 1), generator=g)
    t = t.to(d.device)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def warmup_done(model, *optimizers, restore: bool = True) -> None:
    """Restore (or only check) the state of :func:`begin`, verify it, then start the clock."""
    from . import state

    if _S.phase != "warmup":
        raise RuntimeError(f"H.warmup_done() called in phase {_S.phase!r}; call H.begin(model, *optimizers) "
                           f"before the warm-up and H.warmup_done(...) once after it")
    opts = _optims(optimizers)
    d = _dist()
    if d.device != "cpu":
        import torch

        torch.cuda.synchronize()
    if restore:
        state.restore(model, opts, _S.snap)
    fp = state.fingerprint(model, opts)
    mine = {"rank": d.rank, "begin": _S.begin_fp["sha256"], "after": fp["sha256"],
            "model_equal": fp["model_sha256"] == _S.begin_fp["model_sha256"],
            "optim_equal": fp["optim_sha256"] == _S.begin_fp["optim_sha256"],
            "nonzero_grads": fp["nonzero_grads"], "restored_by_harness": bool(restore)}
    mine["passed"] = mine["model_equal"] and mine["optim_equal"] and not fp["n_nonzero_grads"]
    every = _gather_objects(mine)
    passed = all(r["passed"] for r in every)
    _S.reset = {"passed": passed, "ranks": every, "restored_by_harness": bool(restore)}
    _S.snap = None
    if not passed:
        bad = [r for r in every if not r["passed"]]
        what = []
        for r in bad:
            parts = [p for p, ok in (("model parameters/buffers", r["model_equal"]),
                                     ("optimizer state", r["optim_equal"])) if not ok]
            if r["nonzero_grads"]:
                parts.append(f"gradients left in {r['nonzero_grads'][:3]}")
            what.append(f"process {r['rank']}: {', '.join(parts)}")
        _S.phase = "failed"
        _write_record()
        raise ResetError("speedrun_harness: the state after the warm-up differs from the state at H.begin() ("
                         + "; ".join(what) + "); restore it (H.warmup_done(..., restore=True) does) so that no "
                         "training happens outside the clock")
    _sync()
    _S.phase = "timed"
    _S.pre_s = round(_perf() - _IMPORT_T, 4)
    _S.clock_start_wall = _wall()
    _S.cpu = _cfg().get("clock", "wall") == "cpu"
    _event({"ev": "clock_start"})
    _S.since = _now()
    if _S.cpu:
        _S.cpu_at_start = round(_S.since, 4)


# ----------------------------------------------------------------------------- data

class _Loader:
    """This process's share of the global train stream, on its device (see train_loader)."""

    def __init__(self, batch_size: int, seq_len: int):
        from nanochat_harness.data import load_split
        from nanochat_harness.loader import TrainLoader

        cfg = _cfg()
        d = _dist()
        self.B, self.T, self.rank, self.world = batch_size, seq_len, d.rank, d.world_size
        _S.loader_opening = True
        try:
            tokens, offsets = load_split(cfg["data"]["train"])
        finally:
            _S.loader_opening = False
        self.inner = TrainLoader(tokens, offsets, batch_size=batch_size * d.world_size, seq_len=seq_len,
                                 bos_id=int(cfg["bos_id"]), device=d.device, seed=int(cfg.get("seed", 0)),
                                 chunk_tokens=int(cfg.get("doc_chunk_tokens", 0) or 0),
                                 buffer_docs=int(cfg.get("pack_buffer", 256)), prefetch=int(cfg.get("prefetch", 4)))

    def __iter__(self) -> "_Loader":
        return self

    def __next__(self):
        if _S.phase in ("setup", "warmup"):
            raise RuntimeError("speedrun_harness: train batches are only handed out once the clock runs; warm up on "
                               "H.warmup_batch() and call H.warmup_done(model, *optimizers) first")
        if _S.phase == "timed" and _S.since is not None:
            _S.batches += 1
        else:
            _S.batches_outside += 1
        x, y = next(self.inner)
        if self.world > 1:
            lo, hi = self.rank * self.B, (self.rank + 1) * self.B
            x, y = x[lo:hi], y[lo:hi]
        return x, y

    @property
    def epoch(self) -> int:
        return self.inner.epoch

    def close(self) -> None:
        self.inner.close()


_LOADERS: list[_Loader] = []


def train_loader(batch_size: int | None = None, seq_len: int | None = None) -> _Loader:
    cfg = _cfg()
    it = _Loader(int(batch_size or cfg.get("batch_size", 8)), int(seq_len or cfg["seq_len"]))
    _LOADERS.append(it)
    return it


# ----------------------------------------------------------------------------- validation

def _val_rows():
    if _S.rows is None:
        from nanochat_harness.data import load_split

        from .metric import fixed_rows

        cfg = _cfg()
        tokens, offsets = load_split(cfg["data"]["val"])
        _S.rows = fixed_rows(tokens, offsets, cfg)
    return _S.rows


def _val_loss(model) -> dict[str, Any]:
    from .metric import loss_over_rows

    cfg = _cfg()
    d = _dist()
    res = loss_over_rows(model, _val_rows(), d.device, int(cfg["vocab_size"]), int(cfg.get("eval_batch_size", 16)),
                         rank=d.rank, world_size=d.world_size)
    return res


def validate(model, step: int | None = None) -> float:
    """Validation loss on the fixed val tokens; the clock is stopped meanwhile."""
    if step is not None:
        _S.step = max(_S.step, int(step))
    m = model
    if type(m).__name__ == "DistributedDataParallel":
        m = m.module
    if _S.phase in ("setup", "warmup"):
        t0 = _perf()
        res = _val_loss(m)
        _S.warmup_val_s += _perf() - t0
        _S.warmup_validations += 1
        return res["loss"]
    if _S.phase != "timed":
        raise RuntimeError(f"H.validate() in phase {_S.phase!r}: the run is over")
    _sync()
    _stop_clock()
    t_clock = _S.acc
    _event({"ev": "val_start", "t": round(t_clock, 4)})
    t0 = _perf()
    res = _val_loss(m)
    # every process takes process 0's clock, so that time decisions agree across processes
    _S.acc = _broadcast_float(_S.acc)
    _S.out_of_time = _S.acc >= float(_cfg()["budget_s"])
    dur = _perf() - t0
    _S.val_s += dur
    rec = {"i": len(_S.validations), "step": _S.step, "t": round(t_clock, 4), "val_loss": res["loss"],
           "tokens": res["tokens"], "dur_s": round(dur, 4)}
    _S.validations.append(rec)
    _event({"ev": "val_end", **rec})
    _start_clock()
    return res["loss"]


def target_reached() -> bool:
    """Did the last validation reach the target (loss <= target)?"""
    return bool(_S.validations) and _S.validations[-1]["val_loss"] <= target()


# ----------------------------------------------------------------------------- the end

def finish(model, step: int | None = None, init_kwargs: dict[str, Any] | None = None,
           factory: str | None = None) -> float:
    """Stop the clock, run the final validation, save the model (weights only, plus how to
    rebuild it), write the harness records. Returns the final validation loss."""
    import torch

    from .state import unwrap

    if step is not None:
        _S.step = max(_S.step, int(step))

    if _S.phase != "timed":
        raise RuntimeError(f"H.finish() in phase {_S.phase!r}: call H.begin, H.warmup_done and train first")
    d = _dist()
    plain = unwrap(model)
    if init_kwargs is None:
        raise TypeError("speedrun_harness.finish(model, step, init_kwargs=...): pass the keyword arguments that "
                        f"rebuild the model; the re-check calls {type(plain).__name__}(**init_kwargs) and loads the "
                        f"weights (no pickled code is evaluated)")
    name = factory or type(plain).__name__
    try:
        spec = json.dumps({"format": 2, "factory": name, "init_kwargs": dict(init_kwargs)}, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"speedrun_harness.finish: init_kwargs must be plain JSON data: {e}") from None
    if not name.isidentifier() or len(spec) > 1 << 20:
        raise ValueError("speedrun_harness.finish: factory must name a module-level function of train_gpt.py and "
                         "init_kwargs stay under 1 MB as JSON")
    _sync()
    _stop_clock()
    _S.phase = "finished"
    t_final = _S.acc
    _event({"ev": "clock_stop", "t": round(t_final, 4)})
    m = model.module if type(model).__name__ == "DistributedDataParallel" else model
    t0 = _perf()
    res = _val_loss(m)
    dur = _perf() - t0
    _S.final = {"step": _S.step, "t": round(t_final, 4), "val_loss": res["loss"], "tokens": res["tokens"],
                "dur_s": round(dur, 4), "target": target(), "reached": res["loss"] <= target()}
    _event({"ev": "final", **_S.final})
    for it in _LOADERS:
        it.close()
    if d.is_main:
        path = Path(_cfg().get("model_path") or "model.pt")
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            state = {k: v.detach().to("cpu").contiguous() for k, v in plain.state_dict().items()}
            torch.save(state, tmp)
        except Exception as e:
            raise RuntimeError(f"speedrun_harness.finish: could not save the model's state dict "
                               f"({type(e).__name__}: {e})") from e
        spec_path = path.with_name("model.json")
        spec_tmp = path.with_name(".model.json.tmp")
        spec_tmp.write_text(spec)
        os.replace(spec_tmp, spec_path)
        os.replace(tmp, path)
    _S.finished_at = _perf()
    _write_record()
    if d.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    _event({"ev": "finish"})
    return res["loss"]


def _watch_train_reads() -> None:
    """Record every open of the train split's files that is not H.train_loader's own, with the
    phase it happened in (an audit hook: it cannot be removed). Reading the train tokens directly
    before the clock starts is how a candidate would train in the warm-up and swap the result in
    after the verified reset; the runner's train_data_in_clock probe fails such a run."""
    path = os.environ.get(ENV_CONFIG)
    if not path:
        return                                   # imported outside a run (the re-check, tests)
    try:
        train = (_cfg().get("data") or {}).get("train") or {}
    except RuntimeError:
        return
    watched = frozenset(os.path.realpath(v) for v in train.values() if isinstance(v, str))
    if not watched:
        return

    def hook(event, args, _w=watched, _S=_S, _real=os.path.realpath, _fsdecode=os.fsdecode,
             _types=(str, bytes, os.PathLike)):
        if event != "open" or _S.loader_opening or not args or not isinstance(args[0], _types):
            return
        try:
            p = _real(_fsdecode(args[0]))
        except Exception:   # noqa: BLE001 - never break the candidate's own opens
            return
        if p in _w and len(_S.train_reads) < 100:
            _S.train_reads.append({"phase": _S.phase, "path": p})

    sys.addaudithook(hook)


_watch_train_reads()

# Every function of the harness, as defined here: the clock_intact probe checks that none was replaced.
_ORIGINALS = {n: f for n, f in list(globals().items())
              if callable(f) and not isinstance(f, type) and getattr(f, "__module__", None) == __name__}
_TREE_ORIG = _TREE
