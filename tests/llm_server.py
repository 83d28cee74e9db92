"""A loopback OpenAI-compatible chat server that replays scripted answers (test fixture).

    with ScriptedServer([error(429), completion("hello", prompt_tokens=12)]) as srv:
        llm = LLM(LLMConfig("openai/test", api_base=srv.url, api_key="sk-test"))

``srv.url`` is ``http://127.0.0.1:<port>/v1``; both ``POST /v1/chat/completions`` and
``POST /chat/completions`` are served. Each request takes the next scripted reply; a
``routes`` dict scripts replies per requested model name (as the server sees it, i.e.
without litellm's ``openai/`` prefix), falling back to the shared ``script``. An
exhausted script answers 400 so a test fails fast instead of retrying. Every request
body is kept in ``srv.requests`` (``{"path", "model", "body", "headers"}``); header names are
lower-cased (HTTP header names are case-insensitive, and clients differ: openai 3.x sends
``authorization``, earlier versions ``Authorization``).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable


@dataclass
class Reply:
    """One scripted HTTP answer."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def completion(text: str, *, prompt_tokens: int = 11, completion_tokens: int = 7,
               finish_reason: str = "stop", delay_s: float = 0.0) -> Reply:
    """A normal chat completion with ``usage``; the ``model`` field echoes the request."""
    payload = {
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": "{model}",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
    return Reply(200, json.dumps(payload).encode(), {"Content-Type": "application/json"}, delay_s)


def error(status: int, message: str = "", *, retry_after: float | None = None) -> Reply:
    """An OpenAI-style error body with the given HTTP status (429, 500, 401, ...)."""
    message = message or {429: "Rate limit reached", 500: "Internal server error", 401: "Invalid API key",
                           404: "The model does not exist", 400: "Bad request", 503: "Overloaded"}.get(status, "error")
    body = json.dumps({"error": {"message": message, "type": "scripted_error", "code": status}}).encode()
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return Reply(status, body, headers)


def malformed(body: bytes = b'{"id": "chatcmpl-broken", "choices": [ {"message": ') -> Reply:
    """A 200 answer whose body is not valid JSON."""
    return Reply(200, body, {"Content-Type": "application/json"})


class _Serving:
    """stop() and the context manager of the loopback servers below (``start`` sets ``_httpd``)."""

    _httpd: Any = None

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ScriptedServer(_Serving):
    """Threaded HTTP server on 127.0.0.1 (random port) replaying scripted replies."""

    def __init__(self, script: Iterable[Reply] = (), *, routes: dict[str, Iterable[Reply]] | None = None):
        self._queues: dict[str | None, deque[Reply]] = {None: deque(script)}
        for model, replies in (routes or {}).items():
            self._queues[model] = deque(replies)
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ scripting
    def push(self, *replies: Reply, model: str | None = None) -> None:
        with self._lock:
            self._queues.setdefault(model, deque()).extend(replies)

    def _next(self, model: str | None) -> Reply:
        with self._lock:
            q = self._queues.get(model)
            if q:
                return q.popleft()
            if self._queues[None]:
                return self._queues[None].popleft()
        return error(400, f"scripted server: no reply left for model {model!r}")

    def count(self, model: str | None = None) -> int:
        """Requests received (for one model, or all)."""
        return sum(1 for r in self.requests if model is None or r["model"] == model)

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "ScriptedServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # answer in one segment: without this, Nagle + delayed ACK add ~40 ms per reply
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, reply: Reply, model: str) -> None:
                body = reply.body.replace(b'"{model}"', json.dumps(model).encode())
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode(errors="replace")}
                path = self.path.split("?")[0].rstrip("/")
                model = body.get("model") if isinstance(body, dict) else None
                with server._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    server.requests.append({"path": path, "model": model, "body": body, "headers": headers})
                if path not in ("/v1/chat/completions", "/chat/completions"):
                    self._send(error(404, f"no route {path}"), model or "")
                    return
                reply = server._next(model)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                self._send(reply, model or "")

            def do_GET(self) -> None:  # noqa: N802
                self._send(error(404, f"no route {self.path}"), "")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scripted-llm-server", daemon=True)
        self._thread.start()
        return self



# ---------------------------------------------------------------------------- a tiny task for LLM tests

SEED_TRAIN = '''\
"""A tiny training script (test seed)."""
import math

# ---
LEARNING_RATE = 0.01   # step size
STEPS = 10             # optimization steps
WIDTH = 8


def model(x, w):
    return [w * v for v in x]


def train():
    w = 0.0
    for step in range(STEPS):
        grad = 2 * (w - 1.0)
        w -= LEARNING_RATE * grad
    return w


if __name__ == "__main__":
    w = train()
    print("---")
    print(f"loss: {(w - 1.0) ** 2:.6f}")
'''


