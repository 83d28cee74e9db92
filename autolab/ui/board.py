"""Leaderboard (refreshable) and Dashboard (the loop's state, threads, runs in flight, candidate tree,
leaderboard; Promote / Reject and the loop's Stop / Pause / Resume / Cancel run)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import threading
from typing import Any

import ipywidgets as W

from ..ledger import SELECTION_BY_RUN, Ledger, owner_alive
from . import _html as H
from .widgetbase import StaticFallback, remember_lab


def _log_of(x: Any):
    """A ResearchLog from a Lab or a ResearchLog."""
    from ..log import ResearchLog

    if isinstance(x, ResearchLog):
        return x
    log = getattr(x, "log", None)
    if isinstance(log, ResearchLog):
        return log
    raise TypeError(f"expected a Lab or a ResearchLog, got {type(x).__name__}")


def _metric(log, lab: Any = None) -> tuple[str, str, str]:
    unit = ""
    task = getattr(lab, "task", None)
    if task is not None:
        return task.metric.name, task.metric.direction, task.metric.unit
    return log.get_meta("metric", "metric"), log.get_meta("direction", "minimize"), unit


def _clock() -> str:
    return _dt.datetime.now().strftime("%H:%M:%S")


class Leaderboard(StaticFallback, W.VBox):
    """``Leaderboard(lab)``: one row per candidate with its final state, ranked by the ledger
    (``Ledger(lab).leaderboard()``: the ledger's best first and marked, then the seed and
    promoted ones, then the rest by mean; rejected candidates last). The mean shown first is
    the ledger's (selection-free runs). The Refresh button (or ``refresh()``) re-reads the log.

    ``progress=True`` adds the lab's metric over experiments with the running best of each
    research line. The board is callable as a run-event handler (``on_event=board``, alone or
    next to a RunMonitor): it refreshes when a run ends."""

    def __init__(self, lab: Any, *, preset: str | None = None, limit: int | None = 20, max_height: str = "24em",
                 show_refresh: bool = True, progress: bool = False):
        self.lab = lab
        remember_lab(lab if hasattr(lab, "task") else None)
        self._log = _log_of(lab)
        self.preset, self.limit, self.max_height = preset, limit, max_height
        self.html = W.HTML()
        self.updated = W.HTML()
        self.progress = bool(progress)
        self.plot = W.Image(value=b"", format="png",
                            layout=W.Layout(max_width="860px", display=None if self.progress else "none"))
        self._refresh_lock = threading.Lock()
        self.refresh_button = W.Button(description="Refresh", icon="refresh", layout=W.Layout(width="auto"))
        self.refresh_button.on_click(lambda _b: self.refresh())
        top = [W.HTML(f'<div style="{H.FONT}"><b>Leaderboard</b></div>')]
        if show_refresh:
            top.append(self.refresh_button)
        super().__init__([W.HBox(top + [self.updated], layout=W.Layout(align_items="center")), self.html, self.plot],
                         layout=W.Layout(width="100%"))
        self.add_class("autolab-leaderboard")
        self.refresh()

    def static_html(self) -> str:
        img = ""
        if self.progress and self.plot.value:
            import base64

            img = (f'<img alt="the lab\'s progress" style="max-width:860px;" '
                   f'src="data:image/png;base64,{base64.b64encode(self.plot.value).decode()}">')
        return f'<div style="{H.FONT}"><b>Leaderboard</b></div>' + self.html.value + img

    def plain_text(self) -> str:
        board = self.dataframe()
        return "Leaderboard (empty)" if board.empty else "Leaderboard\n" + board.head(self.limit or 20).to_string(index=False)

    def dataframe(self):
        return Ledger(self.lab if hasattr(self.lab, "task") else self._log).leaderboard(self.preset)

    def __call__(self, event: dict) -> None:
        """A run event (``on_event=``): refresh when a run ends, from a background thread."""
        if isinstance(event, dict) and event.get("type") == "run_end":
            threading.Thread(target=self._refresh_quietly, name="autolab-leaderboard-refresh", daemon=True).start()

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception as e:  # a view never breaks the run it watches
            self.updated.value = f'<span style="{H.FONT} color:#cf222e; font-size:11px;">refresh failed: {H.esc(e)}</span>'

    def refresh(self) -> None:
        with self._refresh_lock:
            metric, direction, unit = _metric(self._log, self.lab)
            board = self.dataframe()
            arrow = "lower is better" if direction == "minimize" else "higher is better"
            html = (H.leaderboard_table(board, metric, unit=unit, limit=self.limit, max_height=self.max_height)
                    + f'<div style="{H.FONT} color:#6e7781; font-size:11px;">{H.esc(metric)}: {arrow}; '
                    "the first mean is the ledger's (runs on seeds that never selected the candidate)"
                    + (f"; preset {H.esc(self.preset)}" if self.preset else "") + "</div>")
            png = b""
            if self.progress:
                from ._plots import png_bytes, progress_figure

                png = png_bytes(progress_figure(self._log, w=8.0, h=3.4))
            with self.hold_sync():
                self.html.value = html
                if png:
                    self.plot.value = png
                self.updated.value = f'<span style="{H.FONT} color:#6e7781; font-size:11px;">updated {_clock()}</span>'


class Dashboard(StaticFallback, W.VBox):
    """The lab at a glance: the loop's state, research threads, runs in flight, the candidate
    tree and the leaderboard, with Promote / Reject (the selected candidate; Reject needs a
    reason) and the loop's controls.

    ``loop``: the handle of a loop started beside the notebook (``autolab.start_loop``, or
    ``dashboard.attach(handle)`` later): the header shows its state and Stop / Pause / Resume /
    Cancel run act on it at once. Without one, Stop writes the lab's STOP file (what
    ``autolab stop`` does for a loop in a terminal) and the header says whether a loop holds the
    lab. Every "best" shown is the ledger's.

    ``refresh_s`` re-reads the log every so many seconds from a background thread (default 5
    with a loop handle; ``dashboard.stop_auto_refresh()`` or ``close()`` ends it)."""

    def __init__(self, lab: Any, *, refresh_s: float | None = None, loop: Any = None):
        self.lab = lab
        remember_lab(lab)
        self._log = _log_of(lab)
        self.loop = None
        self.header = W.HTML()
        self.threads = W.HTML()
        self.inflight = W.HTML()
        self.tree = W.HTML()
        self.board = Leaderboard(lab, show_refresh=False)
        self.candidate = W.Dropdown(description="Candidate", layout=W.Layout(width="460px"),
                                    style={"description_width": "70px"})
        self.reason = W.Text(placeholder="reason (for Reject)", layout=W.Layout(width="260px"))
        self.promote_button = W.Button(description="Promote", icon="check", button_style="success",
                                       tooltip="lab.promote(candidate): accept it as its thread's new best")
        self.reject_button = W.Button(description="Reject", icon="times", button_style="danger",
                                      tooltip="lab.reject(candidate, reason=...): type the reason first")
        self.stop_button = W.Button(description="Stop loop", icon="stop", button_style="warning",
                                    tooltip="the loop starts nothing new and ends when its runs in flight have ended")
        self.pause_button = W.Button(description="Pause", icon="pause",
                                     tooltip="nothing new starts until Resume; runs in flight go on")
        self.resume_button = W.Button(description="Resume", icon="play", tooltip="the loop goes on")
        self.run_choice = W.Dropdown(description="Run", layout=W.Layout(width="300px"),
                                     style={"description_width": "40px"})
        self.cancel_button = W.Button(description="Cancel run", icon="ban", button_style="danger",
                                      tooltip="kill the chosen run now: recorded KILLED 'cancelled by the user', "
                                              "no verdict on its candidate (re-run by the next loop)")
        self.refresh_button = W.Button(description="Refresh", icon="refresh")
        self.message = W.HTML()
        self.promote_button.on_click(lambda _b: self._act(self.promote))
        self.reject_button.on_click(lambda _b: self._act(self.reject))
        self.stop_button.on_click(lambda _b: self._act(self.stop))
        self.pause_button.on_click(lambda _b: self._act(self.pause))
        self.resume_button.on_click(lambda _b: self._act(self.resume))
        self.cancel_button.on_click(lambda _b: self._act(self.cancel_run))
        self.refresh_button.on_click(lambda _b: self._act(self.refresh))
        controls = W.VBox([
            W.HBox([self.candidate, self.reason]),
            W.HBox([self.promote_button, self.reject_button, self.refresh_button]),
            W.HBox([self.stop_button, self.pause_button, self.resume_button, self.run_choice, self.cancel_button]),
            self.message,
        ])
        super().__init__([self.header, self.threads, self.inflight, self.tree, self.board, controls],
                         layout=W.Layout(border="1px solid #d0d7de", padding="6px 10px", width="100%"))
        self.add_class("autolab-dashboard")
        self._stop_refresh = threading.Event()
        self._refresher: threading.Thread | None = None
        self._lock = threading.RLock()
        if loop is not None:
            self.attach(loop, refresh=False)
        self.refresh()
        if refresh_s is None and loop is not None:
            refresh_s = 5.0
        if refresh_s:
            self.start_auto_refresh(refresh_s)

    def attach(self, loop: Any, *, refresh: bool = True) -> None:
        """Show and steer ``loop`` (a LoopHandle from ``autolab.start_loop``)."""
        self.loop = loop
        add = getattr(loop, "add_done_callback", None)
        if callable(add):
            add(lambda _h: self._quiet_refresh())   # the end of the loop shows at once
        if refresh:
            self.refresh()

    # ------------------------------------------------------------------ views
    def static_html(self) -> str:
        return "".join(w.value for w in (self.header, self.threads, self.inflight, self.tree)) + self.board.static_html()

    def plain_text(self) -> str:
        return f"Dashboard of {getattr(self.lab, 'path', self._log.path.parent)}: loop {self.loop_status()[0]}"

    def stop_requested(self) -> bool:
        flag = getattr(self.lab, "stop_requested", None)
        if callable(flag):
            try:
                return bool(flag())
            except Exception:
                pass
        elif isinstance(flag, bool):
            return flag
        path = getattr(self.lab, "path", None)
        return bool(path is not None and (path / "STOP").exists())

    def loop_status(self) -> tuple[str, str]:
        """(short state, HTML for the header): the handle's state, else what the lab folder says
        (a loop's lock with a live owner, a STOP file), else that no loop runs."""
        colors = {"starting": "#0969da", "running": "#1a7f37", "paused": "#bf8700", "stopping": "#bf8700",
                  "finished": "#57606a", "failed": "#cf222e"}
        h = self.loop
        if h is not None:
            state = h.state
            text = h.describe() if hasattr(h, "describe") else state
            return state, f'<span style="color:{colors.get(state, "#57606a")}; font-weight:600;">{H.esc(text)}</span>'
        path = getattr(self.lab, "path", None)
        owner = None
        if path is not None and (path / "loop.lock").exists():
            try:
                owner = json.loads((path / "loop.lock").read_text())
            except (OSError, ValueError):
                owner = None
        if owner and owner_alive(owner):
            where = f"pid {owner.get('pid')}" + (f" on {owner.get('host')}" if owner.get("host") else "")
            if self.stop_requested():
                return "stopping", f'<span style="color:#bf8700; font-weight:600;">stop requested ({H.esc(where)})</span>'
            if owner.get("pid") == os.getpid():
                return "running", ('<span style="color:#1a7f37; font-weight:600;">running in this kernel</span> '
                                   '<span style="color:#6e7781;">(to steer it here: Dashboard(lab, loop=handle))</span>')
            return "running", (f'<span style="color:#1a7f37; font-weight:600;">running in another process '
                               f'({H.esc(where)})</span>')
        if self.stop_requested():
            return "none", '<span style="color:#bf8700; font-weight:600;">stop requested (no loop holds the lab)</span>'
        return "none", '<span style="color:#57606a;">no loop running</span>'

    def _quiet_refresh(self) -> None:
        try:
            self.refresh()
        except Exception as e:   # from a background thread: shown, never raised
            self._say(f"refresh failed: {H.esc(e)}", "#cf222e")

    def refresh(self) -> None:
        """Re-read the log and redraw every part."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        log = self._log
        metric, direction, unit = _metric(log, self.lab)
        cands = log.candidates_list()
        runs = log.runs_list()
        ideas = {i.id: i for i in log.ideas_list()}
        ledger = Ledger(self.lab if hasattr(self.lab, "task") else log)
        best = ledger.best()
        by_cand = {c.id: c for c in cands}

        task = getattr(getattr(self.lab, "task", None), "name", None) or log.get_meta("task", "?")
        preset = getattr(self.lab, "preset_name", "")
        state, loop_html = self.loop_status()
        path = getattr(self.lab, "path", log.path.parent)
        self.header.value = (f'<div style="{H.FONT}"><b style="font-size:14px;">Lab</b> {H.code(str(path))} &nbsp;'
                             + H.kv([("task", H.esc(task)), ("preset", H.esc(preset or "—")),
                                     ("metric", f"{H.esc(metric)} ({'↓' if direction == 'minimize' else '↑'})"),
                                     ("candidates", str(len(cands))), ("runs", str(len(runs))), ("loop", loop_html),
                                     ("best", (f"{H.code(H.short(best.id, 14))} {H.fmt(ledger.mean(best, runs=runs))}"
                                               if best is not None else "—")),
                                     ("updated", _clock())]) + "</div>")
        steerable = self.loop is not None and state in ("starting", "running", "paused", "stopping")
        self.pause_button.disabled = not (steerable and state != "paused" and state != "stopping")
        self.resume_button.disabled = not (steerable and state == "paused")
        self.stop_button.disabled = self.loop is not None and not steerable
        going = self.loop.runs_in_flight() if steerable else []
        run_opts = [(f"{r.id} · {H.short(r.candidate_id, 14)} · {r.purpose} seed {r.seed}", r.id) for r in going]
        if list(self.run_choice.options) != run_opts:
            keep = self.run_choice.value
            self.run_choice.options = run_opts
            ids = [v for _, v in run_opts]
            self.run_choice.value = keep if keep in ids else (ids[0] if ids else None)
        self.cancel_button.disabled = not run_opts

        # threads: each one's best is the ledger's (promoted, by selection-free mean; else the seed)
        rows = []
        for th, best_c in ledger.best_by_thread().items():
            tc = [c for c in cands if c.thread == th]
            ids = {c.id for c in tc}
            trun = [r for r in runs if r.candidate_id in ids]
            best_id = best_c.id if best_c is not None else None
            bmean = ledger.mean(best_c, runs=runs) if best_c is not None else None
            promoted = [c for c in tc if c.state.value == "PROMOTED"]
            head = promoted[-1].id if promoted else next((c.id for c in tc if c.parent_id is None), None)
            rows.append((f"<b>{H.esc(th)}</b>", str(sum(1 for i in ideas.values() if i.thread == th)), str(len(tc)),
                         str(len(promoted)), str(len(trun)), str(sum(1 for r in trun if r.state.value == "RUNNING")),
                         H.code(H.short(head, 14)) if head else "—",
                         (f"{H.fmt(bmean) if bmean is not None else '—'} {H.code(H.short(best_id, 14))}"
                          if best_id else "—")))
        self.threads.value = H.table(["thread", "ideas", "candidates", "promoted", "runs", "in flight", "head", "best"],
                                     rows, caption="Research threads")

        # runs in flight
        now = _dt.datetime.now(_dt.timezone.utc)
        rows = []
        for r in runs:
            if r.state.value != "RUNNING":
                continue
            try:
                age = f"{(now - _dt.datetime.fromisoformat(r.started_at)).total_seconds():.0f}s"
            except (TypeError, ValueError):
                age = "?"
            if ledger.owner(r) and not owner_alive(ledger.owner(r)):
                age += ' <span style="color:#cf222e;">(its process died: the next loop re-queues it)</span>'
            c = by_cand.get(r.candidate_id)
            rows.append((H.code(r.id), H.code(H.short(r.candidate_id, 14)), H.esc(c.thread if c else ""), H.esc(r.seed),
                         H.esc(r.purpose), H.esc(r.slot or r.executor), age))
        self.inflight.value = H.table(["run", "candidate", "thread", "seed", "purpose", "slot", "age"], rows,
                                      caption="Runs in flight", max_height="12em")

        self.tree.value = candidate_tree_html(cands, ideas, {c.id: _mean_text(ledger, c, runs) for c in cands},
                                              best.id if best is not None else None)
        self.board.refresh()

        # candidate choices, newest first; keep the selection. "best" is the ledger's.
        keep = self.candidate.value
        opts = []
        for c in reversed(cands):
            title = ideas[c.idea_id].title if c.idea_id in ideas else ("seed" if c.parent_id is None else "")
            m = _mean_text(ledger, c, runs)
            label = (f"{c.id} · {title[:40]} · {c.state.value}" + (f" · {m}" if m else "")
                     + (" · best" if best is not None and c.id == best.id else ""))
            opts.append((label, c.id))
        if list(self.candidate.options) != opts:
            self.candidate.options = opts
            ids = [v for _, v in opts]
            self.candidate.value = keep if keep in ids else (ids[0] if ids else None)

    # ------------------------------------------------------------------ actions
    def _say(self, text: str, color: str = "#1a7f37") -> None:
        self.message.value = f'<div style="{H.FONT} color:{color};">{text}</div>'

    def _act(self, fn) -> None:
        try:
            fn()
        except Exception as e:  # shown on the dashboard, never raised into the widget callback
            self._say(f"{H.esc(type(e).__name__)}: {H.esc(e)}", "#cf222e")

    def _lab_method(self, name: str):
        fn = getattr(self.lab, name, None)
        if fn is None:
            self._say(f"<b>lab.{name}</b> is not available in this version of autolab (update autolab); "
                      "nothing was changed.", "#cf222e")
        return fn

    def _selected(self):
        cid = self.candidate.value
        if not cid:
            raise ValueError("no candidate selected")
        c = self._log.get("candidate", cid)
        if c is None:
            raise ValueError(f"candidate {cid} is not in the log")
        return c

    def promote(self) -> Any:
        """Promote the selected candidate (``lab.promote``)."""
        fn = self._lab_method("promote")
        if fn is None:
            return None
        c = self._selected()
        out = fn(c)
        self.refresh()
        self._say(f"promoted {H.code(c.id)}")
        return out

    def reject(self) -> Any:
        """Reject the selected candidate (``lab.reject``) with the reason typed in; without a
        reason nothing happens but a message asking for one."""
        fn = self._lab_method("reject")
        if fn is None:
            return None
        c = self._selected()
        reason = self.reason.value.strip()
        if not reason:
            self._say(f"type why {H.code(c.id)} is rejected in the <b>reason</b> field, then click Reject again; "
                      "nothing was changed.", "#cf222e")
            return None
        out = fn(c, reason=reason)
        self.reason.value = ""
        self.refresh()
        self._say(f"rejected {H.code(c.id)}: {H.esc(reason)}")
        return out

    def stop(self) -> Any:
        """Stop the loop: nothing new starts; it ends when its runs in flight have ended (the
        handle's ``stop()``; without a handle, ``lab.request_stop()``: the STOP file)."""
        if self.loop is not None:
            out = self.loop.stop()
            self.refresh()
            self._say("stop requested: the loop starts nothing new and ends when its runs in flight have ended.",
                      "#bf8700")
            return out
        fn = self._lab_method("request_stop")
        if fn is None:
            return None
        out = fn()
        self.refresh()
        self._say("stop requested (STOP file): a loop on this lab starts nothing new and ends after its runs in "
                  "flight.", "#bf8700")
        return out

    def _need_loop(self, what: str):
        if self.loop is None:
            raise RuntimeError(f"{what} needs a loop started beside the notebook: handle = autolab.start_loop(lab, ...); "
                               "Dashboard(lab, loop=handle)")
        return self.loop

    def pause(self) -> None:
        """Pause the loop: nothing new starts until Resume; runs in flight go on."""
        self._need_loop("Pause").pause()
        self.refresh()
        self._say("paused: nothing new starts until Resume; runs in flight go on.", "#bf8700")

    def resume(self) -> None:
        self._need_loop("Resume").resume()
        self.refresh()
        self._say("resumed.")

    def cancel_run(self) -> str | None:
        """Cancel the run chosen in the Run menu (KILLED "cancelled by the user"; no verdict)."""
        loop = self._need_loop("Cancel run")
        rid = self.run_choice.value
        if not rid:
            raise ValueError("no run in flight to cancel")
        loop.cancel_run(rid)
        self.refresh()
        self._say(f"cancelled {H.code(rid)}: recorded KILLED 'cancelled by the user', not a verdict on its candidate; "
                  "the next loop re-runs it.", "#bf8700")
        return rid

    # ------------------------------------------------------------------ auto refresh
    def start_auto_refresh(self, every_s: float = 5.0) -> None:
        self.stop_auto_refresh()
        self._stop_refresh = threading.Event()
        stop = self._stop_refresh

        def loop() -> None:
            while not stop.wait(every_s):
                self._quiet_refresh()

        self._refresher = threading.Thread(target=loop, name="autolab-dashboard-refresh", daemon=True)
        self._refresher.start()

    def stop_auto_refresh(self) -> None:
        self._stop_refresh.set()
        self._refresher = None

    def close(self) -> None:
        self.stop_auto_refresh()
        super().close()


def _mean_text(ledger: Ledger, c: Any, runs: list) -> str:
    """A candidate's number as the ledger counts it: its selection-free mean, else its screening
    mean (marked so); '' with no complete run (a killed or failed run never shows a number)."""
    m = ledger.mean(c, runs=runs)
    if m is not None:
        return H.fmt(m)
    m = ledger.mean(c, SELECTION_BY_RUN, runs=runs)
    return f"{H.fmt(m)} (screening)" if m is not None else ""


def candidate_tree_html(cands: list, ideas: dict, means: dict, best_id: str | None) -> str:
    """The candidates as a tree, parent → children (oldest first), each with its state, idea
    title and number (``_mean_text``); the ledger's best is starred."""
    ids = {c.id for c in cands}
    children: dict[str | None, list] = {}
    for c in cands:
        children.setdefault(c.parent_id if c.parent_id in ids else None, []).append(c)
    lines: list[str] = []

    def walk(c, depth: int) -> None:
        title = ideas[c.idea_id].title if c.idea_id in ideas else ("seed" if c.parent_id is None else "hand-made")
        m = means.get(c.id)
        star = ' <b style="color:#1a7f37;" title="the ledger\'s best">★ best</b>' if c.id == best_id else ""
        lines.append(f'<div style="padding-left:{18 * depth}px; white-space:nowrap;">'
                     + ("└ " if depth else "") + f"{H.code(H.short(c.id, 14))} {H.badge(c.state)} "
                     + f"{H.esc(title[:60])}" + (f" · {H.esc(c.thread)}" if c.thread else "")
                     + (f" · {H.esc(m)}" if m else "") + star + "</div>")
        for k in children.get(c.id, []):
            walk(k, depth + 1)

    for root in children.get(None, []):
        walk(root, 0)
    body = "".join(lines) or '<div style="color:#6e7781;">no candidates yet</div>'
    return (f'<div style="{H.FONT}"><div style="font-weight:600; margin:6px 0 2px;">Candidate tree</div>'
            f'<div class="autolab-candidate-tree" style="max-height:16em; overflow:auto; font-size:12px;">{body}</div></div>')
