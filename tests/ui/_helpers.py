"""Helpers shared by the ui tests."""

from __future__ import annotations

import json

from autolab.records import Run, State, new_id, now


def add_runs(lab, cand, values, purpose="confirm", *, failed=False):
    out = []
    for k, v in enumerate(values):
        rid = new_id("r")
        rdir = lab.path / "runs" / rid
        rdir.mkdir(parents=True, exist_ok=True)
        curve = [{"step": i, "t": 0.5 * i, "loss": v + 2.0 / (i + 1)} for i in range(8)]
        (rdir / "result.json").write_text(json.dumps({"status": "failed" if failed else "ok", "curve": curve,
                                                      "metrics": {} if failed else {"loss": v}}))
        r = Run(id=rid, task=lab.task.name, candidate_id=cand.id, preset=lab.preset_name, seed=101 + k, purpose=purpose,
                result_path=str(rdir / "result.json"), notebook=str(rdir / "notebook.ipynb"))
        lab.log.append(r)
        if failed:
            r = r.with_state(State.FAILED, ended_at=now(), error={"cell": 2, "ename": "RuntimeError", "evalue": "boom",
                                                                  "traceback": ""})
        else:
            r = r.with_state(State.COMPLETE, ended_at=now(), metrics={"loss": v}, timings={"total_s": 2.0})
        out.append(lab.log.append(r))
    return out
