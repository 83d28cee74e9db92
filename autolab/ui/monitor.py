"""RunMonitor: a live loss curve and progress bars while runs execute.

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
    t: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    step: int = 0
    state: str = "RUNNING"
    metric: float | None = None
    error: str = ""
    started: float = field(default_factory=time.monotonic)


def _result_curve(run: Any, lab: Any = None) -> tuple[list[float], list[float]] | None:
    """(t, loss) from a finished run's result JSON, if it recorded a curve (its path is relative
    to the lab's folder; without a lab, to the working directory)."""
    import json

    from ..lab import lab_file

    path = lab_file(getattr(lab, "path", None) or ".", getattr(run, "result_path", None))
    try:
        curve = json.loads(path.read_text()).get("curve") or [] if path else []
    except (OSError, ValueError, AttributeError):
        return None
    pts = [(float(p.get("t", p.get("step", k))), float(p["loss"])) for k, p in enumerate(curve)
           if isinstance(p, dict) and isinstance(p.get("loss"), (int, float))]
    return ([t for t, _ in pts], [l for _, l in pts]) if pts else None


class RunMonitor(StaticFallback, W.VBox):
    """Live view of one or more runs: curve per seed, a progress bar for the current run
    (training clock against the preset's budget) and one for all runs, and a results table."""

    def __init__(self, lab: Any = None, *, budget_s: float | None = None, total: int | None = None,
                 metric: str | None = None, title: str = "", throttle_s: float = 0.5, max_curves: int = 8):
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
        self.plot = W.Image(value=self._png(), format="png", layout=W.Layout(max_width="720px"))
        self.table = W.HTML("")
        self.notes_html = W.HTML("")
        super().__init__([self.title, self.status, W.HBox([self.run_bar, self.run_label]),
                          W.HBox([self.all_bar, self.all_label]), self.plot, self.table, self.notes_html],
                         layout=W.Layout(width="100%"))
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
                self.runs[rid] = _RunState(rid, seed=event.get("seed"))
                force = True
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
                    if len(rs.t) < 3:   # few live points (a harness without live events): the result's curve
                        rs.t, rs.loss = _result_curve(run, self.lab) or (rs.t, rs.loss)
                        rs.step = max(rs.step, len(rs.t) - 1)
                    err = getattr(run, "error", None) or {}
                    rs.error = f"{err.get('ename', '')}: {str(err.get('evalue', err.get('reason', '')))[:160]}" if err else ""
                else:
                    rs.state = str(event.get("state", "COMPLETE"))
                force = True
            else:
                return
        self.redraw(force=force)

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
            shown = list(self.runs.values())[-self.max_curves:]
            many = len({rs.seed for rs in shown}) < len(shown)    # a loop: seeds repeat across candidates
            series = [((f"{rs.run_id} (seed {rs.seed})" if many else f"seed {rs.seed}") if rs.seed is not None
                       else rs.run_id, list(rs.t), list(rs.loss)) for rs in shown]
        return curves_png(series, budget_s=self.budget_s, title="training loss")

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
            png = self._png()
            with self.hold_sync():
                self.plot.value = png
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
                train = (f"training {t:.1f}s" + (f" / {self.budget_s:g}s" if self.budget_s else "")
                         + f", step {current.step}{last}") if current.t else "starting (data, imports)…"
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

    def _table_html(self, runs: Sequence[_RunState]) -> str:
        rows = [(H.code(r.run_id), H.esc(r.seed), H.badge(r.state), H.fmt(r.metric), str(r.step),
                 H.fmt(r.loss[-1]) if r.loss else "—", H.esc(r.error)) for r in runs]
        return H.table(["run", "seed", "state", self.metric or "metric", "steps", "last loss", "error"], rows)

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
