"""The ledger: the one place that answers questions about a lab's research log.

Which candidate is best (overall and per research line), which runs count (selection-free
means, the noise estimate), the runs of a candidate, which seeds a candidate still needs,
and who owns a running run. Every view (the loop, the report, the widgets, the CLI) asks
the ledger, so they cannot disagree.

``Ledger(lab)`` reads a Lab; ``Ledger(log)`` reads a bare ``ResearchLog`` (a report on a
copied ``log.db``): metric, direction, preset and the pinned seed then come from the log's
meta table. The ledger only reads, with one exception: :meth:`Ledger.reap_interrupted`
appends KILLED versions of runs whose owner process died.

The rule for "best": among PROMOTED candidates (of the research line, when one is named;
merges count for every line), the one with the best mean over its selection-free runs
(purpose confirm/baseline, seeds never used to select it) on the lab's preset, if that
beats the seed's own selection-free mean; otherwise the seed. A REJECTED candidate is
never best, whatever its numbers. Two candidates' means are compared on one hardware (see
below): the comparison hardware when both ran there, else the hardware they share most runs on.

Hardware: every run records the hardware it was given (``Run.hardware``, the GPU or CPU model;
``hardware_of`` adds the assumptions a user recorded for runs logged before that, and calls the
rest "unrecorded", a hardware of its own). A ledger with a comparison hardware (``hardware=``,
or the lab's ``Lab.hardware``, which the loop sets to this machine's) answers every question
about runs and numbers (``runs_of`` and all built on it: means, pairs, noise, the seeds a
candidate still needs) from that hardware's runs alone, so a candidate on an H200 is never paired
with its parent's H100 runs: the parent is re-run here on the seeds it needs. Decisions already
made (PROMOTED, REJECTED) stay. Without one (a view of a bare log) every run counts.
"""

from __future__ import annotations

import math
import os
import shlex
import socket
import statistics
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .log import ResearchLog
from .records import Candidate, Purpose, Run, State, Verdict, now

# Runs whose seeds were not used to select the candidate: the evidence for promotion and for "best".
SELECTION_FREE: tuple[str, ...] = tuple(p.value for p in Purpose.aliases(Purpose.CONFIRM))

# Runs on the final range (seeds never used to select anything): final comparisons and ablations.
FINAL_RANGE: tuple[str, ...] = tuple(p.value for p in Purpose.aliases(Purpose.FINAL))

# Runs that select a candidate (screening, and runs made by hand): paired with the parent's on the same seeds.
SELECTION_BY_RUN: tuple[str, ...] = (Purpose.SCREEN.value, Purpose.MANUAL.value)

# ---------------------------------------------------------------------------- seed policy
# Seeds are drawn from separate ranges so that confirmation and final seeds are never the
# ones used for selection (screening).
_RANGE_START = {Purpose.SCREEN: 1, Purpose.MANUAL: 1, Purpose.REDTEAM: 1, Purpose.CONFIRM: 101, Purpose.FINAL: 1001}
SEED_BASE: dict[str, int] = {p.value: _RANGE_START[p.canonical] for p in Purpose}
MAX_ATTEMPTS = 3
CANCELLED = "cancelled by the user"   # the reason of a run cancelled from the Dashboard or a loop handle
RETRYABLE = ("interrupted", "worker lost", "time limit", CANCELLED)   # KILLED reasons that re-queue the seed (time limit: a hard loop time limit)
INFRASTRUCTURE = "infrastructure:"    # prefix of the reason of a run the machine ended (signal, executor timeout, starvation)


REOPENED = f"{INFRASTRUCTURE} reopened by hand:"   # prefix of the reason of a run `autolab reopen` set aside


def set_aside(run: Run) -> bool:
    """True for a run ``Lab.reopen`` set aside: a fault spoiled it, so nothing of it (metric,
    violations, probes) counts for or against its candidate; it stays in the log."""
    return str((run.error or {}).get("reason") or "").startswith(REOPENED)


