"""RunMonitor: a live loss curve and progress bars while runs execute.

What it shows follows what the harness reports: the training-loss chart appears with the
first loss point (a task without a curve, e.g. kernels, never shows an empty one); a result
with per-problem details (``details.problems``: score and correctness) is shown as a
problem × run table; the curves are labelled by idea; each run's row links to its executed
notebook; with ``progress=True`` the lab's metric over experiments and the running best
of each research line are redrawn as runs end.

Feed it the run events: ``autolab.run(lab, cand, seeds=[1, 2], on_event=monitor)``
(the monitor is callable), or let it start the run in a background thread with
``monitor.start(lab, cand, seeds=[1, 2])``. Events may arrive from any thread; the
widgets are updated through their traits (a PNG into an ``Image``, progress values),
never through an Output context manager, so updates reach the browser while the cell
that started the run is still busy.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections import deque
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import ipywidgets as W

from . import _html as H
from ._plots import curves_png
from .widgetbase import StaticFallback, remember_lab


@dataclass
class _RunState:
    run_id: str
    seed: Any = None
    label: str = ""               # the idea's title (or "seed"), for the legend
    phase: str = ""               # the harness's last phase event: data, train, eval, done
    notebook: str = ""            # the executed notebook, once the run ended
    problems: dict = field(default_factory=dict)   # {problem: {"score": S, "correct": bool}} from the result
    t: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    step: int = 0
    state: str = "RUNNING"
    metric: float | None = None
    error: str = ""
    started: float = field(default_factory=time.monotonic)


def _result(run: Any, lab: Any = None) -> dict:
    """A finished run's result JSON (its path is relative to the lab's folder; without a lab,
    to the working directory); {} when there is none."""
    import json

    from ..lab import lab_file

    path = lab_file(getattr(lab, "path", None) or ".", getattr(run, "result_path", None))
    try:
        out = json.loads(path.read_text()) if path else {}
    except (OSError, ValueError, AttributeError):
        return {}
    return out if isinstance(out, dict) else {}


def _result_curve(run: Any, lab: Any = None, result: dict | None = None) -> tuple[list[float], list[float]] | None:
    """(t, loss) from a finished run's result JSON, if it recorded a curve."""
    curve = (result if result is not None else _result(run, lab)).get("curve") or []
    pts = [(float(p.get("t", p.get("step", k))), float(p["loss"])) for k, p in enumerate(curve)
           if isinstance(p, dict) and isinstance(p.get("loss"), (int, float))]
    return ([t for t, _ in pts], [l for _, l in pts]) if pts else None


def _problems(result: dict) -> dict[str, dict]:
    """Per-problem score and correctness from a result's ``details.problems`` (a harness that
    scores several problems, e.g. kernels), {} when it reports none."""
    probs = (result.get("details") or {}).get("problems") if isinstance(result.get("details"), dict) else None
    if not isinstance(probs, dict):
        return {}
    return {str(k): {"score": v.get("score"), "correct": v.get("correct")} for k, v in probs.items() if isinstance(v, dict)}


_PHASES = {"data": "preparing data", "train": "training", "eval": "evaluating", "done": "finishing"}


