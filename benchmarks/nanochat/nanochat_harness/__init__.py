"""The nanochat harness: what a candidate's ``train.py`` may use (``import nanochat_harness as H``).

The harness, not the candidate, owns the data split, the clock and the metric. The runner
(``nanochat_harness.runner``) starts ``python train.py`` in a sandbox with ``$AUTOLAB_RUN_CONFIG``
naming a JSON file; everything below reads it. Importing this package is cheap: no torch, no
data is read until a function asks for it.

API
---
``config() -> dict``
    The preset's settings plus the run's facts. Keys always present:

    ========================  ==================================================================
    ``seed``                  int, the run seed (seed torch with it)
    ``device``                ``"cpu"`` or ``"cuda"``
    ``budget_s``              training seconds (see the time rule in task.md)
    ``allowance_s``           declared start-up seconds (imports, data, compile) on top of it
    ``vocab_size``            tokenizer vocabulary; logits must have exactly this last dimension
    ``seq_len``               evaluation row length T; the train loader's default
    ``bos_id``                id of ``<|bos|>``, which starts every document and every row
    ``preset``, ``task``      names
    ========================  ==================================================================

    Model-size hints from the preset (the seed reads them; a candidate may ignore them):
    ``depth`` (transformer blocks), ``n_embd`` (width), ``n_head`` (attention heads),
    ``batch_size`` (rows per device step), ``total_batch_size`` (tokens per optimizer step;
    a multiple of batch_size * seq_len, 0 or absent: one step per batch), ``threads`` (CPU
    threads on cpu presets). Other preset keys pass through unchanged.

``train_loader(batch_size=None, seq_len=None, device=None) -> iterator of (x, y)``
    int64 tensors of shape (B, T) on ``device``, forever; ``y`` is ``x`` shifted by one. Rows
    are best-fit packed from train-split documents, each document prefixed with BOS, every row
    starting with BOS, no padding; epochs reshuffle from the run seed. The loader's ``epoch``
    and ``batches`` attributes count progress. Drawing the first batch starts the clock.
    The batches come from the run's trusted data process (``nanochat_harness.data_server``),
    the only process that can read the train split: it packs them and stamps the first
    request as the clock's start, seen from outside this process. Building a loader costs a
    connection and sends no data.

``start_clock()``, ``elapsed() -> float``, ``time_left() -> float``
    The training clock. It starts at the first of: ``start_clock()``, ``elapsed()``,
    ``time_left()`` or the first batch drawn from a train loader. ``time_left()`` is
    ``budget_s - elapsed()``, but never more than what the process has left before the
    harness's hard limit (budget + allowance since launch, less a reserve for ``finish``); it
    is never negative. Train while ``time_left() > 0``.

    What the clock counts is the preset's ``clock`` key. ``"wall"`` (the GPU presets): wall
    seconds. ``"cpu"`` (the CPU presets): CPU seconds (user + system) of the whole training
    process tree: every thread of this process, its children that were waited for, and its
    live descendants (read from ``/proc``, rescanned every second). A script that sleeps uses
    none of its budget; helper processes and threads are charged for the CPU they use; a busy
    machine slows a run down without shortening its training. The hard limit is then
    budget + allowance CPU seconds of the tree since launch (also enforced from outside), and
    a wall-clock limit of ``wall_factor`` times that is only a safety net.

``log(step, loss, **extra)``
    One point of the live training curve (appended as a JSON line to the run's events file).

``token_bytes(device="cpu") -> LongTensor``
    UTF-8 byte length of each token id (0 for ``<|bos|>``), the weights of bits-per-byte.

``finish(model, init_kwargs, factory=None)``
    Save the trained model for evaluation, weights only: ``model.pt`` (the state dict, on CPU,
    unwrapped from ``torch.compile``; loadable with ``torch.load(..., weights_only=True)``) and
    ``model.json`` (how to rebuild it, plain JSON data: the class name, or ``factory``, the name
    of a module-level function of train.py, and ``init_kwargs``). Call it last, then print the
    closing ``---`` block of ``key: value`` lines and exit.

The evaluation runs in two processes. A sandboxed model process, in a fresh folder that holds
only a copy of the candidate's ``train.py``, ``model.pt`` and ``model.json`` (no other file of
the run is visible to it), imports ``train.py`` as a module (its training must sit under
``if __name__ == "__main__":``), calls ``<class or factory>(**init_kwargs)``, loads the state
dict (strict: every key must match) and answers ``model(idx)`` calls (``idx`` int64 of shape
(B, T); it must return logits of shape (B, T, vocab_size)). Everything the model needs must
therefore be in its constructor's arguments or in its state dict (parameters and persistent
buffers). A trusted process, which never imports candidate code, holds the targets, sends the
input batches, computes the metric from the returned logits and runs the probes.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

__all__ = ["config", "train_loader", "start_clock", "elapsed", "time_left", "log", "token_bytes", "finish"]

_IMPORT_T = time.monotonic()
_T0: float | None = None
_CPU_T0: float | None = None      # the tree's CPU seconds when the clock started (cpu clock)
_CONFIG: dict[str, Any] | None = None
_EVENTS = None
_LOADERS: list = []


def _guard_train_process() -> None:
    """In the train process (the runner sets AUTOLAB_NANOCHAT_ROLE=train): plant the canary API
    key and record reads outside the workspace, the packages, token_bytes and the tokenizer
    (guard.py). The train split itself is not readable here: the data process serves it."""
    if os.environ.get("AUTOLAB_NANOCHAT_ROLE") != "train":
        return
    from . import guard

    guard.plant_canary()
    try:
        cfg = config()
    except RuntimeError:
        return
    data_files = [v for v in (cfg.get("data") or {}).values() if isinstance(v, str)]   # token_bytes, tokenizer: files
    allowed = [os.getcwd(), os.path.dirname(os.environ.get("AUTOLAB_RUN_CONFIG", "") or "/.none"),
               os.path.dirname(cfg.get("events_path") or os.getcwd()), *data_files,
               *[d for d in cfg.get("compile_cache_dirs") or () if isinstance(d, str)]]   # torch.compile's own entries
    guard.watch_reads(allowed, os.path.join(os.path.dirname(cfg.get("events_path") or os.getcwd()), guard.READS_LOG))


def config() -> dict[str, Any]:
    """The run's configuration (a copy); see the module docstring for the keys."""
    global _CONFIG
    if _CONFIG is None:
        path = os.environ.get("AUTOLAB_RUN_CONFIG")
        if not path:
            raise RuntimeError(
                "nanochat_harness: $AUTOLAB_RUN_CONFIG is not set, so there is no run configuration; "
                "run the script through the harness: `python -m nanochat_harness.runner --candidate DIR` "
                "(from benchmarks/nanochat) or the benchmark notebook")
        try:
            with open(path) as fh:
                _CONFIG = json.load(fh)
        except (OSError, ValueError) as e:
            raise RuntimeError(f"nanochat_harness: cannot read the run configuration {path} ({e}); "
                               f"start the run through nanochat_harness.runner") from None
    return json.loads(json.dumps(_CONFIG))


