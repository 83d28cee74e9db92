"""The LLM loop end to end against loopback model servers: kill -9 with implement calls in
flight then resume, a cap then a higher cap, a repeating server with two threads, an
unreachable server, and every request the server saw recorded in the log."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from llm_server import ResearchServer, closed_port_url  # noqa: E402

import autolab  # noqa: E402
from autolab.cli import EXIT_CODES, main  # noqa: E402
from autolab.records import State  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def llm_rows(lab_dir):
    with sqlite3.connect(Path(lab_dir) / "log.db") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM llm_calls ORDER BY seq")]


def loop_args(toy_task, lab_dir, url, *extra):
    return ["loop", str(toy_task), "--lab", str(lab_dir), "--proposer", "llm:openai/research-model",
            "--api-base", url, "--json", *extra]


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def assert_all_implemented(lab):
    ideas = lab.log.ideas_list()
    made = {c.idea_id for c in lab.log.candidates_list()}
    for i in ideas:
        assert i.state is not State.PROPOSED, f"{i.id} {i.title!r} left PROPOSED"
        if i.state is State.READY or i.state in (State.COMPLETE, State.PROMOTED):
            assert i.id in made
    return ideas


def test_kill_9_with_implement_calls_in_flight_then_resume(tmp_path, toy_task):
    lab_dir = tmp_path / "lab"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": "sk-test"}
    with ResearchServer(hold_implement=True) as srv:
        cmd = [sys.executable, "-m", "autolab.cli", *loop_args(toy_task, lab_dir, srv.url, "--iterations", "3",
                                                               "--threads", "2", "--llm-timeout", "550")]
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while srv.count("implement") < 2 and time.monotonic() < deadline and p.poll() is None:
                time.sleep(0.1)
            assert srv.count("implement") >= 2, (srv.requests, p.poll())
            time.sleep(0.5)   # the in-flight rows are written before the requests leave
        finally:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate(timeout=60)
        held = srv.count("implement")
        rows = llm_rows(lab_dir)
        assert len(rows) == srv.count(), "every request the server saw has its row, even unanswered ones"
        assert sum(r["state"] == "in_flight" for r in rows) == held
        lab = autolab.Lab(lab_dir)
        assert sum(i.state is State.PROPOSED for i in lab.log.ideas_list()) == held

        srv.release()
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        assert summary["reason"] == "goal" and summary["exit_code"] == 0 and summary["ideas_pending"] == 0
        rows = llm_rows(lab_dir)
        assert len(rows) == srv.count(), (len(rows), srv.count())
        assert sum(r["state"] == "interrupted" for r in rows) == held
        assert not [r for r in rows if r["state"] == "in_flight"]
    lab = autolab.Lab(lab_dir)
    ideas = assert_all_implemented(lab)
    assert len(ideas) == 3 and all(i.state is not State.FAILED for i in ideas)
    resumed = [e for e in lab.log.events("loop") if "resuming idea" in e["message"]]
    assert len(resumed) == held
    start = lab.log.events("loop_start")[-1]
    assert start["interrupted_llm_calls"] == held and len(start["unimplemented_ideas"]) == held


def test_a_cap_then_a_higher_cap(tmp_path, toy_task, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    lab_dir = tmp_path / "lab"
    with ResearchServer(fail_first=1) as srv:
        # 429 + proposal = 2 calls: the implementation is cut by the cap, the idea stays PROPOSED
        code = main(loop_args(toy_task, lab_dir, srv.url, "--iterations", "3", "--max-llm-calls", "2"))
        out = last_json(capsys)
        assert code == EXIT_CODES["cap"] == out["exit_code"] and out["reason"] == "cap", out
        assert "--max-llm-calls" in out["stopped"] and out["llm_calls"] == 2 and out["ideas_pending"] == 1
        # a cap now stops before a proposal is made: nothing is proposed that cannot be implemented
        code = main(loop_args(toy_task, lab_dir, srv.url, "--iterations", "3", "--max-llm-calls", "4"))
        out = last_json(capsys)
        assert code == 3 and out["ideas_pending"] == 0 and out["llm_calls"] == 3, out
        assert out["experiments"] == 1
        code = main(loop_args(toy_task, lab_dir, srv.url, "--iterations", "3", "--max-llm-calls", "20"))
        out = last_json(capsys)
        assert code == 0 and out["reason"] == "goal" and out["experiments"] == 3 and out["ideas_pending"] == 0, out
        assert len(llm_rows(lab_dir)) == srv.count() == out["llm_calls"]
    ideas = assert_all_implemented(autolab.Lab(lab_dir))
    assert sum(i.state is State.READY or i.meta.get("candidate_id") is not None for i in ideas) == 3


def test_repeating_server_with_two_threads_makes_no_duplicate(tmp_path, toy_task, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    lab_dir = tmp_path / "lab"
    with ResearchServer(repeat=True) as srv:
        code = main(loop_args(toy_task, lab_dir, srv.url, "--iterations", "3", "--threads", "2"))
        out = last_json(capsys)
        assert len(llm_rows(lab_dir)) == srv.count()
    assert code == 0 and out["ideas_rejected"] == 2, out
    lab = autolab.Lab(lab_dir)
    titles = [i.title for i in lab.log.ideas_list() if i.meta.get("candidate_id") or
              any(c.idea_id == i.id for c in lab.log.candidates_list())]
    assert titles == ["Set X to 0.5"], titles
    assert_all_implemented(lab)


def test_unreachable_server_and_unpriced_cap(tmp_path, toy_task, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    lab_dir = tmp_path / "lab"
    code = main(loop_args(toy_task, lab_dir, closed_port_url(), "--iterations", "2", "--max-cost", "1",
                          "--llm-retries", "2", "--llm-deadline", "20"))
    cap = capsys.readouterr()
    out = json.loads(cap.out.strip().splitlines()[-1])
    assert code == EXIT_CODES["error"] == out["exit_code"] and out["reason"] == "error", out
    assert "warning: --max-cost 1 cannot hold for openai/research-model" in cap.err
    assert "--input-cost-per-mtok" in cap.err
    assert "autolab: error: LLMUnavailable: no answer from openai/research-model" in cap.err
    assert "unreachable" in cap.err and "--api-base" in cap.err
    rows = llm_rows(lab_dir)
    assert len(rows) == 3 and all(r["state"] == "error" for r in rows)   # 1 attempt + 2 retries, then the stop
    assert out["experiments"] == 0 and out["runs"] == 3   # the baseline that ran meanwhile is kept


def test_orphan_without_implementer_is_abandoned_and_time_limit_exit_code(tmp_path, toy_task, capsys):
    """A free-form PROPOSED idea left by an LLM loop, resumed by a playbook loop: recorded
    abandoned with its reason and not counted toward --iterations; then --time-limit exits 4."""
    from autolab.records import Idea, new_id

    lab_dir = tmp_path / "lab"
    lab = autolab.Lab(lab_dir, task=str(toy_task))
    orphan = lab.log.append(Idea(id=new_id("i"), task=lab.task.name, title="Rewrite the solver", plan="free-form",
                                 source="llm:openai/m", parent_id=lab.seed_candidate().id))
    code = main(["loop", str(toy_task), "--lab", str(lab_dir), "--iterations", "1", "--proposer-seed", "0", "--json"])
    out = last_json(capsys)
    assert code == 0 and out["reason"] == "goal" and out["ideas_abandoned"] == 1 and out["ideas_pending"] == 0, out
    lab = autolab.Lab(lab_dir)
    gone = lab.log.get("idea", orphan.id)
    assert gone.state is State.FAILED and "--proposer llm:" in gone.meta["abandoned"]
    assert sum(not i.meta.get("abandoned") for i in lab.log.ideas_list()) == 1
    code = main(["loop", str(toy_task), "--lab", str(lab_dir), "--iterations", "5", "--time-limit", "0.001", "--json"])
    out = last_json(capsys)
    assert code == EXIT_CODES["time_limit"] == 4 and out["reason"] == "time_limit" and out["exit_code"] == 4, out
