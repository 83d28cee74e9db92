"""Widgets built from real records in a real lab log (the toy task), without a browser."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ipywidgets = pytest.importorskip("ipywidgets")

import autolab.ui as ui  # noqa: E402
from autolab.records import Idea, Run, State  # noqa: E402
from autolab.ui import _html as H  # noqa: E402
from autolab.ui.diffhtml import parse_unified, side_by_side  # noqa: E402

from ._helpers import add_runs  # noqa: E402


# ---------------------------------------------------------------------------- IdeaCard

def test_idea_card_saves_an_edited_copy(filled_lab):
    lab, idea = filled_lab["lab"], filled_lab["idea"]
    saved = []
    card = ui.IdeaCard(idea, lab, on_save=saved.append)
    assert card.title.value == idea.title and card.plan.value == idea.plan
    assert '"setting": "X"' in card.edit.value
    card.title.value = "Scale X by 3"
    card.plan.value = "set X = 3.0"
    card.edit.value = '{"setting": "X", "op": "set", "value": 3.0}'
    card.save_button.click()
    new = card.value
    assert new.id != idea.id and new.source == "human" and new.state is State.PROPOSED
    assert new.title == "Scale X by 3" and new.edit == {"setting": "X", "op": "set", "value": 3.0}
    assert new.meta["edited_from"] == idea.id and new.parent_id == idea.parent_id and new.thread == idea.thread
    assert lab.log.get("idea", new.id) == new            # appended to the log
    assert lab.log.get("idea", idea.id).title == "Scale X by 2"   # the original is untouched
    assert saved == [new] and "saved as" in card.status.value


def test_idea_card_reports_bad_input_and_saves_nothing(filled_lab):
    lab, idea = filled_lab["lab"], filled_lab["idea"]
    n = len(lab.log.ideas_list())
    card = ui.IdeaCard(idea, lab)
    card.edit.value = "{not json"
    card.save_button.click()
    assert "not saved" in card.status.value and "JSON" in card.status.value
    card.edit.value = ""
    card.title.value = "   "
    card.save_button.click()
    assert "title is empty" in card.status.value
    assert len(lab.log.ideas_list()) == n


def test_idea_card_without_a_lab_is_read_only(filled_lab, monkeypatch):
    monkeypatch.setattr("autolab.ui.cards.find_lab", lambda record: None)
    card = ui.IdeaCard(filled_lab["idea"])
    assert card.save_button.disabled and "read-only" in card.status.value
    with pytest.raises(RuntimeError, match="lab=lab"):
        card.save()


# ---------------------------------------------------------------------------- DiffView

def test_diff_view_side_by_side_with_highlighting(filled_lab):
    lab, cand = filled_lab["lab"], filled_lab["cand"]
    view = ui.DiffView(cand, lab)
    html = view.html.value
    assert "solution.py" in html and "autolab-diff-replace" in html
    assert "#ffebe9" in html and "#e6ffec" in html          # removed / added tints
    assert 'style="color:#' in html                          # pygments colours, inline
    text = re.sub(r"<[^>]+>", "", html)
    assert "X = 2.0" in text and "X = 1.0" in text
    assert re.search(r'class="autolab-diff-mark"[^>]*>1<', html) and re.search(r'class="autolab-diff-mark"[^>]*>2<', html)
    view.whole.value = True                                  # whole files: every line of both sides
    assert view.html.value.count("autolab-diff-equal") >= 3
    assert cand.id in view.static_html() and "solution.py" in view.plain_text()


def test_diff_view_of_the_seed_shows_its_files(filled_lab):
    view = ui.DiffView(filled_lab["seed"], filled_lab["lab"])
    assert "autolab-code" in view.html.value and "seed solution" in view.header.value


def test_unified_diff_parsing_matches_full_text_diff():
    old = {"a.py": "x = 1\ny = 2\nz = 3\n", "gone.py": "print('bye')\n"}
    new = {"a.py": "x = 1\ny = 20\nz = 3\nw = 4\n", "new.py": "print('hi')\n"}
    from autolab.diffs import unified_diff

    files = {f.path: f for f in parse_unified(unified_diff(old, new))}
    assert set(files) == {"a.py", "gone.py", "new.py"}
    assert (files["a.py"].added, files["a.py"].removed) == (2, 1)
    kinds = [r.kind for r in files["a.py"].rows]
    assert "replace" in kinds and "insert" in kinds
    assert (files["gone.py"].added, files["gone.py"].removed) == (0, 1)
    html = side_by_side(old, new)
    assert html.count("autolab-diff-replace") == 1 and "new.py" in html


def test_a_long_unchanged_line_wraps_and_both_sides_stay_in_view():
    """A 300-character unchanged line must not widen the table: each half wraps its lines
    (fixed layout, pre-wrap), so the added side is still there next to the removed one."""
    from autolab.diffs import unified_diff
    from autolab.ui.diffhtml import ADD_MARK, DEL_MARK

    long = "PATH = '" + "abcdefghij" * 30 + "'"
    old = {"train.py": f"{long}\nlr = 0.01\nsteps = 10\n"}
    new = {"train.py": f"{long}\nlr = 0.02\nsteps = 10\nwarmup = 5\n"}
    for html in (side_by_side(old, new), side_by_side_from_unified_(unified_diff(old, new))):
        table = html[html.index("<table"):]
        assert "table-layout:fixed" in table and "white-space:pre-wrap" in table and "white-space:pre;" not in table
        row = re.search(r'<tr class="autolab-diff-equal">.*?</tr>', table).group(0)
        assert row.count("abcdefghij" * 30) == 2                          # the long line, on both sides
        changed = re.search(r'<tr class="autolab-diff-replace">.*?</tr>', table).group(0)
        old_cell, new_cell = changed.split("</td><td", 3)[1], changed.split("</td><td", 3)[3]
        assert "0." in old_cell and "0." in new_cell                        # removed and added, one row
        assert re.search(rf'class="autolab-diff-mark" style="[^"]*background:{DEL_MARK}[^"]*">01<', old_cell)
        assert re.search(rf'class="autolab-diff-mark" style="[^"]*background:{ADD_MARK}[^"]*">02<', new_cell)
        assert "warmup" in table and "autolab-diff-insert" in table
    uni = side_by_side(old, new, mode="unified")
    assert "autolab-diff-unified" in uni and uni.count("abcdefghij" * 30) == 1
    assert uni.index(">01<") < uni.index(">02<") and "white-space:pre;" not in uni
    with pytest.raises(ValueError, match="unified"):
        side_by_side(old, new, mode="wide")


def side_by_side_from_unified_(diff):
    from autolab.ui.diffhtml import side_by_side_from_unified

    return side_by_side_from_unified(diff)


def test_inline_changes_mark_the_changed_words_only():
    from autolab.diffs import inline_changes

    a, b = "lr = 0.01 * scale", "lr = 0.02 * scale  # tuned"
    da, db = inline_changes(a, b)
    assert [a[s:e] for s, e in da] == ["01"] and [b[s:e] for s, e in db] == ["02", "  # tuned"]
    assert inline_changes("import os", "return model(x, y, z)") == ([], [])   # a rewrite: the line is the change


def test_diff_view_switches_to_unified(filled_lab):
    view = ui.DiffView(filled_lab["cand"], filled_lab["lab"])
    assert "autolab-diff-split" in view.html.value and "autolab-diff-mark" in view.html.value
    view.layout_buttons.value = "unified"
    assert "autolab-diff-unified" in view.html.value and view.mode == "unified"


def test_a_long_seed_is_collapsed_to_its_file_list():
    from autolab.ui.diffhtml import code_html

    files = {f"k{i}.py": "".join(f"x{j} = {j}\n" for j in range(60)) for i in range(20)}
    html = code_html(files)
    assert html.count("<details") == 20 and " open>" not in html and "20 file(s), 1200 lines" in html
    assert len(html) < 3 * sum(len(t) for t in files.values())      # plain text when collapsed: a saved notebook stays small
    assert " open>" in code_html({"a.py": "x = 1\n"})


# ---------------------------------------------------------------------------- RunMonitor

def test_run_monitor_never_shows_a_killed_runs_number_as_the_metric(filled_lab):
    run = filled_lab["lab"].log.runs_list()[0]
    for metric in ("loss", None):                        # with the lab's metric, and without one
        mon = ui.RunMonitor(metric=metric, throttle_s=0)
        killed = run.__class__(**{**run.to_dict(), "id": "r-k", "state": "KILLED", "metrics": {"params": 123456.0},
                                  "error": {"ename": "BudgetExceeded", "evalue": "past the budget"}})
        mon({"type": "run_start", "run_id": "r-k", "seed": 1})
        mon({"type": "run_end", "run_id": "r-k", "run": killed})
        assert mon.runs["r-k"].metric is None and "123" not in mon.table.value and "KILLED" in mon.table.value
        assert mon.metric == metric
        mon.close()


def test_run_monitor_updates_from_a_background_thread(filled_lab):
    lab = filled_lab["lab"]
    mon = ui.RunMonitor(lab, budget_s=5, total=2, throttle_s=0.2)
    first_png = mon.plot.value
    run = lab.log.runs_list()[0]

    def feed():
        for rid, seed in (("r-a", 1), ("r-b", 2)):
            mon({"type": "run_start", "run_id": rid, "seed": seed})
            for step in range(10):
                mon({"type": "curve", "run_id": rid, "step": step, "t": 0.5 * step, "loss": 3.0 / (step + 1)})
            done = run.__class__(**{**run.to_dict(), "id": rid, "seed": seed, "metrics": {"loss": 1.5 + seed}})
            mon({"type": "run_end", "run_id": rid, "run": done})

    t = threading.Thread(target=feed)
    t.start()
    t.join(120)                       # PNG renders are slow on a loaded machine
    assert not t.is_alive()
    time.sleep(0.3)
    assert mon.plot.value != first_png and mon.plot.value[:4] == b"\x89PNG"
    assert mon.all_bar.value == 2 and mon.all_bar.max == 2 and mon.run_bar.bar_style == "success"
    assert "2.5" in mon.table.value and "3.5" in mon.table.value and "COMPLETE" in mon.table.value
    assert len(mon.runs["r-a"].loss) == 10 and mon.metric == "loss"
    mon.close()


def test_run_monitor_shows_progress_while_running(filled_lab):
    mon = ui.RunMonitor(filled_lab["lab"], budget_s=10, throttle_s=0)
    mon({"type": "run_start", "run_id": "r-x", "seed": 7})
    mon({"type": "curve", "run_id": "r-x", "step": 3, "t": 5.0, "loss": 2.0})
    assert mon.run_bar.value == pytest.approx(0.5)
    assert "seed 7" in mon.run_label.value and "step 3" in mon.run_label.value
    assert "running" in mon.status.value
    mon.close()


def test_run_monitor_start_runs_autolab_run_in_a_thread(filled_lab):
    """The real autolab.run on the toy task (a ~2 s papermill run) feeding the monitor."""
    import autolab

    if not hasattr(autolab, "run"):
        pytest.skip("autolab.run is not available")
    lab, seed = filled_lab["lab"], filled_lab["seed"]
    mon = ui.RunMonitor(lab, throttle_s=0.1)
    fut = mon.start(lab, seed, seeds=[5], purpose="manual")
    runs = mon.result(timeout=240)
    assert fut.done() and len(runs) == 1 and runs[0].state is State.COMPLETE
    assert mon.finished and mon.finished[0].id == runs[0].id
    assert mon.all_bar.value == 1 and "COMPLETE" in mon.table.value
    assert mon.runs[runs[0].id].loss                       # the curve from the result JSON
    mon.close()


def test_run_monitor_of_a_task_without_curves_shows_problems_not_an_empty_chart(filled_lab):
    """A kernels-like result: per-problem score and correctness, no loss curve, no steps."""
    import json

    lab, cand = filled_lab["lab"], filled_lab["cand"]
    run = [r for r in lab.log.runs_list() if r.candidate_id == cand.id][0]
    rdir = lab.file(run.result_path).parent
    (rdir / "result.json").write_text(json.dumps({"status": "ok", "metrics": {"loss": 0.7}, "details": {"problems": {
        "matmul": {"score": 0.74, "correct": True}, "softmax": {"score": 0.0, "correct": False}}}}))
    (rdir / "notebook.ipynb").write_text("{}")
    mon = ui.RunMonitor(lab, throttle_s=0)
    mon({"type": "run_start", "run_id": run.id, "seed": run.seed, "candidate_id": cand.id})
    mon({"type": "phase", "run_id": run.id, "phase": "eval"})
    assert "evaluating" in mon.run_label.value and "step" not in mon.run_label.value
    mon({"type": "run_end", "run_id": run.id, "run": run})
    assert mon.plot.layout.display == "none" and not mon.has_curves()          # no empty loss chart
    assert "Per problem" in mon.problems_html.value and "matmul" in mon.problems_html.value
    assert "0.74" in mon.problems_html.value and "✗ incorrect" in mon.problems_html.value
    table = mon.table.value
    assert "steps" not in table and "last loss" not in table and "Scale X by 2" in table     # the idea, no steps 0
    href = re.search(r'<a href="([^"]+)"', table).group(1)
    assert href.endswith("notebook.ipynb") and (Path.cwd() / href).resolve() == (rdir / "notebook.ipynb").resolve()
    mon.close()


def test_run_monitor_names_ideas_and_draws_the_labs_progress(filled_lab):
    lab, cand, seed = filled_lab["lab"], filled_lab["cand"], filled_lab["seed"]
    mon = ui.RunMonitor(lab, throttle_s=0, progress=True)
    assert mon.progress_plot.value[:4] == b"\x89PNG" and mon.progress_plot.layout.display is None
    for rid, c in (("r-1", cand), ("r-2", seed)):
        mon({"type": "run_start", "run_id": rid, "seed": 1, "candidate_id": c.id})
        mon({"type": "curve", "run_id": rid, "step": 1, "t": 0.5, "loss": 2.0})
    assert mon.plot.layout.display is None and mon.plot.value[:4] == b"\x89PNG"
    assert (mon.runs["r-1"].label, mon.runs["r-2"].label) == ("Scale X by 2", "seed")
    mon.close()


# ---------------------------------------------------------------------------- AuditView, Leaderboard, Dashboard

def test_audit_view_shows_badge_p_value_and_checks(filled_lab):
    view = ui.AuditView(filled_lab["verdict"], filled_lab["lab"])
    html = view.html.value
    assert "PROMOTED" in html and "0.0004" in html and "α=0.05" in html
    assert "protected_hashes" in html and "✗ warn" in html and "7.1 s on a 5 s budget" in html
    assert view.state is State.PROMOTED and "PROMOTED" in view.plain_text()


def test_leaderboard_ranks_and_refreshes(filled_lab):
    lab, cand, seed = filled_lab["lab"], filled_lab["cand"], filled_lab["seed"]
    board = ui.Leaderboard(lab)
    html = board.html.value
    assert "autolab-table" in html and html.index(cand.id) < html.index(seed.id)   # lower loss ranks first
    assert "Scale X by 2" in html and "lower is better" in html
    other = lab.add_candidate({"solution.py": lab.files(seed)["solution.py"].replace("X = 1.0", "X = 3.0")}, seed)
    add_runs(lab, other, [0.001, 0.002])
    assert other.id not in board.html.value
    board.refresh_button.click()
    # an unaudited candidate, however low its number, ranks after the best (the ledger's) and the seed
    html = board.html.value
    assert html.index(cand.id) < html.index(seed.id) < html.index(other.id)
    lab.promote(other)
    board.refresh_button.click()
    assert board.html.value.index(other.id) < board.html.value.index(cand.id)   # promoted and better: the new best
    assert "Leaderboard" in board.plain_text()


def test_leaderboard_marks_the_ledgers_best_and_refreshes_when_a_run_ends(filled_lab):
    lab, cand, bad = filled_lab["lab"], filled_lab["cand"], filled_lab["bad"]
    board = ui.Leaderboard(lab, progress=True)
    rows = re.findall(r"<tr style=.*?</tr>", board.html.value)
    assert cand.id in rows[0] and ">best<" in rows[0] and sum(">best<" in r for r in rows) == 1
    assert board.plot.value[:4] == b"\x89PNG" and "data:image/png;base64," in board.static_html()
    lab.reject(cand, reason="a leak")
    add_runs(lab, bad, [0.5, 0.6])
    assert "REJECTED" not in board.html.value                 # not yet refreshed
    board({"type": "curve", "run_id": "r-x"})                  # only a run's end refreshes
    board({"type": "run_end", "run_id": "r-x"})
    deadline = time.time() + 30
    while "REJECTED" not in board.html.value and time.time() < deadline:
        time.sleep(0.05)
    rows = re.findall(r"<tr style=.*?</tr>", board.html.value)
    assert "0.55" in board.html.value                                                     # the new runs' mean
    assert cand.id in rows[-1] and "REJECTED" in rows[-1] and ">best<" not in rows[-1]    # rejected: last, not best


def test_dashboard_buttons_change_the_lab(filled_lab):
    lab, cand, bad = filled_lab["lab"], filled_lab["cand"], filled_lab["bad"]
    dash = ui.Dashboard(lab)
    assert "Research threads" in dash.threads.value and "t2" in dash.threads.value and "main" in dash.threads.value
    assert "Runs in flight" in dash.inflight.value and "nothing yet" in dash.inflight.value
    assert dash.candidate.value == bad.id                         # newest first
    dash.reason.value = "crashes on every seed"
    dash.reject_button.click()
    assert lab.log.get("candidate", bad.id).state is State.REJECTED
    assert "rejected" in dash.message.value
    dash.candidate.value = filled_lab["seed"].id
    dash.promote_button.click()
    assert lab.log.get("candidate", filled_lab["seed"].id).state is State.PROMOTED
    assert not (lab.path / "STOP").exists()
    dash.stop_button.click()
    assert (lab.path / "STOP").exists() and "stop requested" in dash.header.value
    assert "stop requested" in dash.message.value


def test_dashboard_shows_runs_in_flight_and_auto_refreshes(filled_lab):
    lab, cand = filled_lab["lab"], filled_lab["cand"]
    dash = ui.Dashboard(lab, refresh_s=0.1)
    try:
        lab.log.append(Run(id="r-inflight", task=lab.task.name, candidate_id=cand.id, preset=lab.preset_name, seed=9))
        deadline = time.time() + 10
        while "r-inflight" not in dash.inflight.value and time.time() < deadline:
            time.sleep(0.05)
        assert "r-inflight" in dash.inflight.value
    finally:
        dash.close()


def test_dashboard_says_so_when_the_lab_lacks_a_method(filled_lab):
    class OldLab:   # a lab object from an autolab without promote / reject / request_stop
        def __init__(self, lab):
            self.log, self.path, self.task, self.preset_name = lab.log, lab.path, lab.task, lab.preset_name

    lab = filled_lab["lab"]
    dash = ui.Dashboard(OldLab(lab))
    state = lab.log.get("candidate", dash.candidate.value).state
    dash.reject_button.click()
    assert "lab.reject" in dash.message.value and "not available" in dash.message.value
    assert lab.log.get("candidate", dash.candidate.value).state is state
    dash.stop_button.click()
    assert "lab.request_stop" in dash.message.value and not (lab.path / "STOP").exists()


# ---------------------------------------------------------------------------- display integration and text

def test_records_render_as_text_and_html(filled_lab):
    for rec in (filled_lab["idea"], filled_lab["cand"], filled_lab["verdict"], filled_lab["lab"].log.runs_list()[0]):
        text = str(rec)
        assert text.startswith(type(rec).__name__) and rec.id in text and "<" not in text.splitlines()[0]
        html = H.record_html(rec)
        assert "autolab-card" in html and H.esc(rec.id) in html


def test_formatters_plain_outside_a_kernel_widgets_inside(filled_lab):
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    idea, verdict = filled_lab["idea"], filled_lab["verdict"]
    try:
        assert ui.register_formatters(ip)
        data, _ = ip.display_formatter.format(idea)
        assert data["text/plain"] == str(idea)
        assert "application/vnd.jupyter.widget-view+json" not in data    # no kernel: plain text only
        ip.kernel = object()                                              # pretend to be a kernel
        ui.register_formatters(ip)
        data, _ = ip.display_formatter.format(idea)
        assert "application/vnd.jupyter.widget-view+json" in data and data["text/plain"] == str(idea)
        assert "autolab-card" in data["text/html"]
        data, _ = ip.display_formatter.format(verdict)
        assert "application/vnd.jupyter.widget-view+json" in data and "PROMOTED" in data["text/html"]
        data, _ = ip.display_formatter.format(filled_lab["lab"].log.runs_list()[0])
        assert "text/html" in data and "application/vnd.jupyter.widget-view+json" not in data
    finally:
        ui.unregister_formatters(ip)
        if "kernel" in ip.__dict__:
            del ip.kernel
    assert ip.display_formatter.format(idea)[0]["text/plain"] != str(idea)   # back to the dataclass repr


def test_importing_ui_and_report_has_no_side_effects():
    code = (
        "import asyncio, logging, signal\n"
        "before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}\n"
        "root = list(logging.getLogger().handlers)\n"
        "from ipywidgets.widgets.widget import _instances\n"
        "n = len(_instances)\n"
        "import autolab.ui, autolab.report\n"
        "assert len(_instances) == n, 'widgets created on import'\n"
        "assert {s: signal.getsignal(s) for s in before} == before, 'signal handlers changed'\n"
        "assert logging.getLogger().handlers == root, 'logging configured'\n"
        "try:\n    asyncio.get_running_loop()\n    raise SystemExit('an event loop is running')\n"
        "except RuntimeError:\n    pass\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr


def test_idea_text_rendering_is_plain():
    i = Idea(id="idea-1", task="t", title="Try a thing", hypothesis="it helps", plan="do it")
    assert str(i).splitlines() == ["Idea idea-1 [PROPOSED]", "  title: Try a thing",
                                   "  source: human  thread: main  parent: None", "  hypothesis: it helps",
                                   "  plan: do it"]