def _cfg() -> dict[str, Any]:
    if _CONFIG is None:
        config()
    return _CONFIG  # type: ignore[return-value]


CLOCK_LINE = "[nanochat-harness] training clock started"
GATE_LINE = "[nanochat-harness] clock ready; waiting for the GPU's timed turn"
SAVED_LINE = "[nanochat-harness] model saved for evaluation"


from autolab.harnesskit import TreeCPU as _TreeCPU  # noqa: E402 - the tree's CPU seconds (shared with speedrun)

_tree_cpu = _TreeCPU()


def _cpu_clock() -> bool:
    return _cfg().get("clock", "wall") == "cpu"


def start_clock() -> None:
    """Start the training clock now (no effect once started). On a GPU another run is training on
    (the runner's ``clock_gate``), it first waits for that run's turn to end."""
    global _T0, _CPU_T0
    if _T0 is None:
        _wait_at_gate()
        _T0 = time.monotonic()
        try:
            _CPU_T0 = _tree_cpu() if _cpu_clock() else None
        except RuntimeError:   # no run configuration: a wall clock
            _CPU_T0 = None
        try:   # the runner times this line's arrival from outside the process (the authoritative clock)
            os.write(1, ("\n" + CLOCK_LINE + "\n").encode())   # on a line of its own, whatever was printed before
        except OSError:
            pass


