import json
import time
from pathlib import Path

import pytest

import autolab
from autolab.records import State


def test_run_success_records_metrics_and_notebook(toy_lab):
    runs = autolab.run(toy_lab, seeds=2)
    assert [r.state for r in runs] == [State.COMPLETE, State.COMPLETE]
    assert [r.seed for r in runs] == [1, 2]
    for r in runs:
        assert "loss" in r.metrics and r.timings["papermill_s"] > 0
        assert r.notebook and json.load(open(r.notebook))["cells"]
        assert r.meta["protected_changed"] == []
    # fresh seeds next time
    assert [r.seed for r in autolab.run(toy_lab, seeds=1)] == [3]
    df = toy_lab.log.runs()
    assert len(df) == 3 and (df["state"] == "COMPLETE").all()


def test_run_failure_captures_cell_error_and_keeps_notebook(toy_lab, tmp_path):
    cand_dir = tmp_path / "crash"
    cand_dir.mkdir()
    (cand_dir / "solution.py").write_text("X = 1.0\nCRASH = True\n")
    cand = toy_lab.candidate_from_dir(cand_dir)
    (r,) = autolab.run(toy_lab, cand, seeds=1)
    assert r.state is State.FAILED
    assert r.error["ename"] == "RuntimeError" and "asked to crash" in r.error["evalue"]
    assert r.error["cell"] == 2 and "RuntimeError" in r.error["traceback"]
    assert r.notebook and __import__("pathlib").Path(r.notebook).exists()


def test_hung_run_is_killed_and_recorded(toy_task, tmp_path):
    text = (toy_task / "task.toml").read_text().replace("timeout_s = 60", "timeout_s = 8")
    (toy_task / "task.toml").write_text(text)
    lab = autolab.Lab(tmp_path / "lab", task=str(toy_task))
    cand_dir = tmp_path / "hang"
    cand_dir.mkdir()
    (cand_dir / "solution.py").write_text("X = 1.0\nHANG = True\n")
    cand = lab.candidate_from_dir(cand_dir)
    t0 = time.monotonic()
    (r,) = autolab.run(lab, cand, seeds=1, executor=_ShortTimeoutExecutor())
    assert r.state is State.KILLED and r.error["ename"] == "Timeout"
    assert time.monotonic() - t0 < 40


class _ShortTimeoutExecutor:
    """The real local executor, with every job's timeout cut to 6 s."""

    name = "local"

    def __init__(self):
        from autolab.executors.local import LocalExecutor

        self.inner = LocalExecutor()
        self.slots = self.inner.slots

    def submit(self, job):
        import dataclasses

        return self.inner.submit(dataclasses.replace(job, timeout_s=6))

    def shutdown(self, wait=True):
        self.inner.shutdown(wait)


def test_protected_file_change_is_detected(toy_lab, toy_task):
    from autolab.audit import run_checks

    cand_dir = toy_task.parent / "tamper"
    cand_dir.mkdir()
    # a candidate whose run edits a protected file (the playbook) through the notebook's cwd
    (cand_dir / "solution.py").write_text(
        "import pathlib\nX = 1.0\npathlib.Path('playbook.toml').write_text(pathlib.Path('playbook.toml').read_text() + '#')\n")
    cand = toy_lab.candidate_from_dir(cand_dir)
    (r,) = autolab.run(toy_lab, cand, seeds=1)
    assert r.meta["protected_changed"] == ["playbook.toml"]
    checks = {c.name: c for c in run_checks(toy_lab, cand)}
    assert not checks["protected_hashes"].passed and "playbook.toml" in checks["protected_hashes"].detail


