"""A real Ray cluster on this machine, for tests and benchmarks.

Each node is ``ray start --block`` in its own process session; all nodes share a private temp
dir (short, under /tmp: Ray's AF_UNIX socket paths must stay under 108 bytes). ``stop()``
ends every process the cluster started — found by session id and by the private folder in
their environment — and never touches another user's or another test's Ray.

Speed on small shared machines: every Ray process imports ``jsonschema``, which (with the
``rfc3987-syntax`` package that Jupyter pulls in) compiles a grammar at import, about 3 s of
CPU per process. The nodes get a one-file shim on PYTHONPATH that makes that optional import
fail, which jsonschema tolerates. It also keeps the dashboard agent under the raylet's
hard-coded 15 s start-up wait on a loaded 2-core machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_where(pred) -> list[int]:
    out, me = [], os.getuid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if d.stat().st_uid != me:
                continue
            if pred(int(d.name), d):
                out.append(int(d.name))
        except OSError:
            continue
    return out


def pids_with_env(needle: str) -> list[int]:
    """Processes of this user whose environment contains ``needle`` (e.g. 'AUTOLAB_RUN_ID=r-...')."""
    b = needle.encode()
    return _pids_where(lambda pid, d: b in (d / "environ").read_bytes())


def _kill(pids) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


class LocalRayCluster:
    def __init__(self, log=None):
        self.root = Path(tempfile.mkdtemp(prefix="alr-", dir="/tmp"))
        shim = self.root / "pyshim"
        shim.mkdir()
        (shim / "rfc3987_syntax.py").write_text('raise ImportError("test cluster: skip the slow rfc3987 grammar")\n')
        # RAY_AUTH_MODE: explicit, or a token left in ~/.ray by an earlier local ray.init() turns
        # token auth on for the head only, and the other nodes cannot join
        # the nodes import the autolab this process imports (a worktree's, not only the installed one):
        # their runs start `python -m autolab._papermill_run` with the nodes' environment
        code = Path(importlib.util.find_spec("autolab").origin).resolve().parent.parent
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.pathsep.join([str(shim), str(code)]),
                        RAY_AUTH_MODE="disabled")
        self.env.pop("RAY_ADDRESS", None)
        self.port = free_port()
        self.nodes: dict[str, subprocess.Popen] = {}
        self.log = log or (lambda msg: None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _argv(self, name: str, num_cpus: int, num_gpus: int, resources: dict | None, head: bool) -> list[str]:
        argv = [RAY, "start", "--block", f"--temp-dir={self.root}", "--node-ip-address=127.0.0.1",
                f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", "--object-store-memory=80000000",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                "--include-log-monitor=false", "--disable-usage-stats"]
        if resources:
            argv.append("--resources=" + json.dumps(resources))
        if head:
            argv += ["--head", f"--port={self.port}", "--include-dashboard=false",
                     f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}"]
        else:
            argv.append(f"--address={self.address}")
        return argv

    def start(self, nodes: dict[str, dict], timeout: float = 240) -> "LocalRayCluster":
        """``nodes``: name -> dict(num_cpus, num_gpus=0, resources=None); the first is the head.
        The head starts first, then the others together. A node that fails to come up is
        tried again (twice)."""
        names = list(nodes)
        self._start_group(names[:1], nodes, timeout, head=True)
        if names[1:]:
            self._start_group(names[1:], nodes, timeout, head=False)
        return self

    def _start_group(self, names, spec, timeout, head) -> None:
        for attempt in range(3):
            t0 = time.monotonic()
            logs = {}
            for n in names:
                s = spec[n]
                logs[n] = self.root / f"{n}.{attempt}.log"
                self.nodes[n] = subprocess.Popen(
                    self._argv(n, s["num_cpus"], s.get("num_gpus", 0), s.get("resources"), head and n == names[0]),
                    env=self.env, start_new_session=True, stdin=subprocess.DEVNULL,
                    stdout=logs[n].open("w"), stderr=subprocess.STDOUT)
            failed = []
            pending = set(names)
            while pending and time.monotonic() - t0 < timeout:
                for n in list(pending):
                    text = logs[n].read_text(errors="replace")
                    if "Ray runtime started" in text:
                        pending.discard(n)
                        self.log(f"ray node {n} up in {time.monotonic() - t0:.1f} s")
                    elif self.nodes[n].poll() is not None:
                        pending.discard(n)
                        failed.append(n)
                time.sleep(0.2)
            failed += sorted(pending)
            if not failed:
                return
            for n in failed:
                self.kill_node(n)
            names = failed
            if attempt == 2:
                raise RuntimeError(f"ray nodes {failed} did not start:\n" +
                                   "\n".join(logs[n].read_text(errors="replace")[-3000:] for n in failed))
            for n in failed:
                self.log(f"ray node {n} failed to start; retrying. Its log ends:\n"
                         + logs[n].read_text(errors="replace")[-1500:])

    def node_pids(self, name: str) -> list[int]:
        sid = self.nodes[name].pid
        return _pids_where(lambda pid, d: os.getsid(pid) == sid)

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of a node (its raylet, agents and Ray workers), as if the
        machine had died. Jobs the node started in their own sessions are left to autolab."""
        _kill(self.node_pids(name))
        try:
            self.nodes[name].wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        for p in reversed(list(self.nodes.values())):   # `ray start --block` stops its node on SIGTERM
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + 15
        for p in self.nodes.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        sids = {p.pid for p in self.nodes.values()}
        for _ in range(3):
            left = set(_pids_where(lambda pid, d: os.getsid(pid) in sids)) | set(pids_with_env(f"PYTHONPATH={self.root}"))
            if not left:
                break
            _kill(left)
            time.sleep(0.5)
        for p in self.nodes.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