def _wait_at_gate() -> None:
    """``clock_gate``: say so and wait for the gate file, which holds the run's hard deadline (a
    time stamp: the runner's, which counts the time this process waited or was stopped)."""
    try:
        cfg = _cfg()
    except RuntimeError:   # no run configuration: no gate
        return
    gate = cfg.get("clock_gate")
    if not gate:
        return
    os.write(1, ("\n" + GATE_LINE + "\n").encode())
    t0 = time.time()
    while not os.path.exists(gate):
        time.sleep(0.01)
    try:
        with open(gate) as fh:
            cfg["deadline"] = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        if cfg.get("deadline"):
            cfg["deadline"] = float(cfg["deadline"]) + (time.time() - t0)


def elapsed() -> float:
    """Training seconds since the clock started (starting it if needed): wall seconds, or on a
    cpu-clock preset the CPU seconds of the whole process tree."""
    start_clock()
    if _CPU_T0 is not None:
        return _tree_cpu() - _CPU_T0
    return time.monotonic() - _T0  # type: ignore[operator]


def time_left() -> float:
    """Training seconds left: budget minus elapsed, capped by the harness's hard limit (wall:
    the deadline; cpu clock: budget + allowance CPU seconds of the tree since launch)."""
    cfg = _cfg()
    left = float(cfg["budget_s"]) - elapsed()
    reserve = float(cfg.get("finish_reserve_s", 2.0))
    if _CPU_T0 is not None:
        if cfg.get("cpu_limit_s"):
            left = min(left, float(cfg["cpu_limit_s"]) - _tree_cpu() - reserve)
    else:
        deadline = cfg.get("deadline")
        if deadline:
            left = min(left, float(deadline) - time.time() - reserve)
    return max(0.0, left)


def train_loader(batch_size: int | None = None, seq_len: int | None = None, device: str | None = None):
    """Batches (x, y) of packed train-split rows, forever; see the module docstring."""
    from . import loader as _loader

    cfg = _cfg()
    served = cfg.get("train_data") or {}
    if not served.get("socket"):
        raise RuntimeError("nanochat_harness: the run configuration names no train data process; start the run "
                           "through nanochat_harness.runner")
    it = _loader.ServedLoader(
        served["socket"], str(served.get("token", "")), batch_size=int(batch_size or cfg.get("batch_size", 8)),
        seq_len=int(seq_len or cfg["seq_len"]), device=device or cfg.get("device", "cpu"),
        prefetch=int(cfg.get("prefetch", 4)), on_first_batch=start_clock)
    _LOADERS.append(it)
    return it


def token_bytes(device: str = "cpu"):
    """LongTensor (vocab_size,): UTF-8 bytes of each token; 0 for special tokens."""
    import numpy as np
    import torch

    return torch.from_numpy(np.load(_cfg()["data"]["token_bytes"]).astype(np.int64)).to(device)


def _event(obj: dict[str, Any]) -> None:
    global _EVENTS
    if _EVENTS is None:
        path = _cfg().get("events_path") or "events.jsonl"
        _EVENTS = open(path, "a", buffering=1)
    _EVENTS.write(json.dumps(obj) + "\n")


