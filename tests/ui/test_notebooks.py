"""The notebooks in notebooks/: committed clean, and each executes headless with papermill.

Fast checks run the notebooks' logic on the toy task (two-second runs); the smoke tests
run them exactly as CI does, `-p smoke True` and nothing else, on the real tasks."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

import autolab

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
ALL = ["01_quickstart.ipynb", "02_unattended.ipynb", "03_report.ipynb", "04_kernels.ipynb"]
WIDGET = "application/vnd.jupyter.widget-view+json"


def execute(name: str, out: Path, cwd: Path, **params) -> nbformat.NotebookNode:
    import papermill as pm

    pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=params, cwd=str(cwd), progress_bar=False,
                        log_output=False, execution_timeout=900)
    return nbformat.read(out, as_version=4)


def outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def text_of(nb) -> str:
    parts = []
    for o in outputs(nb):
        if o.get("output_type") == "stream":
            parts.append(o.get("text", ""))
        for k in ("text/plain", "text/html", "text/markdown"):
            if k in o.get("data", {}):
                parts.append(str(o["data"][k]))
    return "\n".join(parts)


def assert_no_errors(nb) -> None:
    errs = [o for o in outputs(nb) if o.get("output_type") == "error"]
    assert not errs, f"{errs[0]['ename']}: {errs[0]['evalue']}"


@pytest.mark.parametrize("name", ALL)
def test_notebook_is_committed_clean_with_a_smoke_parameter(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs: strip them"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "smoke = False" in params[0].source
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "widgets" not in nb.metadata


# ---------------------------------------------------------------------------- the toy task: fast, every time

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from toytask import make_toy_task

    root = tmp_path_factory.mktemp("nb-toy")
    return {"root": root, "task": str(make_toy_task(root / "tasks"))}


def test_quickstart_steers_one_turn_on_the_toy_task(toy):
    lab_dir = toy["root"] / "quick-lab"
    nb = execute("01_quickstart.ipynb", toy["root"] / "01.ipynb", toy["root"], smoke=True, lab_dir=str(lab_dir),
                 task=toy["task"], preset="quick")
    assert_no_errors(nb)
    widgets = [o for o in outputs(nb) if WIDGET in o.get("data", {})]
    assert len(widgets) >= 7                       # seed, 2 monitors, card, diff, audit, leaderboard, dashboard
    assert all("text/html" in o["data"] or "RunMonitor" in o["data"]["text/plain"] for o in widgets)
    text = text_of(nb)
    assert "Verdict v-" in text and "loop skipped" in text
    log = autolab.ResearchLog(lab_dir / "log.db")
    assert len(log.ideas_list()) == 1 and len(log.candidates_list()) == 2 and len(log.verdicts_list()) == 1
    assert sorted(r.purpose for r in log.runs_list()) == ["baseline", "screen"]   # one run per side in smoke


def test_unattended_loop_and_report_on_the_toy_task(toy, tmp_path):
    lab_dir = toy["root"] / "loop-lab"
    nb = execute("02_unattended.ipynb", toy["root"] / "02.ipynb", toy["root"], lab_dir=str(lab_dir), task=toy["task"],
                 preset="quick", iterations=3, threads=2)
    assert_no_errors(nb)
    text = text_of(nb)
    assert "LoopSummary(" in text and "data:image/png;base64" not in text   # PNGs are image outputs
    assert any("image/png" in o.get("data", {}) for o in outputs(nb))
    log = autolab.ResearchLog(lab_dir / "log.db")
    assert len(log.ideas_list()) >= 3 and {c.thread for c in log.candidates_list()} >= {"main"}

    # the report notebook on that lab, then the HTML export
    rep = execute("03_report.ipynb", toy["root"] / "03.ipynb", toy["root"], lab=str(lab_dir))
    assert_no_errors(rep)
    led = autolab.Ledger(log)
    figures = 3 + (led.best().id != led.seed().id)          # + best vs seed curves when a candidate beats the seed
    assert sum("image/png" in o.get("data", {}) for o in outputs(rep)) == figures
    from autolab.report import build_report

    html = build_report(lab_dir, tmp_path / "report.html").read_text()
    assert len(re.findall(r'<img[^>]*src="data:image/png;base64,', html)) == figures and "<script src" not in html


def test_a_wrong_corpus_stops_the_setup_cell_before_any_run(tmp_path, monkeypatch):
    """Bad set-up fails in the setup cell, with the whole message (the folder, the setting, the
    fix), and nothing runs: the kernel papermill starts inherits this AUTOLAB_DATA."""
    from papermill.exceptions import PapermillExecutionError

    missing = tmp_path / "no-corpus-here"
    monkeypatch.setenv("AUTOLAB_DATA", str(missing))
    lab_dir = tmp_path / "lab"
    with pytest.raises(PapermillExecutionError) as err:
        execute("01_quickstart.ipynb", tmp_path / "01.ipynb", tmp_path, smoke=True, lab_dir=str(lab_dir))
    e = err.value
    assert e.ename == "AutolabError", f"{e.ename}: {e.evalue}"
    assert "so no run was started" in e.evalue and str(missing) in e.evalue and "$AUTOLAB_DATA" in e.evalue
    assert e.evalue.rstrip().endswith("download_shards"), f"the message was cut: {e.evalue!r}"
    nb = nbformat.read(tmp_path / "01.ipynb", as_version=4)
    ran = [c for c in nb.cells if c.cell_type == "code" and c.get("execution_count")]
    assert "data_ready(" in ran[-1].source          # it stopped in the setup cell, the one that checks
    assert autolab.ResearchLog(lab_dir / "log.db").runs_list() == []


# ---------------------------------------------------------------------------- `-p smoke True`, as CI runs them

def test_report_notebook_smoke_without_a_lab(tmp_path):
    nb = execute("03_report.ipynb", tmp_path / "03.ipynb", tmp_path, smoke=True)
    assert_no_errors(nb)
    assert "synthetic example lab" in text_of(nb) and "About this report" in text_of(nb)
    assert sum("image/png" in o.get("data", {}) for o in outputs(nb)) == 4   # its merge beats the seed: + curves


def _quickstart_on_nanochat(tmp_path, expect_preset: str, **params) -> None:
    nb = execute("01_quickstart.ipynb", tmp_path / "01.ipynb", tmp_path, smoke=True, **params)
    assert_no_errors(nb)
    log = autolab.ResearchLog(tmp_path / "labs" / "quickstart" / "log.db")
    runs = log.runs_list()
    assert len(runs) == 2 and all(r.task == "nanochat" and r.preset == expect_preset for r in runs)
    # a run may end KILLED on a loaded machine (past budget + allowance): a state, still one run per side
    assert sorted(r.purpose for r in runs) == ["baseline", "screen"]
    assert all(r.state.value in ("COMPLETE", "FAILED", "KILLED") for r in runs)
    assert len(log.verdicts_list()) == 1


@pytest.mark.slow
def test_quickstart_smoke_on_nanochat_cpu_smoke(tmp_path):
    """The quickstart on the real task, `-p smoke True -p preset cpu-smoke`: every cell on
    nanochat's seed, its proposal and its runs, on the red team's 5 s preset (half the time of
    the notebook's own cpu-tiny, which test_quickstart_smoke_on_nanochat runs in `make test-extended`)."""
    _quickstart_on_nanochat(tmp_path, "cpu-smoke", preset="cpu-smoke")


@pytest.mark.extended
@pytest.mark.slow
def test_quickstart_smoke_on_nanochat(tmp_path):
    """Exactly as CI runs it, `-p smoke True` and nothing else (nanochat cpu-tiny). In `make test`:
    test_quickstart_smoke_on_nanochat_cpu_smoke (the same cells and checks, another preset)."""
    _quickstart_on_nanochat(tmp_path, "cpu-tiny")


@pytest.mark.extended
@pytest.mark.slow
def test_unattended_smoke_on_nanochat(tmp_path):
    nb = execute("02_unattended.ipynb", tmp_path / "02.ipynb", tmp_path, smoke=True)
    assert_no_errors(nb)
    log = autolab.ResearchLog(tmp_path / "labs" / "unattended" / "log.db")
    assert 2 <= len(log.runs_list()) <= 3 and len(log.ideas_list()) == 1
    assert "LoopSummary(" in text_of(nb)


@pytest.mark.extended
@pytest.mark.slow
def test_kernels_smoke(tmp_path):
    nb = execute("04_kernels.ipynb", tmp_path / "04.ipynb", tmp_path, smoke=True)
    assert_no_errors(nb)
    log = autolab.ResearchLog(tmp_path / "labs" / "kernels" / "log.db")
    assert len(log.runs_list()) == 2 and len(log.verdicts_list()) == 1
    assert log.get_meta("task") == "kernels"
