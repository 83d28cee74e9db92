"""autolab.llm: retries, fallbacks, caps and accounting, against litellm's mock and a loopback server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from llm_server import ScriptedServer, completion, error, malformed  # noqa: E402

from autolab.errors import AutolabError, BudgetExceeded  # noqa: E402
from autolab.llm import (LLM, LLMAuthError, LLMConfig, LLMError, LLMReply, LLMRequestError,  # noqa: E402
                         LLMUnavailable, parse_llm_spec)
from autolab.log import ResearchLog  # noqa: E402

MSG = [{"role": "user", "content": "say hi"}]
KEY = "sk-test-secret-123"


@pytest.fixture()
def log(tmp_path):
    return ResearchLog(tmp_path / "log.db")


def cfg(srv, model="openai/scripted", **kw):
    kw.setdefault("retry_base_s", 0.001)
    return LLMConfig(model, api_base=srv.url, api_key=KEY, **kw)


def rows(log):
    """The llm_calls table as dicts (straight from SQLite: None stays None)."""
    import sqlite3

    with sqlite3.connect(log.path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM llm_calls ORDER BY seq")]


def test_mock_response_happy_path(log):
    llm = LLM(LLMConfig("openai/gpt-4o-mini"), log, mock_response="hello there")
    r = llm.complete(MSG, purpose="test", thread="t1", idea_id="i-1")
    assert isinstance(r, LLMReply) and r.text == "hello there" and r.model == "openai/gpt-4o-mini"
    assert r.prompt_tokens > 0 and r.completion_tokens > 0 and r.cost > 0 and r.latency_s >= 0
    (row,) = rows(log)
    assert row["ok"] == 1 and row["purpose"] == "test" and row["thread"] == "t1" and row["idea_id"] == "i-1"
    assert row["prompt_tokens"] == r.prompt_tokens and row["cost"] == pytest.approx(r.cost)
    assert json.loads(row["request"])["messages"] == MSG
    assert json.loads(row["response"])["text"] == "hello there"
    assert os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP")


def test_mock_list_replays_in_order_then_repeats_last():
    llm = LLM(LLMConfig("openai/gpt-4o-mini"), mock_response=["a", "b"])
    assert [llm.complete(MSG).text for _ in range(3)] == ["a", "b", "b"]
    assert llm.totals()["calls"] == 3
    with pytest.raises(LLMError):
        LLM(LLMConfig("openai/gpt-4o-mini"), mock_response=[])


def test_retries_429_500_malformed_then_success(log):
    script = [error(429), error(500), malformed(), completion("finally", prompt_tokens=12, completion_tokens=5)]
    with ScriptedServer(script) as srv:
        llm = LLM(cfg(srv), log)
        r = llm.complete(MSG, purpose="p")
        assert srv.count() == 4, "exactly one HTTP request per attempt (no hidden client retries)"
        assert srv.requests[0]["path"] == "/v1/chat/completions"
        assert srv.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert r.text == "finally" and r.attempt == 4 and (r.prompt_tokens, r.completion_tokens) == (12, 5)
    assert r.cost == 0.0  # a model unknown to litellm's price map costs 0
    rs = rows(log)
    assert [x["ok"] for x in rs] == [0, 0, 0, 1] and [x["attempt"] for x in rs] == [1, 2, 3, 4]
    assert "429" in rs[0]["error"] and "500" in rs[1]["error"] and rs[3]["error"] is None
    assert rs[3]["prompt_tokens"] == 12 and rs[3]["completion_tokens"] == 5 and rs[3]["latency_s"] > 0
    assert log.llm_totals()["calls"] == 4 and log.llm_totals()["prompt_tokens"] == 12


def test_backoff_grows_and_honors_retry_after():
    with ScriptedServer([error(429, retry_after=0.7), error(503), error(500), completion("ok")]) as srv:
        llm = LLM(cfg(srv, retry_base_s=0.01, retry_max_s=5))
        waits: list[float] = []
        llm.sleep = waits.append
        assert llm.complete(MSG).text == "ok"
    assert len(waits) == 3
    assert waits[0] >= 0.7                       # Retry-After
    assert 0.01 <= waits[1] < 0.04 and 0.02 <= waits[2] < 0.07   # base * 2**(n-1) * jitter in [0.5, 1.5)


def test_timeout_is_retried(log):
    with ScriptedServer([completion("slow", delay_s=1.5), completion("fast")]) as srv:
        llm = LLM(cfg(srv, timeout_s=0.3), log)
        assert llm.complete(MSG).text == "fast"
    first = rows(log)[0]
    assert first["ok"] == 0 and "Timeout" in first["error"]


def test_gives_up_after_max_retries(log):
    with ScriptedServer([error(500)] * 10) as srv:
        llm = LLM(cfg(srv, max_retries=2), log)
        with pytest.raises(LLMUnavailable, match="after 3 attempts") as ei:
            llm.complete(MSG)
        assert srv.count() == 3
    assert isinstance(ei.value, AutolabError)
    assert len(rows(log)) == 3


def test_fallback_model_used_after_primary_retries(log):
    routes = {"primary": [error(500)] * 3, "backup": [completion("from backup")]}
    with ScriptedServer(routes=routes) as srv:
        llm = LLM(cfg(srv, "openai/primary", fallbacks=("openai/backup",), max_retries=2), log)
        r = llm.complete(MSG)
        assert srv.count("primary") == 3 and srv.count("backup") == 1
    assert r.text == "from backup" and r.model == "openai/backup"
    assert [x["model"] for x in rows(log)] == ["openai/primary"] * 3 + ["openai/backup"]


def test_non_retryable_skips_to_fallback(log):
    routes = {"gone": [error(404)], "backup": [completion("ok")]}
    with ScriptedServer(routes=routes) as srv:
        llm = LLM(cfg(srv, "openai/gone", fallbacks=("openai/backup",)), log)
        assert llm.complete(MSG).model == "openai/backup"
        assert srv.count("gone") == 1


def test_401_is_not_retried_and_names_the_fix(log):
    with ScriptedServer([error(401), completion("never")]) as srv:
        llm = LLM(cfg(srv), log)
        with pytest.raises(LLMAuthError) as ei:
            llm.complete(MSG)
        assert srv.count() == 1
        msg = str(ei.value)
        assert "401" in msg and srv.url in msg and "OPENAI_API_KEY" in msg and "--api-base" in msg
    assert KEY not in msg and KEY not in repr(llm) and KEY not in repr(llm.config)
    dump = json.dumps(rows(log), default=str)
    assert KEY not in dump


def test_400_and_404_raise_request_errors():
    for status in (400, 404):
        with ScriptedServer([error(status)]) as srv:
            with pytest.raises(LLMRequestError, match=str(status)):
                LLM(cfg(srv)).complete(MSG)
            assert srv.count() == 1


def test_call_cap_stops_with_budget_exceeded(log):
    with ScriptedServer([completion("a"), completion("b"), completion("c")]) as srv:
        llm = LLM(cfg(srv, max_calls=2), log)
        llm.complete(MSG)
        llm.complete(MSG)
        with pytest.raises(BudgetExceeded, match="--max-llm-calls"):
            llm.complete(MSG)
        assert srv.count() == 2
        # the cap is over the whole lab: a new LLM on the same log is stopped too
        with pytest.raises(BudgetExceeded):
            LLM(cfg(srv, max_calls=2), log).complete(MSG)


def test_call_cap_counts_failed_attempts(log):
    with ScriptedServer([error(500), error(500), completion("late")]) as srv:
        llm = LLM(cfg(srv, max_calls=2), log)
        with pytest.raises(BudgetExceeded):
            llm.complete(MSG)
        assert srv.count() == 2


def test_cost_cap_stops_with_budget_exceeded(log):
    llm = LLM(LLMConfig("openai/gpt-4o-mini", max_cost=1e-6), log, mock_response="x")
    first = llm.complete(MSG)
    assert first.cost > 1e-6
    with pytest.raises(BudgetExceeded, match="--max-cost") as ei:
        llm.complete(MSG)
    assert "raise --max-cost" in str(ei.value)
    assert log.llm_totals()["calls"] == 1


def test_caps_without_a_log_count_in_memory():
    llm = LLM(LLMConfig("openai/gpt-4o-mini", max_calls=1), mock_response="x")
    llm.complete(MSG)
    with pytest.raises(BudgetExceeded):
        llm.complete(MSG)


def test_local_server_without_key_gets_a_placeholder(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ScriptedServer([completion("hi")]) as srv:
        LLM(LLMConfig("openai/local", api_base=srv.url)).complete(MSG)
        assert srv.requests[0]["headers"]["authorization"] == "Bearer sk-no-key"


def test_parse_llm_spec():
    c = parse_llm_spec("llm:openai/gpt-4o-mini", api_base="http://127.0.0.1:8000/v1", max_cost=None, max_calls=50)
    assert c.model == "openai/gpt-4o-mini" and c.api_base == "http://127.0.0.1:8000/v1"
    assert c.max_cost is None and c.max_calls == 50 and c.fallbacks == ()
    c = parse_llm_spec("openai/a, ollama/b")
    assert c.model == "openai/a" and c.fallbacks == ("ollama/b",) and c.models == ("openai/a", "ollama/b")
    with pytest.raises(LLMError):
        parse_llm_spec("llm:")


def test_import_is_lazy():
    code = ("import sys, autolab, autolab.llm, autolab.llm_propose, autolab.llm_implement; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('litellm', 'openai')]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_from_spec_builds_a_working_llm(log):
    with ScriptedServer([completion("hi")]) as srv:
        llm = LLM.from_spec("llm:openai/served", log, api_base=srv.url, api_key="sk-test", max_calls=None)
        assert llm.complete(MSG).text == "hi" and llm.model == "openai/served"


def test_fallback_on_another_provider_does_not_get_the_primary_base_or_key():
    llm = LLM(LLMConfig("openai/a", api_base="http://127.0.0.1:9/v1", api_key=KEY, fallbacks=("ollama/b",)))
    assert llm._kwargs("openai/a", MSG)["api_key"] == KEY
    kw = llm._kwargs("ollama/b", MSG)
    assert "api_base" not in kw and "api_key" not in kw


def test_build_llm_from_cli_options(log):
    from autolab.llm import build_llm
    from autolab.llm_implement import LLMImplementer, make_llm_implementer
    from autolab.llm_propose import LLMProposer, make_llm_proposer

    llm = build_llm("llm:openai/a,openai/b", log=log, api_base="http://127.0.0.1:9/v1", max_cost=None,
                    max_llm_calls=7, seed=3)
    assert llm.config.max_calls == 7 and llm.config.fallbacks == ("openai/b",) and llm.log is log
    with pytest.raises(LLMError, match="unknown LLM option"):
        build_llm("openai/a", api_bsae="x")
    p = make_llm_proposer("openai/gpt-4o-mini", log=log, max_cost=1.0)
    i = make_llm_implementer("openai/gpt-4o-mini", log=log, max_llm_calls=3)
    assert isinstance(p, LLMProposer) and p.name == "llm:openai/gpt-4o-mini" and p.llm.config.max_cost == 1.0
    assert isinstance(i, LLMImplementer) and i.llm.config.max_calls == 3
