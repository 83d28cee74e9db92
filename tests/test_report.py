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
    assert len(imgs) == 3                                         # progress, lineage, per-thread curves
    assert all('alt="' in i and "No description" not in i for i in imgs)
    assert _remote_refs(html) == [], _remote_refs(html)[:5]
    assert "<script src" not in html and "application/vnd.jupyter.widget-view+json" not in html
    for section in ("Progress", "Leaderboard", "Lineage", "Research threads", "Audit", "The best change"):
        assert section in html
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