def not_a_verdict(run: Run) -> bool:
    """True for an ended run that says nothing about its candidate: KILLED for a reason in
    RETRYABLE, or ended for a reason starting with ``infrastructure:`` (the machine's doing).
    Its seed is re-run (``missing_seeds``) and the audit does not hold it against the candidate."""
    if run.state not in (State.KILLED, State.FAILED):
        return False
    reason = str((run.error or {}).get("reason") or "")
    return (run.state is State.KILLED and reason in RETRYABLE) or reason.startswith(INFRASTRUCTURE)


UNRECORDED = "unrecorded"                 # the hardware of a run logged before runs recorded theirs
HARDWARE_ASSUMED = "hardware_assumed"    # the event kind of a user's assumption about unrecorded runs


def assume_command(lab_dir: str | os.PathLike, hardware: str | None = None) -> str:
    """The command that records that a lab's unrecorded runs ran on ``hardware`` (without one:
    the command with its placeholder, ``X``)."""
    return f"autolab hardware --lab {shlex.quote(str(lab_dir))} --assume {shlex.quote(hardware) if hardware else 'X'}"


def seed_range(purpose: str) -> int:
    """The first seed of a purpose's range."""
    return SEED_BASE.get(Purpose.canonical_of(purpose), 1)


# ---------------------------------------------------------------------------- run ownership

def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


_OWNER = {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid())}


def current_owner() -> dict:
    """{host, pid, start} of this process: stored in a RUNNING run's meta as its owner."""
    if _OWNER["pid"] != os.getpid():   # forked
        _OWNER.update(pid=os.getpid(), start=_proc_start(os.getpid()))
    return dict(_OWNER)


_owner = current_owner   # the name run.py and search.py used


def owner_alive(owner: dict | None) -> bool:
    """Is the process that wrote a RUNNING record still alive? (Unknown hosts count as alive.)"""
    if not owner:
        return False
    if owner.get("host") != socket.gethostname():
        return True
    pid = int(owner.get("pid", -1))
    if pid <= 0:
        return False
    start = _proc_start(pid)
    return start is not None and (owner.get("start") is None or start == owner.get("start"))


# ---------------------------------------------------------------------------- the ledger

def first_seed_in_log(log: ResearchLog) -> Candidate | None:
    """The seed a lab made before seeds were pinned: the oldest candidate whose
    ``meta.origin`` is "seed" (else None)."""
    return next((c for c in log.candidates_list() if c.meta.get("origin") == "seed"), None)


