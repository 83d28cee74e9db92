"""The executor contract: an abstract base every executor subclasses, one place that builds the
command of a job, and executors/ importing nothing above it."""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

import autolab
from autolab.executors import Executor, Job, JobLimits, JobResult
from autolab.executors.local import LocalExecutor
from autolab.executors.notebook import EXECUTED, OUTCOME, command, files_to_collect, on_worker
from autolab.records import State

EXECUTORS = Path(autolab.__file__).resolve().parent / "executors"


class _Complete(Executor):
    name = "inline"

    def __init__(self):
        self.inner = LocalExecutor(cpu_slots=1)

    @property
    def slots(self) -> int:
        return 1

    def slots_for(self, gpus: int, threads: int = 1) -> int:
        return 1

    @property
    def busy_s(self) -> float:
        return self.inner.busy_s

    def submit(self, job):
        return self.inner.submit(job)

    def shutdown(self, wait: bool = True) -> None:
        self.inner.shutdown(wait)


@pytest.mark.parametrize("missing", ["name", "slots", "slots_for", "busy_s", "submit", "shutdown"])
def test_an_executor_missing_a_method_cannot_be_built(missing):
    body = {k: v for k, v in vars(_Complete).items() if k not in (missing, "__abstractmethods__", "_abc_impl")}
    Partial = type("Partial", (Executor,), body)
    with pytest.raises(TypeError, match=rf"\b{missing}\b"):
        Partial()


def test_a_complete_subclass_runs_through_autolab_run(toy_lab):
    """What the loop and autolab.run need of an executor is the base class, nothing probed."""
    with _Complete() as ex:
        (r,) = autolab.run(toy_lab, seeds=1, executor=ex)
        assert r.state is State.COMPLETE and r.executor == "inline" and ex.busy_s > 0
    with pytest.raises(TypeError):
        Executor()


def _job(tmp_path: Path, **kw) -> Job:
    run_dir = tmp_path / "runs" / "r-1"
    params = {"candidate_dir": str(tmp_path / "cand"), "seed": 3, "preset": "quick",
              "result_path": str(run_dir / "result.json")}
    return Job(**{"run_id": "r-1", "notebook": str(tmp_path / "task" / "benchmark.ipynb"), "cwd": str(tmp_path / "task"),
                  "run_dir": str(run_dir), "limits": JobLimits(timeout_s=60), "params": params,
                  "collect": ("result.json",), **kw})


def _shape(argv: list[str]) -> list:
    """argv with its paths blanked and its parameters as a dict (path-valued ones blanked)."""
    out = []
    for i, a in enumerate(argv):
        if i >= 1 and argv[i - 1] == "--params":
            p = json.loads(a)
            out.append({k: ("<path>" if k in ("candidate_dir", "result_path") else v) for k, v in p.items()})
        elif os.sep in a and a != sys.executable:
            out.append("<path>")
        else:
            out.append(a)
    return out


def test_the_command_is_the_same_on_a_worker_up_to_paths(tmp_path):
    job = _job(tmp_path)
    local = command(job)
    assert local[:3] == [sys.executable, "-m", "autolab._papermill_run"]
    assert local[3:5] == [job.notebook, str(Path(job.run_dir) / EXECUTED)]
    assert local[local.index("--outcome") + 1] == str(Path(job.run_dir) / OUTCOME)
    w = tmp_path / "worker"
    moved = on_worker(job, notebook=w / "task" / "benchmark.ipynb", cwd=w / "task", run_dir=w / "run",
                      candidate_dir=w / "cand")
    remote = command(moved)
    assert _shape(remote) == _shape(local) and remote != local
    params = json.loads(remote[remote.index("--params") + 1])
    assert params["candidate_dir"] == str(w / "cand") and params["result_path"] == str(w / "run" / "result.json")
    assert remote[3:5] == [str(w / "task" / "benchmark.ipynb"), str(w / "run" / EXECUTED)]
    assert files_to_collect(job) == (EXECUTED, OUTCOME, "result.json")


PROBE = """
import json, os, pathlib
argv = open(f"/proc/{os.getppid()}/cmdline").read().split("\\0")[:-1]
pathlib.Path(result_path).write_text(json.dumps({"status": "ok", "argv": argv, "cwd": os.getcwd(),
                                                "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}))
"""


