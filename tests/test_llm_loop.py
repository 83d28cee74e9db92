"""The full loop with an LLM proposer and implementer, talking HTTP to a loopback
OpenAI-compatible server that answers from the prompt's content (no network)."""

import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import autolab
from autolab.cli import main
from autolab.records import State


class _Responder(BaseHTTPRequestHandler):
    values = itertools.cycle([3.0, 2.0, 2.5, 1.5, 2.8, 3.2, 2.2, 0.5])
    lock = threading.Lock()
    n = itertools.count()
    fail_first = True

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = "\n".join(m["content"] if isinstance(m["content"], str) else json.dumps(m["content"])
                         for m in body["messages"])
        with self.lock:
            k = next(self.n)
            if _Responder.fail_first:
                _Responder.fail_first = False
                return self._send(429, {"error": {"message": "slow down", "type": "rate_limit", "code": 429}})
        if "Resolve the conflict" in text:
            a = re.search(r"Change A.*?```python\n(.*?)```", text, re.S).group(1)
            answer = f"```python\n{a}```"
        elif "<<<<<<< SEARCH" in text or "SEARCH/REPLACE" in text:
            want = re.findall(r"Set X to ([0-9.]+)", text)[-1]
            old = re.search(r"^X = .*$", text, re.M).group(0)
            answer = f"solution.py\n<<<<<<< SEARCH\n{old}\n=======\nX = {want}          # the parameter being tuned\n>>>>>>> REPLACE\n"
        else:
            with self.lock:
                v = next(self.values)
            answer = json.dumps({"title": f"Set X to {v} (try {k})", "hypothesis": f"the optimum is near {v}",
                                 "plan": f"Set X to {v} in solution.py"})
        self._send(200, {"id": f"c{k}", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": answer}}],
                         "usage": {"prompt_tokens": len(text) // 4, "completion_tokens": len(answer) // 4,
                                   "total_tokens": (len(text) + len(answer)) // 4}})

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def llm_server():
    _Responder.fail_first = True
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Responder)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_llm_loop_two_threads_over_http(tmp_path, toy_task, llm_server, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    lab_dir = tmp_path / "lab"
    code = main(["loop", str(toy_task), "--lab", str(lab_dir), "--iterations", "4", "--threads", "2",
                 "--proposer", "llm:openai/scripted-model", "--api-base", llm_server, "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["stopped"] == "done" and out["reason"] == "goal" and out["exit_code"] == 0, out
    lab = autolab.Lab(lab_dir)
    calls = lab.log.llm_calls()
    assert len(calls) >= 8 and calls["prompt_tokens"].sum() > 0 and (calls["ok"] == 0).sum() >= 1  # the 429 was retried
    ideas = lab.log.ideas_list()
    assert sum(i.source.startswith("llm:") for i in ideas) == 4
    assert {i.thread for i in ideas if i.source.startswith("llm:")} == {"t0-optimizer", "t1-architecture"}
    # promotions only with significance, on confirmation seeds
    for v in lab.log.verdicts_list():
        if v.state is State.PROMOTED:
            assert v.p_value < 0.05 and v.n_candidate >= 2
    assert out["promoted"] >= 1 and out["best"] < out["baseline"]
    # the key never reaches the log
    assert "sk-test-not-a-real-key" not in (lab_dir / "log.db").read_bytes().decode("latin-1")


def test_llm_cap_stops_cleanly(tmp_path, toy_task, llm_server, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    code = main(["loop", str(toy_task), "--lab", str(tmp_path / "lab"), "--iterations", "6",
                 "--proposer", "llm:openai/scripted-model", "--api-base", llm_server, "--max-llm-calls", "3", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 3 and out["exit_code"] == 3 and out["reason"] == "cap"
    assert "BudgetExceeded" in out["stopped"] and "--max-llm-calls" in out["stopped"]
    assert out["llm_calls"] <= 3
