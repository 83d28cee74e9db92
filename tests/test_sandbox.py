"""autolab.sandbox: real processes, no mocks, no network, no GPU."""

from __future__ import annotations

import dis
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
import uuid

import pytest

from autolab import _sandbox_boot
from autolab.sandbox import Limits, Policy, SandboxResult, run_sandboxed, scrubbed_env

PY = sys.executable
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux /proc")


def run_py(code: str, cwd, **kw) -> SandboxResult:
    kw.setdefault("limits", Limits(wall_s=30))
    return run_sandboxed([PY, "-c", textwrap.dedent(code)], cwd=cwd, **kw)


def kinds(result: SandboxResult) -> set[str]:
    return {v["kind"] for v in result.violations}


def pids_with(marker: str) -> list[int]:
    """Host pids of live (non-zombie) processes whose command line contains marker."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            if data[data.rfind(b")") + 2:].split()[0] != b"Z":
                found.append(int(name))
        except OSError:
            continue
    return found


def wait_gone(pids, timeout=3.0) -> list[int]:
    deadline = time.monotonic() + timeout
    marker_alive = list(pids)
    while marker_alive and time.monotonic() < deadline:
        marker_alive = [p for p in marker_alive if os.path.exists(f"/proc/{p}") and _state(p) != b"Z"]
        time.sleep(0.05)
    return marker_alive


def _state(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rfind(b")") + 2:].split()[0]
    except OSError:
        return b""


@pytest.fixture
def ws(tmp_path):
    d = tmp_path / "ws"
    d.mkdir()
    return d


# ----------------------------------------------------------------------------- environment


def test_scrubbed_env_allow_list_and_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "a" * 40)
    monkeypatch.setenv("MY_SERVICE_TOKEN", "t")
    monkeypatch.setenv("HF_HOME", "/x")
    monkeypatch.setenv("TORCH_NCCL_SECRET_THING", "x")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/shared/cache")
    monkeypatch.setenv("TRITON_CACHE_DIR", "/shared/triton")
    monkeypatch.setenv("TORCH_LOGS", "dynamo")
    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    monkeypatch.setenv("NVSHMEM_DISABLE_NVLS", "1")
    monkeypatch.setenv("RANDOM_UNLISTED", "1")
    env = scrubbed_env({"SEED": "3"}, keep=["RANDOM_UNLISTED"])
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["NCCL_DEBUG"] == "INFO"
    assert env["TORCH_LOGS"] == "dynamo" and env["NVSHMEM_DISABLE_NVLS"] == "1"
    assert env["SEED"] == "3" and env["RANDOM_UNLISTED"] == "1"
    # cache locations are not inherited (shared, poisonable), unless passed on purpose
    assert "TORCHINDUCTOR_CACHE_DIR" not in env and "TRITON_CACHE_DIR" not in env
    assert scrubbed_env({"TRITON_CACHE_DIR": "/mine"})["TRITON_CACHE_DIR"] == "/mine"
    for name in ("OPENAI_API_KEY", "MY_SERVICE_TOKEN", "HF_HOME", "TORCH_NCCL_SECRET_THING"):
        assert name not in env
    assert "PYTHONPATH" not in scrubbed_env()
    assert scrubbed_env({"TOKENIZERS_PARALLELISM": "false"})["TOKENIZERS_PARALLELISM"] == "false"


@pytest.mark.parametrize("bad", [
    {"env": {"OPENAI_API_KEY": "x"}}, {"env": {"GITHUB_TOKEN": "x"}}, {"env": {"DB_PASSWORD": "x"}},
    {"env": {"AWS_REGION": "x"}}, {"env": {"ANTHROPIC_BASE": "x"}}, {"env": {"X": "sk-" + "b" * 40}},
    {"env": {"Y": "hf_" + "c" * 34}}, {"keep": ["LITELLM_MASTER_KEY"]}, {"keep": ["AZURE_ENDPOINT"]},
])
def test_scrubbed_env_refuses_explicit_secrets(bad):
    with pytest.raises(ValueError):
        scrubbed_env(bad.get("env"), keep=bad.get("keep", ()))


def test_secret_never_reaches_the_child(ws, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "z" * 40)
    monkeypatch.setenv("AUTOLAB_TEST_PASSWORD", "hunter2")
    r = run_py("""
        import os
        print("KEY", os.environ.get("OPENAI_API_KEY"))
        print("NAMES", sorted(os.environ))
        print("HOME", os.environ["HOME"], "TMPDIR", os.environ["TMPDIR"])
    """, ws)
    assert r.state == "ok", r.stdout_tail
    assert "KEY None" in r.stdout_tail
    assert "hunter2" not in r.stdout_tail and "zzzz" not in r.stdout_tail
    assert "AUTOLAB_TEST_PASSWORD" not in r.stdout_tail
    home = r.stdout_tail.split("HOME ")[1].split()[0]
    assert home != os.path.expanduser("~") and "autolab-sbx-" in home
    # candidate code asking for a key is recorded, even though it gets nothing
    assert [v["kind"] for v in r.violations] == ["env"] and "OPENAI_API_KEY" in r.violations[0]["detail"]
    with pytest.raises(ValueError):
        run_sandboxed([PY, "-c", "pass"], cwd=ws, env={"OPENAI_API_KEY": "x"})


# ----------------------------------------------------------------------------- network


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.3)
    yield srv
    srv.close()


def assert_no_connection(srv):
    with pytest.raises(socket.timeout):
        conn, _ = srv.accept()
        conn.close()


def test_network_connect_denied_and_recorded(ws, listener):
    port = listener.getsockname()[1]
    r = run_py(f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2)
            print("CONNECTED")
        except PermissionError as e:
            print("DENIED", e)
    """, ws)
    assert r.state == "ok", r.stdout_tail
    assert "DENIED" in r.stdout_tail and "CONNECTED" not in r.stdout_tail
    assert any(v["kind"] == "network" and str(port) in v["detail"] for v in r.violations)
    assert_no_connection(listener)


