"""The report: plots and tables from a research log, and the self-contained HTML export."""

from __future__ import annotations

import math
import re

import nbformat
import pytest

from autolab import report as R
from autolab.errors import AutolabError
from autolab.ui.example import example_lab


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory):
    return example_lab(tmp_path_factory.mktemp("report") / "lab")


def _remote_refs(html: str) -> list[str]:
    """src= / href= attributes and @import url() that would fetch something over the network."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?((?:https?:)?//[^"'\s>]+)""", html, re.I)
    refs += re.findall(r"""@import\s+(?:url\()?["']?((?:https?:)?//[^"')\s]+)""", html, re.I)
    return refs


def test_build_report_is_self_contained(small_lab, tmp_path):
    out = R.build_report(small_lab, tmp_path / "out" / "report.html")
    html = out.read_text()
    assert out.exists() and out.suffix == ".html"
    imgs = re.findall(r'<img[^>]*src="data:image/png;base64,[^"]+"[^>]*>', html)
    assert len(imgs) == 4                         # progress, lineage, per-thread curves, best vs seed curves
    assert all('alt="' in i and "No description" not in i for i in imgs)
    assert _remote_refs(html) == [], _remote_refs(html)[:5]
    assert "<script src" not in html and "application/vnd.jupyter.widget-view+json" not in html
    for section in ("About this report", "Progress", "Leaderboard", "Lineage", "Research threads",
                    "Best against seed", "Audit", "The best change", "Ablation: what each kept change carries"):
        assert section in html
    assert "papermill" not in html and "-p lab" not in html                   # no authoring instructions
    assert "seed policy" in html and "commit" in html and "hardware" in html
    assert "Raise the peak learning rate" in html and "hidden_val" in html   # leaderboard and audit content
    assert "import autolab.report" not in html                                # code cells are hidden


def test_build_report_explains_a_missing_log(tmp_path):
    with pytest.raises(AutolabError, match="log.db"):
        R.build_report(tmp_path / "nothing", tmp_path / "r.html")


def test_export_replaces_widgets_with_their_static_copy():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("w")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
            "text/html": "<b>static leaderboard</b>", "text/plain": "Leaderboard"}),
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "def", "version_major": 2, "version_minor": 0},
            "text/plain": "HBox(...)"}),
    ]
    nb.cells = [cell]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    html = R.export_html(nb, title="t")
    assert "<b>static leaderboard</b>" in html and "HBox(...)" not in html
    assert "widget-state" not in html and "widget-view" not in html and _remote_refs(html) == []


def test_running_best_counts_only_kept_experiments(small_lab):
    log = R.open_log(small_lab)
    ex = R.experiments(log)
    assert list(ex.columns[:3]) == ["candidate_id", "thread", "parent_id"]
    assert len(ex) == 7 and ex["failed"].sum() == 1 and math.isnan(ex.loc[ex["failed"] > 0, "mean"].iloc[0])
    best = R._running_best(list(ex["mean"]), "minimize", list(ex["kept"]))
    hack = ex.index[ex["title"] == "Wider model"][0]                  # rejected by the audit, lowest number
    assert ex.loc[hack, "mean"] < 1.3 and best[hack] > 1.4 and best[-1] == pytest.approx(ex["mean"].iloc[-1])


def test_figures_and_tables_render(small_lab):
    from autolab.ui._plots import png_bytes

    log = R.open_log(small_lab)
    for fig in (R.progress_figure(log), R.lineage_figure(log), R.thread_figure(log, small_lab)):
        assert png_bytes(fig)[:4] == b"\x89PNG"
    assert "LLM calls" in R.summary_html(log) and "best promoted" in R.summary_html(log)
    assert R.audit_summary_html(log).count("PROMOTED") >= 3
    assert "autolab-diff" in R.best_diff_html(log, small_lab)


def test_figures_of_an_empty_log(tmp_path):
    from autolab.log import ResearchLog
    from autolab.ui._plots import png_bytes

    log = ResearchLog(tmp_path / "log.db")
    for fig in (R.progress_figure(log), R.lineage_figure(log), R.thread_figure(log)):
        assert png_bytes(fig)[:4] == b"\x89PNG"
    assert "nothing yet" in R.leaderboard_html(log) and "No promoted" in R.best_diff_html(log)


# ---------------------------------------------------------------------------- every view agrees

def _runs(lab, cand, values, purpose="confirm", state="COMPLETE", metrics=None):
    from autolab.records import Run, State, new_id, now

    for k, v in enumerate(values):
        r = lab.log.append(Run(id=new_id("r"), task=lab.task.name, candidate_id=cand.id, preset=lab.preset_name,
                               seed=101 + k, purpose=purpose))
        lab.log.append(r.with_state(State(state), ended_at=now(), metrics=metrics or {"loss": v}))


