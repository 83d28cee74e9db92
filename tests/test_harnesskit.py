"""autolab.harnesskit, the helpers the three task harnesses share: the result skeleton, atomic
JSON writes (a real process killed mid-write leaves the old file) and loading a candidate file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autolab import harnesskit as K

REPO = Path(__file__).resolve().parent.parent


def test_result_skeleton_has_the_contract_keys_in_a_fixed_order():
    r = K.result_skeleton("kernels", "cpu-smoke", "3", Path("/tmp/c"), timings={"budget_s": 5.0}, details={})
    assert list(r) == ["task", "preset", "seed", "candidate_dir", "status", "reason", "metrics", "timings",
                       "summary", "curve", "violations", "probes", "details"]
    assert (r["seed"], r["candidate_dir"], r["status"], r["reason"]) == (3, "/tmp/c", "failed", "")
    assert r["timings"] == {"budget_s": 5.0} and r["metrics"] == {} and r["violations"] == []
    other = K.result_skeleton("kernels", "p", 1, "c")
    other["metrics"]["x"] = 1.0                     # fresh containers each time
    assert K.result_skeleton("kernels", "p", 1, "c")["metrics"] == {}
    with pytest.raises(TypeError, match="status"):
        K.result_skeleton("t", "p", 1, "c", status="ok")


def test_atomic_write_json_formats_like_json_dumps(tmp_path):
    obj = {"b": [1, 2.5], "a": {"z": None, "y": "é"}, "p": Path("/x")}
    p = tmp_path / "r.json"
    K.atomic_write_json(p, {k: v for k, v in obj.items() if k != "p"})
    assert p.read_text() == json.dumps({k: v for k, v in obj.items() if k != "p"}, indent=2, sort_keys=True) + "\n"
    K.atomic_write_json(p, obj, indent=1, sort_keys=False, default=str, newline=False)
    assert p.read_text() == json.dumps(obj, indent=1, default=str)
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]      # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "r.json"
    K.atomic_write_json(p, {"old": True})
    before = p.read_bytes()
    with pytest.raises(TypeError):
        K.atomic_write_json(p, {"new": object()})                  # not JSON: fails while writing
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]


def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path):
    """A real crash: the writer process SIGKILLs itself halfway through serializing a large
    object, after part of the new text has reached the disk. The target still holds the old
    file whole; only a hidden partial temporary file is left next to it."""
    p = tmp_path / "result.json"
    K.atomic_write_json(p, {"status": "ok", "metrics": {"val_bpb": 1.0}})
    before = p.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal
        from autolab.harnesskit import atomic_write_json

        class Bomb:
            pass

        def default(o):
            os.kill(os.getpid(), signal.SIGKILL)   # dies in the middle of the write

        rows = [{{"step": i, "loss": 1.0 / (i + 1)}} for i in range(20000)]
        atomic_write_json({str(p)!r}, {{"curve": rows, "zz": Bomb()}}, default=default)
    """)
    r = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    assert p.read_bytes() == before
    leftovers = [f for f in tmp_path.iterdir() if f.name != "result.json"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".result.json.tmp-")
    assert leftovers[0].stat().st_size > 0                          # the crash was mid-write, not before it
    json.loads(p.read_text())


def test_load_module_imports_without_running_main(tmp_path):
    src = tmp_path / "train.py"
    src.write_text("import sys\nVALUE = 41 + 1\nclass Net:\n    pass\n"
                   "if __name__ == '__main__':\n    raise SystemExit('the training block ran')\n")
    mod = K.load_module(src)
    try:
        assert mod.VALUE == 42 and mod.__name__ == K.CANDIDATE_MODULE
        assert sys.modules[K.CANDIDATE_MODULE] is mod and mod.Net.__module__ == K.CANDIDATE_MODULE
    finally:
        sys.modules.pop(K.CANDIDATE_MODULE, None)
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('import-time failure')\n")
    with pytest.raises(RuntimeError, match="import-time failure"):
        K.load_module(bad, "kernels_candidate_bad")
    assert "kernels_candidate_bad" not in sys.modules
    with pytest.raises((ImportError, FileNotFoundError)):
        K.load_module(tmp_path / "missing.txt", "nothing_here")


def test_importing_the_helper_loads_nothing_heavy():
    code = ("import sys, autolab.harnesskit\n"
            "heavy = [m for m in ('torch', 'numpy', 'pandas', 'litellm', 'autolab.log', 'autolab.task') if m in sys.modules]\n"
            "print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def _cache_env(tmp_path, cand: str, chain: str = "") -> dict[str, str]:
    return {"AUTOLAB_CACHE": str(tmp_path / "cache"), K.COMPILE_CACHE_ENV: f"lab1/{cand}", K.COMPILE_CACHE_FROM_ENV: chain}


def test_compile_caches_only_the_seeds_runs_write_the_shared_folder(tmp_path, monkeypatch):
    """The seed's runs write the lab's shared folder; any other run gets a private copy of it
    (plain files only: a planted link or FIFO is not followed or opened by the trusted copy),
    may read the seed's folder, and its folder is removed after the run: what a candidate writes
    (a poisoned entry, weights stashed to resume from) reaches no other run, not even its own next."""
    monkeypatch.setenv("AUTOLAB_CACHE", str(tmp_path / "cache"))
    assert K.compile_cache_for_run("cpu", {}) is None                 # no lab candidate named: no cache
    seed = K.compile_cache_for_run("cpu", _cache_env(tmp_path, "c-seed"))
    assert not seed.private and seed.read == () and (seed.folder / "inductor").is_dir() and not seed.warm()
    (seed.folder / "inductor" / "fxgraph.bin").write_bytes(b"seed entry")
    secret = tmp_path / "val.tokens.npy"
    secret.write_bytes(b"the targets")
    (seed.folder / "inductor" / "link").symlink_to(secret)
    os.mkfifo(seed.folder / "triton" / "fifo")
    assert K.compile_cache_for_run("cpu", _cache_env(tmp_path, "c-seed")).folder == seed.folder   # shared by seed runs

    child = K.compile_cache_for_run("cpu", _cache_env(tmp_path, "c-child", "c-seed"))
    assert child.private and child.folder != seed.folder and child.read == (seed.folder,) and child.warm()
    assert (child.folder / "inductor" / "fxgraph.bin").read_bytes() == b"seed entry"
    assert not os.path.lexists(child.folder / "inductor" / "link") and not os.path.lexists(child.folder / "triton" / "fifo")
    assert K.compile_cache_for_run("cpu", _cache_env(tmp_path, "c-child", "c-seed")).folder != child.folder  # per run
    (child.folder / "inductor" / "stash.pt").write_bytes(b"weights to resume from")
    child.discard()
    assert not child.folder.exists()
    for who, chain in (("c-child", "c-seed"), ("c-grand", "c-child,c-seed"), ("c-sib", "c-seed")):
        later = K.compile_cache_for_run("cpu", _cache_env(tmp_path, who, chain))
        assert not (later.folder / "inductor" / "stash.pt").exists() and later.read == (seed.folder,)
    assert not (seed.folder / "inductor" / "stash.pt").exists()
    other_lab = K.compile_cache_for_run("cpu", {**_cache_env(tmp_path, "c-child", "c-seed"),
                                               K.COMPILE_CACHE_ENV: "lab2/c-child"})
    assert not other_lab.warm() and other_lab.read == ()
    assert child.env() == {"TORCHINDUCTOR_CACHE_DIR": str(child.folder / "inductor"),
                           "TRITON_CACHE_DIR": str(child.folder / "triton")}
