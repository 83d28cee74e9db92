"""The trusted side of speedrun's re-check:
``python -m speedrun_harness.evaluate --config C --out O --socket S --model-dir D``.

The split evaluation of :mod:`nanochat_harness.evaluate`, with speedrun's metric: the runner
starts this process (it never imports candidate code) and a sandboxed model process
(:mod:`nanochat_harness.model_server`, in the fresh folder ``D`` holding only ``train_gpt.py``
and the weights-only model). This process checks ``model.pt`` weights-only, packs the fixed val
and hidden_val rows from the runner's configuration, sends the input rows of both splits,
shuffled together with real-text probe batches, and computes the validation loss (mean
cross-entropy in nats over every target, BOS included) of each split from the returned logits,
plus nanochat's probes: ``logits`` (finite, deterministic, rows independent), ``causality``
(changing later tokens must not change earlier logits, on random tokens and on real text) and
``harness_intact``.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any


from nanochat_harness import evaluate as NE

from . import metric as M


def evaluate(cfg: dict[str, Any], listener: socket.socket, model_dir: Path, log=print) -> dict[str, Any]:
    """The re-check's result: val_loss, hidden_val_loss, tokens and the probes."""
    from nanochat_harness.data import load_split

    t0 = time.monotonic()
    vocab, seq_len = int(cfg["vocab_size"]), int(cfg["seq_len"])
    weights = NE.check_weights(model_dir / "model.pt")
    sets = {}
    for split in ("val", "hidden_val"):
        tokens, offsets = load_split(cfg["data"][split])
        sets[split] = M.fixed_rows(tokens, offsets, cfg)
    device, remote = NE.connect_model(listener, cfg, vocab)
    t_load = time.monotonic() - t0
    batch = int(cfg.get("eval_batch_size", 16))
    rng, probe_seed = NE.fresh_randomness()
    t1 = time.monotonic()
    try:
        stream = NE.split_metric(remote, sets, device, vocab, batch, token_bytes=None, rng=rng, twins=2, repeats=2,
                                 extra=lambda: NE.causality_probe(remote, device, vocab, seq_len, seed=probe_seed,
                                                                  rows=min(batch, 8)))
    finally:
        remote.close()
    t_metric = time.monotonic() - t1
    probes = NE.probes_from(stream, stream["extra"] or {"passed": False, "detail": "not run"}, device)
    probes["harness_intact"] = {**NE.harness_intact(), "detail": "the losses were computed in a process that never "
                                "ran candidate code (split evaluation); its torch functions are unchanged"}
    out: dict[str, Any] = {}
    for n in ("val", "hidden_val"):
        a = stream[n]
        a["loss"] = a["nats"] / a["tokens"] if a["tokens"] and a["finite"] else float("nan")
        out[n] = a
    # the trusted side's cost of one pass over val (the runner bounds the train process's
    # validation pauses with it)
    val_batches = -(-len(sets["val"]) // max(1, min(batch, len(sets["val"]) + len(sets["hidden_val"]))))
    log(f"val_loss {out['val']['loss']:.6f}  hidden_val_loss {out['hidden_val']['loss']:.6f}  "
        f"({out['val']['tokens']} tokens, {t_metric:.1f}s)")
    return {"val_loss": out["val"]["loss"], "hidden_val_loss": out["hidden_val"]["loss"],
            "tokens": out["val"]["tokens"], "val": out["val"], "hidden_val": out["hidden_val"],
            "rows": len(sets["val"]), "seq_len": seq_len, "num_params": weights["num_params"], "probes": probes,
            "transport": {"kind": "cuda-ipc" if remote.ipc is True else "unix-socket", "batches": remote.calls,
                          "logits_mib_through_host": round(remote.bytes / 2**20, 1), "ipc_error": remote.ipc_error},
            "timings": {"load_s": round(t_load, 3), "metric_s": round(t_metric, 3),
                        "val_pass_s": round(t_metric * val_batches / max(1, remote.calls), 3), "total_s": round(time.monotonic() - t0, 3)}}


def main(argv: list[str] | None = None) -> int:
    return NE.serve_main(argv, evaluate, "python -m speedrun_harness.evaluate")


if __name__ == "__main__":
    sys.exit(main())