def make_argv_probe(folder: Path) -> Path:
    """A notebook that writes its papermill process's argv (the kernel's parent) to result_path."""
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell('candidate_dir = None\nseed = 1\npreset = "x"\nresult_path = "result.json"\n')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(PROBE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "benchmark.ipynb")
    return folder / "benchmark.ipynb"


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads the papermill process's argv from /proc")
def test_the_local_executor_runs_exactly_the_built_command(tmp_path):
    make_argv_probe(tmp_path / "task")
    job = _job(tmp_path)
    ex = LocalExecutor(cpu_slots=1)
    try:
        res: JobResult = ex.submit(job).result(timeout=180)
    finally:
        ex.shutdown()
    assert res.returncode == 0, res.output_tail[-2000:]
    out = json.loads(Path(job.params["result_path"]).read_text())
    assert out["argv"][1:] == command(job)[1:] and out["cwd"] == job.cwd
    assert json.loads((Path(job.run_dir) / OUTCOME).read_text())["status"] == "ok"


def test_the_local_executor_pins_the_gpus_a_job_asks_for(tmp_path, monkeypatch):
    """GPU limits travel in the Job: two one-GPU jobs on two (declared) GPU slots each see their
    own device; a GPU job where there is none is refused with a message."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    make_argv_probe(tmp_path / "task")
    jobs = [_job(tmp_path / "runs" / n, notebook=str(tmp_path / "task" / "benchmark.ipynb"), cwd=str(tmp_path / "task"),
                 limits=JobLimits(timeout_s=120, gpus=1)) for n in ("a", "b")]
    ex = LocalExecutor(gpu_slots=2)
    try:
        assert ex.slots == 2 and ex.slots_for(1) == 2 and ex.slots_for(2) == 1
        results = [f.result(timeout=240) for f in [ex.submit(j) for j in jobs]]
    finally:
        ex.shutdown()
    seen = []
    for j, r in zip(jobs, results):
        assert r.returncode == 0, r.output_tail[-2000:]
        seen.append(json.loads(Path(j.params["result_path"]).read_text())["cuda"])
        assert r.slot == f"gpu:{seen[-1]}"
    assert sorted(seen) == ["0", "1"]
    none = LocalExecutor(gpu_slots=0)
    r = none.submit(jobs[0]).result(timeout=30)
    assert r.returncode is None and r.killed_reason == "no GPU on this machine" and "cpu preset" in r.output_tail


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (top level and inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = ["autolab", "executors"][: 3 - node.level] if node.level <= 2 else []
                base = ".".join(parts + ([node.module] if node.module else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return names


def test_executors_import_nothing_above_them():
    higher = ("autolab._run", "autolab.lab", "autolab._loop", "autolab._audit", "autolab._propose", "autolab._implement",
              "autolab.merge", "autolab.cli", "autolab.ui", "autolab.report", "autolab.task", "autolab.log")
    files = sorted(EXECUTORS.glob("*.py"))
    assert {f.name for f in files} >= {"base.py", "notebook.py", "local.py", "ray.py"}
    for f in files:
        bad = sorted(n for n in _imports(f) if n.startswith(higher))
        assert not bad, f"{f.name} imports {bad}"


def test_gpu_shares_runs_per_gpu():
    """runs_per_gpu = 2: two runs share a GPU (they take turns for their timed work in the
    harness); a whole-GPU run waits until the GPU is free; the least loaded GPU goes first."""
    import threading

    from autolab.executors.local import LocalExecutor, _Gpus

    ex = LocalExecutor(gpu_slots=2)
    assert ex.slots_for(1) == 2 and ex.slots_for(1, 1, 2) == 4 and ex.slots_for(2, 1, 2) == 2
    pool = _Gpus(["0", "1"])
    a, ua = pool.take(1, 2)
    b, ub = pool.take(1, 2)
    assert a != b                                   # the least loaded GPU first
    c, uc = pool.take(1, 2)
    d, ud = pool.take(1, 2)
    assert sorted(a + b + c + d) == ["0", "0", "1", "1"]
    got: list = []
    th = threading.Thread(target=lambda: got.append(pool.take(1, 1)))
    th.start()
    th.join(timeout=0.3)
    assert th.is_alive() and not got                # no whole GPU is free
    pool.give(a, ua)
    th.join(timeout=0.3)
    assert th.is_alive()                            # half of one GPU is not enough
    pool.give(c, uc)                                # a and c may be the same GPU or not
    pool.give(b, ub)
    th.join(timeout=5)
    assert got and len(got[0][0]) == 1 and got[0][1] == _Gpus.UNITS
