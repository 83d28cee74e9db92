import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from autolab.errors import SchemaVersionError
from autolab.log import SCHEMA_VERSION, ResearchLog
from autolab.records import Candidate, Idea, Run, State


def _writer(path, worker, n):
    log = ResearchLog(path)
    for i in range(n):
        r = Run(id=f"r-{worker}-{i}", task="t", candidate_id=f"c-{worker}", preset="p", seed=i)
        log.append(r)
        log.append(r.with_state(State.COMPLETE, metrics={"loss": float(i)}))


def test_append_latest_and_history(tmp_path):
    log = ResearchLog(tmp_path / "log.db")
    idea = Idea(id="i-1", task="t", title="try")
    log.append(idea)
    log.append(idea.with_state(State.READY))
    assert log.get("idea", "i-1").state is State.READY
    assert [i.state for i in log.history("idea", "i-1")] == [State.PROPOSED, State.READY]
    assert len(log.ideas_list()) == 1
    assert log.schema_version == SCHEMA_VERSION


def test_concurrent_writers(tmp_path):
    path = tmp_path / "log.db"
    ResearchLog(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in range(5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    log = ResearchLog(path)
    runs = log.runs_list()
    assert len(runs) == 200
    assert all(r.state is State.COMPLETE for r in runs)
    assert log.integrity_check() == "ok"
    df = log.runs()
    assert set(["params.seed", "params.preset", "metrics.loss", "tags.executor"]) <= set(df.columns)


KILLER = r"""
import sys, itertools
from autolab.log import ResearchLog
from autolab.records import Run
log = ResearchLog(sys.argv[1])
print("ready", flush=True)
for i in itertools.count():
    log.append(Run(id=f"r-{i}", task="t", candidate_id="c", preset="p", seed=i, meta={"pad": "x" * 2000}))
"""


def test_kill_minus_9_never_corrupts(tmp_path):
    path = tmp_path / "log.db"
    for attempt in range(3):
        p = subprocess.Popen([sys.executable, "-c", KILLER, str(path)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.3 + 0.2 * attempt)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        log = ResearchLog(path)
        assert log.integrity_check() == "ok"
        n = len(log.runs_list())
        assert n > 0
        log.close()
    # the file is usable by plain sqlite3 as well
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_refused(tmp_path):
    path = tmp_path / "log.db"
    log = ResearchLog(path)
    log.set_meta("schema_version", SCHEMA_VERSION + 1)
    log.close()
    with pytest.raises(SchemaVersionError, match="upgrade autolab"):
        ResearchLog(path)


def test_views_and_export(tmp_path):
    log = ResearchLog(tmp_path / "log.db")
    log.set_meta("metric", "loss")
    log.set_meta("direction", "minimize")
    log.append(Candidate(id="c-a", task="t", files={"x.py": "00"}))
    log.append(Candidate(id="c-b", task="t", files={"x.py": "11"}, parent_id="c-a"))
    for cid, vals in (("c-a", [2.0, 2.2]), ("c-b", [1.0, 1.1])):
        for s, v in enumerate(vals):
            r = Run(id=f"r-{cid}-{s}", task="t", candidate_id=cid, preset="p", seed=s, purpose="confirm")
            log.append(r.with_state(State.COMPLETE, metrics={"loss": v}))
    board = log.leaderboard()
    assert list(board["candidate_id"]) == ["c-b", "c-a"]
    assert board.loc[0, "metrics.loss"] == pytest.approx(1.05)
    lin = log.lineage()
    assert dict(zip(lin["candidate_id"], lin["depth"])) == {"c-a": 0, "c-b": 1}
    files = log.export(tmp_path / "out", "csv") + log.export(tmp_path / "out", "parquet")
    assert all(f.exists() for f in files)
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / "out" / "runs.parquet")) == 4
