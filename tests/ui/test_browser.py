"""The notebooks driven in a real browser: JupyterLab on loopback (one server for the module),
Debian's Chromium through Playwright (one headless browser for the module, a fresh context per
test, nothing downloaded at run time).

The quickstart runs with its smoke parameters on the toy task (tests/toytask.py: two-second
runs through the real papermill path); set AUTOLAB_BROWSER_TASK=nanochat to drive it on
nanochat cpu-tiny instead. The test runs every cell from the Run menu, checks that the
widgets render and that the side-by-side diff shows a changed line's removed and added halves
inside the viewport (at 1400 and 800 px), edits and saves the idea in its card, clicks Reject
and Stop on the dashboard and checks the lab on disk changed.

The unattended notebook starts its loop beside the notebook (a handle, the kernel idle) on the
toy task; the test clicks the dashboard's Stop loop while runs are in flight, checks that the
loop ended within its runs in flight plus 10 s with no run started after the click, and that a
following cell runs.

The report and kernels notebooks run whole in smoke mode (03 on its synthetic example lab, 04
on one kernels problem): no error output, their figures and widgets render.
Screenshots are kept under artifacts/browser/ (git-ignored).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("AUTOLAB_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO / "artifacts" / "browser"
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync", "--disable-default-apps", "--mute-audio"]


def _requirements() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's Chromium with `apt-get install -y chromium` "
                    "(the test never downloads a browser)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the Playwright client is missing: pip install playwright (no browser download needed)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"JupyterLab did not answer {url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory):
    """JupyterLab serving a temporary root on 127.0.0.1, token auth; yields (base url, token, root).
    One server for the module's tests (each opens its own notebook and kernel)."""
    _requirements()
    tmp_path = tmp_path_factory.mktemp("jupyter")
    root = tmp_path / "root"
    root.mkdir()
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"), "PYTHONUNBUFFERED": "1"}
    # no news prompt (it would fetch a feed and cover the page)
    notif = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notif.parent.mkdir(parents=True)
    notif.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    tracker = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"autoStartDefaultKernel": True}))
    log = tmp_path / "jupyter.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--ServerApp.disable_check_xsrf=True", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
           "--ServerApp.terminals_enabled=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")          # CI containers run as root
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/api/status?token={token}", 120, proc, log)
        yield base, token, root
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)      # the server and the kernels it started (its own session)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _prepare_notebook(root: Path, lab_dir: Path) -> tuple[str, dict]:
    """The quickstart, parameterized for smoke (papermill's injected-parameters cell), saved unexecuted."""
    task_name = os.environ.get("AUTOLAB_BROWSER_TASK", "toy")
    if task_name == "toy":
        from toytask import make_toy_task  # tests/ is on sys.path (tests/conftest.py)

        params = {"smoke": True, "lab_dir": str(lab_dir), "task": str(make_toy_task(lab_dir.parent / "tasks")),
                  "preset": "quick"}
    else:
        params = {"smoke": True, "lab_dir": str(lab_dir), "task": task_name}
    return _write_notebook(root, "01_quickstart.ipynb", params), params