def make_tiny_task(root, *, allow_new_files: bool = False, brief: str = "Minimize the loss of a toy model.\n"):
    """A minimal valid task folder under ``root`` (task.toml, task.md, benchmark.ipynb, harness, seed)."""
    from pathlib import Path

    import nbformat

    root = Path(root)
    task = root / "tinytask"
    (task / "harness").mkdir(parents=True, exist_ok=True)
    (task / "seed").mkdir(exist_ok=True)
    (task / "seed" / "train.py").write_text(SEED_TRAIN)
    (task / "harness" / "metric.py").write_text("def score(loss):\n    return loss\n")
    (task / "task.md").write_text(brief)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("candidate_dir = None\nseed = 0\npreset = 'cpu-tiny'\nresult_path = None",
                                          metadata={"tags": ["parameters"]})]
    nbformat.write(nb, str(task / "benchmark.ipynb"))
    (task / "task.toml").write_text(f'''\
name = "tinytask"
title = "Tiny test task"
default_preset = "cpu-tiny"

[metric]
name = "loss"
direction = "minimize"
unit = "nats"

[files]
seed = "seed"
editable = ["*.py"]
protected = ["harness/*.py", "benchmark.ipynb", "task.toml"]
allow_new_files = {"true" if allow_new_files else "false"}

[presets.cpu-tiny]
device = "cpu"
budget_s = 5
timeout_s = 60
''')
    return task


def make_lab(tmp_path, **task_kw):
    """A real Lab on the tiny task: ``(lab, seed_candidate)``."""
    from autolab.lab import Lab

    task = make_tiny_task(tmp_path, **task_kw)
    lab = Lab(tmp_path / "lab", task=str(task))
    return lab, lab.seed_candidate()


# ---------------------------------------------------------------------------- a research server for loop tests

_TITLES = ("Shrink the tuned parameter", "Try a tiny step for the knob", "Zero out the setting entirely",
           "Go negative for contrast", "Flip the sign of the value", "Moderate cut of the value")


class ResearchServer(_Serving):
    """A loopback model server that answers the loop's prompts from their content, in the
    OpenAI (``POST /v1/chat/completions``) and Ollama (``POST /api/chat``, ``POST /api/generate``)
    wire formats.

    A proposal prompt gets ``{"title": ..., "plan": "Set X to <v> ..."}`` with ``v`` from
    ``values`` in turn and titles far apart (``repeat=True``: always the first value and the
    same title ``Set X to <v>``); an
    implement prompt gets the SEARCH/REPLACE edit setting ``X`` to the idea's value. The first
    ``fail_first`` requests answer 429. While ``hold_implement`` is set, implement requests
    wait (until :meth:`release` or :meth:`stop`) before answering. Every request is kept in
    ``requests`` as ``{"path", "model", "kind"}`` (kind: propose, implement, other).
    """

    def __init__(self, values=(0.5, 0.2, 0.0, -0.5, -1.0, 0.3), *, repeat: bool = False, fail_first: int = 0,
                 hold_implement: bool = False):
        self.values, self.repeat, self.fail_first = list(values), repeat, fail_first
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._proposals = 0
        self._open = threading.Event()
        if not hold_implement:
            self._open.set()
        self._httpd: ThreadingHTTPServer | None = None

    def release(self) -> None:
        """Let held implement requests (and later ones) answer."""
        self._open.set()

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if kind is None or r["kind"] == kind)

    @property
    def base(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return self.base + "/v1"

    def answer(self, text: str) -> tuple[str, str]:
        """(kind, answer text) for a prompt."""
        if "<<<<<<< SEARCH" in text or "SEARCH/REPLACE" in text:
            want = re.findall(r"Set X to (-?[0-9.]+)", text)[-1]
            old = re.search(r"^X = .*$", text, re.M).group(0)
            return "implement", (f"solution.py\n<<<<<<< SEARCH\n{old}\n=======\n"
                                 f"X = {want}          # the parameter being tuned\n>>>>>>> REPLACE\n")
        if '"title"' in text:
            with self._lock:
                k = self._proposals
                self._proposals += 1
            v = self.values[0] if self.repeat else self.values[k % len(self.values)]
            title = f"Set X to {v}" if self.repeat else f"{_TITLES[k % len(_TITLES)]} (X = {v})"
            return "propose", json.dumps({"title": title, "hypothesis": f"the optimum is near {v}",
                                          "plan": f"Set X to {v} in solution.py"})
        return "other", "ok"

    def start(self) -> "ResearchServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:   # the client went away (killed) while we waited
                    pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                path = self.path.split("?")[0].rstrip("/")
                if "messages" in body:
                    text = "\n".join(m["content"] if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
                                     for m in body["messages"])
                else:
                    text = str(body.get("prompt", ""))
                kind, answer = server.answer(text)
                with server._lock:
                    server.requests.append({"path": path, "model": body.get("model"), "kind": kind})
                    fail = server.fail_first > 0
                    server.fail_first -= int(fail)
                if fail:
                    return self._json(429, {"error": {"message": "slow down", "type": "rate_limit", "code": 429}})
                if kind == "implement":
                    server._open.wait()
                pt, ct = max(1, len(text) // 4), max(1, len(answer) // 4)
                if path in ("/v1/chat/completions", "/chat/completions"):
                    return self._json(200, {
                        "id": "chatcmpl-research", "object": "chat.completion", "created": int(time.time()),
                        "model": body.get("model"), "choices": [{"index": 0, "finish_reason": "stop",
                                                                 "message": {"role": "assistant", "content": answer}}],
                        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}})
                ollama = {"model": body.get("model"), "created_at": "2026-01-01T00:00:00Z", "done": True,
                          "done_reason": "stop", "prompt_eval_count": pt, "eval_count": ct}
                if path == "/api/chat":
                    return self._json(200, {**ollama, "message": {"role": "assistant", "content": answer}})
                if path == "/api/generate":
                    return self._json(200, {**ollama, "response": answer})
                return self._json(404, {"error": f"no route {path}"})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="research-llm-server", daemon=True).start()
        return self

    def stop(self) -> None:
        self._open.set()
        super().stop()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connections are refused at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"