def _num(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


def log(step: int, loss: float, **extra: Any) -> None:
    """Append one curve point {step, t, loss, **extra} to the run's events file."""
    _event({"step": int(step), "t": round(elapsed(), 4), "loss": float(_num(loss)),
            **{k: _num(v) for k, v in extra.items()}})


MODEL_FILE = "model.pt"
MODEL_SPEC = "model.json"
MAX_SPEC_BYTES = 1 << 20


def finish(model, init_kwargs: dict[str, Any] | None = None, factory: str | None = None,
           path: str = MODEL_FILE) -> str:
    """Save the model for the harness's evaluation, weights only; returns the weights' path.

    ``init_kwargs``: the keyword arguments that rebuild the model (plain JSON data); the
    evaluation calls ``factory(**init_kwargs)`` (a module-level function of train.py) or, without
    a factory, ``<the model's class>(**init_kwargs)``, then loads the state dict."""
    import torch

    t_train = elapsed()
    m = getattr(model, "_orig_mod", model)         # unwrap torch.compile
    if init_kwargs is None:
        raise TypeError("nanochat_harness.finish(model, init_kwargs): pass the keyword arguments that rebuild the "
                        "model, e.g. H.finish(model, dict(vocab_size=V, depth=D, ...)); the evaluation calls "
                        f"{type(m).__name__}(**init_kwargs) and loads the weights (no pickled code is evaluated)")
    name = factory or type(m).__name__
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"nanochat_harness.finish: factory must be the name of a module-level function of train.py, "
                         f"got {factory!r}")
    try:
        spec = json.dumps({"format": 2, "factory": name, "init_kwargs": dict(init_kwargs)}, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"nanochat_harness.finish: init_kwargs must be plain JSON data (numbers, strings, bools, "
                        f"lists, dicts): {e}") from None
    if len(spec) > MAX_SPEC_BYTES:
        raise ValueError(f"nanochat_harness.finish: init_kwargs take {len(spec)} bytes as JSON (at most "
                         f"{MAX_SPEC_BYTES}); put tensors in the model's state dict instead")
    state = {k: v.detach().to("cpu").contiguous() for k, v in m.state_dict().items()}
    if torch.cuda.is_initialized():
        # the training's cached activations back to the GPU before the (seconds of) saving: on a GPU
        # too small for two runs, the next run's start-up waits for this memory (runner.GpuBaton)
        torch.cuda.empty_cache()
    tmp = f".{path}.tmp-{os.getpid()}"
    try:
        torch.save(state, tmp)
    except Exception as e:
        raise RuntimeError(f"nanochat_harness.finish: could not save the model's state dict "
                           f"({type(e).__name__}: {e})") from e
    spec_tmp = f".{MODEL_SPEC}.tmp-{os.getpid()}"
    with open(spec_tmp, "w") as fh:
        fh.write(spec)
    os.replace(spec_tmp, MODEL_SPEC)
    os.replace(tmp, path)
    try:   # the runner notes this line's arrival: the end of the training window, seen from outside
        os.write(1, ("\n" + SAVED_LINE + "\n").encode())
    except OSError:
        pass
    for it in _LOADERS:
        it.close()
    info = {"training_s": round(t_train, 4), "since_import_s": round(time.monotonic() - _IMPORT_T, 4),
            "clock": "cpu" if _CPU_T0 is not None else "wall", "training_wall_s": round(time.monotonic() - _T0, 4),
            "cpu_before_clock_s": None if _CPU_T0 is None else round(_CPU_T0, 4),
            "batches": sum(it.batches for it in _LOADERS), "epoch": max((it.epoch for it in _LOADERS), default=0)}
    with open("finish.json", "w") as fh:
        json.dump(info, fh)
    if _EVENTS is not None:
        _EVENTS.flush()
    return os.path.abspath(path)


_guard_train_process()