def test_papermill_command_passes_typed_parameters_and_rejects_bad_ones(toy_task, tmp_path):
    """The per-run command (autolab._papermill_run): parameters arrive with their JSON types in the
    injected cell; a malformed --params stops with a message before any kernel starts."""
    import subprocess
    import sys

    from autolab.run import papermill_argv

    out = tmp_path / "out.ipynb"
    argv = papermill_argv(toy_task / "benchmark.ipynb", out, {"seed": 7, "preset": "quick",
                                                               "result_path": str(tmp_path / "r.json")})
    assert argv[1:3] == ["-m", "autolab._papermill_run"]
    p = subprocess.run(argv, cwd=toy_task, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    nb = json.loads(out.read_text())
    injected = next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert "seed = 7\n" in "".join(injected["source"])
    assert nb["metadata"]["papermill"]["parameters"]["seed"] == 7
    bad = subprocess.run([sys.executable, "-m", "autolab._papermill_run", "a.ipynb", "b.ipynb", "--params", "{seed"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--params is not JSON" in bad.stderr


@pytest.mark.skipif(__import__("os").name != "posix", reason="IPC kernel sockets are POSIX-only")
def test_concurrent_runs_use_private_ipc_sockets(tmp_path):
    """Kernels of concurrent runs listen on IPC socket files in a private folder, not on loopback
    TCP ports (jupyter_client's bind-port-0-then-release choice let two kernels started together
    draw the same port: one died with "Address already in use" and its run failed)."""
    import concurrent.futures as cf
    import subprocess
    import sys

    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import json\nfrom ipykernel import get_connection_info\ni = get_connection_info(unpack=True)\nprint(json.dumps({\"transport\": i[\"transport\"], \"ip\": i[\"ip\"]}))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "conn.ipynb"
    nbformat.write(nb, src)

    def one(i):
        out = tmp_path / f"out{i}.ipynb"
        p = subprocess.run([sys.executable, "-m", "autolab._papermill_run", str(src), str(out)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        text = json.loads(out.read_text())["cells"][0]["outputs"][0]["text"]
        return json.loads("".join(text))

    with cf.ThreadPoolExecutor(4) as ex:
        infos = list(ex.map(one, range(4)))
    assert all(i["transport"] == "ipc" for i in infos)
    folders = {Path(i["ip"]).parent for i in infos}
    assert len(folders) == 4                       # one private folder per run
    assert not any(f.exists() for f in folders)    # removed when the run ends


@pytest.mark.skipif(__import__("os").name != "posix", reason="IPC kernel sockets are POSIX-only")
def test_sandboxed_children_of_a_run_cannot_reach_the_kernel(tmp_path):
    """The benchmark kernel runs unsandboxed; its connection file and sockets sit in a private
    folder that every sandboxed child of the notebook (the candidate) finds empty or denied."""
    import subprocess
    import sys

    import nbformat

    code = (
        "import json, os, stat, sys, tempfile\n"
        "from ipykernel import get_connection_file\n"
        "from autolab.sandbox import Limits, run_sandboxed\n"
        "cf = get_connection_file(); folder = os.path.dirname(cf)\n"
        "probe = ('import os, sys\\n'\n"
        "         'for p in sys.argv[1:]:\\n'\n"
        "         '    try: print(\"SEEN\", p, os.listdir(p) if os.path.isdir(p) else open(p).read()[:40])\\n'\n"
        "         '    except OSError as e: print(\"DENIED\", p, type(e).__name__)\\n'\n"
        "         'import subprocess\\n'\n"
        "         'print(\"LS\", subprocess.run([\"ls\", \"-a\", sys.argv[1]], capture_output=True, text=True).stdout.split())\\n')\n"
        "r = run_sandboxed([sys.executable, '-c', probe, folder, cf], cwd=tempfile.mkdtemp(), limits=Limits(wall_s=60))\n"
        "print(json.dumps({'cf': cf, 'mode': stat.S_IMODE(os.stat(folder).st_mode), 'own': sorted(os.listdir(folder)),\n"
        "                  'child': r.stdout_tail, 'state': str(r.state), 'iso': r.isolation}, default=str))\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out = tmp_path / "probe.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    p = subprocess.run([sys.executable, "-m", "autolab._papermill_run", str(src), str(out)],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    info = json.loads("".join(json.loads(out.read_text())["cells"][0]["outputs"][-1]["text"]).strip().splitlines()[-1])
    assert info["mode"] & 0o777 == 0o700 and "kernel.json" in info["own"] and any(n.startswith("k-") for n in info["own"])
    assert "ok" in info["state"].lower(), info
    child = info["child"].splitlines()
    assert not any(line.startswith("SEEN") for line in child), child                 # Python-level reads denied
    ls = [line for line in child if line.startswith("LS")]
    if info["iso"].get("read_deny") != "mount":
        pytest.skip("no mount namespace here: only Python-level reads of the kernel's folder are denied")
    assert ls and "kernel.json" not in ls[0] and "k-1" not in ls[0], child            # and hidden from any program