def _write_notebook(root: Path, name: str, params: dict, extra_cells: tuple[str, ...] = ()) -> str:
    """A notebook of notebooks/ with papermill's injected-parameters cell (and ``extra_cells`` at
    the end), saved unexecuted under the server's root."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(load_notebook_node(str(REPO / "notebooks" / name)), params)
    for i, src in enumerate(extra_cells):
        nb.cells.append(nbformat.v4.new_code_cell(src, id=f"extra{i}"))
    nbformat.write(nb, root / name)
    return name


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module's tests (each test opens its own context: a fresh
    profile, nothing shared but the browser process)."""
    _requirements()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROME_ARGS)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def _browser_page(browser, failure_shot: str):
    """A page in a fresh context of ``browser`` (its own storage: cookies, local storage, cache;
    1400 x 1000, 60 s default timeout); on a failure a screenshot ``failure_shot`` is kept; the
    context goes afterwards."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = None
    try:
        page = ctx.new_page()
        page.set_default_timeout(60_000)
        yield page
    except Exception:
        if page is not None:
            try:
                _shot(page, failure_shot)
            except Exception:
                pass
        raise
    finally:
        ctx.close()


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


def test_quickstart_in_jupyterlab(jupyter, browser, tmp_path):
    from playwright.sync_api import expect

    from autolab.log import ResearchLog
    from autolab.records import State

    base, token, root = jupyter
    lab_dir = tmp_path / "lab"
    name, _ = _prepare_notebook(root, lab_dir)
    with _browser_page(browser, "quickstart-failure.png") as page:
        page.goto(f"{base}/lab/tree/{name}?token={token}")
        page.locator(".jp-NotebookPanel").first.wait_for(state="visible", timeout=120_000)
        _run_all_cells(page)

        task_timeout = 600_000 if os.environ.get("AUTOLAB_BROWSER_TASK", "toy") != "toy" else 240_000
        page.locator(".jp-OutputArea-output", has_text="loop skipped (loop_iterations = 0)").first.wait_for(
            timeout=task_timeout)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                              has_text="Traceback")
        assert errors.count() == 0, errors.first.inner_text()
        assert page.get_by_text("Error displaying widget").count() == 0, "a widget view did not render"

        # the widgets rendered
        for cls in ("autolab-idea-card", "autolab-diff-view", "autolab-run-monitor", "autolab-audit-view",
                    "autolab-leaderboard", "autolab-dashboard"):
            expect(page.locator(f".{cls}").first).to_be_attached()
        expect(page.locator(".autolab-leaderboard table.autolab-table").first).to_be_attached()
        expect(page.locator(".autolab-diff-view table.autolab-diff").first).to_be_attached()
        expect(page.locator(".autolab-run-monitor img").first).to_be_attached()

        page.locator(".autolab-idea-card").first.scroll_into_view_if_needed()
        _shot(page, "quickstart-idea-card.png")
        page.locator(".autolab-diff-view", has=page.locator("table.autolab-diff")).first.scroll_into_view_if_needed()
        _shot(page, "quickstart-diff-view.png")
        # the diff shows both sides: a changed line's removed and added halves in view, at any width
        for width in (1400, 800):
            page.set_viewport_size({"width": width, "height": 1000})
            _assert_both_sides(page)
        _shot(page, "quickstart-diff-view-narrow.png")
        page.set_viewport_size({"width": 1400, "height": 1000})

        log = ResearchLog(lab_dir / "log.db")
        cand = log.candidates_list()[-1]                    # the candidate the notebook implemented
        assert cand.parent_id is not None

        # steer: edit the idea in its card and save it as a new idea
        card = page.locator(".autolab-idea-card").first
        card.scroll_into_view_if_needed()
        title = card.locator("input[type='text']").first
        title.fill("An idea edited in the browser")
        card.locator("button", has_text="Save as new idea").click()
        expect(card.get_by_text("saved as")).to_be_visible()
        assert _poll(lambda: any(i.title == "An idea edited in the browser" and i.source == "human"
                                 for i in log.ideas_list()))

        # the dashboard: promote the selected (newest) candidate by hand, reject it, then stop the loop
        dash = page.locator(".autolab-dashboard").first
        dash.scroll_into_view_if_needed()
        dash.locator("button", has_text="Promote").click()
        assert _poll(lambda: log.get("candidate", cand.id).state is State.PROMOTED), "Promote did not reach the log"
        assert log.get("candidate", cand.id).meta.get("manual") is True
        expect(dash.get_by_text(f"promoted {cand.id}", exact=False)).to_be_visible()
        dash.locator("input[placeholder='reason (for Reject)']").fill("rejected from the browser test")
        dash.locator("button", has_text="Reject").click()
        assert _poll(lambda: log.get("candidate", cand.id).state is State.REJECTED), "Reject did not reach the log"
        assert log.get("candidate", cand.id).meta.get("reason") == "rejected from the browser test"
        expect(dash.get_by_text(f"rejected {cand.id}", exact=False)).to_be_visible()
        dash.locator("button", has_text="Stop loop").click()
        assert _poll(lambda: (lab_dir / "STOP").exists()), "Stop did not write the STOP file"
        expect(dash.get_by_text("stop requested", exact=False).first).to_be_visible()
        page.wait_for_timeout(300)
        shot = _shot(page, "quickstart-dashboard.png")
        dash.screenshot(path=str(ARTIFACTS / "quickstart-dashboard-widget.png"))
        page.locator(".autolab-run-monitor").last.scroll_into_view_if_needed()
        _shot(page, "quickstart-run-monitor.png")
        (ARTIFACTS / "result.json").write_text(json.dumps({"rejected": cand.id, "stop": True,
                                                           "screenshot": str(shot)}))


def test_unattended_loop_runs_beside_the_notebook_and_stops_from_the_dashboard(jupyter, browser, tmp_path):
    from playwright.sync_api import expect

    from autolab.log import ResearchLog
    from autolab.records import State
    from toytask import make_toy_task

    base, token, root = jupyter
    lab_dir = tmp_path / "loop-lab"
    params = {"lab_dir": str(lab_dir), "task": str(make_toy_task(tmp_path / "tasks")), "preset": "quick",
              "iterations": 20, "threads": 1}
    name = _write_notebook(root, "02_unattended.ipynb", params,
                           extra_cells=('print("after the loop:", handle.describe())',))
    with _browser_page(browser, "unattended-failure.png") as page:
        # a workspace of its own: the server's default one may still hold the quickstart's tab
        page.goto(f"{base}/lab/workspaces/unattended/tree/{name}?token={token}")
        page.locator(".jp-NotebookPanel").first.wait_for(state="visible", timeout=120_000)
        _run_all_cells(page)

        # every cell ran (the loop's cell returned at once) and the loop goes on beside the notebook
        page.locator(".jp-OutputArea-output", has_text="the loop runs beside the notebook").first.wait_for(
            timeout=120_000)
        page.locator(".jp-OutputArea-output", has_text="after the loop: running").first.wait_for(timeout=120_000)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                              has_text="Traceback")
        assert errors.count() == 0, errors.first.inner_text()
        log = ResearchLog(lab_dir / "log.db")
        # wait until the baseline is in and the loop's own runs are in flight
        assert _poll(lambda: sum(r.state is State.COMPLETE for r in log.runs_list()) >= 3
                     and any(r.state is State.RUNNING for r in log.runs_list()), timeout=240), \
            "the loop did not get runs in flight"
        dash = page.locator(".autolab-dashboard").first
        dash.scroll_into_view_if_needed()
        # the kernel is idle while the dashboard says the loop runs
        expect(page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']").first
               ).to_be_attached()
        expect(dash.locator(".widget-html", has_text="running").first).to_be_visible(timeout=20_000)
        _shot(page, "unattended-running.png")

        t_click = time.time()
        dash.locator("button", has_text="Stop loop").click()
        in_flight = {r.id for r in log.runs_list() if r.state is State.RUNNING}
        assert _poll(lambda: log.events("loop_end"), timeout=300), "the loop did not end after Stop"
        end = _ts(log.events("loop_end")[-1]["ts"])
        runs = log.runs_list()
        started_after = [r.id for r in runs if _ts(r.started_at) > t_click + 1.0]
        assert not started_after, f"runs started after Stop: {started_after}"
        last_in_flight = max([_ts(r.ended_at) for r in runs if r.id in in_flight and r.ended_at] + [t_click])
        assert end - last_in_flight <= 10.0, f"the loop ended {end - last_in_flight:.1f} s after its last run"
        assert not any(r.state is State.RUNNING for r in runs) and not (lab_dir / "STOP").exists()
        expect(dash.locator(".widget-html", has_text="finished").first).to_be_visible(timeout=20_000)
        _shot(page, "unattended-stopped.png")

        # the kernel is free: a following cell runs
        last = page.locator(".jp-Notebook .jp-CodeCell").last
        last.scroll_into_view_if_needed()
        last.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        expect(page.locator(".jp-OutputArea-output", has_text="after the loop: finished").first).to_be_visible(
            timeout=30_000)
        _shot(page, "unattended-after.png")
        (ARTIFACTS / "unattended.json").write_text(json.dumps({
            "stop_clicked": t_click, "loop_end": end, "in_flight_at_stop": sorted(in_flight),
            "end_after_last_run_s": round(end - last_in_flight, 2), "runs": len(runs)}))


def _assert_both_sides(page) -> None:
    """The first changed line of the side-by-side diff: its removed cell and its added cell are
    both visible, hold different code, and the added one ends inside the viewport."""
    from playwright.sync_api import expect

    row = page.locator(".autolab-diff-view table.autolab-diff-split tr.autolab-diff-replace").first
    row.scroll_into_view_if_needed()
    removed, added = row.locator("td").nth(1), row.locator("td").nth(3)   # line number, code; line number, code
    expect(removed).to_be_visible()
    expect(added).to_be_visible()
    old, new = removed.inner_text().strip(" \n\u2212"), added.inner_text().strip(" \n+")
    assert old and new and old != new, f"the changed line's two sides: {old!r} | {new!r}"
    box, width = added.bounding_box(), page.viewport_size["width"]
    assert box is not None and box["width"] > 20, f"the added cell has no room: {box}"
    assert box["x"] + box["width"] <= width, f"the added cell ends at {box['x'] + box['width']:.0f} px, past the " \
                                             f"viewport ({width} px)"


DONE = "autolab-browser-test: every cell ran"
_FINISHED = """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')]
                  .some(e => e.textContent.includes('%s') || e.textContent.includes('Traceback'))""" % DONE


@pytest.mark.slow
def test_report_and_kernels_notebooks_in_smoke_mode(jupyter, browser, tmp_path):
    """03_report (no lab: its smoke mode draws the synthetic example lab, as the papermill test
    does) and 04_kernels (`smoke = True`: one run of the seed and one of a candidate, no loop),
    each run whole from the Run menu: no error, the figures and the kernels views render
    (per-problem table, a seed of many files collapsed). 04 runs on the `cpu-redteam` preset
    (softmax only, in the interpreter) so that `make test` stays in its budget; set
    AUTOLAB_BROWSER_KERNELS_PRESET=cpu-interpret for the notebook's own preset (every problem)."""
    from playwright.sync_api import expect

    from autolab.log import ResearchLog

    base, token, root = jupyter
    done = (f"print({DONE!r})",)
    report = _write_notebook(root, "03_report.ipynb", {"smoke": True, "lab": str(tmp_path / "no-lab-here")}, done)
    kernels_lab = tmp_path / "kernels-lab"
    preset = os.environ.get("AUTOLAB_BROWSER_KERNELS_PRESET", "cpu-redteam")
    kernels = _write_notebook(root, "04_kernels.ipynb", {"smoke": True, "lab_dir": str(kernels_lab), "preset": preset},
                              done)
    with _browser_page(browser, "report-kernels-failure.png") as page:
        _open_and_run(page, f"{base}/lab/workspaces/report/tree/{report}?token={token}", timeout_s=240)
        expect(page.locator(".jp-OutputArea-output", has_text="synthetic example lab").first).to_be_attached()
        assert page.locator(".jp-OutputArea-output img").count() >= 4, "the report's figures did not render"
        page.locator(".jp-OutputArea-output img").first.scroll_into_view_if_needed()
        _shot(page, "report-progress.png")
        page.locator(".jp-Notebook .jp-CodeCell").last.scroll_into_view_if_needed()
        _shot(page, "report-best-change.png")

        _open_and_run(page, f"{base}/lab/workspaces/kernels/tree/{kernels}?token={token}", timeout_s=900)
        for cls in ("autolab-run-monitor", "autolab-idea-card", "autolab-diff-view", "autolab-audit-view",
                    "autolab-dashboard", "autolab-leaderboard"):
            expect(page.locator(f".{cls}").first).to_be_attached()
        expect(page.locator(".jp-OutputArea-output", has_text="loop skipped (loop_iterations = 0)").first
               ).to_be_attached()
        # the seed, many kernel files, reads as a list of closed sections; the monitor shows problems
        assert page.locator("details.autolab-code-file").count() > 1
        assert page.locator("details.autolab-code-file[open]").count() == 0, "a long seed was shown open"
        seed_view = page.locator("details.autolab-code-file").first
        seed_view.scroll_into_view_if_needed()
        _shot(page, "kernels-seed.png")
        problems = page.locator(".autolab-run-monitor", has_text="Per problem: score and correctness").first
        problems.scroll_into_view_if_needed()
        _shot(page, "kernels-run-monitor.png")
        page.locator(".autolab-dashboard").first.scroll_into_view_if_needed()
        _shot(page, "kernels-dashboard.png")
        log = ResearchLog(kernels_lab / "log.db")
        # one run per side (a run the machine killed may be retried: a state, still one side each)
        assert log.get_meta("task") == "kernels" and len(log.verdicts_list()) == 1
        assert {r.purpose for r in log.runs_list()} == {"baseline", "screen"}