class RunMonitor(StaticFallback, W.VBox):
    """Live view of one or more runs: curve per seed, a progress bar for the current run
    (training clock against the preset's budget) and one for all runs, and a results table."""

    def __init__(self, lab: Any = None, *, budget_s: float | None = None, total: int | None = None,
                 metric: str | None = None, title: str = "", throttle_s: float = 0.5, max_curves: int = 8,
                 progress: bool = False):
        self.lab = lab
        remember_lab(lab)
        if budget_s is None and lab is not None:
            budget_s = getattr(getattr(lab, "preset", None), "budget_s", None)
        if metric is None and lab is not None:
            metric = getattr(getattr(getattr(lab, "task", None), "metric", None), "name", None)
        self.budget_s, self.metric, self.total, self.throttle_s = budget_s, metric, total, throttle_s
        self.runs: dict[str, _RunState] = {}
        self.events: deque[dict] = deque(maxlen=2000)   # the latest events, for inspection
        self.finished: list[Any] = []   # Run records from run_end events
        self.notes: list[str] = []      # the last few "note" events of a loop
        self.max_curves = max_curves
        self._lock = threading.RLock()
        self._last_draw = 0.0
        self._future: cf.Future | None = None
        self._pending_draw: threading.Timer | None = None
        self._ticker: threading.Thread | None = None
        self._closed = threading.Event()
        self.title = W.HTML(f'<div style="{H.FONT}"><b>{H.esc(title or "Run monitor")}</b></div>')
        self.status = W.HTML(f'<div style="{H.FONT} color:#57606a;">waiting for the first run…</div>')
        self.run_bar = W.FloatProgress(value=0.0, min=0.0, max=1.0, description="this run", bar_style="info",
                                       layout=W.Layout(width="60%"))
        self.all_bar = W.IntProgress(value=0, min=0, max=max(1, total or 1), description="all runs",
                                     layout=W.Layout(width="60%"))
        self.run_label, self.all_label = W.Label(""), W.Label(f"0/{total}" if total else "")
        # the loss chart shows once a run reports a loss point: a task without a curve never gets an empty chart
        self.plot = W.Image(value=b"", format="png", layout=W.Layout(max_width="860px", display="none"))
        self.table = W.HTML("")
        self.problems_html = W.HTML("")
        self.notes_html = W.HTML("")
        self.show_progress = bool(progress and lab is not None and hasattr(lab, "log"))
        self.progress_plot = W.Image(value=b"", format="png",
                                     layout=W.Layout(max_width="860px", display=None if self.show_progress else "none"))
        self._progress_lock = threading.Lock()
        super().__init__([self.title, self.status, W.HBox([self.run_bar, self.run_label]),
                          W.HBox([self.all_bar, self.all_label]), self.plot, self.table, self.problems_html,
                          self.progress_plot, self.notes_html],
                         layout=W.Layout(width="100%"))
        if self.show_progress:
            self._draw_progress()
        self.add_class("autolab-run-monitor")

    def plain_text(self) -> str:
        return f"RunMonitor ({len(self.runs)} run(s))"

    # ------------------------------------------------------------------ events
    def __call__(self, event: dict) -> None:
        self.on_event(event)

    def on_event(self, event: dict) -> None:
        """Take one run event (``run_start``, ``curve``, ``run_end``); safe from any thread."""
        kind = event.get("type")
        force = False
        with self._lock:
            self.events.append(event)
            if kind == "run_start":
                rid = str(event.get("run_id"))
                self.runs[rid] = _RunState(rid, seed=event.get("seed"), label=self._label(event.get("candidate_id")))
                force = True
            elif kind == "phase":       # the harness's phase: shown in the run's label at once
                self._state(event).phase = str(event.get("phase") or "")
                self._update_text()
                return
            elif kind == "curve":
                rs = self._state(event)
                loss = event.get("loss")
                if loss is not None:
                    t = event.get("t")
                    rs.t.append(float(t) if t is not None else float(len(rs.t)))
                    rs.loss.append(float(loss))
                rs.step = int(event.get("step") or rs.step)
            elif kind == "note":        # the loop's own messages ("idea -> candidate", verdicts)
                self.notes.append(str(event.get("message", "")))
                self.notes = self.notes[-5:]
                self._set_notes()
                return
            elif kind == "run_end":
                run = event.get("run")
                rid = str(getattr(run, "id", None) or event.get("run_id"))
                rs = self.runs.get(rid) or self.runs.setdefault(rid, _RunState(rid, seed=getattr(run, "seed", None)))
                if run is not None:
                    self.finished.append(run)
                    state = getattr(run, "state", "COMPLETE")
                    rs.state = getattr(state, "value", str(state))
                    # only a COMPLETE run has a result; a killed or failed run's numbers (a parameter
                    # count, a partial loss) are never shown as the metric
                    metrics = (getattr(run, "metrics", {}) or {}) if rs.state == "COMPLETE" else {}
                    key = self.metric if self.metric is not None else next(iter(metrics), None)
                    if key is not None and self.metric is None:
                        self.metric = key
                    rs.metric = metrics.get(key) if key else None
                    result = _result(run, self.lab)
                    if len(rs.t) < 3:   # few live points (a harness without live events): the result's curve
                        rs.t, rs.loss = _result_curve(run, self.lab, result) or (rs.t, rs.loss)
                        rs.step = max(rs.step, len(rs.t) - 1)
                    rs.problems = _problems(result)
                    if rs.state != "COMPLETE":   # which problems failed is news; a score of a run that did not complete is not
                        rs.problems = {n: {**p, "score": None} for n, p in rs.problems.items()}
                    rs.notebook = str(getattr(run, "notebook", "") or "")
                    if not rs.label:
                        rs.label = self._label(getattr(run, "candidate_id", None))
                    err = getattr(run, "error", None) or {}
                    rs.error = f"{err.get('ename', '')}: {str(err.get('evalue', err.get('reason', '')))[:160]}" if err else ""
                else:
                    rs.state = str(event.get("state", "COMPLETE"))
                force = True
            else:
                return
        self.redraw(force=force)
        if kind == "run_end" and self.show_progress:
            threading.Thread(target=self._draw_progress, name="autolab-run-monitor-progress", daemon=True).start()

    def _label(self, candidate_id: Any) -> str:
        """The idea's title of a candidate (the seed: "seed"), for the legend and the table."""
        log = getattr(self.lab, "log", None)
        if log is None or not candidate_id:
            return ""
        try:
            c = log.get("candidate", str(candidate_id))
            if c is None:
                return ""
            if c.parent_id is None:
                return "seed"
            idea = log.get("idea", c.idea_id) if c.idea_id else None
            return idea.title if idea is not None else str(candidate_id)
        except Exception:
            return ""

    def _draw_progress(self) -> None:
        """Redraw the lab's metric over experiments with each research line's running best."""
        from ._plots import png_bytes, progress_figure

        with self._progress_lock:
            try:
                png = png_bytes(progress_figure(self.lab.log, w=8.0, h=3.4, title="The lab so far: every experiment "
                                                "and the running best"))
            except Exception as e:  # a view never breaks the run it watches
                self.notes.append(f"progress chart not drawn: {e}")
                self._set_notes()
                return
            self.progress_plot.value = png

    def _set_notes(self) -> None:
        items = "".join(f"<li>{H.esc(n)}</li>" for n in self.notes)
        self.notes_html.value = f'<ul style="{H.FONT} color:#57606a; margin:2px 0;">{items}</ul>' if items else ""

    def _state(self, event: dict) -> _RunState:
        rid = str(event.get("run_id"))
        if rid not in self.runs:
            self.runs[rid] = _RunState(rid, seed=event.get("seed"))
        return self.runs[rid]

    # ------------------------------------------------------------------ drawing
    def _png(self) -> bytes:
        with self._lock:
            shown = [rs for rs in self.runs.values() if rs.loss][-self.max_curves:]
            series = []
            for rs in shown:
                name = (rs.label[:32] + ("…" if len(rs.label) > 32 else "")) if rs.label else rs.run_id
                series.append((f"{name} · seed {rs.seed}" if rs.seed is not None else name, list(rs.t), list(rs.loss)))
        return curves_png(series, budget_s=self.budget_s, title="training loss", legend_outside=True)

    def has_curves(self) -> bool:
        with self._lock:
            return any(rs.loss for rs in self.runs.values())

    def redraw(self, force: bool = False) -> None:
        """Re-render (at most every ``throttle_s`` unless forced; a skipped draw is made later)."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_draw < self.throttle_s:
                if self._pending_draw is None:
                    self._pending_draw = threading.Timer(self.throttle_s, lambda: self.redraw(force=True))
                    self._pending_draw.daemon = True
                    self._pending_draw.start()
                return
            if self._pending_draw is not None:
                self._pending_draw.cancel()
                self._pending_draw = None
            self._last_draw = now
            # drawn under the lock: two threads drawing at once must not leave the older picture last
            curves = self.has_curves()
            png = self._png() if curves else b""
            with self.hold_sync():
                if curves:
                    self.plot.value = png
                    self.plot.layout.display = None
                self._update_text()
        self._ensure_ticker()

    def _update_text(self) -> None:
        """Progress bars, labels, status and table (cheap; the ticker calls it every second)."""
        with self._lock, self.hold_sync():
            runs = list(self.runs.values())
            done = sum(1 for r in runs if r.state != "RUNNING")
            current = next((r for r in reversed(runs) if r.state == "RUNNING"), None)
            total = max(self.total or 0, len(runs), 1)
            self.all_bar.max = total
            self.all_bar.value = done
            self.all_label.value = f"{done}/{total} done"
            if current is not None:
                wall = time.monotonic() - current.started
                t = current.t[-1] if current.t else 0.0
                self.run_bar.value = min(1.0, t / self.budget_s) if self.budget_s else 0.0
                self.run_bar.bar_style = "info"
                last = f", loss {current.loss[-1]:.4g}" if current.loss else ""
                if current.t:
                    train = (f"training {t:.1f}s" + (f" / {self.budget_s:g}s" if self.budget_s else "")
                             + f", step {current.step}{last}")
                else:
                    train = _PHASES.get(current.phase, current.phase) or "starting…"
                self.run_label.value = f"seed {current.seed}: {wall:.0f}s elapsed, {train}"
                self.status.value = f'<div style="{H.FONT} color:#bf8700;">running {H.code(current.run_id)}…</div>'
            elif runs:
                failed = [r for r in runs if r.state not in ("COMPLETE", "RUNNING")]
                self.run_bar.value = 1.0
                self.run_bar.bar_style = "danger" if failed else "success"
                self.run_label.value = ""
                color = "#cf222e" if failed else "#1a7f37"
                self.status.value = (f'<div style="{H.FONT} color:{color};">{done} run(s) finished'
                                     f'{f", {len(failed)} not complete" if failed else ""}.</div>')
            self.table.value = self._table_html(runs[-20:])
            self.problems_html.value = self._problems_html(runs[-8:])

    def _ensure_ticker(self) -> None:
        with self._lock:
            if self._ticker is not None or not any(r.state == "RUNNING" for r in self.runs.values()):
                return
            self._ticker = threading.Thread(target=self._tick, name="autolab-run-monitor-tick", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._closed.wait(1.0):
            with self._lock:
                if not any(r.state == "RUNNING" for r in self.runs.values()):
                    self._ticker = None
                    return
            try:
                self._update_text()
            except Exception:  # a closed widget or a kernel shutting down: stop ticking
                break
        with self._lock:
            self._ticker = None

    def _notebook_link(self, r: _RunState) -> str:
        """The run id, linked to its executed notebook (a path relative to the kernel's working
        directory, which JupyterLab opens in a new tab)."""
        import os

        from ..lab import lab_file

        if not r.notebook:
            return H.code(r.run_id)
        path = lab_file(getattr(self.lab, "path", None) or ".", r.notebook)
        if path is None or not path.exists():
            return H.code(r.run_id)
        try:
            href = os.path.relpath(path, os.getcwd())
        except ValueError:   # another drive
            href = str(path)
        return (f'<a href="{H.esc(href)}" target="_blank" title="open the executed notebook {H.esc(href)}">'
                f'{H.code(r.run_id)}</a>')

    def _table_html(self, runs: Sequence[_RunState]) -> str:
        curves = any(r.loss or r.step for r in runs)
        labels = any(r.label for r in runs)
        rows = []
        for r in runs:
            row = [self._notebook_link(r)] + ([H.esc(r.label)] if labels else []) + [H.esc(r.seed), H.badge(r.state),
                                                                                    H.fmt(r.metric)]
            if curves:
                row += [str(r.step), H.fmt(r.loss[-1]) if r.loss else "—"]
            rows.append(row + [H.esc(r.error)])
        head = (["run"] + (["idea"] if labels else []) + ["seed", "state", self.metric or "metric"]
                + (["steps", "last loss"] if curves else []) + ["error"])
        return H.table(head, rows)

    def _problems_html(self, runs: Sequence[_RunState]) -> str:
        """Problem × run: each problem's score and correctness in each finished run."""
        shown = [r for r in runs if r.problems]
        if not shown:
            return ""
        names = sorted({n for r in shown for n in r.problems})
        rows = []
        for n in names:
            cells = []
            for r in shown:
                p = r.problems.get(n)
                if p is None:
                    cells.append("—")
                    continue
                ok = p.get("correct")
                mark = ('<span style="color:#1a7f37; font-weight:700;">✓</span>' if ok else
                        '<span style="color:#cf222e; font-weight:700;">✗ incorrect</span>' if ok is False else "?")
                cells.append(f"{H.fmt(p.get('score'))} {mark}")
            rows.append([H.esc(n)] + cells)
        head = ["problem"] + [f"{r.run_id} (seed {r.seed})" for r in shown]
        return H.table(head, rows, caption="Per problem: score and correctness", max_height="24em")

    # ------------------------------------------------------------------ running
    def start(self, lab: Any, candidate: Any, seeds: Sequence[int] = (1,), *, run: Callable | None = None,
              **kwargs: Any) -> cf.Future:
        """Run ``autolab.run(lab, candidate, seeds=seeds, on_event=self, **kwargs)`` in a
        background thread; returns a Future of the list of Runs (also ``monitor.result()``)."""
        if self._future is not None and not self._future.done():
            raise RuntimeError("this monitor is already watching a run; wait for monitor.result() first")
        if run is None:
            import autolab

            run = getattr(autolab, "run", None)
            if run is None:
                raise RuntimeError("autolab.run is not available in this version of autolab")
        self.lab = lab
        if self.total is None:
            self.total = len(seeds)
        fut: cf.Future = cf.Future()

        def work() -> None:
            try:
                fut.set_result(run(lab, candidate, seeds=list(seeds), on_event=self, **kwargs))
            except BaseException as e:  # reported through the future and the status line
                self.status.value = f'<div style="{H.FONT} color:#cf222e;">run failed: {H.esc(repr(e))}</div>'
                fut.set_exception(e)

        threading.Thread(target=work, name="autolab-run-monitor", daemon=True).start()
        self._future = fut
        return fut

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run started with ``start`` and return its Runs."""
        if self._future is None:
            return list(self.finished)
        return self._future.result(timeout)

    def close(self) -> None:
        self._closed.set()
        if self._pending_draw is not None:
            self._pending_draw.cancel()
        super().close()
