"""The trusted train-data process: it alone reads the train split and serves packed batches.

The train process cannot read the train token cache (its read allow-list leaves it out), so the
only way to training data is to ask this process for it, and the first batch asked for is the
clock's start as seen from outside the candidate's process. The runner starts it during the
run's start-up (:class:`TrainDataServer`), before the train process; it never imports candidate
code, and it ends with the run (its stdin is the runner's pipe: at EOF it writes its report and
exits; the runner kills its process group if it does not).

Protocol (a Unix socket in a private folder that the train process may connect to):

* the client sends one JSON line ``{"token", "batch_size", "seq_len"}`` (at most 4 KiB); the
  server answers one JSON line: ``{"ok": true, "dtype": "int32", "row_len": T + 1}`` or
  ``{"ok": false, "error": ...}`` (and closes). Nothing of the data is sent yet: a loader may be
  built before the clock starts;
* the client then sends credits, 4-byte little-endian counts; for each credit the server sends
  one batch: a header ``<IIQ`` (kind 1, the packer's epoch, payload bytes) and ``B * (T + 1)``
  int32 tokens, row-major. The first credit of the run (over any connection) is stamped, with
  ``time.monotonic()`` (the machine's clock, the runner's too) and ``time.time()``, into the
  report at once (``--out``, rewritten atomically), so the runner can read it even if this
  process is killed.

Each connection packs its own stream with :class:`nanochat_harness.loader.Packer`, seeded by the
run seed exactly as the in-process loader did, so the batches are the same for the same seed.
Packing runs ahead in a thread per connection (a few batches) from the hello on: it costs the
candidate nothing, and no token leaves this process before a credit asks for it.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import queue
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<IIQ")      # kind, epoch, payload bytes
CREDIT = struct.Struct("<I")
KIND_BATCH, KIND_ERROR = 1, 2
MAX_HELLO = 4096
MAX_BATCH_TOKENS = 1 << 27          # B * (T + 1) per batch (512 MB of int32): a bound, not a rule
MAX_CONNECTIONS = 16


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


class _Server:
    def __init__(self, cfg: dict[str, Any], out: Path, token: str):
        self.cfg, self.out, self.token = cfg, out, token
        self.lock = threading.Lock()
        self.tokens = self.offsets = None
        self.loaded = threading.Event()
        self.report: dict[str, Any] = {"ok": True, "pid": os.getpid(), "connections": 0, "refused": 0,
                                       "batches": 0, "rows": 0, "tokens": 0, "bytes": 0,
                                       "first_request_monotonic": None, "first_request_epoch": None,
                                       "streams": []}

    def load(self) -> None:
        from .data import load_split

        t0 = time.monotonic()
        self.tokens, self.offsets = load_split(self.cfg["train"])
        with self.lock:
            self.report["load_s"] = round(time.monotonic() - t0, 3)
            self.report["train_tokens"] = int(len(self.tokens))
        self.loaded.set()
        self.save()

    def save(self) -> None:
        with self.lock:
            snap = json.loads(json.dumps(self.report))
        _write_json(self.out, snap)

    def _stamp(self) -> None:
        first = False
        with self.lock:
            if self.report["first_request_monotonic"] is None:
                self.report["first_request_monotonic"] = time.monotonic()
                self.report["first_request_epoch"] = time.time()
                first = True
        if first:
            self.save()

    def serve(self, conn: socket.socket) -> None:
        try:
            self._serve(conn)
        except (OSError, ValueError):
            pass                                 # the client went away, or spoke nonsense
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _hello(self, conn: socket.socket) -> dict[str, Any] | None:
        conn.settimeout(60.0)
        buf = b""
        while b"\n" not in buf:
            chunk = conn.recv(MAX_HELLO)
            if not chunk:
                return None
            buf += chunk
            if len(buf) > MAX_HELLO:
                raise ValueError("hello too long")
        line, _, rest = buf.partition(b"\n")
        if rest:
            raise ValueError("data before the hello's answer")
        msg = json.loads(line)
        conn.settimeout(None)
        return msg if isinstance(msg, dict) else None

    def _refuse(self, conn: socket.socket, why: str) -> None:
        with self.lock:
            self.report["refused"] += 1
        conn.sendall((json.dumps({"ok": False, "error": why}) + "\n").encode())

    def _serve(self, conn: socket.socket) -> None:
        from .loader import Packer, document_spans
        import numpy as np

        msg = self._hello(conn)
        if msg is None:
            return
        if not hmac.compare_digest(str(msg.get("token", "")).encode(), self.token.encode()):
            return self._refuse(conn, "wrong token: connect through H.train_loader")
        try:
            B, T = int(msg["batch_size"]), int(msg["seq_len"])
        except (KeyError, TypeError, ValueError):
            return self._refuse(conn, "the hello needs integer batch_size and seq_len")
        if B < 1 or T < 1 or B * (T + 1) > MAX_BATCH_TOKENS:
            return self._refuse(conn, f"batch_size={B}, seq_len={T}: both must be >= 1 and batch_size * (seq_len + 1) "
                                      f"<= {MAX_BATCH_TOKENS}")
        with self.lock:
            if self.report["connections"] >= MAX_CONNECTIONS:
                n = self.report["connections"]
                self.report["refused"] += 1
                conn.sendall((json.dumps({"ok": False, "error": f"{n} train loaders already; at most "
                                                                f"{MAX_CONNECTIONS} per run"}) + "\n").encode())
                return
            self.report["connections"] += 1
            stream = {"batch_size": B, "seq_len": T, "batches": 0, "epoch": 0}
            self.report["streams"].append(stream)
        if not self.loaded.wait(600) or self.tokens is None:
            return self._refuse(conn, f"the harness could not load the train split: {self.report.get('error', 'timeout')}")
        cfg = self.cfg
        packer = Packer(self.tokens, document_spans(self.offsets, int(cfg.get("chunk_tokens", 0) or 0)), T + 1,
                        int(cfg["bos_id"]), seed=int(cfg.get("seed", 0)), buffer_docs=int(cfg.get("buffer_docs", 256)),
                        shuffle=True)
        conn.sendall((json.dumps({"ok": True, "dtype": "int32", "row_len": T + 1}) + "\n").encode())

        ready: queue.Queue = queue.Queue(maxsize=max(1, int(cfg.get("prefetch", 4))))
        stop = threading.Event()

        def pack() -> None:
            try:
                while not stop.is_set():
                    rows = np.empty((B, T + 1), dtype=np.int32)
                    for r in range(B):
                        packer.fill_row(rows[r])
                    item = (packer.epoch, rows)
                    while not stop.is_set():
                        try:
                            ready.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
            except BaseException as e:  # noqa: BLE001 - sent to the client as an error batch
                ready.put(e)

        packing = threading.Thread(target=pack, daemon=True, name="pack")
        packing.start()
        try:
            credits = 0
            while True:
                while credits <= 0:
                    raw = _recv_exact(conn, CREDIT.size)
                    if raw is None:
                        return
                    self._stamp()
                    credits += min(CREDIT.unpack(raw)[0], 1 << 20)
                item = ready.get()
                if isinstance(item, BaseException):
                    text = f"{type(item).__name__}: {item}".encode()
                    conn.sendall(HEADER.pack(KIND_ERROR, 0, len(text)) + text)
                    return
                epoch, rows = item
                payload = memoryview(rows).cast("B")
                conn.sendall(HEADER.pack(KIND_BATCH, int(epoch), payload.nbytes))
                conn.sendall(payload)
                credits -= 1
                with self.lock:
                    self.report["batches"] += 1
                    self.report["rows"] += B
                    self.report["tokens"] += B * T
                    self.report["bytes"] += payload.nbytes
                    stream["batches"] += 1
                    stream["epoch"] = int(epoch)
        finally:
            stop.set()
            packing.join(timeout=5)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nanochat_harness.data_server")
    ap.add_argument("--config", required=True, help="JSON: train (tokens, offsets paths), bos_id, seed, chunk_tokens, "
                                                    "buffer_docs, prefetch, token (what a client must say)")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--out", required=True, help="the report (JSON), rewritten at the first request and at the end")
    a = ap.parse_args(argv)
    cfg = json.loads(Path(a.config).read_text())
    token = str(cfg.pop("token", ""))
    if not token:
        sys.exit("data_server: the configuration has no token")
    srv = _Server(cfg, Path(a.out), token)
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(a.socket)                      # bound before the split is loaded: early clients wait in the backlog
    lst.listen(MAX_CONNECTIONS)
    srv.save()

    def until_eof() -> None:                # the runner's pipe: EOF (the runner closed it, or died) ends us
        try:
            while sys.stdin.buffer.read(1 << 16):
                pass
        except (OSError, ValueError):
            pass
        srv.save()
        os._exit(0)

    threading.Thread(target=until_eof, daemon=True, name="stdin").start()
    try:
        srv.load()
    except Exception as e:  # noqa: BLE001 - reported, then the clients are refused
        with srv.lock:
            srv.report.update(ok=False, error=f"{type(e).__name__}: {e}")
        srv.loaded.set()
        srv.save()
    while True:
        conn, _ = lst.accept()
        threading.Thread(target=srv.serve, args=(conn,), daemon=True, name="conn").start()


# ----------------------------------------------------------------------------- the runner's side

class TrainDataServer:
    """The runner's handle on the data process: :meth:`start` (during the run's start-up),
    :meth:`client_config` (what the train process's run config says about it), :meth:`stop`
    (after the train process tree has ended; idempotent) and :meth:`report`."""

    def __init__(self, *, train: dict[str, str], bos_id: int, seed: int, chunk_tokens: int, buffer_docs: int,
                 prefetch: int, hdir: Path, env: dict[str, str]):
        import secrets

        self.hdir, self.env = Path(hdir), dict(env)
        self.cfg_path, self.out = self.hdir / "data_server_config.json", self.hdir / "data_server.json"
        self.cfg = {"train": dict(train), "bos_id": int(bos_id), "seed": int(seed), "chunk_tokens": int(chunk_tokens),
                    "buffer_docs": int(buffer_docs), "prefetch": int(prefetch)}
        # a short private folder: a socket path under the lab can pass AF_UNIX's 107 bytes
        self.sockdir = Path(tempfile.mkdtemp(prefix="al-dt-"))
        self.socket_path = self.sockdir / "s"
        self.token = secrets.token_hex(16)
        self.proc = None
        self._log = None

    def client_config(self) -> dict[str, str]:
        return {"socket": str(self.socket_path), "token": self.token}

    def start(self) -> "TrainDataServer":
        import subprocess

        from autolab.sandbox import scrubbed_env

        _write_json(self.cfg_path, {**self.cfg, "token": self.token})   # in the harness folder: not the candidate's
        if self.out.exists():
            self.out.unlink()
        env = scrubbed_env({"PYTHONPATH": self.env.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1",
                            "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"})
        self._log = open(self.hdir / "data_server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nanochat_harness.data_server", "--config", str(self.cfg_path),
             "--socket", str(self.socket_path), "--out", str(self.out)],
            cwd=self.hdir, env=env, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close its pipe (it writes its report and exits); kill its process group if it lingers."""
        import shutil
        import signal
        import subprocess

        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.stdin.close()
            except (OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=timeout_s)          # it starts no process: its exit ends its group
            except subprocess.TimeoutExpired:
                try:   # not reaped yet, so its pid (the group's id) cannot have been reused
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def report(self) -> dict[str, Any]:
        """The data process's report: batches, rows, tokens and bytes served, connections, and the
        first request's time stamps (``first_request_monotonic``: the machine's monotonic clock)."""
        try:
            return json.loads(self.out.read_text())
        except (OSError, ValueError):
            return {}


if __name__ == "__main__":
    sys.exit(main())
