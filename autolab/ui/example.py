"""A small, synthetic research log for demos, docs and tests of the widgets and the report.

``example_lab(path)`` writes a log with two research threads, a seed baseline, promoted,
rejected, failed and merged candidates, verdicts with checks, and result JSONs with
training curves — everything the report draws, in under a second and with no task run.
Every record is marked ``meta.synthetic = True``.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from ..log import ResearchLog
from ..records import Candidate, Idea, Run, State, Verdict, new_id, now
from ..diffs import unified_diff
from ..store import Store, candidate_id

EXAMPLE_SEED = '''"""A tiny training script (example seed)."""

# --- settings
DEPTH = 4              # transformer layers
WIDTH = 256            # model width
LR = 0.002             # peak learning rate
WARMDOWN = 0.2         # fraction of the budget spent decaying the learning rate
BATCH = 16             # sequences per step
ACTIVATION = "gelu"    # mlp activation


def lr_at(frac):
    """Learning-rate schedule: constant, then linear warmdown."""
    if frac < 1 - WARMDOWN:
        return LR
    return LR * (1 - frac) / WARMDOWN


# --- training
if __name__ == "__main__":
    print("train", DEPTH, WIDTH, LR, ACTIVATION)
'''


def _edit(text: str, **settings: object) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        for k, v in settings.items():
            if line.startswith(f"{k} = "):
                comment = line[line.index("#"):] if "#" in line else "\n"
                line = f"{k} = {v!r}".ljust(22) + " " + comment
        lines.append(line)
    return "".join(lines)


def example_lab(path, *, task: str = "example", metric: str = "val_bpb", direction: str = "minimize",
                preset: str = "cpu-tiny", seed: int = 0) -> Path:
    """Write a synthetic lab at ``path`` (log.db, objects, run result JSONs); returns the path."""
    root = Path(path).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "lab.json").exists():
        (root / "lab.json").write_text(json.dumps({"task": task, "preset": preset, "synthetic": True}, indent=2))
    log = ResearchLog(root / "log.db")
    store = Store(root)
    for k, v in (("task", task), ("metric", metric), ("direction", direction)):
        if log.get_meta(k) is None:
            log.set_meta(k, v)
    rng = random.Random(seed)
    syn = {"synthetic": True}

    def cand(text: str, parent: Candidate | None, idea: Idea | None, thread: str, **meta) -> Candidate:
        files = store.snapshot({"train.py": text})
        old = store.read(parent.files) if parent else {}
        c = Candidate(id=candidate_id(files), task=task, files=files, parent_id=parent.id if parent else None,
                      idea_id=idea.id if idea else None, thread=thread, diff=unified_diff(old, {"train.py": text}),
                      meta={**syn, **meta})
        return log.append(c)  # type: ignore[return-value]

    def idea(title: str, hyp: str, thread: str, parent: Candidate, source: str = "playbook", **edit) -> Idea:
        i = Idea(id=new_id("idea"), task=task, title=title, hypothesis=hyp, plan=f"set {edit}", source=source,
                 thread=thread, parent_id=parent.id, edit={"settings": edit} if edit else None, meta=dict(syn))
        log.append(i)
        return log.append(i.with_state(State.READY))  # type: ignore[return-value]

    def runs(c: Candidate, mean: float, seeds, purpose: str, fail: str | None = None) -> list[Run]:
        out = []
        for s in seeds:
            rid = new_id("run")
            rdir = root / "runs" / rid
            rdir.mkdir(parents=True, exist_ok=True)
            r = Run(id=rid, task=task, candidate_id=c.id, preset=preset, seed=s, purpose=purpose,
                    notebook=str(rdir / "notebook.ipynb"), result_path=str(rdir / "result.json"), meta=dict(syn))
            log.append(r)
            if fail:
                curve = [{"step": k, "t": 0.5 * k, "loss": 4.2 - 0.05 * k} for k in range(6)]
                res = {"status": "failed", "reason": fail, "curve": curve, "metrics": {}}
                done = r.with_state(State.FAILED, ended_at=now(), timings={"total_s": 4.0},
                                    error={"cell": 3, "ename": "RuntimeError", "evalue": fail, "traceback": []})
            else:
                value = mean + rng.gauss(0, 0.006)
                curve = [{"step": k, "t": 0.5 * k, "loss": value + 2.6 * math.exp(-0.5 * k / 5) + rng.gauss(0, 0.03)}
                         for k in range(41)]
                res = {"status": "ok", "metrics": {metric: value}, "curve": curve}
                done = r.with_state(State.COMPLETE, ended_at=now(), metrics={metric: value, "train_loss": curve[-1]["loss"]},
                                    timings={"train_s": 20.0, "eval_s": 3.1, "total_s": 26.5, "budget_s": 20.0})
            (rdir / "result.json").write_text(json.dumps(res))
            out.append(log.append(done))
        return out  # type: ignore[return-value]

    def verdict(c: Candidate, parent: Candidate, state: State, cm: float, pm: float, p: float | None, n: tuple[int, int],
                reason: str, failed: str | None = None) -> Verdict:
        checks = [{"name": name, "passed": name != failed, "detail": ("read the validation split" if name == failed else "ok"),
                   "severity": "reject"} for name in ("protected_hashes", "diff_scope", "budget", "finite_metric",
                                                      "sandbox", "hidden_val")]
        gain = pm - cm if direction == "minimize" else cm - pm
        return log.append(Verdict(id=new_id("verdict"), task=task, candidate_id=c.id, parent_id=parent.id, preset=preset,
                                  state=state, checks=checks, metric=metric, candidate_mean=cm, parent_mean=pm,
                                  effect=gain, p_value=p, n_candidate=n[0], n_parent=n[1], reason=reason,
                                  meta=dict(syn)))  # type: ignore[return-value]

    c0 = cand(EXAMPLE_SEED, None, None, "main", origin="seed")
    runs(c0, 1.500, [1, 2, 3], "baseline")
    i1 = idea("Raise the peak learning rate", "The seed under-trains in 20 s; a higher LR converges faster.", "main", c0, LR=0.004)
    c1 = cand(_edit(EXAMPLE_SEED, LR=0.004), c0, i1, "main")
    runs(c1, 1.470, [1], "screen"); runs(c1, 1.470, [2, 3], "confirm")
    verdict(c1, c0, State.PROMOTED, 1.470, 1.500, 0.003, (3, 3), "gain 0.030 beats the noise (welch p=0.003)")
    log.append(c1.with_state(State.PROMOTED))
    i2 = idea("ReLU² activation", "Squared ReLU trains faster in small transformers.", "main", c1, ACTIVATION="relu2")
    c2 = cand(_edit(_edit(EXAMPLE_SEED, LR=0.004), ACTIVATION="relu2"), c1, i2, "main")
    runs(c2, 1.478, [1], "screen")
    verdict(c2, c1, State.REJECTED, 1.478, 1.470, 0.81, (1, 3), "screening run is worse than the parent")
    log.append(c2.with_state(State.REJECTED))
    i3 = idea("Longer warmdown", "Spending 40% of the budget in warmdown lowers the final loss.", "t2", c0, WARMDOWN=0.4)
    c3 = cand(_edit(EXAMPLE_SEED, WARMDOWN=0.4), c0, i3, "t2")
    runs(c3, 1.484, [1], "screen"); runs(c3, 1.484, [2, 3], "confirm")
    verdict(c3, c0, State.PROMOTED, 1.484, 1.500, 0.02, (3, 3), "gain 0.016 beats the noise (welch p=0.02)")
    log.append(c3.with_state(State.PROMOTED))
    i4 = idea("Wider model", "More width, same depth.", "t2", c3, source="random", WIDTH=384)
    c4 = cand(_edit(_edit(EXAMPLE_SEED, WARMDOWN=0.4), WIDTH=384), c3, i4, "t2")
    runs(c4, 1.20, [1], "screen")
    verdict(c4, c3, State.REJECTED, 1.20, 1.484, 0.001, (1, 3), "audit check hidden_val failed", failed="hidden_val")
    log.append(c4.with_state(State.REJECTED))
    i5 = idea("Double the batch", "Larger batches use the CPU better.", "main", c1, BATCH=32)
    c5 = cand(_edit(_edit(EXAMPLE_SEED, LR=0.004), BATCH=32), c1, i5, "main")
    runs(c5, 0.0, [1], "screen", fail="out of memory in the candidate process")
    log.append(c5.with_state(State.FAILED))
    merged = _edit(EXAMPLE_SEED, LR=0.004, WARMDOWN=0.4)
    i6 = Idea(id=new_id("idea"), task=task, title=f"Merge {c1.id} + {c3.id}", hypothesis="The two promoted changes compose.",
              source="merge", thread="main", parent_id=c1.id, state=State.READY, meta=dict(syn))
    log.append(i6)
    c6 = cand(merged, c1, i6, "main", merge_of=[c1.id, c3.id])
    runs(c6, 1.456, [1], "screen"); runs(c6, 1.456, [2, 3], "confirm")
    verdict(c6, c1, State.PROMOTED, 1.456, 1.470, 0.01, (3, 3), "gain 0.014 beats the noise (welch p=0.01)")
    log.append(c6.with_state(State.PROMOTED))
    log.event("loop_start", synthetic=True)
    log.event("loop_stop", reason="iterations done", synthetic=True)
    log.close()
    return root
