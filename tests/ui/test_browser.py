"""The notebooks driven in a real browser: JupyterLab on loopback (one server for the module),
Debian's Chromium through Playwright (headless, a fresh profile, nothing downloaded at run time).

The quickstart runs with its smoke parameters on the toy task (tests/toytask.py: two-second
runs through the real papermill path); set AUTOLAB_BROWSER_TASK=nanochat to drive it on
nanochat cpu-tiny instead. The test runs every cell from the Run menu, checks that the
widgets render, edits and saves the idea in its card, clicks Reject and Stop on the
dashboard and checks the lab on disk changed.

The unattended notebook starts its loop beside the notebook (a handle, the kernel idle) on the
toy task; the test clicks the dashboard's Stop loop while runs are in flight, checks that the
loop ended within its runs in flight plus 10 s with no run started after the click, and that a
following cell runs. Screenshots are kept under artifacts/browser/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
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


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


def test_quickstart_in_jupyterlab(jupyter, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from autolab.log import ResearchLog
    from autolab.records import State

    base, token, root = jupyter
    lab_dir = tmp_path / "lab"
    name, _ = _prepare_notebook(root, lab_dir)
    profile = tmp_path / "chromium-profile"
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=str(CHROMIUM), headless=True,
                                                   args=CHROME_ARGS, viewport={"width": 1400, "height": 1000})
        try:
            page = ctx.new_page()
            page.set_default_timeout(60_000)
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
        except Exception:
            try:
                _shot(page, "quickstart-failure.png")
            except Exception:
                pass
            raise
        finally:
            ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def test_unattended_loop_runs_beside_the_notebook_and_stops_from_the_dashboard(jupyter, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from autolab.log import ResearchLog
    from autolab.records import State
    from toytask import make_toy_task

    base, token, root = jupyter
    lab_dir = tmp_path / "loop-lab"
    params = {"lab_dir": str(lab_dir), "task": str(make_toy_task(tmp_path / "tasks")), "preset": "quick",
              "iterations": 20, "threads": 1}
    name = _write_notebook(root, "02_unattended.ipynb", params,
                           extra_cells=('print("after the loop:", handle.describe())',))
    profile = tmp_path / "chromium-profile-02"
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=str(CHROMIUM), headless=True,
                                                   args=CHROME_ARGS, viewport={"width": 1400, "height": 1000})
        try:
            page = ctx.new_page()
            page.set_default_timeout(60_000)
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
        except Exception:
            try:
                _shot(page, "unattended-failure.png")
            except Exception:
                pass
            raise
        finally:
            ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


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