class Ledger:
    """Read-only answers about one lab's research log (see the module docstring for the rule of "best")."""

    def __init__(self, source: Any, *, preset: str | None = None, hardware: str | None = None):
        if isinstance(source, Ledger):
            hardware = hardware or source.hardware
            source = source._lab if source._lab is not None else source.log
        if isinstance(source, ResearchLog):
            self._lab = None
            self.log = source
            self.metric: str = source.get_meta("metric", "metric")
            self.direction: str = source.get_meta("direction", "minimize")
            self.preset: str | None = preset or source.get_meta("preset")
        elif isinstance(getattr(source, "log", None), ResearchLog) and hasattr(source, "task"):
            self._lab = source
            self.log = source.log
            self.metric = source.task.metric.name
            self.direction = source.task.metric.direction
            self.preset = preset or source.preset_name
        else:
            raise TypeError(f"Ledger reads a Lab or a ResearchLog, not {type(source).__name__}")
        # the comparison hardware: runs of other hardware are not this ledger's to compare (None: every run counts)
        self.hardware: str | None = hardware or getattr(self._lab, "hardware", None)
        self._assumed: dict[str, str] | None = None

    def __repr__(self) -> str:
        return (f"Ledger({str(self.log.path)!r}, metric={self.metric!r}, preset={self.preset!r}"
                + (f", hardware={self.hardware!r})" if self.hardware else ")"))

    # ------------------------------------------------------------------ hardware
    def assumptions(self) -> list[dict]:
        """The recorded assumptions about the hardware of unrecorded runs (events of kind
        ``hardware_assumed``: ``hardware``, ``runs``, ``reason``, ``ts``), oldest first."""
        return self.log.events(HARDWARE_ASSUMED)

    def hardware_of(self, run: Run) -> str:
        """The hardware a run counts as: the one it recorded; for a run logged before runs
        recorded it, the latest assumption naming it (``Lab.assume_hardware``); else UNRECORDED,
        which no recorded hardware equals."""
        if run.hardware:
            return run.hardware
        if self._assumed is None:   # read once per ledger
            self._assumed = {rid: str(a["hardware"]) for a in self.assumptions() for rid in a.get("runs") or ()}
        return self._assumed.get(run.id, UNRECORDED)

    def hardware_counts(self, runs: Sequence[Run] | None = None) -> dict[str, int]:
        """{hardware: number of ended runs} on the lab's preset, most runs first."""
        out: dict[str, int] = {}
        for r in (self.log.runs_list() if runs is None else runs):
            if r.state is not State.RUNNING and self._preset_ok(r, None):
                out[self.hardware_of(r)] = out.get(self.hardware_of(r), 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def latest_hardware(self) -> str | None:
        """The hardware of the lab's latest ended run on its preset (what its last loop ran on), or None."""
        ended = [r for r in self.log.runs_list() if r.state is not State.RUNNING and self._preset_ok(r, None)]
        return self.hardware_of(max(ended, key=lambda r: r.ended_at or r.started_at)) if ended else None

    def hardware_note(self) -> str | None:
        """What a loop on ``self.hardware`` does with the lab's runs of other hardware, and how to
        change it (None when every ended run is of this hardware, or no comparison hardware is set)."""
        if self.hardware is None:
            return None
        counts = self.hardware_counts()
        other = {h: n for h, n in counts.items() if h != self.hardware}
        if not other:
            return None
        parts = [f"{n} on {h}" if h != UNRECORDED else f"{n} with no hardware recorded (logged before autolab "
                                                           "recorded it)" for h, n in other.items()]
        msg = (f"this machine is {self.hardware!r}; of this lab's runs, {'; '.join(parts)}: comparisons stay within "
               f"{self.hardware!r}, so the seed's baseline and the parents are re-run here on the seeds a comparison "
               "needs, and noise is measured from this hardware's runs (decisions already made stay)")
        if UNRECORDED in other:
            msg += (f". If the unrecorded runs ran on this hardware, say so once: "
                    f"{assume_command(self.log.path.parent, self.hardware)} "
                    "(recorded in the log as an assumption; the loop then pairs with them)")
        return msg

    # ------------------------------------------------------------------ basics
    def better(self, a: float, b: float) -> bool:
        """Is ``a`` strictly better than ``b`` in the metric's direction?"""
        return a < b if self.direction == "minimize" else a > b

    def seed(self) -> Candidate | None:
        """The lab's pinned seed candidate (None only for a log that holds no candidate)."""
        pinned_by_lab = getattr(self._lab, "seed_candidate", None)
        if callable(pinned_by_lab):
            return pinned_by_lab()
        pinned = self.log.get_meta("seed_candidate")
        c = self.log.get("candidate", pinned) if pinned else None
        if c is None:
            c = first_seed_in_log(self.log) or next((x for x in self.log.candidates_list() if x.parent_id is None), None)
        return c  # type: ignore[return-value]

    def _cid(self, c: Candidate | str) -> str:
        return c if isinstance(c, str) else c.id

    def _preset_ok(self, r: Run, preset: str | None) -> bool:
        want = preset or self.preset
        return want is None or r.preset == want

    def _comparable(self, r: Run, preset: str | None) -> bool:
        """The one filter of "which runs may be compared": the preset, and the comparison hardware."""
        return self._preset_ok(r, preset) and (self.hardware is None or self.hardware_of(r) == self.hardware)

    # ------------------------------------------------------------------ runs and means
    def runs_of(self, candidate: Candidate | str, *, purposes: Iterable[str] | None = None, preset: str | None = None,
                states: Iterable[State] | None = (State.COMPLETE,), runs: Sequence[Run] | None = None) -> list[Run]:
        """The runs of a candidate on the lab's preset (or ``preset``) and the comparison hardware
        (when set), of the given purposes (default: all) and states (default: COMPLETE; None: every
        state)."""
        cid = self._cid(candidate)
        ps = {str(Purpose.parse(p).value) for p in purposes} if purposes is not None else None
        ss = set(states) if states is not None else None
        return [r for r in (self.log.runs_list() if runs is None else runs)
                if r.candidate_id == cid and self._comparable(r, preset) and (ss is None or r.state in ss)
                and (ps is None or r.purpose in ps)]

    def _value(self, r: Run) -> float | None:
        """The run's metric when it is a finite number (None: missing, a bool, inf or nan)."""
        v = r.metrics.get(self.metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    def _grouped(self, runs: Iterable[Run], key: Callable[[Run], Any]) -> dict[Any, list[float]]:
        """{key(run): the finite metric of each of ``runs`` with one}."""
        out: dict[Any, list[float]] = {}
        for r in runs:
            v = self._value(r)
            if v is not None:
                out.setdefault(key(r), []).append(v)
        return out

    def values(self, candidate: Candidate | str, purposes: Iterable[str] = SELECTION_FREE, *,
               runs: Sequence[Run] | None = None) -> list[float]:
        """The metric of the candidate's COMPLETE runs of these purposes (default: selection-free)."""
        return [v for r in self.runs_of(candidate, purposes=purposes, runs=runs) if (v := self._value(r)) is not None]

    def mean(self, candidate: Candidate | str, purposes: Iterable[str] = SELECTION_FREE, *,
             runs: Sequence[Run] | None = None) -> float | None:
        """Mean metric over the candidate's COMPLETE runs of these purposes (default: selection-free); None if none."""
        vals = self.values(candidate, purposes, runs=runs)
        return sum(vals) / len(vals) if vals else None

    def noise_sd(self) -> float | None:
        """Pooled within-candidate standard deviation of the metric over selection-free (and
        final) runs: the noise of this task on this hardware, measured in this lab (each
        candidate's runs grouped by hardware too, so another machine's offset is no noise)."""
        groups: dict[tuple, list[float]] = {}
        counted = SELECTION_FREE + FINAL_RANGE
        for r in self.log.runs_list():
            if r.state is State.COMPLETE and r.purpose in counted and self._comparable(r, None) \
                    and isinstance(r.metrics.get(self.metric), (int, float)):
                groups.setdefault((r.candidate_id, self.hardware_of(r)), []).append(float(r.metrics[self.metric]))
        num = sum((len(v) - 1) * statistics.variance(v) for v in groups.values() if len(v) > 1)
        dof = sum(len(v) - 1 for v in groups.values() if len(v) > 1)
        return math.sqrt(num / dof) if dof > 0 else None

    def by_seed(self, candidate: Candidate | str, purposes: Iterable[str] = SELECTION_FREE, *,
                runs: Sequence[Run] | None = None) -> dict[int, list[float]]:
        """{random seed: the metric of each COMPLETE run of the candidate on it} (these purposes)."""
        return self._grouped(self.runs_of(candidate, purposes=purposes, runs=runs), lambda r: int(r.seed))

    def pairs(self, candidate: Candidate | str, parent: Candidate | str, purposes: Iterable[str] = SELECTION_FREE, *,
              runs: Sequence[Run] | None = None) -> list[tuple[int, float, float]]:
        """(seed, candidate value, parent value) for every random seed both have a COMPLETE run
        on (these purposes) of the same hardware, by seed; repeats of a seed count by their mean.
        (With a comparison hardware that is its runs only; without one, a seed both ran on two
        hardware gives a pair on each, and never a pair across hardware.)"""
        purposes = tuple(purposes)
        runs = self.log.runs_list() if runs is None else runs

        def by_key(c: Candidate | str) -> dict[tuple[int, str], list[float]]:
            return self._grouped(self.runs_of(c, purposes=purposes, runs=runs), lambda r: (int(r.seed), self.hardware_of(r)))

        a, b = by_key(candidate), by_key(parent)
        return [(k[0], sum(a[k]) / len(a[k]), sum(b[k]) / len(b[k])) for k in sorted(set(a) & set(b))]

    def paired_sd(self) -> float | None:
        """The paired noise: pooled standard deviation, within each candidate, of its per-seed
        differences from its parent on the seeds both ran (screening, confirmation and final
        seeds, each paired within its purpose). A candidate's true effect is the same on every
        seed, so the spread of its differences is noise only. None until some candidate has two
        paired seeds."""
        runs = self.log.runs_list()
        num, dof = 0.0, 0
        for c in self.log.candidates_list():
            if not c.parent_id:
                continue
            d = []
            for ps in (SELECTION_BY_RUN, FINAL_RANGE, SELECTION_FREE):
                d += [cv - pv for _, cv, pv in self.pairs(c, c.parent_id, ps, runs=runs)]
            if len(d) > 1:
                num += (len(d) - 1) * statistics.variance(d)
                dof += len(d) - 1
        return math.sqrt(num / dof) if dof > 0 else None

    def repeat_sd(self) -> float | None:
        """The same-seed repeat spread: pooled standard deviation of repeated COMPLETE runs of one
        candidate on one random seed (machine noise alone); None without repeats."""
        groups = self._grouped((r for r in self.log.runs_list() if r.state is State.COMPLETE and self._comparable(r, None)),
                               lambda r: (r.candidate_id, r.seed, self.hardware_of(r)))
        num = sum((len(v) - 1) * statistics.variance(v) for v in groups.values() if len(v) > 1)
        dof = sum(len(v) - 1 for v in groups.values() if len(v) > 1)
        return math.sqrt(num / dof) if dof > 0 else None

    def noise(self) -> dict[str, float | None]:
        """Every noise figure of the lab: ``cross_seed_sd`` (:meth:`noise_sd`), ``paired_sd``,
        ``repeat_sd``, and ``diff_sd``, the sd of one candidate-minus-parent difference that
        screening and the sequential rule use: the paired figure when it exists, else
        sqrt(2) x the cross-seed one (two independent runs); ``diff_source`` says which; and
        ``screen_sd``, the screening margin's unit: the paired figure when it exists, else
        sqrt(2) x the same-seed repeat spread (the least a paired difference can vary), else None
        (``screen_source`` None): until the paired noise is measured every paired gain goes on to
        confirmation, where the sequential rule stops losers after a seed or two and the paired
        seeds measure the noise. (The cross-seed spread is no unit for a paired screen: on the
        H100 it is about five times the paired one, so such a margin hid every gain under ~1%.)"""
        cross, paired_, rep = self.noise_sd(), self.paired_sd(), self.repeat_sd()

        def first(*options: tuple[float | None, str]) -> tuple[float | None, str | None]:
            return next(((v, src) for v, src in options if v is not None), (None, None))

        def two_runs(sd: float | None) -> float | None:   # the sd of a difference of two independent runs
            return None if sd is None else math.sqrt(2) * sd

        diff, src = first((paired_, "paired"), (two_runs(cross), "cross_seed"))
        screen, screen_src = first((paired_, "paired"), (two_runs(rep), "repeat"))
        return {"cross_seed_sd": cross, "paired_sd": paired_, "repeat_sd": rep, "diff_sd": diff, "diff_source": src,
                "screen_sd": screen, "screen_source": screen_src}

    # ------------------------------------------------------------------ best
    def is_kept(self, c: Candidate, seed: Candidate | None = None) -> bool:
        """A candidate whose number may stand as a result: the seed, or a PROMOTED one."""
        seed = seed if seed is not None else self.seed()
        return c.state is State.PROMOTED or (seed is not None and c.id == seed.id and c.state is not State.REJECTED)

    def best(self, thread: str | None = None) -> Candidate | None:
        """The best candidate (of a research line, if given): see the module docstring."""
        runs = self.log.runs_list()
        seed = self.seed()
        best = seed
        for c in self.log.candidates_list():
            if c.state is not State.PROMOTED:
                continue
            if thread is not None and c.thread != thread and not c.meta.get("merge_of"):
                continue
            if self._beats(c, best, runs):
                best = c
        return best

    def _sf_by_hardware(self, c: Candidate | str, runs: Sequence[Run]) -> dict[str, list[float]]:
        """{hardware: the metric of each COMPLETE selection-free run of ``c``} on the lab's preset,
        every hardware (the comparison hardware only picks which one two candidates meet on)."""
        cid = self._cid(c)
        return self._grouped((r for r in runs if r.candidate_id == cid and r.state is State.COMPLETE
                              and r.purpose in SELECTION_FREE and self._preset_ok(r, None)), self.hardware_of)

    def _beats(self, c: Candidate, incumbent: Candidate | None, runs: Sequence[Run]) -> bool:
        """Does ``c``'s selection-free mean beat the incumbent's? Compared on one hardware: the
        comparison hardware when both ran there, else the one they share most runs on; with no
        hardware in common, over all their runs. A mean beats no mean."""
        mine = self._sf_by_hardware(c, runs)
        if not mine:
            return False
        theirs = self._sf_by_hardware(incumbent, runs) if incumbent is not None else {}
        if not theirs:
            return True
        shared = set(mine) & set(theirs)
        if shared:
            hw = self.hardware if self.hardware in shared else max(sorted(shared), key=lambda h: len(mine[h]) + len(theirs[h]))
            a, b = mine[hw], theirs[hw]
        else:
            a, b = [v for vs in mine.values() for v in vs], [v for vs in theirs.values() for v in vs]
        return self.better(sum(a) / len(a), sum(b) / len(b))

    def best_mean(self, thread: str | None = None) -> float | None:
        """The selection-free mean of :meth:`best`."""
        b = self.best(thread)
        return self.mean(b) if b is not None else None

    def threads(self) -> list[str]:
        """The research lines that hold a candidate or an idea."""
        return sorted({c.thread for c in self.log.candidates_list()} | {i.thread for i in self.log.ideas_list()})

    def best_by_thread(self) -> dict[str, Candidate | None]:
        """{research line: its best candidate} (the same rule as :meth:`best`)."""
        return {th: self.best(th) for th in self.threads()}

    def latest_verdict(self, candidate: Candidate | str, stage: str | None = None) -> Verdict | None:
        """The candidate's latest verdict (of a stage); verdicts set aside when it was reopened
        (``Lab.reopen``) do not count."""
        cid = self._cid(candidate)
        c = self.log.get("candidate", cid)
        aside = set((c.meta or {}).get("verdicts_set_aside") or ()) if c is not None else set()
        vs = [v for v in self.log.verdicts_list() if v.candidate_id == cid and v.id not in aside
              and (stage is None or v.meta.get("stage") == stage)]
        return vs[-1] if vs else None

    def leaderboard(self, preset: str | None = None):
        """``log.leaderboard()`` (one row per candidate, its latest state, mean ± std of its
        complete runs) ranked by the ledger: the best first, then the other kept candidates
        (seed, promoted) by selection-free mean, then the rest by mean. Extra columns:
        ``best`` (bool) and ``metrics.<metric>_selection_free``."""
        board = self.log.leaderboard(preset)
        key = f"metrics.{self.metric}"
        sf_key = f"{key}_selection_free"
        if board.empty:
            board["best"] = []
            board[sf_key] = []
            return board
        runs = self.log.runs_list()
        cands = {c.id: c for c in self.log.candidates_list()}
        seed = self.seed()
        best = self.best()
        board[sf_key] = [self.mean(cid, runs=runs) for cid in board["candidate_id"]]
        board["best"] = [best is not None and cid == best.id for cid in board["candidate_id"]]
        kept = [cid in cands and self.is_kept(cands[cid], seed) for cid in board["candidate_id"]]
        sign = 1.0 if self.direction == "minimize" else -1.0

        def num(v) -> float:
            return sign * v if isinstance(v, (int, float)) and v == v else math.inf

        order = sorted(range(len(board)), key=lambda i: (
            not board["best"].iloc[i], not kept[i],
            num(board[sf_key].iloc[i]) if kept[i] else num(board[key].iloc[i]), num(board[key].iloc[i])))
        return board.iloc[order].reset_index(drop=True)

    # ------------------------------------------------------------------ seeds
    def _seed_status(self, candidate: Candidate | str, purpose: str, preset: str | None) -> tuple[set[int], dict[int, int]]:
        """(seeds with a terminal or in-flight run, retry counts of seeds whose runs were interrupted)."""
        cid = self._cid(candidate)
        base = Purpose.canonical_of(purpose)
        done: set[int] = set()
        tries: dict[int, int] = {}
        for r in self.log.runs_list():
            if r.candidate_id != cid or not self._comparable(r, preset) or Purpose.canonical_of(r.purpose) != base:
                continue
            if not_a_verdict(r):
                tries[r.seed] = tries.get(r.seed, 0) + 1
            else:
                done.add(r.seed)   # COMPLETE, RUNNING, FAILED, or KILLED by the budget: not re-run
        return done, tries

    def missing_seeds(self, candidate: Candidate | str, purpose: str, n: int, preset: str | None = None) -> list[int]:
        """Of the purpose's target seeds (the first ``n`` of its range; a seed interrupted
        MAX_ATTEMPTS times is replaced by the next), those that still need a run."""
        done, tries = self._seed_status(candidate, purpose, preset)
        start = seed_range(purpose)
        target, s = [], start
        while len(target) < n and s < start + 10_000:
            if s in done or tries.get(s, 0) < MAX_ATTEMPTS:
                target.append(s)
            s += 1
        return [s for s in target if s not in done]

    def seeds_run(self, candidate: Candidate | str, purpose: str, preset: str | None = None) -> int:
        """How many seeds of the purpose the candidate has finished (COMPLETE, FAILED, or KILLED
        for good; runs that are not a verdict (interrupted, cancelled, infrastructure), which
        are re-queued, and runs in flight do not count)."""
        cid, base = self._cid(candidate), Purpose.canonical_of(purpose)
        return len({r.seed for r in self.log.runs_list()
                    if r.candidate_id == cid and self._comparable(r, preset) and Purpose.canonical_of(r.purpose) == base
                    and r.state in (State.COMPLETE, State.FAILED, State.KILLED)
                    and not not_a_verdict(r)})

    def fresh_seeds(self, candidate: Candidate | str, purpose: str, n: int, preset: str | None = None) -> list[int]:
        """The next ``n`` seeds of the purpose's range this candidate has never run."""
        done, tries = self._seed_status(candidate, purpose, preset)
        out, s = [], seed_range(purpose)
        while len(out) < n:
            if s not in done and s not in tries:
                out.append(s)
            s += 1
        return out

    # ------------------------------------------------------------------ retention
    def model_keepers(self) -> dict[str, str]:
        """{candidate id: why} of the candidates whose model a user may want whatever the
        space: the best (overall and of each research line; the seed while nothing beats it)
        and every PROMOTED candidate. An undecided (READY) candidate is not among them: its
        model is kept only while its run is among the last ones (``models_needed``)."""
        why: dict[str, str] = {}
        best = self.best()
        if best is not None:
            why[best.id] = "the best candidate"
        for thread, b in self.best_by_thread().items():
            if b is not None:
                why.setdefault(b.id, f"the best of research line {thread!r}")
        for c in self.log.candidates_list():
            if c.state is State.PROMOTED:
                why.setdefault(c.id, "a promoted candidate")
        return why

    def models_needed(self, keep_last: int = 2, has_model: Callable[[Run], bool] | None = None) -> dict[str, str]:
        """{run id: why} of the ended runs whose model file can still be needed (``Lab.reclaim``
        removes the other ended runs' model files): one run of each of ``model_keepers()`` (the
        best candidates and the promoted ones): its latest COMPLETE selection-free run on the
        lab's preset, else its latest COMPLETE run (red-team runs never stand for a candidate);
        plus the ``keep_last`` runs that ended last, whatever their candidate or state (this is
        where an undecided candidate's latest model stays, so ``keep_last=0`` keeps the best and
        promoted candidates' models only). ``has_model`` (the lab's look at a run's folder): a
        keeper's run is chosen among those that still have a model file, so a candidate whose
        chosen run lost its model (reclaimed before it was promoted) keeps the one a later re-run
        made. RUNNING runs are never in the answer and never touched."""
        runs = [r for r in self.log.runs_list() if r.state is not State.RUNNING]
        by_candidate: dict[str, list[Run]] = {}
        for r in runs:
            if r.state is State.COMPLETE and r.purpose != Purpose.REDTEAM.value and self._preset_ok(r, None) \
                    and (has_model is None or has_model(r)):
                by_candidate.setdefault(r.candidate_id, []).append(r)
        keep: dict[str, str] = {}
        for cid, reason in self.model_keepers().items():
            mine = by_candidate.get(cid, [])
            pool = [r for r in mine if r.purpose in SELECTION_FREE] or mine
            if pool:
                keep[max(pool, key=lambda r: r.ended_at or r.started_at).id] = reason
        if keep_last > 0:
            for r in sorted(runs, key=lambda r: r.ended_at or r.started_at)[-keep_last:]:
                keep.setdefault(r.id, f"among the last {keep_last} runs")
        return keep

    # ------------------------------------------------------------------ ownership
    def owner(self, run: Run | str) -> dict | None:
        """The {host, pid, start} of the process that started a run (None if not recorded)."""
        r = self.log.get("run", run) if isinstance(run, str) else run
        return (r.meta or {}).get("owner") if r is not None else None

    def interrupted(self) -> list[Run]:
        """RUNNING runs whose owner process is dead."""
        return [r for r in self.log.runs_list() if r.state is State.RUNNING and not owner_alive(r.meta.get("owner"))]

    def reap_interrupted(self) -> list[Run]:
        """Mark RUNNING runs whose owner process died as KILLED ("interrupted"); missing_seeds
        then re-queues their seeds. The ledger's only write."""
        reaped = []
        for r in self.interrupted():
            k = r.with_state(State.KILLED, ended_at=now(),
                             error={"ename": "Interrupted", "evalue": "the process running it died; re-queued",
                                    "reason": "interrupted", "cell": None, "traceback": ""})
            self.log.append(k)
            reaped.append(k)
        if reaped:
            self.log.event("reaped", runs=[r.id for r in reaped])
        return reaped


# ---------------------------------------------------------------------------- function forms (lab first)

def runs_of(lab, candidate: Candidate | str, *, purposes: Iterable[str] | None = None, preset: str | None = None,
            states: Iterable[State] | None = (State.COMPLETE,)) -> list[Run]:
    return Ledger(lab).runs_of(candidate, purposes=purposes, preset=preset, states=states)


def mean_metric(lab, c: Candidate | str, purposes: Sequence[str] = SELECTION_FREE) -> float | None:
    return Ledger(lab).mean(c, purposes)


def best_candidate(lab, thread: str | None = None) -> Candidate:
    return Ledger(lab).best(thread)  # type: ignore[return-value]


def noise_sd(lab) -> float | None:
    return Ledger(lab).noise_sd()


def latest_verdict(lab, c: Candidate | str, stage: str | None = None) -> Verdict | None:
    return Ledger(lab).latest_verdict(c, stage)


def missing_seeds(lab, candidate: Candidate | str, purpose: str, n: int, preset: str | None = None) -> list[int]:
    return Ledger(lab).missing_seeds(candidate, purpose, n, preset)


def fresh_seeds(lab, candidate: Candidate | str, purpose: str, n: int, preset: str | None = None) -> list[int]:
    return Ledger(lab).fresh_seeds(candidate, purpose, n, preset)


def reap_interrupted(lab) -> list[Run]:
    return Ledger(lab).reap_interrupted()
