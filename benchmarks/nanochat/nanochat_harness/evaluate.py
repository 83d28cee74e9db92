"""The evaluation process: ``python -m nanochat_harness.evaluate --workdir W --config C --out O``.

Run by the runner (sandboxed) after training. It reads the fixed val and hidden_val rows,
imports the candidate's ``train.py`` as the module ``__autolab_candidate__`` (its training
block does not run), unpickles ``model.pt``, runs the probes and computes

    bits per byte = Σ nats / (ln 2 · Σ target bytes)

over ``eval_tokens`` target tokens at ``seq_len``: nats from the model's logits, computed here
in float32 and summed in float64; targets that are special tokens (0 bytes) are left out of
both sums. The torch functions used are captured before any candidate code runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
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
_no_grad = torch.no_grad
_autocast = torch.autocast
_load = torch.load
_to_float = torch.Tensor.float
_to_double = torch.Tensor.double
_tsum = torch.Tensor.sum
_LN2 = math.log(2.0)

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
        scale = float(base.abs().max()) + 1.0
        noise = float((again - base).abs().max()) / scale
        tol = max(1e-3 if device.type == "cuda" else 1e-4, 4 * noise)
        worst, worst_t, moved = 0.0, None, 0.0
        for t in positions:
            x2 = x.clone()
            x2[:, t + 1:] = (x[:, t + 1:] + 1 + torch.randint(0, vocab_size - 1, x[:, t + 1:].shape, generator=g)) % vocab_size
            other = _to_float(_logits_of(model, x2.to(device), device, vocab_size))
            diff = float((other[:, :t + 1] - base[:, :t + 1]).abs().max()) / scale
            if t + 1 < seq_len:
                moved = max(moved, float((other[:, t + 1:] - base[:, t + 1:]).abs().max()) / scale)
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


# ----------------------------------------------------------------------------- candidate loading

def load_candidate(workdir: Path) -> Any:
    """Import ``train.py`` as ``__autolab_candidate__`` (its ``__main__`` block does not run)."""
    return load_module(workdir / "train.py", CANDIDATE_MODULE)


def load_model(workdir: Path, module: Any) -> torch.nn.Module:
    """Unpickle model.pt; classes pickled as ``__main__.X`` resolve to the candidate module."""
    real_main = sys.modules["__main__"]
    sys.modules["__main__"] = module
    try:
        obj = _load(workdir / "model.pt", map_location="cpu", weights_only=False)
    finally:
        sys.modules["__main__"] = real_main
    model = obj.get("model") if isinstance(obj, dict) else obj
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model.pt holds {type(model).__name__}, not an nn.Module; save it with H.finish(model)")
    return model


def _deny_reads(paths: list[str], hits: list[str]) -> None:
    """After the candidate module is imported, opening the evaluation data is refused."""
    denied = [os.path.realpath(p) for p in paths]

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            p = os.path.realpath(os.fsdecode(args[0]))
            if any(p == d or p.startswith(d.rstrip("/") + "/") for d in denied):
                hits.append(p)
                raise PermissionError(f"nanochat harness: reading {p} is not allowed to candidate code")

    sys.addaudithook(hook)


# ----------------------------------------------------------------------------- main

def evaluate(workdir: Path, cfg: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    from .data import load_split
    from .loader import eval_rows

    t0 = time.monotonic()
    seq_len, vocab = int(cfg["seq_len"]), int(cfg["vocab_size"])
    n_rows = max(1, int(cfg.get("eval_tokens", 32768)) // seq_len)
    chunk = int(cfg.get("doc_chunk_tokens", 0) or 0)
    sets: dict[str, np.ndarray] = {}
    for split in ("val", "hidden_val"):
        tokens, offsets = load_split(cfg["data"][split])
        rows = eval_rows(tokens, offsets, seq_len, n_rows, int(cfg["bos_id"]), chunk_tokens=chunk,
                         buffer_docs=int(cfg.get("pack_buffer", 256)))
        if rows is None:
            raise ValueError(f"the {split} split holds fewer than {n_rows} rows of {seq_len + 1} tokens; lower "
                             f"eval_tokens in the preset (task.toml) or use a larger corpus")
        sets[split] = rows
    token_bytes = torch.from_numpy(np.load(cfg["data"]["token_bytes"]).astype(np.int64))
    denied_hits: list[str] = []
    _deny_reads([cfg["data"][s][k] for s in ("val", "hidden_val") for k in ("tokens", "offsets")]
                + list(cfg.get("deny_after_load", [])), denied_hits)
    if cfg.get("reads_log"):   # weights or data the candidate's code reads from elsewhere (guard.py)
        from .guard import watch_reads

        watch_reads([str(workdir), os.path.dirname(str(cfg.get("run_config") or "/.none")),
                     os.path.dirname(str(cfg["reads_log"]))], str(cfg["reads_log"]))

    device = torch.device(cfg.get("device", "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(int(cfg.get("threads", 0) or os.cpu_count() or 1))
    os.chdir(workdir)
    module = load_candidate(workdir)
    model = load_model(workdir, module).to(device)
    model.eval()
    t_load = time.monotonic() - t0

    probes: dict[str, Any] = {}
    batch_rows = int(cfg.get("eval_batch_size", 8))
    probes["logits"] = logits_probe(model, sets["val"], device, vocab, batch_rows=min(batch_rows, 4))
    probes["causality"] = causality_probe(model, device, vocab, seq_len, seed=int(cfg.get("seed", 0)))
    check = {"seed": int(cfg.get("seed", 0)), "batches": int(cfg.get("causal_check_batches", 2))}
    t1 = time.monotonic()
    val = bits_per_byte(model, sets["val"], token_bytes, device, vocab, batch_rows, causal_check=check)
    hidden = bits_per_byte(model, sets["hidden_val"], token_bytes, device, vocab, batch_rows,
                           causal_check={**check, "seed": check["seed"] + 1})
    t_metric = time.monotonic() - t1
    # the causality check inside the metric (real text, the metric's own batches)
    tol = float(probes["causality"].get("tolerance", 1e-4))
    in_metric = max(val["causal_max_rel"], hidden["causal_max_rel"])
    c = dict(probes["causality"])
    c["in_metric_max_rel"], c["in_metric_rows"] = in_metric, val["causal_rows"] + hidden["causal_rows"]
    if in_metric > tol:
        c["passed"] = False
        c["detail"] = (f"on real evaluation text, logits up to a cut changed by {in_metric:.2e} (relative, > {tol:.0e}) "
                       f"when only the text after the cut changed: the model sees the future"
                       + ("" if probes["causality"]["passed"] else "; " + probes["causality"]["detail"]))
    elif c.get("passed"):
        c["detail"] += f"; also on real text inside the metric ({c['in_metric_rows']} rows, max {in_metric:.1e})"
    probes["causality"] = c
    if CONTRACT:
        lp = dict(probes["logits"])
        lp["passed"] = False
        lp["detail"] = "; ".join(CONTRACT) + ("" if probes["logits"]["passed"] else "; " + lp["detail"])
        probes["logits"] = lp
    intact = harness_intact()
    if denied_hits:
        intact = {**intact, "passed": False, "detail": intact["detail"] + f"; candidate code tried to read "
                  f"evaluation data: {sorted(set(denied_hits))}", "denied_reads": sorted(set(denied_hits))}
    probes["harness_intact"] = intact
    n_params = sum(p.numel() for p in model.parameters())
    log(f"val_bpb {val['bpb']:.6f}  hidden_val_bpb {hidden['bpb']:.6f}  ({val['tokens']} tokens, {t_metric:.1f}s)")
    return {
        "val_bpb": val["bpb"], "hidden_val_bpb": hidden["bpb"],
        "val": val, "hidden_val": hidden, "eval_rows": n_rows, "seq_len": seq_len,
        "num_params": n_params, "probes": probes,
        "timings": {"load_s": round(t_load, 3), "metric_s": round(t_metric, 3), "total_s": round(time.monotonic() - t0, 3)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nanochat_harness.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, type=Path, help="the run's working folder (train.py, model.pt)")
    ap.add_argument("--config", required=True, type=Path, help="the evaluation config JSON written by the runner")
    ap.add_argument("--out", required=True, type=Path, help="where to write the evaluation JSON")
    a = ap.parse_args(argv)
    cfg = json.loads(a.config.read_text())
    out = a.out.resolve()
    os.environ["AUTOLAB_RUN_CONFIG"] = str(cfg.get("run_config", ""))   # the candidate module may read H.config()
    try:
        res = {"ok": True, **evaluate(a.workdir.resolve(), cfg)}
    except Exception as e:  # noqa: BLE001 - the runner records it as a failed run
        traceback.print_exc()
        res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    atomic_write_json(out, res, sort_keys=False, default=str, newline=False)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
