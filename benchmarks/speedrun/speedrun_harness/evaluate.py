"""The re-check process: ``python -m speedrun_harness.evaluate --workdir W --config C --out O``.

Run by the runner (sandboxed) after training. It packs the fixed val and hidden_val rows from the
runner's own configuration, imports the candidate's ``train_gpt.py`` as a module (its training
block does not run), unpickles the model ``H.finish`` saved, and computes the validation loss
(:mod:`speedrun_harness.metric`, with torch functions captured before the candidate's module
is imported) on val and hidden_val, plus nanochat's probes: ``logits`` (shape, dtype,
finiteness), ``causality`` (changing later tokens must not change earlier logits) and
``harness_intact`` (the torch functions the evaluation uses were not replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# Import order matters: the metric and nanochat's evaluation capture torch's functions now,
# before any candidate code runs.
from . import metric as M  # noqa: I001
from nanochat_harness import evaluate as NE  # noqa: E402

import torch  # noqa: E402

from autolab.harnesskit import atomic_write_json, load_module  # noqa: E402

CANDIDATE_MODULE = "__autolab_candidate__"
SCRIPT = "train_gpt.py"


def load_candidate(workdir: Path) -> Any:
    """Import ``train_gpt.py`` as ``__autolab_candidate__`` (its ``__main__`` block does not run)."""
    return load_module(workdir / SCRIPT, CANDIDATE_MODULE)


def evaluate(workdir: Path, cfg: dict[str, Any], log=print) -> dict[str, Any]:
    from nanochat_harness.data import load_split

    t0 = time.monotonic()
    vocab = int(cfg["vocab_size"])
    sets = {}
    for split in ("val", "hidden_val"):
        tokens, offsets = load_split(cfg["data"][split])
        sets[split] = M.fixed_rows(tokens, offsets, cfg)
    deny = [cfg["data"][s][k] for s in ("val", "hidden_val") for k in ("tokens", "offsets")]
    hits: list[str] = []
    NE._deny_reads(deny + list(cfg.get("deny_after_load", [])), hits)

    device = torch.device("cuda:0" if cfg.get("device") == "cuda" else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(int(cfg.get("threads", 0) or os.cpu_count() or 1))
    else:
        torch.cuda.set_device(device)
    os.chdir(workdir)
    module = load_candidate(workdir)
    model = NE.load_model(workdir, module).to(device)
    model.eval()
    t_load = time.monotonic() - t0

    probes: dict[str, Any] = {}
    probes["logits"] = NE.logits_probe(model, sets["val"], device, vocab)
    probes["causality"] = NE.causality_probe(model, device, vocab, int(cfg["seq_len"]), seed=int(cfg.get("seed", 0)))
    t1 = time.monotonic()
    batch = int(cfg.get("eval_batch_size", 16))
    val = M.loss_over_rows(model, sets["val"], device, vocab, batch)
    hidden = M.loss_over_rows(model, sets["hidden_val"], device, vocab, batch)
    t_metric = time.monotonic() - t1
    intact = NE.harness_intact()
    if hits:
        intact = {**intact, "passed": False, "detail": intact["detail"] + f"; candidate code tried to read evaluation "
                  f"data: {sorted(set(hits))}"}
    probes["harness_intact"] = intact
    n_params = sum(p.numel() for p in model.parameters())
    log(f"val_loss {val['loss']:.6f}  hidden_val_loss {hidden['loss']:.6f}  ({val['tokens']} tokens, {t_metric:.1f}s)")
    return {"val_loss": val["loss"], "hidden_val_loss": hidden["loss"], "tokens": val["tokens"], "val": val,
            "hidden_val": hidden, "rows": len(sets["val"]), "seq_len": int(cfg["seq_len"]), "num_params": n_params,
            "probes": probes, "timings": {"load_s": round(t_load, 3), "metric_s": round(t_metric, 3),
                                          "total_s": round(time.monotonic() - t0, 3)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m speedrun_harness.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    cfg = json.loads(a.config.read_text())
    out = a.out.resolve()
    from . import ENV_CONFIG

    os.environ[ENV_CONFIG] = str(cfg.get("run_config", ""))   # the candidate module may call H.config()
    try:
        res = {"ok": True, **evaluate(a.workdir.resolve(), cfg)}
    except Exception as e:  # noqa: BLE001 - the runner records it as a failed run
        traceback.print_exc()
        res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    atomic_write_json(out, res, sort_keys=False, default=str, newline=False)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