def test_network_namespace_blocks_even_without_the_hook(ws, listener):
    port = listener.getsockname()[1]
    r = run_py(f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2); print("CONNECTED")
        except OSError as e:
            print("FAILED", e)
    """, ws, policy=Policy(audit_python=False))
    if r.net_isolation != "netns":
        pytest.skip(f"no network namespace on this machine ({r.net_isolation})")
    assert "FAILED" in r.stdout_tail and "CONNECTED" not in r.stdout_tail
    assert r.violations == ()
    assert_no_connection(listener)


def test_private_loopback(ws, listener):
    port = listener.getsockname()[1]
    r = run_py(f"""
        import socket
        srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
        c = socket.create_connection(srv.getsockname(), timeout=2); print("INSIDE OK")
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=1); print("REACHED PARENT")
        except OSError as e:
            print("PARENT UNREACHABLE", type(e).__name__)
    """, ws, policy=Policy(loopback=True))
    if r.isolation.get("loopback") != "private":
        pytest.skip(f"no private loopback on this machine ({r.isolation})")
    assert "INSIDE OK" in r.stdout_tail and "PARENT UNREACHABLE" in r.stdout_tail, r.stdout_tail
    assert_no_connection(listener)


# ----------------------------------------------------------------------------- files


def test_read_deny(ws, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "val.bin").write_text("VALSECRET")
    (ws / "link").symlink_to(data / "val.bin")
    policy = Policy(read_deny=(str(data),))
    r = run_py("""
        for p in ("link", "../data/val.bin"):
            try:
                print("READ", open(p).read())
            except PermissionError as e:
                print("DENIED", p)
        import subprocess
        print(subprocess.run(["cat", "link"], capture_output=True, text=True))
    """, ws, policy=policy)
    assert r.state == "ok", r.stdout_tail
    assert "VALSECRET" not in r.stdout_tail
    assert r.stdout_tail.count("DENIED") == 2
    assert [v["kind"] for v in r.violations] == ["file_read"]  # same resolved path, recorded once
    assert str(data / "val.bin") in r.violations[0]["detail"]
    if r.isolation.get("read_deny") != "mount":
        pytest.skip("no mount namespace: only Python reads are denied here")


def test_write_outside_denied_cwd_and_write_allow_work(ws, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    extra = tmp_path / "extra"
    extra.mkdir()
    r = run_py(f"""
        import os, subprocess
        open("ckpt.txt", "w").write("ok")
        os.makedirs("sub/dir"); open("sub/dir/x", "wb").write(b"1")
        open({str(extra / 'allowed.txt')!r}, "w").write("ok")
        for target in ({str(outside / 'a.txt')!r}, "../outside/b.txt"):
            try:
                open(target, "w").write("x"); print("WROTE", target)
            except PermissionError:
                print("DENIED", target)
        try:
            os.remove({str(outside / 'keep.txt')!r})
        except PermissionError:
            print("DENIED remove")
        print(subprocess.run(["sh", "-c", "echo x > {outside / 'c.txt'}"]).returncode)
        open("/proc/self/comm", "w").write("renamed")  # a process's own /proc entries stay writable
        r = subprocess.run(["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"], capture_output=True, text=True)
        print("SYSCTL", r.returncode, r.stderr.strip())
    """, ws, policy=Policy(write_allow=(str(extra),)))
    assert r.state == "ok", r.stdout_tail
    assert (ws / "ckpt.txt").read_text() == "ok" and (ws / "sub/dir/x").exists()
    assert (extra / "allowed.txt").exists()
    assert r.stdout_tail.count("DENIED") == 3 and "WROTE" not in r.stdout_tail
    assert kinds(r) == {"file_write"} and len(r.violations) == 3
    assert not (outside / "a.txt").exists() and not (outside / "b.txt").exists()
    if r.isolation.get("fs_write", "").startswith("landlock"):
        assert not (outside / "c.txt").exists(), "a shell child wrote outside the workspace"
    if r.isolation.get("proc_ro") == "sys-readonly":
        assert "SYSCTL 0" not in r.stdout_tail


# ----------------------------------------------------------------------------- limits


def test_timeout_kills(ws):
    t = time.monotonic()
    r = run_py("import time; time.sleep(1000)", ws, limits=Limits(wall_s=1.0))
    assert (r.state, r.reason) == ("killed", "timeout")
    assert 0.9 < r.wall_s < 4 and time.monotonic() - t < 6


def test_memory_limit_kills(ws):
    r = run_py("""
        import time
        chunks = []
        for _ in range(60):
            chunks.append(b"x" * (10 << 20)); time.sleep(0.02)
        time.sleep(30)
    """, ws, limits=Limits(wall_s=20, memory_mb=150))
    assert (r.state, r.reason) == ("killed", "memory"), r
    assert r.peak_memory_mb > 150


def test_peak_memory_is_measured_within_the_limit(ws):
    """Under its limit the tree's PSS is read once a second (its RSS, never less, at each poll):
    a process holding 120 MB for 2.5 s still reports its peak."""
    r = run_py("""
        import time
        block = b"x" * (120 << 20)
        time.sleep(2.5)
    """, ws, limits=Limits(wall_s=20, memory_mb=2048))
    assert r.state == "ok", r
    assert 100 < r.peak_memory_mb < 2048, r.peak_memory_mb


@pytest.mark.parametrize("harden", [True, False], ids=["pidns", "subreaper"])
def test_setsid_background_process_is_cleaned_up(ws, harden):
    suffix = uuid.uuid4().int % 10**6
    marker = f"1000.{suffix}"  # the child builds it, so that only the sleeps carry it
    seen: list[int] = []

    def on_line(line):
        if line.startswith("STARTED"):
            time.sleep(0.1)
            seen.extend(pids_with(marker))

    r = run_py(f"""
        import os, subprocess, time
        marker = "1000." + "{suffix}"
        subprocess.Popen(["sleep", marker], start_new_session=True)   # setsid'd background process
        if os.fork() == 0:                                                 # and a double-forked daemon
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", marker])
            os._exit(0)
        time.sleep(0.3)
        print("STARTED", flush=True)
        time.sleep(0.5)
    """, ws, policy=Policy(harden=harden), on_line=on_line)
    assert r.state == "ok", r.stdout_tail
    assert len(seen) == 2, "the test could not see the background processes"
    assert wait_gone(seen) == []
    assert pids_with(marker) == []


def test_nproc_limit_kills(ws):
    suffix = uuid.uuid4().int % 10**6
    marker = f"1000.{suffix}"
    r = run_py(f"""
        import subprocess, time
        procs = [subprocess.Popen(["sleep", "1000." + "{suffix}"]) for _ in range(50)]
        time.sleep(30)
    """, ws, limits=Limits(wall_s=20, nproc=20))
    assert (r.state, r.reason) == ("killed", "nproc"), r
    assert wait_gone(pids_with(marker)) == []


def test_exit_codes_and_missing_program(ws):
    r = run_py("import sys; print('bye'); sys.exit(3)", ws)
    assert (r.state, r.reason, r.returncode) == ("failed", "exit code 3", 3)
    assert "bye" in r.stdout_tail
    r = run_sandboxed(["no-such-program-autolab"], cwd=ws, limits=Limits(wall_s=10))
    assert r.state == "failed" and r.returncode == 127 and "no-such-program-autolab" in r.stdout_tail
    r = run_py("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", ws)
    assert (r.state, r.reason) == ("killed", "signal 11")


# ----------------------------------------------------------------------------- output


def test_streaming_and_large_output(ws, tmp_path):
    log = tmp_path / "run.log"
    got: list[tuple[float, str]] = []
    r = run_py("""
        import sys, time
        for i in range(3):
            print("line", i, flush=True); time.sleep(0.3)
        sys.stdout.write("x" * 200 + "\\n" * 1)
        for i in range(60000):
            print("bulk %06d" % i)
        print("END")
    """, ws, on_line=lambda s: got.append((time.monotonic(), s)), log_path=log)
    end = time.monotonic()
    assert r.state == "ok"
    lines = [s for _, s in got]
    assert lines[:3] == ["line 0", "line 1", "line 2"] and lines[-1] == "END" and len(lines) == 60005
    assert end - got[0][0] > 0.5, "lines were not delivered while the child ran"
    assert log.read_text().splitlines() == lines
    assert r.stdout_tail.endswith("END") and len(r.stdout_tail) <= 20_000


def _freezer(at_line: str, hold_s: float):
    """An on_line that sets live["freeze"] when ``at_line`` comes and clears it ``hold_s`` later;
    returns (lines with their arrival times, live, [freeze time, continue time], on_line)."""
    import threading

    got: list[tuple[float, str]] = []
    live: dict = {}
    marks: list[float] = []

    def on_line(s: str) -> None:
        got.append((time.monotonic(), s))
        if s == at_line and not marks:
            marks.append(time.monotonic())
            live["freeze"] = True
            threading.Timer(hold_s, lambda: (marks.append(time.monotonic()), live.update(freeze=False))).start()

    return got, live, marks, on_line


def test_a_frozen_tree_makes_no_progress_and_its_frozen_time_is_not_counted(ws):
    """live["freeze"]: the tree is stopped (a child it starts too) and continued; the time it was
    stopped counts neither against wall_s nor against live["deadline"]."""
    got, live, frozen_at, on_line = _freezer("tick 5", 3.0)
    r = run_py("""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: print('child', flush=True); time.sleep(0.1)"])
        for i in range(1000):
            print("tick", i, flush=True); time.sleep(0.05)
    """, ws, on_line=on_line, live=live, limits=Limits(wall_s=5))
    assert r.state == "killed" and r.reason == "timeout"
    assert len(frozen_at) == 2 and live["frozen_s"] == pytest.approx(frozen_at[1] - frozen_at[0], abs=0.6)
    t0, t1 = frozen_at[0] + 0.6, frozen_at[1] - 0.1       # after the stop took hold, before the continue
    assert not [s for t, s in got if t0 < t < t1], "a line came while the tree was frozen"
    assert [s for t, s in got if t > frozen_at[1] and s.startswith("tick")], "the tree did not go on after the freeze"
    assert r.wall_s >= 5 + 2.5                            # the 3 s frozen were not counted against wall_s = 5


def test_a_frozen_process_whose_main_thread_exited_is_stopped_too(ws):
    """A process whose main thread called pthread_exit shows as a zombie (``Z``) while its other
    threads run: the freeze must stop it all the same (it was skipped as dead), and the kill at
    the end must count it as alive."""
    got, live, frozen, on_line = _freezer("tick 3", 1.5)
    r = run_py("""
        import ctypes, threading, time
        def work():
            for i in range(1000):
                print("tick", i, flush=True); time.sleep(0.05)
        threading.Thread(target=work).start()
        ctypes.CDLL(None).pthread_exit(None)
    """, ws, on_line=on_line, live=live, limits=Limits(wall_s=4))
    assert len(frozen) == 2, r.stdout_tail
    assert not [s for t, s in got if frozen[0] + 0.6 < t < frozen[1] - 0.1], "a thread of the stopped process went on"
    assert [s for t, s in got if t > frozen[1]], "it did not go on after the freeze"
    assert r.state == "killed" and r.reason == "timeout"


# ----------------------------------------------------------------------------- python children and the hook


def test_python_grandchildren_inherit_the_hook(ws, listener):
    port = listener.getsockname()[1]
    r = run_py(f"""
        import subprocess, sys
        code = "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)"
        print("rc", subprocess.run([sys.executable, "-c", code], env={{}}).returncode)
        try:
            subprocess.run([sys.executable, "-I", "-c", code])
        except PermissionError:
            print("DENIED -I")
        try:
            subprocess.run("PYTHONPATH= " + sys.executable + " -c pass", shell=True)
        except PermissionError:
            print("DENIED shell")
    """, ws)
    assert "rc 1" in r.stdout_tail and "DENIED -I" in r.stdout_tail and "DENIED shell" in r.stdout_tail
    assert kinds(r) == {"network", "subprocess"}
    assert_no_connection(listener)


def test_hook_resists_monkeypatching(ws, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("S")
    r = run_py(f"""
        import builtins, gc, os, posixpath, sys
        os.path.realpath = posixpath.realpath = lambda p, **k: "/harmless"
        os.lstat = lambda p: os.stat("/")
        builtins.isinstance = lambda *a: False
        try:
            open({str(secret)!r}).read(); print("READ")
        except PermissionError:
            print("DENIED read")
        hook = [o for o in gc.get_objects() if getattr(o, "__name__", "") == "hook"
                and "sitecustomize" in getattr(getattr(o, "__code__", None), "co_filename", "")][0]
        try:
            hook.__defaults__ = (frozenset(),) + hook.__defaults__[1:]
            print("REPLACED")
        except PermissionError:
            print("DENIED tamper")
    """, ws, policy=Policy(read_deny=(str(secret),)))
    assert "DENIED read" in r.stdout_tail and "DENIED tamper" in r.stdout_tail, r.stdout_tail
    assert kinds(r) == {"file_read", "tamper"}


def test_hook_has_no_closures_or_global_lookups(tmp_path):
    v = tmp_path / "v"
    v.touch()
    cfg = {"read_deny": [], "write_dirs": [str(tmp_path)], "network": False, "loopback": False,
           "violations": str(v), "boot_dir": str(tmp_path / "boot")}
    fd = os.open(v, os.O_WRONLY | os.O_APPEND)
    try:
        hook, record = _sandbox_boot._make_hook(cfg, {}, str(tmp_path / "c.json"), fd)
    finally:
        os.close(fd)
    todo, seen = [hook, record], set()
    while todo:
        fn = todo.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        assert fn.__closure__ is None, fn.__name__
        codes = [fn.__code__]
        while codes:
            code = codes.pop()
            codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
            loads = [i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")]
            assert not loads, f"{fn.__name__}/{code.co_name} looks up {loads} at call time"
        for d in fn.__defaults__ or ():
            for x in (d if isinstance(d, tuple) else (d,)):
                if isinstance(x, types.FunctionType):
                    todo.append(x)
    assert len(seen) >= 10


def test_import_has_no_side_effects():
    code = ("import signal, logging, threading; before = [signal.getsignal(s) for s in "
            "(signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)]; n = threading.active_count(); "
            "h = list(logging.getLogger().handlers); import autolab.sandbox; "
            "assert before == [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)]; "
            "assert threading.active_count() == n and logging.getLogger().handlers == h; print('clean')")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "clean", out.stderr


def test_torch_works_in_the_sandbox(ws):
    pytest.importorskip("torch")
    r = run_py("""
        import torch
        print("SUM", torch.ones(3).sum().item())
        torch.save({"w": torch.ones(2)}, "ckpt.pt")
    """, ws, limits=Limits(wall_s=60))
    assert r.state == "ok", r.stdout_tail
    assert "SUM 3.0" in r.stdout_tail and (ws / "ckpt.pt").exists()
    assert r.violations == (), r.violations


def test_private_paths_from_the_environment_are_denied(ws, tmp_path, monkeypatch):
    """AUTOLAB_PRIVATE_PATHS (set by autolab for a run's papermill process and kernel: the research
    log, the kernel's sockets) is denied to every sandboxed child, like ~/.ssh."""
    from autolab.sandbox import PRIVATE_PATHS_ENV

    log = tmp_path / "log.db"
    log.write_text("PROMPTS")
    monkeypatch.setenv(PRIVATE_PATHS_ENV, f"{log}{os.pathsep}relative/is/ignored")
    r = run_py("""
        try:
            print("READ", open(%r).read())
        except PermissionError:
            print("DENIED")
    """ % str(log), ws)
    assert r.state == "ok" and "DENIED" in r.stdout_tail and "PROMPTS" not in r.stdout_tail, r.stdout_tail
    assert PRIVATE_PATHS_ENV not in r.stdout_tail


# ----------------------------------------------------------------------------- reads by allow-list


@pytest.fixture
def splits(tmp_path):
    """A train token file next to val and hidden_val copies, and another lab's cache elsewhere."""
    cache = tmp_path / "cache" / "nanochat"
    cache.mkdir(parents=True)
    (cache / "train.tokens.npy").write_text("TRAINTOKENS")
    (cache / "val.tokens.npy").write_text("VALTOKENS")
    other = tmp_path / "otherlab" / ".cache" / "autolab"
    other.mkdir(parents=True)
    (other / "hidden_val.tokens.npy").write_text("HIDDENTOKENS")
    return cache, other


@pytest.mark.parametrize("relax", [(), ("landlock",)], ids=["landlock", "mount-fallback"])
def test_reads_are_an_allow_list_enforced_below_python(ws, splits, relax):
    cache, other = splits
    (ws / "train.py").write_text(textwrap.dedent(f"""
        # the very first instructions: no harness imported, nothing set up by the candidate
        import ctypes, glob, os, subprocess
        for p in ({str(cache / 'val.tokens.npy')!r}, {str(other / 'hidden_val.tokens.npy')!r}):
            try:
                print("READ", open(p).read())
            except PermissionError:
                print("DENIED", os.path.basename(p))
        print("GLOB", glob.glob({str(other) + '/*'!r}))
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.open({str(cache / 'val.tokens.npy').encode()!r}, 0)
        print("RAW", fd, ctypes.get_errno())
        out = subprocess.run(["cat", {str(cache / 'val.tokens.npy')!r}], capture_output=True, text=True)
        print("CAT", out.returncode, out.stdout)
        print("TRAIN", open({str(cache / 'train.tokens.npy')!r}).read())
        import numpy, json  # the Python environment stays readable
        open("own.txt", "w").write("mine"); print("OWN", open("own.txt").read())
    """))
    r = run_sandboxed([PY, "train.py"], cwd=ws, limits=Limits(wall_s=60),
                      policy=Policy(read_allow=(str(cache / "train.tokens.npy"),), relax=relax))
    assert r.state == "ok", r.stdout_tail
    out = r.stdout_tail
    assert "VALTOKENS" not in out and "HIDDENTOKENS" not in out, out
    assert "TRAIN TRAINTOKENS" in out and "OWN mine" in out
    assert out.count("DENIED") == 2
    details = [v["detail"] for v in r.violations if v["kind"] == "file_read"]
    assert any(str(cache / "val.tokens.npy") in d and "allow-list" in d for d in details), details
    assert any(str(other / "hidden_val.tokens.npy") in d for d in details), details
    assert any(d.startswith("list " + str(other)) for d in details), details  # the glob's listing
    if relax:  # no Landlock: everything else is covered by empty mounts
        if r.isolation.get("fs_read") != "mount-allow-list":
            pytest.skip("no mount namespace here: only Python reads are refused and recorded")
        assert "RAW -1 2" in out, out          # ctypes past the audit hook: nothing there
    else:
        if r.isolation.get("fs_read") != "landlock-allow-list":
            pytest.skip("no Landlock here: only Python reads are refused and recorded")
        assert "RAW -1 13" in out, out         # ctypes past the audit hook: the kernel says EACCES
    assert "CAT 0" not in out                  # and neither can a child that is not Python


def test_allow_list_lets_a_subprocess_run_and_lists_python_path(ws, tmp_path):
    pkg = tmp_path / "lib"
    (pkg / "mypkg").mkdir(parents=True)
    (pkg / "mypkg" / "__init__.py").write_text("X = 41\n")
    (pkg / "secret.txt").write_text("NOPE")
    r = run_py(f"""
        import subprocess, sys, os
        print("LS", sorted(os.listdir({str(pkg)!r})))       # a PYTHONPATH folder may be listed
        try:
            open({str(pkg / 'secret.txt')!r}).read()
        except PermissionError:
            print("DENIED secret")
        print(subprocess.run([sys.executable, "-c", "print('CHILD', 1 + 1)"], capture_output=True, text=True).stdout)
        print(subprocess.run(["sh", "-c", "echo SHELL $(ls / | wc -l)"], capture_output=True, text=True).stdout)
    """, ws, policy=Policy(read_allow=(str(pkg / "mypkg"),)), env={"PYTHONPATH": str(pkg)})
    assert r.state == "ok", r.stdout_tail
    assert "LS ['mypkg', 'secret.txt']" in r.stdout_tail and "DENIED secret" in r.stdout_tail
    assert "CHILD 2" in r.stdout_tail and "SHELL" in r.stdout_tail
    assert [v["kind"] for v in r.violations] == ["file_read"]


# ----------------------------------------------------------------------------- nothing outlives the work


def _daemon_code(counter, busy: bool) -> str:
    """Double fork + setsid, renamed, deaf to SIGTERM; works (or sleeps) and counts in a file."""
    work = "x = sum(i * i for i in range(20000))" if busy else "time.sleep(0.05)"
    return f"""
        import os, signal, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                open("/proc/self/comm", "w").write("kworker/0:1")
                n = 0
                while True:
                    {work}
                    n += 1
                    with open({str(counter)!r}, "a") as f:
                        f.write("%d %r %r\\n" % (n, time.time(), time.process_time()))
            os._exit(0)
        time.sleep(0.5)
    """


@pytest.mark.parametrize("harden", [True, False], ids=["pidns", "subreaper"])
def test_a_process_working_after_the_end_marker_is_ended_and_reported(ws, harden):
    counter = ws / "counter.txt"
    marks = {}

    def on_line(line):
        if line.startswith("MODEL SAVED"):
            marks["end"] = time.time()

    r = run_py(_daemon_code(counter, busy=True) + """
        print("MODEL SAVED", flush=True)
        time.sleep(4)
    """, ws, policy=Policy(harden=harden), on_line=on_line,
        limits=Limits(wall_s=30, end_marker="MODEL SAVED", after_end_s=8))
    assert r.state == "ok", r.stdout_tail
    proc = [v["detail"] for v in r.violations if v["kind"] == "process"]
    assert any("kworker/0:1" in d and "working after the end marker" in d for d in proc), r.violations
    assert [s["comm"] for s in r.survivors] == ["kworker/0:1"]
    rows = [[float(x) for x in ln.split()] for ln in counter.read_text().split("\n") if ln.count(" ") == 2]
    after = [cpu for _, wall, cpu in rows if wall >= marks["end"]]
    # CPU seconds, not wall ones (no test may depend on the machine's speed): the watchdog looks
    # every 0.25 s and ends it past 0.3 s of CPU since the marker
    assert after and after[-1] - after[0] < 1.0, "the daemon kept working long after the end marker"
    assert r.end_s is not None and r.after_end_s is not None and r.after_end_s >= 3.5
    assert pids_with("kworker/0:1") == []


@pytest.mark.parametrize("harden", [True, False], ids=["pidns", "subreaper"])
def test_an_idle_process_outliving_the_main_one_is_reported(ws, harden):
    counter = ws / "counter.txt"
    r = run_py(_daemon_code(counter, busy=False) + """
        print("done, leaving the sleeper behind")
    """, ws, policy=Policy(harden=harden))
    assert r.state == "ok", r.stdout_tail
    proc = [v["detail"] for v in r.violations if v["kind"] == "process"]
    assert len(proc) == 1 and "kworker/0:1" in proc[0] and "main process had exited" in proc[0], r.violations
    n = counter.read_text()
    time.sleep(0.5)
    assert counter.read_text() == n, "the sleeper is still counting after the run"


def test_a_main_process_lingering_after_the_end_marker_is_killed(ws):
    r = run_py("""
        import time
        print("MODEL SAVED", flush=True)
        time.sleep(60)
    """, ws, limits=Limits(wall_s=30, end_marker="MODEL SAVED", after_end_s=1.0))
    assert (r.state, r.reason) == ("killed", "after_end"), r
    assert r.after_end_s is not None and r.after_end_s < 30   # not the 60 s it asked for
    assert any(v["kind"] == "process" and "main process" in v["detail"] for v in r.violations), r.violations


def test_honest_helpers_that_exit_in_time_pass_and_their_cpu_is_counted(ws):
    (ws / "train.py").write_text(textwrap.dedent("""
        import multiprocessing as mp, subprocess, sys, threading, time

        def burn(_):
            t = time.process_time()
            while time.process_time() - t < 0.4:
                pass
            return 1

        if __name__ == "__main__":
            with mp.get_context("spawn").Pool(2) as pool:   # workers (and spawn's resource tracker)
                print("POOL", sum(pool.map(burn, range(2))))
            th = threading.Thread(target=burn, args=(0,)); th.start(); th.join()
            subprocess.run([sys.executable, "-c", "print('CHILD')"], check=True)
            print("MODEL SAVED", flush=True)
            print("---\\nsteps: 3")
    """))
    r = run_sandboxed([PY, "train.py"], cwd=ws, limits=Limits(wall_s=60, end_marker="MODEL SAVED"),
                      policy=Policy(read_allow=()))
    assert r.state == "ok", r.stdout_tail
    assert "POOL 2" in r.stdout_tail and "CHILD" in r.stdout_tail
    assert r.violations == (), r.violations
    assert r.survivors == ()
    assert r.cpu_s is not None and r.cpu_s >= 1.0, r.cpu_s   # 2 x 0.4 s in the pool's workers + 0.4 s here


@pytest.mark.gpu
@pytest.mark.parametrize("compile_threads", ["1", None], ids=["compile-in-process", "compile-pool"])
def test_cuda_and_torch_compile_under_the_read_allow_list(ws, compile_threads):
    """On a GPU machine: the driver's files, CUDA libraries, Triton's compiler and caches stay
    reachable under reads by allow-list, and nothing is left running at the end marker.
    (``compile-pool``: Inductor's default pool of compile workers, for the record.)"""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    (ws / "train.py").write_text(textwrap.dedent("""
        import torch
        x = torch.randn(1024, 1024, device="cuda")
        f = torch.compile(lambda a: torch.nn.functional.gelu(a @ a).float().sum())
        print("VALUE", bool(torch.isfinite(f(x)).item()))
        torch.cuda.synchronize()
        print("MODEL SAVED", flush=True)
    """))
    env = {"TORCHINDUCTOR_COMPILE_THREADS": compile_threads} if compile_threads else {}
    r = run_sandboxed([PY, "train.py"], cwd=ws, env=env, policy=Policy(read_allow=()),
                      limits=Limits(wall_s=400, end_marker="MODEL SAVED"))
    print(r.isolation, r.violations, r.cpu_s, r.after_end_s)
    assert r.state == "ok", r.stdout_tail
    assert "VALUE True" in r.stdout_tail
    if compile_threads:
        assert r.violations == (), r.violations
        assert r.isolation.get("fs_read") == "landlock-allow-list", r.isolation


# ----------------------------------------------------------------------------- nothing outlives the runner

_RUNNER = r"""
import sys
from autolab.sandbox import Limits, Policy, run_sandboxed
code, cwd, harden, freeze = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
live = {}

def on_line(s):
    if s == "READY":
        live["freeze"] = freeze
        print("ROOT", live["pid"], flush=True)

run_sandboxed([sys.executable, "-c", code], cwd=cwd, policy=Policy(harden=harden), limits=Limits(wall_s=300),
              live=live, on_line=on_line)
print("the run ended before the runner was killed", flush=True)
"""


def _tree_of(root: int) -> dict[int, bytes]:
    """pid -> start time of ``root`` and every process below it, or in its session."""
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    rest = f.read().rsplit(b")", 1)[1].split()
                procs[int(name)] = (int(rest[1]), int(rest[3]), rest[19])   # ppid, session, start time
            except (OSError, IndexError, ValueError):
                pass
    tree, todo = {}, [p for p, (_, sid, _) in procs.items() if p == root or sid == root]
    while todo:
        p = todo.pop()
        if p in procs and p not in tree:
            tree[p] = procs[p][2]
            todo.extend(q for q, (ppid, _, _) in procs.items() if ppid == p)
    return tree


def _still_there(tree: dict[int, bytes]) -> list[int]:
    """The processes of ``tree`` that still exist and are not zombies (same pid and start time)."""
    out = []
    for pid, start in tree.items():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if rest[19] == start and rest[0] != b"Z":
            out.append(pid)
    return out


def _poll(cond, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


@pytest.mark.parametrize("harden", [True, False], ids=["pidns", "subreaper"])
@pytest.mark.parametrize("how", ["running", "frozen", "all-stopped"])
def test_nothing_of_a_run_outlives_its_runner_killed(ws, harden, how):
    """The process that called run_sandboxed is SIGKILLed (no cleanup of its own runs) while the
    tree works, or while the runner holds it frozen (SIGSTOP: it was left stopped forever under
    the host's init), or with the boot process stopped too: the whole tree, a setsid'd grandchild
    included, goes within a bounded time."""
    if how == "all-stopped" and not harden:
        pytest.skip("known gap: without a PID namespace the boot process ends the tree itself, which a stopped "
                    "one cannot do")
    freeze = how != "running"
    code = textwrap.dedent("""
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.05)"], start_new_session=True)
        subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.05)"])
        time.sleep(0.3)
        print("READY", flush=True)
        while True:
            time.sleep(0.05)
    """)
    root_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root_dir + os.pathsep + os.environ.get("PYTHONPATH", "")}
    tree: dict[int, bytes] = {}
    root = 0
    runner = subprocess.Popen([PY, "-c", _RUNNER, code, str(ws), str(int(harden)), str(int(freeze))],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = runner.stdout.readline()   # the runner's own limit (wall_s) bounds this wait
        assert line.startswith("ROOT "), line + runner.stdout.read()
        root = int(line.split()[1])
        def whole() -> dict[int, bytes]:   # trampoline, (init,) candidate and its two children
            t = _tree_of(root)
            return t if len(t) >= (5 if harden else 4) else {}

        tree = _poll(whole, 30.0)
        assert tree, f"the run's processes were not all seen: {_tree_of(root)}"
        below = [p for p in tree if p != root]
        if freeze:
            assert _poll(lambda: all(_state(p) == b"T" for p in below), 30.0), [_state(p) for p in below]
        if how == "all-stopped":
            os.kill(root, signal.SIGSTOP)
            assert _poll(lambda: _state(root) == b"T", 30.0)
        os.kill(runner.pid, 9)
        runner.wait(timeout=30)
        gone = _poll(lambda: not _still_there(tree), 30.0)
        assert gone, f"still there 30 s after the runner was killed: {_still_there(tree)} of {tree}"
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        for pid in _still_there({**(_tree_of(root) if root else {}), **tree}):   # leave nothing behind
            try:
                os.kill(pid, 9)
            except OSError:
                pass