@pytest.fixture
def merged_lab(toy_lab):
    """Two promoted lines and their merge, REJECTED by its audit although its raw mean is the
    lowest; one run KILLED with the parameter count where the metric would be."""
    from autolab.records import Idea, State, Verdict, new_id

    lab = toy_lab
    seed = lab.seed_candidate()
    text = lab.files(seed)["solution.py"]
    _runs(lab, seed, [4.00, 4.02], purpose="baseline")

    def cand(title, thread, new_text, parent, **meta):
        idea = lab.log.append(Idea(id=new_id("idea"), task=lab.task.name, title=title, thread=thread, parent_id=parent.id))
        return lab.add_candidate({"solution.py": new_text}, parent, idea_id=idea.id, thread=thread, meta=meta or None)

    a = cand("X to 2", "main", text.replace("X = 1.0", "X = 2.0"), seed)
    b = cand("the trick", "t2", text.replace("USE_TRICK = False", "USE_TRICK = True"), seed)
    _runs(lab, a, [1.00, 1.02])
    _runs(lab, b, [3.90, 3.94])
    _runs(lab, a, [0.0], state="KILLED", metrics={"loss": 1.18e6})     # the parameter count, not the metric
    a, b = lab.set_state(a, State.PROMOTED), lab.set_state(b, State.PROMOTED)
    m = cand("Merge X to 2 + the trick", "main",
             text.replace("X = 1.0", "X = 2.0").replace("USE_TRICK = False", "USE_TRICK = True"), a, merge_of=[a.id, b.id])
    _runs(lab, m, [0.50, 0.52])
    for stage, state in (("screen", State.PENDING), ("confirm", State.REJECTED)):
        lab.log.append(Verdict(id=new_id("v"), task=lab.task.name, candidate_id=m.id, parent_id=a.id, preset=lab.preset_name,
                               state=state, metric="loss", candidate_mean=0.47, parent_mean=1.01, effect=0.5,
                               p_value=0.2, n_candidate=2, n_parent=2, reason="static_scan failed",
                               checks=[{"name": "static_scan", "passed": False, "severity": "reject", "detail": "x"}],
                               meta={"stage": stage}))
    m = lab.set_state(m, State.REJECTED)
    return {"lab": lab, "seed": seed, "a": a, "b": b, "m": m}


def test_a_rejected_merge_with_the_best_raw_mean_is_nowhere_best(merged_lab):
    from autolab.ledger import Ledger
    from autolab.ui._html import run_html

    lab, a, m = merged_lab["lab"], merged_lab["a"], merged_lab["m"]
    log = R.open_log(lab.path)
    assert Ledger(log).best().id == a.id
    summary = R.summary_html(log)
    assert a.id in summary and m.id not in summary

    board = R.leaderboard_html(log)
    rows = re.findall(r"<tr style=.*?</tr>", board)
    assert len(rows) == 4 and [sum(c.id in r for r in rows) for c in (a, m)] == [1, 1]   # each candidate once
    assert a.id in rows[0] and ">best<" in rows[0] and m.id in rows[-1] and ">best<" not in rows[-1]
    assert "REJECTED" in rows[-1] and "0.51" in rows[-1]                              # its own number, last

    ex = R.experiments(log)
    best = R.running_best(list(ex["selection_free_mean"]), "minimize", list(ex["kept"]))
    assert min(best) == pytest.approx(1.01) and 0.51 not in [round(v, 2) for v in best]

    audit = R.audit_summary_html(log)
    arow = next(r for r in re.findall(r"<tr style=.*?</tr>", audit) if m.id in r)
    assert audit.count(m.id) == 1 and "REJECTED" in arow and "PENDING" not in re.sub(r"screen pending", "", arow)
    assert "0.51 (n=2)" in arow                                                        # the ledger's mean, as above

    killed = [r for r in log.runs_list() if r.state.value == "KILLED"]
    for html in (board, audit, summary, run_html(killed[0])):
        assert "1.18e" not in html and "1180000" not in html
    assert "no metric: the run ended KILLED" in run_html(killed[0])
    assert ex.loc[ex["candidate_id"] == a.id, "mean"].iloc[0] == pytest.approx(1.01)   # the killed run is not a value


def test_the_report_header_says_how_it_was_made(merged_lab):
    info = R.provenance(R.open_log(merged_lab["lab"].path), merged_lab["lab"].path)
    assert set(info) == {"built", "autolab", "lab", "task", "preset", "hardware", "seed policy", "corpus"}
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", info["built"]) and "commit" in info["autolab"]
    assert merged_lab["lab"].preset_name in info["preset"] and "confirm from 101" in info["seed policy"]
    assert "CPUs" in info["hardware"]


def test_compare_figure_draws_mean_and_spread(small_lab):
    from autolab.ledger import Ledger
    from autolab.ui._plots import png_bytes

    log = R.open_log(small_lab)
    led = Ledger(log)
    fig = R.compare_figure(log, led.seed(), led.best(), small_lab)
    ax = fig.axes[0]
    assert len(ax.collections) == 2 and len(ax.get_legend().get_texts()) == 2   # two ± sd bands, two means
    assert png_bytes(fig)[:4] == b"\x89PNG"
