import dataclasses
import json
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import nbformat
import pytest

import autolab
from autolab.executors import Job, JobLimits, JobResult
from autolab.executors.local import LocalExecutor
from autolab.executors.notebook import OUTCOME, command
from autolab.records import Run, State
from autolab._run import TIMEOUT_GRACE_S, finish_run


def test_run_success_records_metrics_and_notebook(toy_lab):
    runs = autolab.run(toy_lab, seeds=2)
    assert [r.state for r in runs] == [State.COMPLETE, State.COMPLETE]
    assert [r.seed for r in runs] == [1, 2]
    for r in runs:
        assert "loss" in r.metrics and r.timings["papermill_s"] > 0
        assert r.notebook and not Path(r.notebook).is_absolute()   # stored relative to the lab folder
        assert json.loads(toy_lab.file(r.notebook).read_text())["cells"]
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
    assert r.notebook and toy_lab.file(r.notebook).exists()


def test_hung_run_is_killed_and_recorded(toy_task, tmp_path):
    text = (toy_task / "task.toml").read_text().replace("timeout_s = 60", "timeout_s = 8")
    (toy_task / "task.toml").write_text(text)
    lab = autolab.Lab(tmp_path / "lab", task=str(toy_task))
    cand_dir = tmp_path / "hang"
    cand_dir.mkdir()
    (cand_dir / "solution.py").write_text("X = 1.0\nHANG = True\n")
    cand = lab.candidate_from_dir(cand_dir)
    t0 = time.monotonic()
    (r,) = autolab.run(lab, cand, seeds=1, executor=_ShortTimeoutExecutor(cpu_slots=1))
    assert r.state is State.KILLED and r.error["ename"] == "Timeout"
    assert time.monotonic() - t0 < 40


class _ShortTimeoutExecutor(LocalExecutor):
    """The real local executor, with every job's timeout cut to 6 s."""

    def submit(self, job):
        return super().submit(dataclasses.replace(job, limits=dataclasses.replace(job.limits, timeout_s=6)))


