"""The Ray executor on a real Ray cluster: a head node (2 CPUs, 2 fake GPUs) and a worker node
(3 CPUs), each `ray start` in its own process session on this machine. Fake GPUs are enough:
Ray sets CUDA_VISIBLE_DEVICES from the ids it assigns, and that is what the tests check."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import pytest

ray = pytest.importorskip("ray", reason="the ray executor tests need `pip install 'autolab[ray]'`")

import autolab  # noqa: E402
from autolab.executors import Job, JobLimits, get_executor  # noqa: E402
from autolab.executors.local import LocalExecutor  # noqa: E402
from autolab.executors.notebook import command, on_worker  # noqa: E402
from autolab.executors.ray import RayExecutor  # noqa: E402
from autolab.records import State  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raycluster import LocalRayCluster, pids_with_env  # noqa: E402
from toytask import SOLUTION, make_toy_task  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

TESTS = str(Path(__file__).resolve().parent.parent)


def wait_until(pred, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def cluster():
    c = LocalRayCluster(log=lambda m: print(m, flush=True))
    ex = None
    mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = c.env["RAY_AUTH_MODE"]   # this process is a driver of that cluster
    try:
        # the worker node carries a test-only resource so that a run can be pinned to it (and it killed)
        c.start({"head": {"num_cpus": 2, "num_gpus": 2}, "victim": {"num_cpus": 3, "resources": {"victim": 3}}})
        ex = RayExecutor(address=c.address)     # this one makes (and at the end closes) the connection
        wait_until(lambda: ray.cluster_resources().get("CPU", 0) >= 5, 60, "all nodes in the cluster")
        c.executor = ex
        yield c
    finally:
        if ex is not None:
            ex.shutdown()
        if ray.is_initialized():
            ray.shutdown()
        c.stop()
        if mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = mode


# ---------------------------------------------------------------------------- GPU assignment

PROBE_PARAMS = 'candidate_dir = None\nseed = 1\npreset = "probe"\nresult_path = "result.json"\n'
PROBE_BODY = '''
import json, os, pathlib, time
time.sleep(float(os.environ.get("PROBE_SLEEP", "0")))
cand = pathlib.Path(candidate_dir)
pathlib.Path(result_path).write_text(json.dumps({
    "status": "ok", "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "cwd": os.getcwd(),
    "candidate": {p.name: p.read_text() for p in cand.iterdir()}, "seed": seed,
    "task_file": (pathlib.Path.cwd() / "marker.txt").read_text(),
    "argv": open(f"/proc/{os.getppid()}/cmdline").read().split("\\0")[:-1]}))   # the papermill process's
'''


def make_probe_task(root: Path) -> Path:
    d = root / "probe"
    d.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(PROBE_PARAMS)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(PROBE_BODY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, d / "benchmark.ipynb")
    (d / "marker.txt").write_text("task folder here")
    return d


def probe_job(task: Path, run_id: str, gpus: int, sleep: float, run_root: Path) -> Job:
    run_dir = run_root / run_id
    params = {"candidate_dir": str(run_root / "nowhere"), "seed": 7, "preset": "probe",
              "result_path": str(run_dir / "result.json")}
    return Job(run_id=run_id, notebook=str(task / "benchmark.ipynb"), cwd=str(task), run_dir=str(run_dir),
               limits=JobLimits(timeout_s=120, gpus=gpus, cpu_threads=1), params=params,
               env={"PROBE_SLEEP": str(sleep), "AUTOLAB_RUN_ID": run_id},
               files={"solution.py": f"X = {run_id!r}\n".encode()}, collect=("result.json",))


def test_the_gpu_ray_assigns_is_the_one_the_run_uses(cluster, tmp_path):
    ex = cluster.executor
    assert ex.name == "ray" and ex.slots == 2 and ex.slots_for(0, cpu_threads=2) == 2  # 5 CPUs
    task = make_probe_task(tmp_path)
    elsewhere = make_probe_task(tmp_path / "copy")   # removed right after submit: its files must be shipped
    jobs = [probe_job(task, "g1", 1, 4, tmp_path / "runs"), probe_job(task, "g2", 1, 4, tmp_path / "runs"),
            probe_job(task, "c1", 0, 0, tmp_path / "runs")]
    futs = [ex.submit(j) for j in jobs]
    time.sleep(1)
    futs.append(ex.submit(probe_job(elsewhere, "s1", 1, 0, tmp_path / "runs")))  # waits for a free GPU
    shutil.rmtree(elsewhere)
    res = {r.run_id: r for r in (f.result(timeout=300) for f in futs)}
    out = {}
    for rid, r in res.items():
        assert r.returncode == 0, (rid, r.killed_reason, r.output_tail[-2000:])
        assert set(r.files) == {"notebook.ipynb", "outcome.json", "result.json"}
        assert json.loads(r.files["outcome.json"]) == {"status": "ok", "returncode": 0, "error": None}
        out[rid] = json.loads(r.files["result.json"])
        assert out[rid]["candidate"] == {"solution.py": f"X = {rid!r}\n"}   # the candidate travelled
        assert out[rid]["seed"] == 7 and out[rid]["task_file"] == "task folder here"
        assert r.slot.startswith("ray:") and r.host
    for rid in ("g1", "g2", "s1"):
        ids = res[rid].slot.rsplit("gpu:", 1)[1]
        assert out[rid]["cuda"] == ids and ids in ("0", "1"), (rid, res[rid].slot, out[rid]["cuda"])
    assert {out["g1"]["cuda"], out["g2"]["cuda"]} == {"0", "1"}   # two concurrent runs, two different GPUs
    assert out["c1"]["cuda"] == "" and ":cpu:" in res["c1"].slot   # a CPU run sees no GPU
    assert out["g1"]["cwd"] == str(task)                           # the task folder is used in place...
    assert out["s1"]["cwd"] != str(elsewhere) and out["s1"]["cwd"].endswith("/task")  # ...or shipped
    # a request no node can satisfy is refused at once, and is not a retryable loss
    r = ex.submit(probe_job(task, "big", 3, 0, tmp_path / "runs")).result(timeout=30)
    assert r.returncode is None and r.killed_reason == "unschedulable" and "GPU=3" in r.output_tail


def test_ray_and_local_run_the_same_command_up_to_paths(cluster, tmp_path):
    """One job on both executors: the papermill process each started (read by the notebook from
    /proc) is notebook.command of the job, re-rooted on the worker for Ray."""
    task = make_probe_task(tmp_path)
    job = probe_job(task, "same", 0, 0, tmp_path / "runs")
    cand = Path(job.params["candidate_dir"])   # the local executor runs the candidate where it lies
    cand.mkdir(parents=True)
    for rel, data in job.files.items():
        (cand / rel).write_bytes(data)
    local_ex = LocalExecutor(cpu_slots=1)
    try:
        lr = local_ex.submit(job).result(timeout=180)
    finally:
        local_ex.shutdown()
    rr = cluster.executor.submit(job).result(timeout=300)
    assert lr.returncode == 0 and rr.returncode == 0, (lr.output_tail[-1500:], rr.output_tail[-1500:])
    local_argv = json.loads(Path(job.params["result_path"]).read_text())["argv"]
    ray_out = json.loads(rr.files["result.json"])
    ray_argv = ray_out["argv"]
    assert local_argv[1:] == command(job)[1:]
    params = json.loads(ray_argv[ray_argv.index("--params") + 1])
    worker_run = Path(params["result_path"]).parent
    rebuilt = command(on_worker(job, notebook=ray_argv[3], cwd=ray_out["cwd"], run_dir=worker_run,
                                candidate_dir=params["candidate_dir"]))
    assert ray_argv[1:] == rebuilt[1:] and len(ray_argv) == len(local_argv)
    assert ray_argv[3] == local_argv[3] == job.notebook          # the task folder is used in place here
    assert worker_run != Path(job.run_dir) and params["seed"] == 7


# ---------------------------------------------------------------------------- a loop across the cluster

def test_loop_across_the_cluster(cluster, toy_lab):
    s = autolab.loop(toy_lab, iterations=3, proposer_seed=0, progress=False, executor=cluster.executor)
    assert s.experiments == 3 and s.stopped == "done" and s.failed == 0 and s.killed == 0, s
    assert s.promoted >= 1 and s.best < s.baseline
    runs = toy_lab.log.runs_list()
    assert runs and all(r.executor == "ray" and r.state is State.COMPLETE for r in runs)
    for r in runs:   # the driver wrote the notebook and the result the worker sent back
        assert toy_lab.file(r.notebook).is_file() and toy_lab.file(r.result_path).is_file()
        assert r.slot.startswith("ray:") and r.timings["papermill_s"] > 0
    keys = collections.Counter((r.candidate_id, r.purpose, r.seed) for r in runs)
    assert max(keys.values()) == 1
    assert len({r.slot.split(":")[2] for r in runs}) >= 2, [r.slot for r in runs]   # more than one node worked
    assert s.slot_idle_fraction is not None


# ---------------------------------------------------------------------------- faults

MARK = '''
import os as _os, pathlib as _pl, time as _t
_marks = _pl.Path({marks!r})
(_marks / _os.environ.get("AUTOLAB_RUN_ID", "unknown")).write_text(str(_os.getpid()))
if (_marks / "slow").exists():
    _t.sleep(45)
'''

DRIVER = r"""
import sys
sys.path.insert(0, {tests!r})
import autolab
from autolab.executors import get_executor
lab = autolab.Lab({lab!r}, task={task!r})
s = autolab.loop(lab, iterations=1, proposer_seed=0, progress=False, executor=get_executor("ray", address={addr!r}))
print("SUMMARY", s.experiments, s.runs, s.stopped, flush=True)
"""


def _marked(marks: Path, exclude=()) -> list[str]:
    return sorted(p.name for p in marks.iterdir() if p.name.startswith("r-") and p.name not in exclude)


def _gone(run_ids) -> bool:
    return not any(pids_with_env(f"AUTOLAB_RUN_ID={rid}\0") for rid in run_ids)


@pytest.mark.extended
def test_worker_node_killed_then_driver_killed_then_resume(cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "slow").touch()
    task = make_toy_task(tmp_path / "tasks", solution=SOLUTION + MARK.format(marks=str(marks)))
    lab_dir = tmp_path / "lab"
    lab = autolab.Lab(lab_dir, task=str(task))

    # 1. the baseline runs go to the victim node (the test-only resource pins them); kill it mid-run
    pinned = RayExecutor(address=cluster.address, resources={"victim": 1}, unschedulable_grace_s=5, poll_s=0.5)
    out: list = []
    loop1 = threading.Thread(target=lambda: out.append(autolab.loop(lab, iterations=1, proposer_seed=0, progress=False,
                                                                    executor=pinned)), daemon=True)
    loop1.start()
    first = wait_until(lambda: len(_marked(marks)) == 3 and _marked(marks), 150, "3 runs executing on the victim node")
    lab.request_stop()            # let the loop end once the lost runs are recorded
    cluster.kill_node("victim")
    loop1.join(timeout=120)
    assert out and out[0].stopped == "stop requested", out
    runs = lab.log.runs_list()
    killed = [r for r in runs if r.state is State.KILLED]
    assert sorted(r.id for r in killed) == first and not any(r.state is State.RUNNING for r in runs)
    assert all(r.error["reason"] == "worker lost" for r in killed), [r.error for r in killed]
    wait_until(lambda: _gone(first), 30, "the lost runs' processes to die with their node")

    # 2. a driver on the cluster is killed while its runs execute; 3. the same command resumes
    code = DRIVER.format(tests=TESTS, lab=str(lab_dir), task=str(task), addr=cluster.address)
    env = dict(os.environ, PYTHONPATH=cluster.env["PYTHONPATH"])
    d2 = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        second = wait_until(lambda: _marked(marks, exclude=first), 150, "a run of the second driver to execute")
    finally:
        os.killpg(d2.pid, signal.SIGKILL)
        d2.wait()
    lab = autolab.Lab(lab_dir)
    in_flight = [r.id for r in lab.log.runs_list() if r.state is State.RUNNING]
    assert set(second) <= set(in_flight)
    wait_until(lambda: _gone(in_flight), 60, "the dead driver's runs to be stopped on the cluster")
    (marks / "slow").unlink()
    d3 = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert d3.returncode == 0, d3.stdout[-3000:] + d3.stderr[-3000:]
    assert "SUMMARY 1" in d3.stdout

    lab = autolab.Lab(lab_dir)
    runs = lab.log.runs_list()
    assert not any(r.state is State.RUNNING for r in runs)
    reasons = {r.id: r.error["reason"] for r in runs if r.state is State.KILLED}
    assert {k for k, v in reasons.items() if v == "worker lost"} == set(first)
    assert {k for k, v in reasons.items() if v == "interrupted"} == set(in_flight)
    assert not any(r.state is State.FAILED for r in runs)
    complete = collections.Counter((r.candidate_id, r.purpose, r.seed) for r in runs if r.state is State.COMPLETE)
    assert max(complete.values()) == 1                                   # nothing duplicated
    for r in runs:
        if r.state is State.KILLED:                                      # nothing lost
            assert complete[(r.candidate_id, r.purpose, r.seed)] == 1, r
    seed = lab.seed_candidate()
    base = sorted(r.seed for r in runs if r.candidate_id == seed.id and r.state is State.COMPLETE
                  and r.purpose in ("confirm", "baseline"))
    assert base == [101, 102, 103]   # the seed's baseline once (its paired screening run on seed 1 is apart)
    assert len(lab.log.ideas_list()) == 1
    assert not (lab_dir / "loop.lock").exists()
    # the private folders of the runs that died with their worker were cleaned by later runs
    root = Path(tempfile.gettempdir()) / f"autolab-ray-{os.getuid()}"
    assert not [d.name for d in root.iterdir() if any(d.name.startswith(k + "-") for k in reasons)]


def test_get_executor_and_address_errors(cluster):
    ex = get_executor("ray", address=cluster.address)   # reuses this process's connection
    assert ex.name == "ray" and ex.slots == 2
    ex.shutdown()
    assert ray.is_initialized()                           # it did not own the connection
    from autolab.errors import AutolabError
    from autolab.executors.ray import _check_reachable

    with pytest.raises(AutolabError, match="already connected"):
        RayExecutor(address="127.0.0.1:1")
    with pytest.raises(AutolabError, match="no Ray cluster answers at 127.0.0.1:1"):   # fast, not ray.init's retries
        _check_reachable("127.0.0.1:1")


def test_importable_without_ray():
    code = ("import sys; sys.modules['ray'] = None\n"
            "import autolab.executors.ray as m\n"
            "from autolab.executors import get_executor\n"
            "try:\n    get_executor('ray', address='127.0.0.1:1')\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "AutolabError" in out.stdout and "pip install 'autolab[ray]'" in out.stdout
