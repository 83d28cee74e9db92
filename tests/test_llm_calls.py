"""LLM calls as a user of litellm expects them: recorded when they start, interrupted rows after
a kill, a bounded deadline, prices for unpriced models, usage per model, proposals that see each
other, and the Ollama wire format. Real loopback HTTP servers and real SQLite logs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from llm_server import ResearchServer, ScriptedServer, closed_port_url, completion  # noqa: E402

from autolab.cli import main  # noqa: E402
from autolab.errors import BudgetExceeded  # noqa: E402
from autolab.llm import LLM, LLMConfig, LLMUnavailable, build_llm  # noqa: E402
from autolab.log import ResearchLog  # noqa: E402
from autolab.records import State  # noqa: E402

MSG = [{"role": "user", "content": "say hi"}]
KEY = "sk-test-secret-123"


def rows(log):
    with sqlite3.connect(log.path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM llm_calls ORDER BY seq")]


@pytest.fixture()
def log(tmp_path):
    return ResearchLog(tmp_path / "log.db")


def test_a_call_is_recorded_in_flight_then_completed(log):
    with ScriptedServer([completion("slow answer", delay_s=1.5)]) as srv:
        llm = LLM(LLMConfig("openai/m", api_base=srv.url, api_key=KEY), log)
        out = {}
        t = threading.Thread(target=lambda: out.update(reply=llm.complete(MSG, purpose="propose")))
        t.start()
        deadline = time.monotonic() + 120   # the first call may wait for litellm's import
        while not srv.count() and time.monotonic() < deadline:
            time.sleep(0.02)
        mid = rows(log)
        mid_totals = log.llm_totals()
        t.join(30)
    assert len(mid) == 1 and mid[0]["state"] == "in_flight" and mid[0]["ok"] == 0 and mid[0]["purpose"] == "propose"
    assert mid_totals["calls"] == 1 and mid_totals["in_flight"] == 1 and log.llm_totals()["in_flight"] == 0
    done = rows(log)
    assert out["reply"].text == "slow answer"
    assert len(done) == 1 and done[0]["state"] == "ok" and done[0]["ok"] == 1 and done[0]["prompt_tokens"] == 11
    assert json.loads(done[0]["response"])["text"] == "slow answer"


def test_in_flight_rows_count_toward_the_call_cap(log):
    seq = log.llm_call_start(model="openai/m", purpose="implement")
    llm = LLM(LLMConfig("openai/m", max_calls=1), log, mock_response="x")
    with pytest.raises(BudgetExceeded, match="--max-llm-calls"):
        llm.complete(MSG)
    log.llm_call_end(seq, ok=True, prompt_tokens=3)
    with pytest.raises(BudgetExceeded, match=r"2 needed|raise --max-llm-calls"):
        LLM(LLMConfig("openai/m", max_calls=2), log, mock_response="x").check_budget(need=2)


def test_a_killed_process_leaves_an_interrupted_row(tmp_path, log):
    code = (f"import os, sys; sys.path.insert(0, {os.getcwd()!r}); from autolab.log import ResearchLog; "
            f"ResearchLog({str(log.path)!r}).llm_call_start(model='openai/m', purpose='implement'); os._exit(9)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 9, out.stderr
    mine = log.llm_call_start(model="openai/m", purpose="propose")   # this process is alive: left alone
    assert [r["state"] for r in rows(log)] == ["in_flight", "in_flight"]
    assert log.reap_llm_calls() == 1
    states = {r["seq"]: (r["state"], r["error"]) for r in rows(log)}
    assert states[mine] == ("in_flight", None)
    (state, err), = [v for k, v in states.items() if k != mine]
    assert state == "interrupted" and "ended before the answer" in err
    assert log.llm_totals()["calls"] == 2


def test_old_logs_get_the_new_columns(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("""CREATE TABLE llm_calls (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, model TEXT NOT NULL,
            purpose TEXT, thread TEXT, idea_id TEXT, ok INTEGER NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER,
            cost REAL, latency_s REAL, attempt INTEGER, error TEXT, request TEXT, response TEXT)""")
        conn.execute("INSERT INTO llm_calls (ts, model, ok, prompt_tokens, completion_tokens, cost, latency_s) "
                     "VALUES ('t', 'openai/old', 1, 5, 6, 0.5, 2.0)")
    log = ResearchLog(path)
    log.llm_call_start(model="openai/old")
    assert log.llm_totals()["calls"] == 2 and log.llm_totals()["in_flight"] == 1
    (u,) = log.llm_usage()
    assert u["ok"] == 1 and u["in_flight"] == 1 and u["latency_p50_s"] == 2.0


def test_a_server_that_never_answers_is_given_up_within_the_deadline(log):
    with ScriptedServer([completion("late", delay_s=20)] * 5) as srv:
        llm = LLM(LLMConfig("openai/m", api_base=srv.url, api_key=KEY, timeout_s=60, deadline_s=2.0,
                            retry_base_s=0.01), log)
        t0 = time.monotonic()
        with pytest.raises(LLMUnavailable, match="--llm-deadline 2 s") as e:
            llm.complete(MSG)
        took = time.monotonic() - t0
    assert took < 15, took   # 5 attempts x 60 s without the deadline
    assert "--fallbacks" in str(e.value) and "--llm-deadline" in str(e.value)
    assert all(r["state"] == "error" for r in rows(log))


def test_unreachable_error_names_flags_that_exist(log):
    from autolab.cli import build_parser

    llm = LLM(LLMConfig("openai/m", api_base=closed_port_url(), api_key=KEY, max_retries=1, retry_base_s=0.01), log)
    with pytest.raises(LLMUnavailable) as e:
        llm.complete(MSG)
    flags = set()
    for action in build_parser()._subparsers._group_actions[0].choices["loop"]._actions:
        flags.update(action.option_strings)
    named = set(__import__("re").findall(r"--[a-z][a-z-]+", str(e.value)))
    assert named and named <= flags, named - flags
    assert len(rows(log)) == 2 and all(r["state"] == "error" for r in rows(log))


def test_custom_price_per_million_tokens(log):
    with ScriptedServer([completion("a", prompt_tokens=1000, completion_tokens=500)]) as srv:
        llm = LLM(LLMConfig("openai/my-local-model", api_base=srv.url, api_key=KEY,
                            input_cost_per_mtok=2.0, output_cost_per_mtok=10.0, max_cost=1.0), log)
        reply = llm.complete(MSG)
    assert reply.cost == pytest.approx(1000 * 2.0 / 1e6 + 500 * 10.0 / 1e6)
    assert rows(log)[0]["cost"] == pytest.approx(reply.cost) and llm.unpriced_models() == []
    assert LLM(LLMConfig("openai/my-local-model")).unpriced_models() == ["openai/my-local-model"]
    assert LLM(LLMConfig("openai/gpt-4o-mini")).unpriced_models() == []


def test_cli_options_reach_the_request(tmp_path, log):
    from autolab.cli import _llm_kwargs, build_parser

    args = build_parser().parse_args([
        "loop", "x", "--proposer", "llm:openai/m", "--fallbacks", "openai/b,openai/c", "--fallbacks", "openai/d",
        "--llm-timeout", "7", "--llm-retries", "0", "--llm-deadline", "9", "--temperature", "0.1", "--max-tokens", "99",
        "--llm-param", "top_p=0.5", "--llm-param", "seed=7", "--llm-param", "stop=END",
        "--input-cost-per-mtok", "1", "--output-cost-per-mtok", "3"])
    with ScriptedServer([completion("hi")]) as srv:
        llm = build_llm(args.proposer, log=log, **{**_llm_kwargs(args), "api_base": srv.url})
        c = llm.config
        assert (c.fallbacks, c.timeout_s, c.max_retries, c.deadline_s, c.temperature, c.max_tokens) == \
            (("openai/b", "openai/c", "openai/d"), 7.0, 0, 9.0, 0.1, 99)
        llm.complete(MSG)
        body = srv.requests[0]["body"]
    assert body["top_p"] == 0.5 and body["seed"] == 7 and body["stop"] in ("END", ["END"])   # JSON or the string
    assert body["temperature"] == 0.1 and body["max_tokens"] == 99
    assert rows(log)[0]["cost"] == pytest.approx((11 * 1 + 7 * 3) / 1e6)


def test_llm_param_must_be_key_value(capsys):
    with pytest.raises(SystemExit):
        main(["loop", "x", "--proposer", "llm:openai/m", "--llm-param", "top_p"])
    assert "not KEY=VALUE" in capsys.readouterr().err


def test_usage_per_model_in_autolab_log(tmp_path, toy_task, capsys):
    import autolab

    lab = autolab.Lab(tmp_path / "lab", task=str(toy_task))
    for lat in (1.0, 2.0, 3.0, 4.0):
        lab.log.log_llm_call(model="openai/a", ok=True, prompt_tokens=10, completion_tokens=5, cost=0.01, latency_s=lat)
    lab.log.log_llm_call(model="openai/a", ok=False, error="boom", latency_s=9.0)
    lab.log.llm_call_start(model="ollama_chat/b")
    assert main(["log", "--lab", str(lab.path)]) == 0
    text = capsys.readouterr().out
    table = text[text.index("LLM usage per model:"):].splitlines()
    assert table[1].split() == ["model", "calls", "ok", "failed", "interrupted", "tokens", "in", "tokens", "out",
                                "cost", "$", "p50", "s", "p95", "s"]
    rows = {line.split()[0]: line.split()[1:] for line in table[3:]}
    assert rows["openai/a"] == ["5", "4", "1", "0", "40", "20", "0.0400", "2.50", "3.85"]
    assert rows["ollama_chat/b"] == ["1", "0", "0", "1", "0", "0", "0.0000", "-", "-"]   # in flight
    assert "LLM: 6 calls" in text   # the summary line
    assert main(["log", "--lab", str(lab.path), "--json"]) == 0
    usage = {u["model"]: u for u in json.loads(capsys.readouterr().out)["llm_usage"]}
    assert usage["openai/a"]["failed"] == 1 and usage["ollama_chat/b"]["in_flight"] == 1


def test_simultaneous_proposals_see_each_other(tmp_path, toy_task):
    """A server that repeats itself, two proposals at once on two threads: one idea is PROPOSED,
    the other is sent back and then REJECTED, never a second PROPOSED copy."""
    import autolab
    from autolab.llm_propose import LLMProposer

    lab = autolab.Lab(tmp_path / "lab", task=str(toy_task))
    seed = lab.seed_candidate()
    with ResearchServer(repeat=True) as srv:
        prop = LLMProposer(LLM(LLMConfig("openai/m", api_base=srv.url, api_key=KEY), lab.log))
        barrier = threading.Barrier(2)
        real = prop.build_messages

        def build(*a, **kw):   # both prompts are built before either answer is settled
            out = real(*a, **kw)
            barrier.wait(30)
            return out

        prop.build_messages = build
        ideas = []
        ts = [threading.Thread(target=lambda n=n: ideas.append(prop.propose(lab, seed, thread=n, direction=n)))
              for n in ("t0-optimizer", "t1-architecture")]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
    states = sorted(i.state.value for i in ideas)
    assert states == ["PROPOSED", "REJECTED"], states
    assert sum(i.state is State.PROPOSED for i in lab.log.ideas_list()) == 1


@pytest.mark.parametrize("model", ["ollama_chat/llama3", "ollama/llama3", "openai/local-model"])
def test_local_servers_through_litellm_model_strings(tmp_path, toy_task, model, monkeypatch):
    """The README's local setups: Ollama (/api/chat, /api/generate) and an OpenAI-compatible
    server through OPENAI_API_BASE, proposing and implementing one idea on a real lab."""
    import autolab
    from autolab._implement import implement
    from autolab.llm_implement import LLMImplementer
    from autolab.llm_propose import LLMProposer

    lab = autolab.Lab(tmp_path / "lab", task=str(toy_task))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ResearchServer() as srv:
        if model.startswith("openai/"):
            monkeypatch.setenv("OPENAI_API_BASE", srv.url)
            llm = build_llm(model, log=lab.log, input_cost_per_mtok=0.5, output_cost_per_mtok=1.5)
        else:
            llm = build_llm(model, log=lab.log, api_base=srv.base)
        idea = LLMProposer(llm).propose(lab, lab.seed_candidate())
        cand = implement(lab, idea, LLMImplementer(llm))
        paths = {r["path"] for r in srv.requests}
    assert idea.state is State.PROPOSED and cand is not None
    assert "X = 0.5" in lab.files(cand)["solution.py"]
    want = {"ollama_chat/llama3": "/api/chat", "ollama/llama3": "/api/generate"}.get(model, "/v1/chat/completions")
    assert paths == {want}
    calls = rows(lab.log)
    assert len(calls) == 2 and all(r["state"] == "ok" and r["prompt_tokens"] > 0 for r in calls)
    if model.startswith("openai/"):
        assert all(r["cost"] > 0 for r in calls)


@pytest.mark.parametrize("with_log", [True, False])
def test_threads_cannot_overshoot_the_call_cap(log, with_log):
    llm = LLM(LLMConfig("openai/gpt-4o-mini", max_calls=3), log if with_log else None, mock_response="x")
    results = []

    def call():
        try:
            results.append(llm.complete(MSG).text)
        except BudgetExceeded:
            results.append("capped")

    ts = [threading.Thread(target=call) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert sorted(results) == ["capped"] * 3 + ["x"] * 3
    if with_log:
        assert [r["state"] for r in rows(log)] == ["ok"] * 3