def test_protected_file_change_is_detected(toy_lab, toy_task):
    from autolab._audit import run_checks

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
    """The per-run command (autolab._papermill_run, built by executors.notebook.command): parameters
    arrive with their JSON types in the injected cell, the outcome file says the run ended well; a
    malformed --params stops with a message before any kernel starts."""
    job = Job(run_id="r-1", notebook=str(toy_task / "benchmark.ipynb"), cwd=str(toy_task), run_dir=str(tmp_path),
              limits=JobLimits(timeout_s=120), params={"seed": 7, "preset": "quick",
                                                       "result_path": str(tmp_path / "r.json")})
    argv = command(job)
    assert argv[1:3] == ["-m", "autolab._papermill_run"]
    p = subprocess.run(argv, cwd=toy_task, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    nb = json.loads((tmp_path / "notebook.ipynb").read_text())
    injected = next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert "seed = 7\n" in "".join(injected["source"])
    assert nb["metadata"]["papermill"]["parameters"]["seed"] == 7
    assert json.loads((tmp_path / OUTCOME).read_text()) == {"status": "ok", "returncode": 0, "error": None}
    bad = subprocess.run([sys.executable, "-m", "autolab._papermill_run", "a.ipynb", "b.ipynb", "--params", "{seed"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--params is not JSON" in bad.stderr


# ---------------------------------------------------------------------------- the outcome file

def _crash_notebook(path: Path, with_parameters: bool) -> None:
    """markdown, [parameters], ok cell, failing cell (colours in its message), ok cell."""
    nb = nbformat.v4.new_notebook()
    cells = [nbformat.v4.new_markdown_cell("# crash")]
    if with_parameters:
        p = nbformat.v4.new_code_cell("x = 1\n")
        p.metadata["tags"] = ["parameters"]
        cells.append(p)
    cells += [nbformat.v4.new_code_cell("y = 2\n"),
              nbformat.v4.new_code_cell("raise ValueError('\\x1b[31mred\\x1b[0m failure')\n"),
              nbformat.v4.new_code_cell("z = 3\n")]
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.parametrize("with_parameters, params", [(True, {"x": 5}), (False, {})])
def test_papermill_wrapper_writes_the_failing_cells_fields_to_the_outcome(tmp_path, with_parameters, params):
    src, out, outcome = tmp_path / "crash.ipynb", tmp_path / "out.ipynb", tmp_path / "outcome.json"
    _crash_notebook(src, with_parameters)
    p = subprocess.run([sys.executable, "-m", "autolab._papermill_run", str(src), str(out), "--outcome", str(outcome),
                        "--params", json.dumps(params)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    o = json.loads(outcome.read_text())
    failing = 3 if with_parameters else 2          # index in the notebook as given (one markdown cell first)
    injected = 1 if params else 0
    assert o["status"] == "failed" and o["returncode"] == 1
    e = o["error"]
    assert e["cell"] == failing and e["executed_cell"] == failing + injected
    assert e["ename"] == "ValueError" and e["evalue"] == "red failure"       # terminal colours removed
    assert e["execution_count"] == failing + injected and "\x1b[" not in e["traceback"] and "ValueError" in e["traceback"]
    # the executed notebook is papermill's: its error banner and anchor, the error output in place
    nb = json.loads(out.read_text())
    assert "papermill-error-cell-tag" in nb["cells"][0]["metadata"]["tags"]
    failed = nb["cells"][e["executed_cell"] + 2]
    assert failed["execution_count"] == e["execution_count"]
    assert failed["outputs"][0]["ename"] == "ValueError"


def test_papermill_wrapper_outcome_for_a_failure_outside_any_cell(tmp_path):
    outcome = tmp_path / "outcome.json"
    p = subprocess.run([sys.executable, "-m", "autolab._papermill_run", str(tmp_path / "missing.ipynb"),
                        str(tmp_path / "out.ipynb"), "--outcome", str(outcome)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    o = json.loads(outcome.read_text())
    assert o["status"] == "failed" and o["error"]["cell"] is None
    assert o["error"]["ename"] and "missing.ipynb" in o["error"]["evalue"] + o["error"]["traceback"]


class _OutcomeOnlyExecutor(LocalExecutor):
    """The real local executor; when a job ends, its executed notebook is replaced by the task's
    unexecuted one (no error output left in it) and the outcome's message is marked. A run whose
    error fields are right can then only have read them from the outcome file."""

    def submit(self, job):
        out: Future = Future()

        def tamper(f):
            res = f.result()
            run_dir = Path(job.run_dir)
            (run_dir / "notebook.ipynb").write_bytes(Path(job.notebook).read_bytes())
            o = json.loads((run_dir / OUTCOME).read_text())
            o["error"]["evalue"] += " [from the outcome file]"
            (run_dir / OUTCOME).write_text(json.dumps(o))
            out.set_result(res)

        super().submit(job).add_done_callback(tamper)
        return out


def test_a_failed_runs_error_fields_come_from_the_outcome_file(toy_lab, tmp_path):
    cand_dir = tmp_path / "crash"
    cand_dir.mkdir()
    (cand_dir / "solution.py").write_text("X = 1.0\nCRASH = True\n")
    cand = toy_lab.candidate_from_dir(cand_dir)
    (r,) = autolab.run(toy_lab, cand, seeds=1, executor=_OutcomeOnlyExecutor(cpu_slots=1))
    assert r.state is State.FAILED
    assert r.error["evalue"] == "the candidate asked to crash [from the outcome file]"
    assert r.error["ename"] == "RuntimeError" and r.error["cell"] == 2 and r.error["executed_cell"] == 3
    assert "RuntimeError" in r.error["traceback"]
    nb = json.loads(toy_lab.file(r.notebook).read_text())   # the notebook holds no error any more
    assert not any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))


def test_finish_run_without_an_outcome_reports_the_process(toy_lab):
    """No outcome file (the wrapper never got to write one): the error is the process's exit and output."""
    run_dir = toy_lab.path / "runs" / "r-x"
    run_dir.mkdir(parents=True)
    cand = toy_lab.seed_candidate()
    run = Run(id="r-x", task=toy_lab.task.name, candidate_id=cand.id, preset=toy_lab.preset_name, seed=1,
              notebook=str(run_dir / "notebook.ipynb"), result_path=str(run_dir / "result.json"))
    toy_lab.log.append(run)
    final = finish_run(toy_lab, run, JobResult("r-x", 3, 1.0, output_tail="Traceback: boom"),
                                   protected_before=toy_lab.task.protected_hashes())
    assert final.state is State.FAILED and final.error["ename"] == "RunFailed"
    assert final.error["evalue"] == "papermill exited 3" and "boom" in final.error["traceback"]


# ---------------------------------------------------------------------------- the preset, resolved once

def test_the_run_records_its_preset_and_limits_and_the_audit_reads_them(toy_lab):
    from autolab._audit import run_checks

    (r,) = autolab.run(toy_lab, seeds=1)
    p = toy_lab.task.preset("quick")
    assert r.meta["preset"] == {"name": "quick", "device": "cpu", "budget_s": p.budget_s, "timeout_s": p.timeout_s,
                                "gpus": 0, "settings": dict(p.settings)}
    assert r.meta["limits"] == {"timeout_s": p.timeout_s + TIMEOUT_GRACE_S, "gpus": 0, "cpu_threads": 1,
                                 "runs_per_gpu": 1}

    # the budget check takes the preset's budget_overrun_s from the run's record, not from task.toml
    cand = toy_lab.add_candidate({"solution.py": "X = 2.0\n"}, toy_lab.seed_candidate())
    timings = {"train_s": 12.0, "budget_s": 5.0, "allowance_s": 15.0, "clock_start_s": 6.0,
               "train_window_s": 12.0, "script_train_s": 12.0, "clock_train_s": 12.0}

    def record(rid, settings):
        base = Run(id=rid, task=toy_lab.task.name, candidate_id=cand.id, preset="quick", seed=1, purpose="redteam",
                   meta={"protected_changed": [], "violations": [], "probes": {}, "summary": {},
                         "preset": {**r.meta["preset"], "settings": settings}})
        toy_lab.log.append(base.with_state(State.COMPLETE, metrics={"loss": 1.0, "hidden_loss": 1.0}, timings=timings))

    record("r-wide", {**p.settings, "budget_overrun_s": 10.0})
    assert {c.name: c for c in run_checks(toy_lab, cand)}["budget"].passed
    record("r-narrow", dict(p.settings))
    chk = {c.name: c for c in run_checks(toy_lab, cand)}["budget"]
    assert not chk.passed and "r-narrow" in chk.detail and "r-wide" not in chk.detail


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