def _open_and_run(page, url: str, timeout_s: float) -> None:
    """Open a notebook in its own workspace, Run All Cells, and wait for the last (added) cell's
    line; a Traceback in any output fails at once with its text, as does a widget that did not render."""
    page.goto(url)
    page.locator(".jp-NotebookPanel").first.wait_for(state="visible", timeout=120_000)
    _run_all_cells(page)
    page.wait_for_function(_FINISHED, timeout=timeout_s * 1000, polling=500)
    errors = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output", has_text="Traceback")
    assert errors.count() == 0, errors.first.inner_text()[-3000:]
    assert page.get_by_text("Error displaying widget").count() == 0, "a widget view did not render"


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


_STARTED = """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')]
                  .some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))"""


def _run_all_cells(page) -> None:
    """Run > Run All Cells, as a person would; if JupyterLab asks for a kernel first, take the
    notebook's own (python3), and try again until the first cell is queued or running."""
    for _ in range(4):
        select = page.locator(".jp-Dialog button", has_text="Select")
        if select.count():
            select.first.click()
        # a kernel that is up and idle; then a moment for the widget manager to attach to it
        # (widget views sent before it listens show "model not found")
        try:
            page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status='idle']"
                         ).first.wait_for(timeout=60_000)
        except Exception:
            continue
        page.wait_for_timeout(3000)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function(_STARTED, timeout=20_000)
            return
        except Exception:
            page.keyboard.press("Escape")
    raise AssertionError("Run All Cells did not start the notebook's cells")


def _poll(fn, timeout: float = 20.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if fn():
                return True
        except Exception:
            pass
        time.sleep(0.2)
    return False
