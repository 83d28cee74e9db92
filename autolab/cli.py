"""The ``autolab`` command. Every long command shows progress, accepts ``--json`` for a
machine-readable summary, and exits non-zero with a message that says what to do."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

from .errors import AutolabError

DEFAULT_LAB = "labs/{task}-{preset}"
DEFAULT_ITERATIONS = 8   # `autolab loop`'s total experiments when neither --iterations nor --more is given


def _lab(args, task: str | None = None, preset: str | None = None):
    from .lab import Lab

    if args.lab is None and task is None:
        raise AutolabError("pass --lab DIR (the lab folder to read)")
    path = args.lab or DEFAULT_LAB.format(task=task, preset=preset or "default")
    return Lab(path, task=task, preset=preset)


def _emit(args, obj: dict, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, default=str, indent=None))
    else:
        print(text)


# ---------------------------------------------------------------------------- terminal output

def _num(x, fmt: str = ".4f") -> str:
    """A number for a table ("-" for none or NaN)."""
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) or x != x:
        return "-"
    return format(x, fmt)


def _clip(text, width: int) -> str:
    if text is None or (isinstance(text, float) and text != text):   # None, NaN (a pandas gap)
        text = ""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def format_table(rows: list[list[str]], align: str = "") -> str:
    """Rows (the first is the header) as aligned text columns with a rule under the header;
    ``align`` gives "l" or "r" per column (default left)."""
    if not rows:
        return ""
    n = max(len(r) for r in rows)
    rows = [list(r) + [""] * (n - len(r)) for r in rows]
    widths = [max(len(str(r[i])) for r in rows) for i in range(n)]
    align = (align + "l" * n)[:n]

    def line(r) -> str:
        cells = [str(c).rjust(w) if a == "r" else str(c).ljust(w) for c, w, a in zip(r, widths, align)]
        return "  ".join(cells).rstrip()

    return "\n".join([line(rows[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in rows[1:]])


class TerminalProgress:
    """The terminal's view of runs in flight, fed the same run events as the notebook's
    RunMonitor (``on_event=``: ``run_start``, the curve points the harness logs, the ``phase``
    events of ``autolab._run.tail_events``, ``run_end``, the loop's ``note``). Each run shows its
    phase (queued, start-up/compile, training x of y s, evaluation, saving) and an ETA from the
    lab's past runs of the same preset (their median wall time; before any, the training budget
    left is a lower bound). On a TTY one status line is redrawn in place every second; otherwise
    a plain line is printed at each phase change, every ``every_s`` seconds of training, and when
    a run ends. Safe from any thread; ``close()`` ends the redrawing."""

    RANK = {"queued": 0, "start-up": 1, "training": 2, "evaluation": 3, "saving": 4}

    def __init__(self, lab, *, stream=None, tty: bool | None = None, every_s: float = 15.0, remote: bool = False):
        import threading

        self.lab, self.stream = lab, stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.every_s, self.remote = every_s, remote
        self.metric = lab.task.metric.name
        preset = lab.preset
        self.budget_s = float(preset.budget_s) if preset.budget_s else None
        self.clock = "CPU s" if str(preset.settings.get("clock", "wall")) == "cpu" else "s"
        self.durations = [float(r.timings["papermill_s"]) for r in lab.log.runs_list()
                          if r.ok and r.preset == lab.preset_name and isinstance(r.timings.get("papermill_s"), (int, float))]
        self.runs: dict[str, dict] = {}
        self.done = 0
        self._lock = threading.RLock()
        self._width = 0
        self._drawn = 0.0
        self._stop = threading.Event()
        self._ticker = None
        if self.tty:
            self._ticker = threading.Thread(target=self._tick, name="autolab-terminal-progress", daemon=True)
            self._ticker.start()

    # -- events
    def __call__(self, event: dict) -> None:
        kind, rid = event.get("type"), str(event.get("run_id"))
        with self._lock:
            if kind == "run_start":
                self.runs[rid] = {"seed": event.get("seed"), "cand": event.get("candidate_id"), "purpose": event.get("purpose"),
                                  "t0": time.monotonic(), "phase": "queued", "t": None, "step": None, "loss": None,
                                  "said": 0.0}
                self._say(rid, self._phase_text(self.runs[rid]))
            elif kind == "run_end":
                st = self.runs.pop(rid, None)
                run = event.get("run")
                self.done += 1
                wall = getattr(run, "timings", {}).get("papermill_s") if run is not None else None
                if run is not None and getattr(run, "ok", False) and isinstance(wall, (int, float)):
                    self.durations.append(float(wall))
                self._print(self._end_line(rid, st, run))
            elif kind == "note":
                self._print(f"  {event.get('message', '')}")
            elif rid in self.runs:
                st = self.runs[rid]
                if kind == "phase":
                    self._advance(rid, st, str(event.get("phase")))
                elif kind == "curve":
                    if event.get("ev") in ("clock_stop", "final", "finish"):   # speedrun: the clock stopped
                        self._advance(rid, st, "evaluation")
                    elif isinstance(event.get("t"), (int, float)) and event.get("loss") is not None:
                        st["t"], st["step"], st["loss"] = float(event["t"]), event.get("step"), event.get("loss")
                        if not self._advance(rid, st, "training") and not self.tty \
                                and time.monotonic() - st["said"] >= self.every_s:
                            self._say(rid, self._phase_text(st))
            if time.monotonic() - self._drawn >= 0.25:   # curve points may come many a second
                self._redraw()

    def _advance(self, rid: str, st: dict, phase: str) -> bool:
        """Move the run to a later phase (never back); True if it moved."""
        if self.RANK.get(phase, -1) > self.RANK.get(st["phase"], -1):
            if st["phase"] == "queued" and not self.remote:   # it started now: time it from here, not its queueing
                st["t0"] = time.monotonic()
            st["phase"] = phase
            self._say(rid, self._phase_text(st))
            return True
        return False

    # -- text
    def _eta(self, st: dict) -> str:
        elapsed = time.monotonic() - st["t0"]
        if st["phase"] == "queued":
            return ""
        left_train = (self.budget_s - st["t"]) if st["phase"] == "training" and self.budget_s and st["t"] is not None else None
        if self.durations:
            usual = statistics.median(self.durations)
            rem = max(usual - elapsed, left_train or 0.0)
            return f"ETA {rem:.0f} s" if rem > 0 else f"ETA: past the usual {usual:.0f} s"
        if left_train is not None:
            return f"ETA > {max(left_train, 0):.0f} s (training left; no earlier run to time the rest)"
        return ""

    def _short(self, st: dict) -> str:
        """The run's phase in a few words, for the status line when several runs are in flight."""
        ph = st["phase"]
        if ph == "training" and self.budget_s:
            ph = f"training {st['t'] or 0:.0f}/{self.budget_s:g} {self.clock}"
        elif ph == "queued":
            ph = "waiting"
        eta = self._eta(st)
        return f"{ph}, {time.monotonic() - st['t0']:.0f} s" + (f", {eta.split(' (')[0]}" if eta else "")

    def _phase_text(self, st: dict) -> str:
        ph = st["phase"]
        if ph == "queued":
            text = ("submitted (runs remotely)" if self.remote else
                    "waiting to start (for a free slot, then for papermill)")
        elif ph == "start-up":
            text = "start-up (kernel, data, imports, compile)"
        elif ph == "training":
            t = st["t"] or 0.0
            text = f"training {t:.0f} of {self.budget_s:g} {self.clock}" if self.budget_s else f"training {t:.0f} s"
            if st["step"] is not None:
                text += f", step {st['step']}"
            if isinstance(st["loss"], (int, float)):
                text += f", loss {st['loss']:.4g}"
        elif ph == "evaluation":
            text = "evaluation (training over)"
        else:
            text = "saving (result written; notebook and files)"
        eta = self._eta(st)
        return f"{text}, {time.monotonic() - st['t0']:.0f} s in" + (f", {eta}" if eta else "")

    def _label(self, rid: str, st: dict | None) -> str:
        if not st:
            return f"run {rid}"
        return f"{st['purpose']} {st['cand']} seed {st['seed']} [{rid}]"

    def _end_line(self, rid: str, st: dict | None, run) -> str:
        if run is None:
            return f"{self._label(rid, st)}: ended"
        state = getattr(run.state, "value", str(run.state))
        wall = run.timings.get("papermill_s")
        took = f" in {wall:.0f} s" if isinstance(wall, (int, float)) else ""
        if run.ok:
            return f"{self._label(rid, st)}: {state} {self.metric} = {run.metrics.get(self.metric, float('nan')):.4f}{took}"
        err = run.error or {}
        return f"{self._label(rid, st)}: {state}{took}: {err.get('ename', '')}: {err.get('evalue', err.get('reason', ''))}"

    def _say(self, rid: str, text: str) -> None:
        """A plain line (not on a TTY, where the status line shows it)."""
        if not self.tty:
            st = self.runs.get(rid)
            if st is not None:
                st["said"] = time.monotonic()
            self._print(f"{self._label(rid, st)}: {text}")

    # -- output
    def _print(self, line: str) -> None:
        with self._lock:
            self._clear()
            print(line, file=self.stream, flush=True)
            self._redraw()

    def _clear(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r\x1b[K")
            self._width = 0

    def status_line(self) -> str:
        """The one-line summary of the runs in flight (what the TTY shows)."""
        with self._lock:
            live = list(self.runs.values())
            text = self._phase_text if len(live) == 1 else self._short
            parts = [f"seed {st['seed']}: {text(st)}" for st in live[:3]]
            more = f" +{len(self.runs) - 3} more" if len(self.runs) > 3 else ""
            return f"[{self.done} done, {len(self.runs)} in flight] " + " | ".join(parts) + more

    def _redraw(self) -> None:
        if not self.tty or self._stop.is_set():
            return
        with self._lock:
            if not self.runs:
                self._clear()
                return
            import shutil

            cols = shutil.get_terminal_size((120, 20)).columns
            line = _clip(self.status_line(), max(20, cols - 1))
            self.stream.write("\r\x1b[K" + line)
            self.stream.flush()
            self._width, self._drawn = len(line), time.monotonic()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._redraw()
            except Exception:  # noqa: BLE001 - a closed stream: stop drawing
                return

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._clear()
            if self.tty:
                self.stream.flush()


# ---------------------------------------------------------------------------- commands

def cmd_tasks(args) -> int:
    from .task import discover_tasks, load_task

    out = []
    for name, path in sorted(discover_tasks().items()):
        try:
            t = load_task(path)
            out.append({"name": name, "title": t.title, "metric": f"{t.metric.name} ({t.metric.direction})",
                        "default_preset": t.default_preset,
                        "presets": {p.name: {"device": p.device, "budget_s": p.budget_s} for p in t.presets.values()}})
        except Exception as e:  # noqa: BLE001 - one broken task must not hide the others
            out.append({"name": name, "error": str(e) if isinstance(e, AutolabError) else f"{type(e).__name__}: {e}"})
    lines = []
    for t in out:
        if "error" in t:
            lines.append(f"{t['name']}: INVALID: {t['error']}")
            continue
        lines.append(f"{t['name']}: {t['title']}  [{t['metric']}]")
        for p, d in t["presets"].items():
            mark = " (default)" if p == t["default_preset"] else ""
            lines.append(f"    {p:<14} {d['device']:<5} budget {d['budget_s']:g} s{mark}")
    _emit(args, {"tasks": out}, "\n".join(lines) or "no tasks found (looked in benchmarks/ and $AUTOLAB_BENCHMARKS)")
    return 0 if all("error" not in t for t in out) else 1


def _data_step(task):
    """The task's declared data step (``[data] prepare = "module:function"``) as (function, where),
    or None when it declares none."""
    import importlib

    where = f"{task.path / 'task.toml'}: [data] prepare"
    data = task.raw.get("data", {})
    spec = data.get("prepare") if isinstance(data, dict) else None
    if not spec:
        return None
    mod_name, sep, fn_name = str(spec).partition(":")
    if not sep or not mod_name or not fn_name:
        raise AutolabError(f"{where} = {spec!r}; write it as \"module:function\" (a module importable from the task folder)")
    if str(task.path) not in sys.path:
        sys.path.insert(0, str(task.path))
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except ImportError as e:
        raise AutolabError(f"{where} = {spec!r}: cannot import {mod_name!r} ({e}); fix the module name") from None
    except AttributeError:
        raise AutolabError(f"{where} = {spec!r}: {mod_name!r} has no function {fn_name!r}; fix the name") from None
    return fn, where


def cmd_data(args) -> int:
    from .task import load_task

    task = load_task(args.task)
    step = _data_step(task)
    if step is None:
        raise AutolabError(f"task {task.name!r} declares no data step; add [data] prepare = \"module:function\" "
                           f"to {task.path / 'task.toml'}")
    fn, _where = step
    preset = task.preset(args.preset)
    info = fn({**preset.settings, "device": preset.device, "budget_s": preset.budget_s}, source=args.source,
              progress=not args.json)
    _emit(args, {"task": task.name, "preset": preset.name, **(info or {})},
          "\n".join(f"{k}: {v}" for k, v in (info or {}).items()))
    return 0


def _lab_preset(path) -> str | None:
    """The preset an existing lab folder was created for (None for a new or unreadable one: the
    Lab itself then reports what is wrong)."""
    try:
        return json.loads((Path(path) / "lab.json").read_text()).get("preset")
    except (OSError, ValueError, AttributeError):
        return None


def check_data(args) -> None:
    """Bad set-up fails before any run starts: the task's data step (the same as `autolab data`,
    with the preset's configured ``source``, else $AUTOLAB_DATA, else the default corpus) must
    succeed, else the whole message (the file, the setting, the fix) is raised. Done before the
    lab folder is made; skipped for remote executors (their workers hold their own data)."""
    if getattr(args, "executor", "local") != "local":
        return
    from .task import load_task

    task = load_task(args.task)
    lab_path = args.lab or DEFAULT_LAB.format(task=args.task, preset=args.preset or "default")
    data_ready(task, task.preset(args.preset or _lab_preset(lab_path) or task.default_preset), quiet=args.json)


def data_ready(task, preset, *, quiet: bool = False) -> None:
    """Run the task's data step for ``preset`` (nothing when it declares none); an AutolabError with
    the whole message when the data is not ready."""
    step = _data_step(task)
    if step is None:
        return
    fn, where = step
    try:
        fn({**preset.settings, "device": preset.device, "budget_s": preset.budget_s},
           source=preset.settings.get("source"), progress=not quiet)
    except AutolabError as e:
        raise AutolabError(f"the data of task {task.name!r} (preset {preset.name}) is not ready, so no run was "
                           f"started: {e}") from None
    except Exception as e:  # noqa: BLE001 - a broken data step must stop the command, with its name
        raise AutolabError(f"the data step {where} failed for preset {preset.name}, so no run was started: "
                           f"{type(e).__name__}: {e}; fix it and check with `autolab data {task.name} --preset "
                           f"{preset.name}`") from None


def cmd_run(args) -> int:
    from .records import Purpose
    from ._run import run

    check_data(args)
    lab = _lab(args, args.task, args.preset)
    if not args.candidate:
        cand = lab.seed_candidate()
    elif args.candidate.startswith("c-") and not os.path.exists(args.candidate):
        cand = lab.candidate(args.candidate)          # an id from `autolab log`
    else:
        cand = lab.candidate_from_dir(args.candidate)
    executor = args.executor
    if executor == "ray":
        from .executors import get_executor

        executor = get_executor("ray", address=args.ray_address)
    progress = None if args.json else TerminalProgress(lab, remote=args.executor != "local")
    try:
        runs = run(lab, cand, seeds=args.seeds, purpose=Purpose.MANUAL, executor=executor, on_event=progress,
                   full=args.full)
    finally:
        if progress is not None:
            progress.close()
    name = lab.task.metric.name
    vals = [r.metrics[name] for r in runs if r.ok]
    obj = {"lab": str(lab.path), "candidate": cand.id, "runs": [
        {"id": r.id, "seed": r.seed, "state": r.state.value, name: r.metrics.get(name), "notebook": str(lab.file(r.notebook)),
         "error": r.error} for r in runs],
        "mean": sum(vals) / len(vals) if vals else None}
    text = [f"lab {lab.path}, candidate {cand.id}"]
    for r in runs:
        text.append(f"  seed {r.seed}: {r.state.value}" + (f"  {name} = {r.metrics[name]:.4f}" if r.ok else
                    f"  {r.error.get('ename') if r.error else ''}: {(r.error or {}).get('evalue', '')}")
                    + f"\n    notebook: {lab.file(r.notebook)}")
    if vals:
        text.append(f"mean {name}: {obj['mean']:.4f} over {len(vals)} runs")
    _emit(args, obj, "\n".join(text))
    return 0 if len(vals) == len(runs) else 1


def _open_lab_candidate(args):
    """(lab, candidate) from the positional LAB and CANDIDATE, with errors that say what to do."""
    from .lab import Lab

    lab = Lab(args.lab)
    cid = args.candidate
    if not re.fullmatch(r"c-[0-9a-f]+", cid or ""):
        raise AutolabError(f"{cid!r} is not a candidate id (they look like c-1a2b3c4d5e6f); the ids of lab {lab.path} "
                           f"are listed by `autolab log --lab {lab.path}`")
    c = lab.log.get("candidate", cid)
    if c is None:
        raise AutolabError(f"no candidate {cid!r} in lab {lab.path}; the ids are listed by `autolab log --lab {lab.path}`")
    return lab, c


def cmd_audit(args) -> int:
    from ._audit import audit
    from .ledger import SELECTION_BY_RUN, SELECTION_FREE

    lab, c = _open_lab_candidate(args)
    ledger = lab.ledger
    if c.id == lab.seed_candidate().id or not c.parent_id:
        what = "the lab's seed" if c.id == lab.seed_candidate().id else "a root candidate (an ablation's variant)"
        raise AutolabError(f"{c.id} is {what}: it has no parent to be audited against; audit a candidate that "
                           "descends from the seed")
    stage = args.stage
    if stage == "auto":   # the loop's order: screened first, confirmed once it has selection-free runs
        stage = "confirm" if ledger.runs_of(c, purposes=SELECTION_FREE) else "screen"
    have = ledger.runs_of(c, purposes=SELECTION_BY_RUN if stage == "screen" else SELECTION_FREE)
    if not have:
        kind = "screening or manual" if stage == "screen" else "confirmation"
        raise AutolabError(f"candidate {c.id} has no complete {kind} run on preset {lab.preset_name}, so there is "
                           f"nothing to judge; run it first (`autolab run {lab.task.name} --lab {lab.path} --candidate "
                           f"{c.id}`, then --stage screen; or let `autolab loop` screen and confirm it)")
    # the loop's settings: the screening margin is one noise sd; a confirmation is final once its cap is reached
    margin = (ledger.noise()["screen_sd"] or 0.0) if stage == "screen" else 0.0
    final = stage == "screen" or ledger.seeds_run(c, "confirm") >= max(lab.task.seeds.confirmation,
                                                                       lab.task.significance.min_seeds)
    # as in the loop, a verdict decides an undecided (READY) candidate; one already PROMOTED or REJECTED is
    # re-checked and keeps its state (no second insight, no flip of a decision made with the evidence of its time)
    decide = c.state.value == "READY"
    v = audit(lab, c, stage=stage, screen_margin=margin, final=final, decide=decide)
    name = lab.task.metric.name
    checks = v.checks
    width = max([len(ch["name"]) for ch in checks] + [5])
    ci = (v.meta or {}).get("ci") or [None, None]
    gain = v.effect
    if gain is None and v.candidate_mean is not None and v.parent_mean is not None:
        gain = lab.task.metric.gain(v.candidate_mean, v.parent_mean)
    lines = [f"audit of {c.id} ({_title(lab, c)}) against its parent {v.parent_id}, stage {stage}, preset {v.preset}:",
             f"verdict: {v.state.value}: {v.reason}",
             f"  {name}: candidate {_num(v.candidate_mean)} (n={v.n_candidate}), parent {_num(v.parent_mean)} "
             f"(n={v.n_parent}), gain {_num(gain, '+.4f')}"
             + (f", 95% interval [{_num(ci[0], '+.4f')}, {_num(ci[1], '+.4f')}]" if ci[0] is not None else "")
             + (f", p {v.p_value:.3g}" if v.p_value is not None else "")
             + f" ({(v.meta or {}).get('design', '')})",
             f"checks ({sum(ch['passed'] for ch in checks)}/{len(checks)} passed):"]
    for ch in checks:
        mark = "pass" if ch["passed"] else ("FAIL" if ch.get("severity", "reject") == "reject" else "warn")
        lines.append(f"  {mark:<4}  {ch['name']:<{width}}  {ch.get('detail', '')}")
    if not decide:
        lines.append(f"(the candidate was already {c.state.value}: the verdict is recorded, its state is unchanged)")
    _emit(args, {"lab": str(lab.path), "stage": stage, "decided": decide, **v.to_dict()}, "\n".join(lines))
    return 1 if v.state.value == "REJECTED" else 0


def cmd_ablate(args) -> int:
    from .ablation import MEASURED, NO_RUNS, ablate, changes

    lab, c = _open_lab_candidate(args)
    if args.executor == "local":
        data_ready(lab.task, lab.preset, quiet=args.json)
    if not args.json:
        chs = changes(lab, c) if c.id != lab.seed_candidate().id else []
        n = args.seeds or lab.task.seeds.final
        print(f"ablation of {c.id} ({_title(lab, c)}): {len(chs)} changes relative to the seed, each removed alone "
              f"and run with the full candidate on {n} fresh seeds of the final range", flush=True)
    executor = args.executor
    if executor == "ray":
        from .executors import get_executor

        executor = get_executor("ray", address=args.ray_address)
    progress = None if args.json else TerminalProgress(lab)
    try:
        rows = ablate(lab, c, seeds=args.seeds, executor=executor, on_event=progress)
    finally:
        if progress is not None:
            progress.close()
    name, direction = lab.task.metric.name, lab.task.metric.direction
    table = [["#", "change", "status", "n", "full", "without", "contribution", "95% interval", "p", "verdict"]]
    for r in rows:
        m = r.status == MEASURED
        table.append([str(r.change), _clip(r.title, 40), r.status, str(len(r.seeds)) if r.seeds else "",
                      _num(sum(r.full) / len(r.full)) if r.full else "", _num(sum(r.without) / len(r.without)) if r.without else "",
                      _num(r.effect, "+.4f") if m else "", f"[{_num(r.ci_low, '+.4f')}, {_num(r.ci_high, '+.4f')}]" if m else "",
                      f"{r.p_value:.3g}" if m and r.p_value is not None else "", r.verdict if m else ""])
    text = [f"ablation {rows[0].ablation_id if rows else ''} of {c.id} on {lab.preset_name} ({name}, {direction}; "
            "contribution = the full candidate's paired gain over the candidate without the change, positive = it helps):",
            format_table(table, align="rllrrrrrrl")]
    text += [f"  #{r.change}: {r.detail}" for r in rows if r.status != MEASURED and r.detail]
    text.append(f"recorded in {lab.log.path} (events 'ablation'); read it back with autolab.ablation.ablation_table(lab)")
    _emit(args, {"lab": str(lab.path), "candidate_id": c.id, "rows": [{**r.__dict__, "verdict": r.verdict} for r in rows]}, "\n".join(text))
    return 1 if any(r.status == NO_RUNS for r in rows) else 0


# ---------------------------------------------------------------------------- loop: LLM settings, exit codes

# `autolab loop` exit codes, one per LoopSummary.reason (autolab._loop.STOP_REASONS). Errors
# raised before the loop starts (bad arguments, a broken lab) also exit with ERROR.
EXIT_CODES = {
    "goal": 0,           # the lab holds --iterations ideas, each tried (the only success)
    "error": 2,          # an error stopped it: LLM server unreachable or refusing, a bad setting...
    "cap": 3,            # --max-llm-calls or --max-cost reached
    "time_limit": 4,     # --max-time / --deadline: the next run would likely end past the limit
    "exhausted": 5,      # the proposer has nothing left to try before --iterations
    "interrupted": 130,  # Ctrl-C or `autolab stop`
}

LOOP_EPILOG = """\
exit codes:
  0    goal reached: the lab holds --iterations ideas (failed and abandoned ones are counted in the summary);
       also when there was nothing to do (the message says so: --iterations is a total, --more N adds N)
  2    error: e.g. the LLM server unreachable or refusing (see the message), a bad option or lab
  3    an LLM cap was reached (--max-llm-calls, --max-cost); raise it and run the same command to resume
  4    --max-time / --deadline: the next run would likely have ended past the limit (judged from the
       lab's measured run durations), or the limit passed; run the loop again to resume (with --hard-limit,
       runs killed at the limit are recorded KILLED "time limit" and re-run then)
  5    the proposer had nothing left to try before --iterations
  130  interrupted (Ctrl-C or `autolab stop`); run the same command to resume

LLM settings (with --proposer llm:<litellm model>): any litellm model string works, e.g.
  openai/<name> with --api-base http://127.0.0.1:8000/v1 (or OPENAI_API_BASE) for a local
  OpenAI-compatible server (vLLM, llama.cpp, LM Studio), ollama_chat/<name> with
  --api-base http://127.0.0.1:11434 for Ollama. Models litellm cannot price cost $0 unless
  --input-cost-per-mtok / --output-cost-per-mtok are given.
"""

# CLI option -> LLMConfig field
_LLM_OPTIONS = {"api_base": "--api-base", "max_cost": "--max-cost", "max_llm_calls": "--max-llm-calls",
                "fallbacks": "--fallbacks", "timeout_s": "--llm-timeout", "max_retries": "--llm-retries",
                "deadline_s": "--llm-deadline", "temperature": "--temperature", "max_tokens": "--max-tokens",
                "extra": "--llm-param", "input_cost_per_mtok": "--input-cost-per-mtok",
                "output_cost_per_mtok": "--output-cost-per-mtok"}


def _llm_param(text: str) -> tuple[str, object]:
    """argparse type for --llm-param KEY=VALUE: the value is JSON when it parses (numbers, true,
    objects...), else the string as written."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE; write e.g. --llm-param top_p=0.9")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _llm_kwargs(args) -> dict:
    kw = {}
    for k in _LLM_OPTIONS:
        v = getattr(args, k, None)
        if v is None or v == []:
            continue
        if k == "fallbacks":
            v = [m.strip() for item in v for m in item.split(",") if m.strip()]
        elif k == "extra":
            v = dict(v)
        kw[k] = v
    return kw


def _warn(msg: str) -> None:
    print(f"autolab: warning: {msg}", file=sys.stderr, flush=True)


def cmd_loop(args) -> int:
    from . import registry
    from ._propose import get_proposer
    from ._loop import loop

    llm_opts = {flag: k for k, flag in _LLM_OPTIONS.items() if getattr(args, k, None) not in (None, [])}
    name = args.proposer.partition(":")[0]
    unused = [f for f, k in llm_opts.items() if k not in registry.accepted_options(registry.get("proposer", name), {k: 1})]
    if unused:   # checked before the lab folder is made
        raise AutolabError(f"{', '.join(unused)} only apply to an LLM proposer; add --proposer llm:<model> "
                           f"or leave {'them' if len(unused) > 1 else 'it'} out")
    check_data(args)
    lab = _lab(args, args.task, args.preset)
    if args.keep_models is not None:   # saved in lab.json: later runs and `autolab gc` follow it too
        lab.keep_models = args.keep_models
    # the same lookup as Python's autolab.loop(proposer="...") (autolab.registry, kind "proposer")
    proposer = get_proposer(args.proposer, seed=args.proposer_seed, log=lab.log, **_llm_kwargs(args))
    implementer = resolver = None
    llm = getattr(proposer, "llm", None)
    if llm is not None:
        # one gateway for proposals, edits and merge conflicts: its caps count every call
        from .llm_implement import LLMImplementer

        if args.max_cost is not None:
            unpriced = llm.unpriced_models()
            if unpriced:
                msg = (f"--max-cost {args.max_cost:g} cannot hold for {', '.join(unpriced)}: litellm has no price for "
                       f"{'them' if len(unpriced) > 1 else 'it'}, so every call is recorded at $0; give "
                       "--input-cost-per-mtok and --output-cost-per-mtok (USD per million tokens), or cap the calls "
                       "with --max-llm-calls")
                _warn(msg)
                lab.log.event("warning", message=msg)
        implementer, resolver = LLMImplementer(llm), llm
    executor = args.executor
    if executor == "ray":
        from .executors import get_executor

        executor = get_executor("ray", address=args.ray_address)
    iterations = DEFAULT_ITERATIONS if args.iterations is None else args.iterations
    progress = None if args.json else TerminalProgress(lab, remote=args.executor != "local")
    try:
        s = loop(lab, iterations, threads=args.threads, proposer=proposer, implementer=implementer,
                 executor=executor, progress=False, on_event=progress, proposer_seed=args.proposer_seed,
                 merge_llm=resolver, more=args.more, max_time_s=args.max_time, deadline=args.deadline,
                 hard_limit=args.hard_limit, ablate=args.ablate)
    finally:
        if progress is not None:
            progress.close()
    code = EXIT_CODES.get(s.reason, EXIT_CODES["error"])
    text = (f"lab {s.lab}: {s.experiments} experiments ({s.ideas_failed} failed, {s.ideas_rejected} rejected as "
            f"duplicates, {s.ideas_abandoned} abandoned, {s.ideas_pending} not implemented yet), {s.runs} runs "
            f"({s.failed} failed, {s.killed} killed), {s.promoted} promoted, {s.decisions} decided at "
            f"{s.runs_per_decision if s.runs_per_decision is not None else '-'} runs per decision; LLM: {s.llm_calls} calls, ${s.llm_cost:.4f}\n"
            f"baseline {_num(s.baseline)}  best {_num(s.best)} ({s.best_id})  [{s.reason}: {s.stopped}]  exit code {code}")
    _emit(args, {**s.to_dict(), "exit_code": code}, text)
    if code == EXIT_CODES["error"]:
        print(f"autolab: error: {s.stopped}", file=sys.stderr)
    return code


def _llm_usage_rows(usage: list[dict]) -> list[list[str]]:
    rows = [["model", "calls", "ok", "failed", "interrupted", "tokens in", "tokens out", "cost $", "p50 s", "p95 s"]]
    for u in usage:
        rows.append([u["model"], str(u["calls"]), str(u["ok"]), str(u["failed"]),
                     str(u["interrupted"] + u["in_flight"]), str(u["prompt_tokens"]), str(u["completion_tokens"]),
                     f"{u['cost']:.4f}", _num(u["latency_p50_s"], ".2f"), _num(u["latency_p95_s"], ".2f")])
    return rows


def log_summary(lab) -> dict:
    """What `autolab log` says about a lab besides its tables: the best (overall and per research
    line, from the ledger) against the seed, the noise figures, decisions and runs per decision,
    the runs by state and LLM totals."""
    from ._loop import summarize

    ledger = lab.ledger
    seed, best = ledger.seed(), ledger.best()
    s = summarize(lab, 0.0, None, "")
    runs = lab.log.runs_list()
    states: dict[str, int] = {}
    for r in runs:
        states[r.state.value] = states.get(r.state.value, 0) + 1
    lines = {th: c.id for th, c in ledger.best_by_thread().items() if c is not None}
    hardware = {"compared_on": ledger.hardware, "runs": ledger.hardware_counts(runs), "assumptions": ledger.assumptions()}
    return {"hardware": hardware, "best": best.id, "best_title": _title(lab, best), "best_mean": ledger.mean(best),
            "best_n": len(ledger.values(best)), "seed": seed.id, "seed_mean": ledger.mean(seed),
            "seed_n": len(ledger.values(seed)), "best_by_line": lines, "noise": ledger.noise(),
            "decisions": s.decisions, "promoted": s.promoted, "runs_per_decision": s.runs_per_decision,
            "confirm_runs_per_decision": s.confirm_runs_per_decision, "pairing_runs": s.pairing_runs,
            "experiments": s.experiments, "runs": len(runs), "runs_by_state": states, "llm": lab.log.llm_totals()}


def _log_text(lab, summary: dict, board, runs, usage: list[dict], ablations, last: int) -> str:
    name, direction = lab.task.metric.name, lab.task.metric.direction
    out = [f"lab {lab.path}: task {lab.task.name}, preset {lab.preset_name}, metric {name} ({direction})"]
    bm, sm = summary["best_mean"], summary["seed_mean"]
    gain = lab.task.metric.gain(bm, sm) if bm is not None and sm is not None else None
    state = lab.candidate(summary["best"]).state.value
    if summary["best"] == summary["seed"]:
        out.append(f"best: {summary['seed']} seed ({state}), {name} {_num(sm)} over {summary['seed_n']} selection-free "
                   "seeds (the seed: no promoted candidate beats it)")
    else:
        out.append(f"best: {summary['best']} {summary['best_title']} ({state}), {name} {_num(bm)} over "
                   f"{summary['best_n']} selection-free seeds; the seed {_num(sm)} (n={summary['seed_n']}); "
                   f"gain {_num(gain, '+.4f')}")
    hw = summary["hardware"]
    if len(hw["runs"]) > 1 or hw["assumptions"]:
        on = f"; figures compare runs on {hw['compared_on']} only (the latest runs')" if hw["compared_on"] else ""
        out.append(f"hardware: runs on {', '.join(f'{h} ({n})' for h, n in hw['runs'].items())}{on}; "
                   f"{len(hw['assumptions'])} assumption(s) recorded (autolab hardware --lab {shlex.quote(str(lab.path))})")
    if len(summary["best_by_line"]) > 1:
        out.append("best per research line: " + ", ".join(f"{th} {cid}" for th, cid in sorted(summary["best_by_line"].items())))
    nz = summary["noise"]
    out.append(f"noise: cross-seed sd {_num(nz['cross_seed_sd'])}, paired sd {_num(nz['paired_sd'])}, same-seed repeat "
               f"sd {_num(nz['repeat_sd'])} (a candidate-minus-parent difference: sd {_num(nz['diff_sd'])}, "
               f"{nz['diff_source'] or 'no estimate yet'})")
    by = ", ".join(f"{v} {k.lower()}" for k, v in sorted(summary["runs_by_state"].items()))
    rpd = summary["runs_per_decision"]
    out.append(f"experiments {summary['experiments']}; runs {summary['runs']} ({by or 'none'}); {summary['decisions']} "
               f"decided ({summary['promoted']} promoted) at {_num(rpd, '.2f') if rpd is not None else '-'} runs per "
               f"decision, plus {summary['pairing_runs']} parents' runs for pairing")
    llm = summary["llm"]
    if llm["calls"]:
        out.append(f"LLM: {llm['calls']} calls ({llm['failed']} failed), {llm['prompt_tokens']} tokens in / "
                   f"{llm['completion_tokens']} out, ${llm['cost']:.4f}")

    sf, key = f"metrics.{name}_selection_free", f"metrics.{name}"
    rows = [["", "candidate", "state", "line", f"{name} sel.-free", "all runs (n)", "parent", "title"]]
    for _, r in board.iterrows():
        n = r.get("n")
        allm = f"{_num(r.get(key))} ({int(n)})" if n == n and n is not None else "-"
        rows.append(["*" if r.get("best") else "", r["candidate_id"], r["state"], _clip(r.get("tags.thread"), 16),
                     _num(r.get(sf)), allm, _clip(r.get("tags.parent_id"), 16) or "-", _clip(r.get("title"), 48)])
    out += ["", f"candidates with complete runs on {lab.preset_name} (* the best; best first, then the kept ones, "
                "then the rest; sel.-free: confirmation seeds only):",
            format_table(rows, "llllrrll") if len(rows) > 1 else "  (none yet)"]
    shown = runs[-last:] if last else runs
    rows = [["run", "candidate", "purpose", "seed", "state", name, "wall s", "hardware", "error"]]
    ledger = lab.ledger
    for r in shown:
        err = r.error or {}
        rows.append([r.id, r.candidate_id, r.purpose, str(r.seed), r.state.value,
                     _num(r.metrics.get(name)) if r.ok else "-", _num(r.timings.get("papermill_s"), ".0f"),
                     _clip(ledger.hardware_of(r), 28),
                     _clip(f"{err.get('ename', '')}: {err.get('evalue', err.get('reason', ''))}" if err else "", 60)])
    out += ["", f"runs ({'the last ' + str(len(shown)) + ' of ' if len(shown) < len(runs) else ''}{len(runs)}; "
                "--last N shows more, --json all):", format_table(rows, "llllllrll") if len(rows) > 1 else "  (none yet)"]
    if ablations is not None and not ablations.empty:
        rows = [["candidate", "#", "change", "status", "n", "contribution", "95% interval", "p", "verdict"]]
        for _, a in ablations.iterrows():
            m = a["status"] == "measured"
            rows.append([a["candidate_id"], str(a["change"]), _clip(a["title"], 40), a["status"], str(a["n"]),
                         _num(a["effect"], "+.4f") if m else "", f"[{_num(a['ci_low'], '+.4f')}, {_num(a['ci_high'], '+.4f')}]"
                         if m else "", _num(a["p_value"], ".3g") if m else "", a["verdict"] if m else ""])
        out += ["", "ablations (each change removed alone, on fresh seeds; contribution > 0: the change helps):",
                format_table(rows, "lrllrrrrl")]
    if usage:
        out += ["", "LLM usage per model:", format_table(_llm_usage_rows(usage), "lrrrrrrrrr")]
    return "\n".join(out)


def cmd_log(args) -> int:
    from .ablation import ablation_table
    from .lab import Lab

    lab = Lab(args.lab)
    if len(lab.ledger.hardware_counts()) > 1:   # runs of several hardware: the figures compare the latest one's
        lab.hardware = lab.ledger.latest_hardware()
    ledger = lab.ledger
    board, lineage = ledger.leaderboard(preset=lab.preset_name), lab.log.lineage()
    if args.export:
        files = lab.log.export(args.export, args.format)
        print(f"exported {len(files)} tables to {args.export}", file=sys.stderr)
    summary = log_summary(lab)
    best, seed = ledger.best(), lab.seed_candidate()
    best_obj = {"candidate_id": best.id, "title": _title(lab, best), "state": best.state.value,
                "selection_free_mean": ledger.mean(best), "seed_id": seed.id, "seed_mean": ledger.mean(seed)}
    ablations = ablation_table(lab)
    usage = lab.log.llm_usage()
    obj = {"lab": str(lab.path), "best": best_obj, "summary": summary,
           "leaderboard": json.loads(board.to_json(orient="records")),
           "lineage": json.loads(lineage.to_json(orient="records")), "llm": lab.log.llm_totals(),
           "llm_usage": usage, "ablations": json.loads(ablations.to_json(orient="records"))}
    if args.json:
        _emit(args, obj, "")
        return 0
    _emit(args, obj, _log_text(lab, summary, board, lab.log.runs_list(), usage, ablations, args.last))
    return 0


def cmd_report(args) -> int:
    from .report import build_report

    out = build_report(args.lab, args.output)
    _emit(args, {"report": str(out)}, f"report written to {out}")
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cmd_gc(args) -> int:
    from .lab import Lab

    lab = Lab(args.lab)
    if args.keep_models is not None and not args.dry_run:
        lab.keep_models = args.keep_models
    rec = lab.reclaim(args.keep_models, dry_run=args.dry_run)
    verb = "would free" if rec.dry_run else "freed"
    lines = [f"  {_mb(f.bytes):>10}  {f.path}  ({f.why})" for f in rec.freed]
    lines.append(f"{verb} {_mb(rec.bytes)} in {len(rec.freed)} files or folders of {lab.path}")
    if rec.kept:
        lines.append(f"model files kept (keep_models = {rec.keep_models}):")
        lines += [f"  {_mb(b):>10}  run {r}: {why}" for r, why, b in rec.kept]
    for cid, why, cmd in rec.missing:
        lines.append(f"candidate {cid} ({why}) has no model file left: its runs' models were reclaimed before it was "
                     f"kept; to get one, run it again on a seed: {cmd}")
    lines.append(f"the lab now holds {_mb(_folder_bytes(lab.path))}" if not rec.dry_run else
                 "nothing was removed (--dry-run); run again without it to free the space")
    _emit(args, {"lab": str(lab.path), **rec.to_dict(), "lab_bytes": _folder_bytes(lab.path)}, "\n".join(lines))
    return 0


def _folder_bytes(path) -> int:
    import os

    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def cmd_stop(args) -> int:
    from .lab import Lab

    p = Lab(args.lab).request_stop()
    _emit(args, {"stop": str(p)}, f"stop requested ({p}); the loop finishes its in-flight runs and exits")
    return 0


# `autolab demo`'s defaults. Issue 18's check: best < seed with p < 0.05 within 15 minutes, one core
# busy beside it. Measured under that condition (the 17.1-min run of benchmarks/RESULTS.md,
# 2026-12-08): the seed's 3 runs 124 s, a run 73 s two at a time, the final comparison's 6 runs
# 223 s; the winner's steps each waited ~70 s for a slot (promoted at 707 s). Estimated, with a run
# chosen as each slot frees: promoted near 500 s. The 14-minute box ends the search in time to leave
# the final comparison its expected time. Which ideas come first depends on the playbook and on
# the user's knowledge store (~/.autolab): not measured under the check since.
DEMO_ITERATIONS = 8
DEMO_MAX_TIME_S = 14 * 60


def demo_search_s(max_time_s: float | None, elapsed_s: float) -> float | None:
    """The search's share of the demo's time box once ``elapsed_s`` are spent (the baseline):
    what is left, never below 0 (the loop then starts nothing and says so); the final
    comparison's expected time is kept free inside the loop (``loop(reserve=...)``), judged again
    at each look as runs are measured. None: no time box."""
    return None if max_time_s is None else float(max(0, round(max_time_s - elapsed_s)))


def cmd_demo(args) -> int:
    """The offline loop on nanochat cpu-tiny, end to end, then best vs seed on fresh seeds,
    within a time box for the whole of it (``--max-time``, DEMO_MAX_TIME_S)."""
    import shutil

    from .executors import get_executor
    from .lab import Lab
    from ._loop import ensure_baseline, final_comparison, final_comparison_s, loop, run_lanes

    check_data(args)
    lab_path = Path(args.lab)
    if args.fresh and lab_path.exists():
        shutil.rmtree(lab_path)
    t0 = time.monotonic()
    lab = Lab(lab_path, task=args.task, preset=args.preset)
    box = args.max_time
    if not args.json:
        print(f"autolab demo: offline research loop on {lab.task.name}/{lab.preset_name} in {lab.path}\n"
              f"  the seed on {lab.task.seeds.confirmation} seeds, then up to {args.iterations} playbook experiments "
              "(1 screening seed each), promising ones confirmed seed by seed, then the best against the seed on "
              f"{lab.task.seeds.final} seeds never used for selection"
              + (f"; all within {box / 60:g} min (--max-time): the search starts no run that would leave too little "
                 "time for the final comparison" if box is not None else ""), flush=True)
    progress = None if args.json else TerminalProgress(lab)
    ex = get_executor("local")
    slots, lanes = run_lanes(lab, ex)

    def reserve() -> float:
        return final_comparison_s(lab, lanes or slots)[0]

    try:
        # the seed's baseline first, outside the box's judgement: the search needs it whatever the
        # box, and its runs are the first measure of how long a run (and the final comparison) takes here
        lab.compare_here()   # a demo lab resumed on another machine compares within this one's hardware
        ensure_baseline(lab, ex, on_event=progress)
        search_s = demo_search_s(box, time.monotonic() - t0)
        # as many workers as slots (spare_worker=False): playbook proposals take no time, and each
        # step of a confirmation then starts as a slot frees instead of a run's length later
        s = loop(lab, args.iterations, proposer="playbook", proposer_seed=args.proposer_seed, progress=False,
                 on_event=progress, ablate=args.ablate, executor=ex, max_time_s=search_s,
                 reserve=reserve if box is not None else None, spare_worker=False)
        t_search = time.monotonic()
        best = lab.ledger.best()
        kept_s, kept_how = final_comparison_s(lab, lanes or slots, candidate=best.id != lab.seed_candidate().id)
        fc = final_comparison(lab, best, progress=False, on_event=progress, executor=ex)
    finally:
        ex.shutdown()
        if progress is not None:
            progress.close()
    name = lab.task.metric.name
    wall = time.monotonic() - t0
    if s.reason == "time_limit":
        why = "the time box (--max-time): " + s.stopped
    elif s.reason == "goal":
        why = f"--iterations: the lab holds {s.experiments} experiments"
    else:
        why = s.stopped
    obj = {
        f"baseline_{name}": fc["seed_mean"], f"best_{name}": fc["candidate_mean"], "p_value": fc["p_value"],
        "effect": fc["effect"], "effect_ci95": fc["ci"], "test": fc["test"], "best_candidate": best.id,
        "best_title": _title(lab, best), "experiments": s.experiments, "runs": len(lab.log.runs_list()),
        "failed": s.failed, "killed": s.killed, "promoted": s.promoted, "lab": str(lab.path),
        "wall_s": round(wall, 1), "seed_final": fc["seed_final"], "best_final": fc["candidate_final"],
        "decisions": s.decisions, "runs_per_decision": s.runs_per_decision,
        "max_time_s": box, "search_stopped": s.reason, "search_stop": why,
        "search_wall_s": round(t_search - t0, 1), "final_wall_s": round(wall - (t_search - t0), 1),
        "final_expected_s": round(kept_s, 1), "final_expected": kept_how,
    }
    p = fc["p_value"]
    nothing = best.id == lab.seed_candidate().id
    text = "\n".join([
        "", "--- autolab demo summary ---",
        f"experiments: {s.experiments}  runs: {obj['runs']}  failed: {s.failed}  killed: {s.killed}  promoted: {s.promoted}",
        f"search stopped by {why}",
        f"best: {best.id}  {obj['best_title']}",
        f"baseline {name} (seed, fresh seeds): {fc['seed_mean']:.4f}  {fc['seed_final']}" if fc["seed_mean"] else "",
        f"best {name} (fresh seeds):           {fc['candidate_mean']:.4f}  {fc['candidate_final']}" if fc["candidate_mean"] else "",
        f"one-sided {'paired t' if fc['test'] == 'paired_t' else 'Welch'} p-value (same seeds): {p:.4g}" if p is not None and not math.isnan(p) else "p-value: n/a (no promoted candidate)",
        "no candidate was confirmed before the time box; on a busy machine give the search more time, e.g. "
        f"autolab demo --lab {lab.path} --max-time {math.ceil(2 * box / 60)}m (the lab resumes)"
        if nothing and s.reason == "time_limit" and box is not None else "",
        f"lab: {lab.path}   (autolab log --lab {lab.path}; autolab report --lab {lab.path} -o report.html)",
        f"what each change of the best carries: autolab ablate {lab.path} {best.id}"
        if args.ablate == "off" and best.parent_id is not None else "",
        f"wall time: {obj['wall_s']:.0f} s (search {obj['search_wall_s']:.0f} s, final comparison {obj['final_wall_s']:.0f} s, "
        f"expected {kept_s:.0f} s)" + (f"; time box {box:.0f} s" if box is not None else ""),
    ])
    _emit(args, obj, text)
    return 0


def _title(lab, c) -> str:
    if c.idea_id:
        idea = lab.log.get("idea", c.idea_id)
        if idea is not None:
            return idea.title
    return "seed" if c.parent_id is None else c.id


# ---------------------------------------------------------------------------- parser

def _whole(minimum: int):
    """argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{n} is below {minimum}; pass {minimum} or more")
        return n

    return parse


_count = _whole(1)    # seeds, experiments, threads
_count0 = _whole(0)   # retries


def _nonneg(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"{x} is below 0; pass 0 or more")
    return x


_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> float:
    """argparse type: a duration in seconds from ``90s``, ``20m``, ``1h30m``, ``1h30m15s`` or plain
    seconds (``5400``, ``2.5``); above 0."""
    t = text.strip().lower()
    try:
        x = float(t)
    except ValueError:
        m = _DURATION.match(t)
        if not t or m is None or not any(m.groupdict().values()):
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration; write e.g. 90s, 20m, 1h30m or plain "
                                             "seconds") from None
        x = sum(float(v) * k for v, k in ((m["h"], 3600), (m["m"], 60), (m["s"], 1)) if v)
    if not (x > 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"{text!r} must be a duration above 0")
    return x


def _demo_box(text: str) -> float | None:
    """argparse type of ``autolab demo --max-time``: a duration, or ``off`` (no time box)."""
    return None if text.strip().lower() in ("off", "none") else parse_duration(text)


def parse_deadline(text: str) -> datetime:
    """argparse type: an ISO 8601 time (``2026-12-07T18:00``, ``...+01:00``, ``...Z``); without a
    time zone it is this machine's local time."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO time; write e.g. 2026-12-07T18:00 or "
                                         "2026-12-07T18:00:00+00:00 (try: date -Iseconds -d '+2 hours')") from None
    return dt if dt.tzinfo is not None else dt.astimezone()


def _positive(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"{x} must be above 0")
    return x


# Each command's arguments; the registry (autolab/registry.py, kind "command") names these
# functions as the built-in commands, in this order. A plug-in adds a command the same way:
# an entry point in the ``autolab.commands`` group naming a ``setup(add)`` function.

def setup_tasks(add) -> None:
    add("tasks", cmd_tasks, "list tasks and their presets")


def setup_data(add) -> None:
    sp = add("data", cmd_data, "prepare a task's data (verify or download the corpus, train the tokenizer)")
    sp.add_argument("task"); sp.add_argument("--source", default=None, help="corpus folder or shard URL")
    sp.add_argument("--preset", default=None)


def setup_run(add) -> None:
    sp = add("run", cmd_run, "run a candidate (default: the seed) on fresh seeds")
    sp.add_argument("task"); sp.add_argument("--preset", default=None); sp.add_argument("--candidate", default=None,
                                                                                         help="folder with the candidate's editable files, or a candidate id of the lab")
    sp.add_argument("--seeds", type=_count, default=1); sp.add_argument("--lab", default=None)
    sp.add_argument("--executor", default="local", help="local | ray"); sp.add_argument("--ray-address", default=None)
    sp.add_argument("--full", action="store_true",
                    help="re-check everything: never carry the parent's results of unchanged problems (kernels)")


def cmd_reopen(args) -> int:
    lab, c = _open_lab_candidate(args)
    before = c.state
    c, moved = lab.reopen(c, args.reason, keep_runs=args.keep_runs)
    info = {"candidate": c.id, "was": str(before.value), "state": "READY", "runs_set_aside": moved}
    _emit(args, info, f"{c.id} was {before.value}, now READY; {len(moved)} run(s) set aside as "
                      f"'infrastructure: reopened by hand' ({', '.join(moved) or 'none'}); "
                      + ("its verdicts are set aside and the next `autolab loop` judges it on its runs" if args.keep_runs
                         else "the next `autolab loop` screens it again"))
    return 0


def setup_reopen(add) -> None:
    sp = add("reopen", cmd_reopen, "undo the decisions on a candidate whose runs a harness or machine fault spoiled: "
                                   "its runs are set aside (kept in the log) and the loop screens it again")
    sp.add_argument("lab", help="the lab folder"); sp.add_argument("candidate", help="a candidate id (autolab log --lab LAB)")
    sp.add_argument("--reason", required=True, help="what spoiled its runs (recorded with each run set aside)")
    sp.add_argument("--keep-runs", action="store_true",
                    help="the runs were sound and only the audit erred (a check fixed since): set aside the verdicts "
                         "only; the next loop judges the candidate on the runs it has")


def setup_audit(add) -> None:
    sp = add("audit", cmd_audit, "audit a candidate of a lab against its parent (the loop's checks and paired test)")
    sp.add_argument("lab", help="the lab folder"); sp.add_argument("candidate", help="a candidate id (autolab log --lab LAB)")
    sp.add_argument("--stage", choices=["auto", "screen", "confirm"], default="auto",
                    help="screen: its screening/manual runs against the parent's on the same seeds, margin one noise sd; "
                         "confirm: its confirmation runs, the sequential paired test; auto (default): confirm once it "
                         "has confirmation runs, else screen")
    sp.epilog = ("as in the loop, a PROMOTED or REJECTED verdict decides an undecided (READY) candidate; one already "
                 "decided is re-checked and keeps its state. The verdict is recorded in the log either way. "
                 "exit codes: 0 the verdict is PROMOTED or PENDING, 1 REJECTED, 2 bad input (the message says what to do)")


def setup_ablate(add) -> None:
    sp = add("ablate", cmd_ablate, "measure each change a candidate carries (stacked promotions, merges): each "
                                   "removed alone, run beside the full candidate on fresh seeds")
    sp.add_argument("lab", help="the lab folder"); sp.add_argument("candidate", help="a candidate id (autolab log --lab LAB)")
    sp.add_argument("--seeds", type=_whole(2), default=None, metavar="N",
                    help="paired seeds per variant, from the final range 1001... (default: the task's [seeds] final)")
    sp.add_argument("--executor", default="local", help="local | ray"); sp.add_argument("--ray-address", default=None)
    sp.epilog = ("the results are stored in the lab's log (events 'ablation') and read back with "
                 "autolab.ablation.ablation_table(lab). exit codes: 0 done, 1 some variant had too few complete runs "
                 "to measure, 2 bad input")


def setup_loop(add) -> None:
    sp = add("loop", cmd_loop, "run the research loop (resumable: the same command continues)")
    sp.add_argument("task"); sp.add_argument("--preset", default=None)
    goal = sp.add_mutually_exclusive_group()
    goal.add_argument("--iterations", type=_count, default=None, metavar="N",
                      help=f"the total number of experiments (ideas) the lab should hold, counting those of earlier "
                           f"runs of the loop (default {DEFAULT_ITERATIONS}); a rerun with the same N only finishes "
                           "pending work")
    goal.add_argument("--more", type=_count, default=None, metavar="N",
                      help="run N more experiments than the lab holds now")
    sp.add_argument("--threads", type=_count, default=1, help="parallel lines of research")
    sp.add_argument("--proposer", default="playbook", help="playbook | random | llm:<litellm model>")
    sp.add_argument("--proposer-seed", type=int, default=None)
    sp.add_argument("--executor", default="local", help="local | ray")
    sp.add_argument("--ray-address", default=None)
    sp.add_argument("--max-time", "--time-limit", dest="max_time", type=parse_duration, default=None,
                    metavar="DURATION",
                    help="time box from now (90s, 20m, 1h30m or seconds): start no run that would likely end past "
                         "it, judged from the p90 of the lab's completed runs (before any run, the preset's "
                         "timeout_s); runs under way finish; exit code 4. --time-limit is an alias")
    sp.add_argument("--deadline", type=parse_deadline, default=None, metavar="ISO-TIME",
                    help="the same, as a wall-clock time (e.g. 2026-12-07T18:00+00:00; local time without a zone); "
                         "with --max-time too, the earlier one holds")
    sp.add_argument("--hard-limit", action="store_true",
                    help="at the limit, kill runs still going and record them KILLED \"time limit\" (re-run on resume) "
                         "instead of letting them finish")
    sp.add_argument("--ablate", choices=("auto", "off"), default="auto",
                    help="auto (default): when the research is done, ablate the best candidate if two or more of its "
                         "changes can be removed alone (each removed alone, run beside it on final seeds; once per candidate, within "
                         "the time box; an unfinished one is finished on resume); off: never. See `autolab ablate`")
    sp.add_argument("--keep-models", type=_count0, default=None, metavar="N",
                    help="model files kept: the best and promoted candidates' and the last N runs' (an undecided "
                         "candidate's too while its run is among them; default: lab.json's keep_models, else 2); "
                         "saved in lab.json. See `autolab gc`")
    sp.epilog, sp.formatter_class = LOOP_EPILOG, argparse.RawDescriptionHelpFormatter
    g = sp.add_argument_group("LLM (with --proposer llm:<litellm model>)")
    g.add_argument("--api-base", default=None, help="LLM server URL (else litellm's env vars, e.g. OPENAI_API_BASE)")
    g.add_argument("--fallbacks", action="append", default=[], metavar="MODEL[,MODEL]",
                   help="litellm models tried in order when the primary fails (repeatable)")
    g.add_argument("--llm-timeout", dest="timeout_s", type=_positive, default=None, metavar="SECONDS",
                   help="timeout of one request (default 120)")
    g.add_argument("--llm-retries", dest="max_retries", type=_count0, default=None, metavar="N",
                   help="extra attempts per model after 429/5xx/timeouts/connection errors (default 4)")
    g.add_argument("--llm-deadline", dest="deadline_s", type=_positive, default=None, metavar="SECONDS",
                   help="give up on one LLM call after this long in all, retries included, and stop with exit "
                        "code 2 (default 300)")
    g.add_argument("--temperature", type=_nonneg, default=None, help="sampling temperature (default 0.7)")
    g.add_argument("--max-tokens", type=_count, default=None, help="longest answer in tokens (default 4096)")
    g.add_argument("--llm-param", dest="extra", action="append", type=_llm_param, default=[], metavar="KEY=VALUE",
                   help="any other litellm.completion parameter, the value as JSON if it parses "
                        "(e.g. top_p=0.9, seed=1, stop='[\"END\"]'); repeatable")
    g.add_argument("--input-cost-per-mtok", type=_nonneg, default=None, metavar="USD",
                   help="price per million prompt tokens, for models litellm cannot price (local, custom)")
    g.add_argument("--output-cost-per-mtok", type=_nonneg, default=None, metavar="USD",
                   help="price per million completion tokens, for models litellm cannot price")
    g.add_argument("--max-cost", type=_positive, default=None, help="stop when LLM spend in this lab reaches this (USD)")
    g.add_argument("--max-llm-calls", type=_count, default=None, help="stop after this many LLM calls in this lab")
    sp.add_argument("--lab", default=None)


def cmd_export_lab(args) -> int:
    from .archive import export_lab

    caches, root = None, ""
    if args.compile_cache:
        from .harnesskit import cache_root, lab_compile_caches
        from .lab import Lab

        caches, root = lab_compile_caches(Lab(args.lab).key), str(cache_root().resolve())
    info = export_lab(args.lab, args.output, compile_caches=caches, cache_root=root, models=args.models)
    left = info["left_out"]
    text = (f"wrote {info['archive']}: {info['files']} files ({info['bytes'] / 1e6:.1f} MB, "
            f"{info['archive_bytes'] / 1e6:.1f} MB compressed) of lab {info['lab']}"
            + (f"; {info['model_files']} model files (those the lab keeps)" if args.models else "")
            + (f"; compile caches {', '.join(info['compile_caches']) or 'none on this machine'} "
               f"({info['compile_cache_bytes'] / 1e6:.1f} MB)" if args.compile_cache else "")
            + (f"; left out {len(left)}: " + ", ".join(left[:8]) + (" ..." if len(left) > 8 else "") if left else "")
            + f"\nunpack it with: autolab import-lab {info['archive']} --lab NEW")
    _emit(args, info, text)
    return 0


def cmd_import_lab(args) -> int:
    from .archive import import_lab

    def install(lab_dir, unpacked, manifest) -> dict:
        from .harnesskit import install_compile_caches
        from .lab import Lab

        done, why = install_compile_caches(Lab(lab_dir).key, unpacked, str(manifest.get("cache_root") or ""))
        return {"installed": done, "why": why}

    info = import_lab(args.archive, args.lab, install_caches=install)
    assumed = ""
    if args.hardware:
        from .lab import Lab

        runs = Lab(info["lab"]).assume_hardware(args.hardware, reason=f"stated at import-lab of {Path(args.archive).name}")
        info["hardware_assumed"] = {"hardware": args.hardware, "runs": len(runs)}
        assumed = f"; {len(runs)} runs without a hardware record counted as {args.hardware!r}"
    cc = info.get("compile_cache")
    _emit(args, info, f"unpacked {info['files']} files into lab {info['lab']}"
                      + (f"; compile caches installed: {', '.join(cc['installed']) or 'none'}"
                         + (f" ({cc['why']})" if cc.get("why") else "") if cc else "") + assumed
                      + f"; resume it with: autolab loop {info['task'] or 'TASK'} --lab {info['lab']}")
    return 0


def cmd_hardware(args) -> int:
    from .lab import Lab
    from .ledger import UNRECORDED, assume_command

    lab = Lab(args.lab)
    covered = lab.assume_hardware(args.assume, reason=args.reason or "") if args.assume else None
    ledger = lab.ledger
    info = {"lab": str(lab.path), "preset": lab.preset_name, "this_machine": lab.machine_hardware(),
            "runs": ledger.hardware_counts(), "assumptions": ledger.assumptions()}
    if covered is not None:
        info["assumed"] = {"hardware": args.assume, "runs": covered}
    lines = [f"lab {lab.path} ({lab.preset_name}); a run here records {info['this_machine'] or 'nothing (no GPU seen)'}"]
    if covered is not None:
        lines.append(f"recorded: {len(covered)} runs without a hardware record count as {args.assume!r}" if covered else
                     "nothing recorded: every run of this lab has its hardware recorded")
    lines.append("runs per hardware: " + (", ".join(f"{h} ({n})" for h, n in info["runs"].items()) or "none yet"))
    for a in info["assumptions"]:
        lines.append(f"assumption {a['ts']}: {len(a.get('runs') or [])} runs ran on {a['hardware']!r} ({a.get('reason', '')})")
    if UNRECORDED in info["runs"]:
        lines.append(f"the loop compares runs within one hardware and counts unrecorded runs as another; if they ran "
                     f"on X: {assume_command(lab.path)}")
    _emit(args, info, "\n".join(lines))
    return 0


def setup_hardware(add) -> None:
    sp = add("hardware", cmd_hardware, "the hardware a lab's runs ran on (runs are compared within one), and the "
                                      "assumption that runs recorded before autolab recorded it ran on a given one")
    sp.add_argument("--lab", required=True)
    sp.add_argument("--assume", default=None, metavar="NAME",
                    help="record (append-only) that the lab's runs without a hardware record ran on NAME, as a run "
                         "records it, e.g. 'NVIDIA H100 80GB HBM3'")
    sp.add_argument("--reason", default=None, help="why you know (kept with the assumption)")


def setup_export_lab(add) -> None:
    sp = add("export-lab", cmd_export_lab, "write a lab's resumable core (log, candidates, runs; no model files "
                                           "or caches) into one .tar.gz, to move it to another machine")
    sp.add_argument("--lab", required=True); sp.add_argument("-o", "--output", required=True, help="e.g. lab.tar.gz")
    sp.add_argument("--models", action="store_true",
                    help="also carry the model files the lab keeps (the best and promoted candidates' and the last "
                         "runs', see `autolab gc`)")
    sp.add_argument("--compile-cache", action="store_true",
                    help="also carry the torch.compile caches the lab's seed runs wrote on this machine, so the next "
                         "machine of the same GPU and torch version starts warm (AUTOLAB_CACHE must be the same path there)")


def setup_import_lab(add) -> None:
    sp = add("import-lab", cmd_import_lab, "unpack an archive from `autolab export-lab` into a new lab folder")
    sp.add_argument("archive"); sp.add_argument("--lab", required=True, help="the new lab folder (must not exist)")
    sp.add_argument("--hardware", default=None, metavar="NAME",
                    help="the hardware the lab's runs without a hardware record ran on (runs logged before autolab "
                         "recorded it), e.g. 'NVIDIA H100 80GB HBM3': recorded in the log as an assumption; without it "
                         "they count as another hardware than any recorded one (see `autolab hardware`)")


def setup_log(add) -> None:
    sp = add("log", cmd_log, "a lab's summary (best, noise, runs per decision, LLM use) and its tables: candidates, "
                             "recent runs, ablations, LLM usage")
    sp.add_argument("--lab", required=True); sp.add_argument("--export", default=None, help="folder to export tables to")
    sp.add_argument("--last", type=_count0, default=15, metavar="N", help="the last N runs in the runs table (0: all)")
    sp.add_argument("--format", default="parquet", choices=["parquet", "csv"])


def setup_report(add) -> None:
    sp = add("report", cmd_report, "render a lab's report notebook to self-contained HTML")
    sp.add_argument("--lab", required=True); sp.add_argument("-o", "--output", default="report.html")


def setup_gc(add) -> None:
    sp = add("gc", cmd_gc, "free a lab's space: scratch files of ended runs, and model files no longer needed")
    sp.add_argument("--lab", required=True)
    sp.add_argument("--dry-run", action="store_true", help="say what would be freed, remove nothing")
    sp.add_argument("--keep-models", type=_count0, default=None, metavar="N",
                    help="besides the best and promoted candidates' models, keep those of the last N runs "
                         "(default: lab.json's keep_models, else 2; 0: the best and promoted ones only); saved in lab.json")


def setup_stop(add) -> None:
    sp = add("stop", cmd_stop, "ask a running loop on a lab to stop after its in-flight runs")
    sp.add_argument("--lab", required=True)


def setup_demo(add) -> None:
    sp = add("demo", cmd_demo, "the offline loop on nanochat cpu-tiny, end to end")
    sp.add_argument("--lab", default="labs/demo"); sp.add_argument("--fresh", action="store_true", help="start a new lab")
    sp.add_argument("--iterations", type=_count, default=DEMO_ITERATIONS,
                    help=f"the experiments (ideas) the lab holds when the search ends (default {DEMO_ITERATIONS}); "
                         "the time box may end it earlier (the summary says which did)")
    sp.add_argument("--max-time", type=_demo_box, default=DEMO_MAX_TIME_S, metavar="DURATION",
                    help=f"a time box for the whole demo: {DEMO_MAX_TIME_S // 60}m (default), 25m, 1h, ..., or off. "
                         "The search starts no run that would likely end too late to leave the final comparison its "
                         "expected time, both judged from the durations of the lab's runs")
    sp.add_argument("--preset", default="cpu-tiny")
    sp.add_argument("--task", default="nanochat", help=argparse.SUPPRESS)
    sp.add_argument("--proposer-seed", type=int, default=0)
    sp.add_argument("--ablate", choices=("auto", "off"), default="off",
                    help="off (default, to keep the demo short): no ablation; `autolab ablate LAB CANDIDATE` measures "
                         "what each change of the best carries afterwards. auto: as `autolab loop` does")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every registered command (built-ins first, then plug-ins); a plug-in that
    cannot be loaded is left out with a warning on stderr, so it cannot break the others."""
    from . import registry

    p = argparse.ArgumentParser(prog="autolab", description="Automate the research loop: propose, implement, run, audit.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help):
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        sp.add_argument("--json", action="store_true", help="print one JSON object instead of text")
        return sp

    for name in registry.names("command"):
        try:
            registry.get("command", name)(add)
        except (registry.RegistryError, argparse.ArgumentError) as e:   # e.g. a plug-in reusing a command's name
            print(f"autolab: warning: command {name!r} left out: {e}", file=sys.stderr)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except AutolabError as e:
        print(f"autolab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:   # a path the user gave that cannot be written or read
        where = f"{e.filename}: " if e.filename else ""
        print(f"autolab: error: {where}{e.strerror or e}; check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autolab: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_CODES["interrupted"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
