"""The research loop: threads of research, screening → confirmation → promotion, resume.

The plan is a function of the log: every decision is re-derived from the records, so a
loop killed at any moment and started again with the same command picks up where the log
says it was (interrupted runs are marked KILLED and re-queued; nothing completed is redone).

Work is cut into units that run on the executor's slots concurrently:
  - screen:  propose + implement a new idea in a thread, then one screening run (and the
             parent's run on the same seed if it has none: comparisons are paired);
  - confirm: one confirmation seed at a time (fresh seeds, never the screening ones; the
             parent's run on that seed too where it lacks it) of a candidate whose screening
             beat its parent by the noise margin;
  - audit:   after each confirmation seed the sequential rule stops a clear loser, asks for
             another seed, or, at the cap, lets the paired significance test decide;
  - ablation: once the research has nothing under way (the loop would end), the best candidate,
             when two or more of its changes can be removed alone, runs beside each "candidate
             minus one change" on final seeds, one run per unit, then its rows are recorded
             (``ablate="off"``: never).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
import time
from datetime import datetime, timezone
from dataclasses import asdict, dataclass, field
from typing import Callable

from . import ablation as _ablation
from ._audit import audit
from .errors import AutolabError, BudgetExceeded, CandidateError
from .executors import Executor, get_executor
from .harnesskit import seed_cache_ready
from ._implement import Implementer, implement
from .lab import Lab
# every question about the log is the ledger's; best_candidate, mean_metric, noise_sd and
# latest_verdict are imported here for this module and for callers that import them from search
from .ledger import (CANCELLED, FINAL_RANGE, Ledger, best_candidate, current_owner, latest_verdict,  # noqa: F401
                     mean_metric, missing_seeds, noise_sd, not_a_verdict, owner_alive, reap_interrupted, runs_of)
from .ledger import seed_range as ledger_seed_range
from .merge import merge_candidates, merged_pairs
from ._propose import Proposer, get_proposer
from .records import Candidate, Idea, Purpose, Run, State
from ._run import submit_run

DIRECTIONS = ("optimizer", "architecture", "schedule", "systems", "data")


# ---------------------------------------------------------------------------- queries on the log

def research_lines(threads: int) -> list[tuple[str, str]]:
    """(thread name, direction) for K threads; one thread is 'main' with no direction."""
    if threads <= 1:
        return [("main", "")]
    return [(f"t{i}-{DIRECTIONS[i % len(DIRECTIONS)]}", DIRECTIONS[i % len(DIRECTIONS)]) for i in range(threads)]



# ---------------------------------------------------------------------------- units of work

@dataclass(frozen=True)
class RunUnit:
    """One run of ``candidate`` on random seed ``seed`` for ``purpose``."""
    candidate: Candidate
    purpose: Purpose
    seed: int

    @property
    def claim(self) -> tuple[str, str, int]:
        return (self.candidate.id, self.purpose, self.seed)


@dataclass(frozen=True)
class AuditUnit:
    """The audit of ``candidate`` at ``stage`` ("screen" or "confirm") once its runs are in."""
    candidate: Candidate
    stage: str


@dataclass(frozen=True)
class ProposeUnit:
    """Propose a new idea in the next research line and implement it."""


@dataclass(frozen=True)
class ImplementUnit:
    """Implement an idea an earlier process proposed but left without a candidate."""
    idea: Idea


@dataclass(frozen=True)
class AblationUnit:
    """Record the rows of ablation ``plan`` of ``candidate`` once all its runs are in."""
    candidate: Candidate
    plan: _ablation.Plan


Unit = RunUnit | AuditUnit | ProposeUnit | ImplementUnit | AblationUnit

ABLATE_MODES = ("auto", "off")   # loop(ablate=...), `autolab loop --ablate`

# ---------------------------------------------------------------------------- loop

@dataclass(frozen=True)
class LoopSummary:
    lab: str
    task: str
    preset: str
    experiments: int
    runs: int
    failed: int
    killed: int
    promoted: int
    baseline: float | None
    best: float | None
    best_id: str
    wall_s: float
    slot_idle_fraction: float | None
    stopped: str
    llm_calls: int = 0
    llm_cost: float = 0.0
    reason: str = "goal"          # why the loop ended: one of STOP_REASONS (the CLI's exit code follows it)
    ideas_failed: int = 0         # proposals or implementations that failed (malformed, edits that did not apply...)
    ideas_rejected: int = 0       # near-duplicates refused
    ideas_abandoned: int = 0      # PROPOSED ideas given up with their reason (not counted toward the goal)
    ideas_pending: int = 0        # PROPOSED ideas still without a candidate (implemented on resume)
    decisions: int = 0            # candidates (not the seed) decided: PROMOTED or REJECTED
    runs_per_decision: float | None = None          # the decided candidates' screening + confirmation runs, per decision
    confirm_runs_per_decision: float | None = None  # of which confirmation runs (the sequential rule's cost)
    pairing_runs: int = 0         # runs of parents on their children's seeds (shared by siblings; not in runs_per_decision)
    ablations: int = 0            # candidates with a recorded ablation (not experiments: they decide nothing)
    ablation_runs: int = 0        # runs made for ablations (counted in ``runs`` too, not in runs_per_decision)

    def to_dict(self) -> dict:
        return asdict(self)


# Why a loop ended (LoopSummary.reason); the CLI maps each to its exit code (autolab.cli.EXIT_CODES).
STOP_REASONS = ("goal", "exhausted", "cap", "time_limit", "interrupted", "error")


def _stop_reason(e: BaseException) -> str:
    return "cap" if isinstance(e, BudgetExceeded) else "error"


def goal_ideas(lab: Lab) -> list[Idea]:
    """The ideas that count toward ``iterations``: every proposal but merges and abandoned ones."""
    return [i for i in lab.log.ideas_list() if i.source != "merge" and not i.meta.get("abandoned")]


# ---------------------------------------------------------------------------- time-boxed loops

TIME_LIMIT_REASON = "time limit"   # Run.error["reason"] of a run a hard time limit killed (re-queued on resume)


def run_wall_s(r: Run) -> float | None:
    """The wall time a run took: the executor's measure, else its start and end stamps."""
    w = (r.timings or {}).get("papermill_s")
    if isinstance(w, (int, float)) and w >= 0:
        return float(w)
    try:
        return max(0.0, (datetime.fromisoformat(r.ended_at) - datetime.fromisoformat(r.started_at)).total_seconds())
    except (TypeError, ValueError):
        return None


def _busy_s(r: Run) -> float:
    """A run's wall time less the time it waited for a GPU that another run held (runs_per_gpu:
    that wait depends on what else ran, not on the run)."""
    wait = (r.timings or {}).get("gpu_wait_s")
    wall = run_wall_s(r) or 0.0
    return max(0.0, wall - wait) if isinstance(wait, (int, float)) and wait > 0 else wall


def p90(xs: list[float]) -> float:
    """The 90th percentile (nearest rank) of a non-empty list."""
    ys = sorted(xs)
    return ys[max(0, math.ceil(0.9 * len(ys)) - 1)]


def _expected_run_s(lab: Lab) -> float | None:
    """The preset's ``expected_run_s`` (a run's usual wall time, cold), if it declares one."""
    v = lab.preset.settings.get("expected_run_s")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None


def run_durations(lab: Lab, purpose: str, runs: list[Run] | None = None, *, of_seed: bool | None = None,
                  candidate_id: str | None = None) -> tuple[float, float, str]:
    """How long one run of ``purpose`` on the lab's preset will likely hold its slot (or its GPU,
    where runs take turns): (p90, median, how that was found), from the busy wall time
    (``_busy_s``) of completed runs of the same preset, from the best pool the log holds:

    1. ``candidate_id``'s own runs, of any purpose (the same code: on an H100 a candidate that
       changes the batch shape recompiles for 60 s, and its runs take 140 s where others take 99 s;
       below ten runs the p90 is their longest);
    (Every pool is taken from the runs on the lab's comparison hardware, ``Lab.hardware``, where
    it has any.)

    2. else runs of the same purpose, else of any purpose, narrowed first by ``of_seed`` (True: a
       run of the lab's seed, False: of any other) to runs of the same kind where there are any (a
       kernels candidate re-times only what it changed; a nanochat candidate compiles without the
       seed's warm cache); where there are none of that kind, nothing comparable exists and the
       figures are at least the preset's ``expected_run_s`` (a cold run);
    3. before any run, the preset's ``expected_run_s``, else its ``timeout_s`` (a safety net, far
       longer than a typical run).

    The p90 is what a new run is judged by; the median what a run ahead of it in a queue will
    likely take (a sum of runs spreads less than each)."""
    preset = lab.preset_name
    done = [r for r in (lab.log.runs_list() if runs is None else runs)
            if r.state is State.COMPLETE and r.preset == preset and run_wall_s(r) is not None]
    here = Ledger(lab)   # the comparison hardware's runs where there are any (an H200 run is shorter than an H100's)
    if here.hardware is not None:
        done = [r for r in done if here.hardware_of(r) == here.hardware] or done
    own = [_busy_s(r) for r in done if candidate_id is not None and r.candidate_id == candidate_id]
    if own:
        return p90(own), float(statistics.median(own)), \
            f"p90 of {len(own)} completed run(s) of {candidate_id} itself on {preset}"
    expected = _expected_run_s(lab)
    who, floor = "", None
    if of_seed is not None:
        seed_id = lab.seed_candidate().id
        kind = [r for r in done if (r.candidate_id == seed_id) == of_seed]
        if kind:
            done, who = kind, (" (the seed's)" if of_seed else " (candidates')")
        else:
            floor = expected
    same = [r for r in done if Purpose.canonical_of(r.purpose) == Purpose.canonical_of(purpose)]
    for pool, what in ((same, f"{Purpose.canonical_of(purpose)} runs"), (done, "runs of any purpose")):
        if pool:
            busy = [_busy_s(r) for r in pool]
            est, typical = p90(busy), float(statistics.median(busy))
            how = f"p90 of {len(pool)} completed {what}{who} on {preset}"
            if floor is not None and floor > est:
                kind_name = "the seed" if of_seed else "a candidate"
                return floor, max(typical, floor), (f"the preset {preset}'s expected_run_s: no completed run of "
                                                    f"{kind_name} yet, and the {how} is less")
            return est, typical, how
    if expected is not None:
        return expected, expected, f"no completed run yet: the preset {preset}'s expected_run_s"
    timeout = float(lab.preset.timeout_s)
    return timeout, timeout, f"no completed run yet: the preset {preset}'s timeout_s"


def run_duration_estimate(lab: Lab, purpose: str, runs: list[Run] | None = None, *,
                          of_seed: bool | None = None, candidate_id: str | None = None) -> tuple[float, str]:
    """(p90, how) of ``run_durations``: how long one run of ``purpose`` will likely take."""
    est, _, how = run_durations(lab, purpose, runs, of_seed=of_seed, candidate_id=candidate_id)
    return est, how


def lane_wait_s(ahead: list[tuple[float, float]], ended: list[float], lanes: int) -> float:
    """Seconds from now until one of ``lanes`` is free for a new run's timed work (0: at once).

    A lane is a slot, or a GPU whose runs take turns through the baton: it serves one run at a
    time. ``ahead``: (start, expected busy seconds) of each run in flight; ``ended``: the end of
    each run that ended; all in seconds relative to now (negative: in the past). Runs in flight
    are served in the order they started; each holds a lane from the later of its start and that
    lane's last release (a run that started while the lane was held waited for it: on an H100 a
    run 99 s into its life had waited all that time for the GPU, and held it 121 s more)
    until its expected end, and never less than until now, since it is still going. The lanes'
    last releases are the latest ``lanes`` ends (where a lane's release is not known, an earlier
    one counts: the wait is over- rather than underestimated)."""
    lanes = max(1, lanes)
    free = sorted(ended)[-lanes:]
    free = [-math.inf] * (lanes - len(free)) + free
    for start, busy in sorted(ahead):
        i = min(range(lanes), key=free.__getitem__)
        free[i] = max(0.0, max(start, free[i]) + busy)
    return max(0.0, min(free))


@dataclass(frozen=True)
class TimeLimit:
    """When a loop must be done: ``deadline`` in ``time.monotonic()`` seconds; ``hard``: runs still
    going at the deadline are killed and recorded KILLED "time limit" (re-run on resume); else they
    finish. ``label`` says where the limit came from, for messages. ``reserve``: seconds to keep
    free before the deadline for work after the loop, asked again at each look (e.g. the demo's
    final comparison, ``final_comparison_s``, which firms up as runs are measured)."""
    deadline: float
    hard: bool = False
    label: str = ""
    reserve: Callable[[], float] | None = field(default=None, compare=False)

    @classmethod
    def make(cls, max_time_s: float | None = None, deadline: datetime | None = None, hard: bool = False,
             start: float | None = None, reserve: Callable[[], float] | None = None) -> "TimeLimit | None":
        """The earlier of ``max_time_s`` after ``start`` (default now) and the wall-clock ``deadline``."""
        t0 = time.monotonic() if start is None else start
        options = []
        if max_time_s is not None:
            options.append((t0 + max_time_s, f"max time {max_time_s:g} s"))
        if deadline is not None:
            left = (deadline - datetime.now(deadline.tzinfo)).total_seconds()
            options.append((time.monotonic() + left, f"deadline {deadline.isoformat()}"))
        if not options:
            return None
        when, label = min(options)
        return cls(when, hard, label + (" (hard)" if hard else "") + (", less the time kept for what follows the loop"
                                                                     if reserve is not None else ""), reserve)

    def left(self) -> float:
        return self.deadline - time.monotonic() - (self.reserve() if self.reserve is not None else 0.0)

    def describe(self) -> str:
        """``label``, and what the reserve keeps now, for messages."""
        return self.label if self.reserve is None else f"{self.label}: {self.reserve():.0f} s now"


def unimplemented_ideas(lab: Lab) -> list[Idea]:
    """PROPOSED ideas that never got a candidate (a kill or a cap stopped their implementation)."""
    return [i for i in lab.log.ideas_list() if i.state is State.PROPOSED and i.source != "merge"]


def _llm_room(proposer, implementer, need_units: int) -> str:
    """'' when the LLM caps leave room for ``need_units`` more ideas (a proposal and its
    implementation each), else the cap's message. Proposers without an LLM always have room."""
    llm = getattr(proposer, "llm", None) or getattr(implementer, "llm", None)
    if llm is None or not hasattr(llm, "check_budget"):
        return ""
    per_idea = (1 if getattr(proposer, "llm", None) is not None else 0) + (1 if getattr(implementer, "llm", None) is not None else 0)
    try:
        llm.check_budget(need=max(1, per_idea) * need_units)
    except BudgetExceeded as e:
        return f"{type(e).__name__}: {e}"
    return ""


# ---------------------------------------------------------------------------- steering a running loop

INFRA_RETRIES = 2   # default: how often one run the machine ended (not_a_verdict) is re-run within one loop


class LoopControl:
    """Steers a loop that runs in another thread (``autolab.start_loop``'s handle, the
    Dashboard's buttons); every method is thread-safe and returns at once.

    - ``stop(cancel_runs=False)``: no new work starts (no run, proposal or implementation;
      audits of runs that ended still happen); the loop ends when its runs in flight have
      ended. With ``cancel_runs`` those are cancelled too (see ``cancel_run``).
    - ``pause()`` / ``resume()``: while paused nothing new starts, runs in flight go on, and the
      loop waits (it does not end) until resumed or stopped.
    - ``cancel_run(run_id)``: the run is killed now and recorded KILLED "cancelled by the user",
      which is not a verdict on its candidate: that candidate's runs of the same purpose wait for
      the next loop, which re-runs the seed.

    The STOP file (``lab.request_stop()``, ``autolab stop``) still stops a loop started either way."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = False
        self._paused = False
        self._sched: "_Scheduler | None" = None
        self.attached = threading.Event()   # set once the loop runs (its lab lock taken)

    @property
    def stop_requested(self) -> bool:
        return self._stop

    @property
    def paused(self) -> bool:
        return self._paused and not self._stop

    def stop(self, cancel_runs: bool = False) -> None:
        with self._lock:
            self._stop = True
            sched = self._sched
        if sched is not None:
            sched.note("stop requested from the notebook: no new work starts; the loop ends when its runs in flight "
                       "have ended" + (" (cancelled)" if cancel_runs else ""))
            sched.wake()
            for run in sched.runs_in_flight() if cancel_runs else []:
                try:
                    sched.cancel(run.id)
                except AutolabError:
                    pass   # it ended meanwhile, or the executor cannot cancel: it finishes

    def pause(self) -> None:
        with self._lock:
            self._paused = True
            sched = self._sched
        if sched is not None:
            sched.note("paused: no new work starts until resumed (runs in flight go on)")

    def resume(self) -> None:
        with self._lock:
            was, self._paused = self._paused, False
            sched = self._sched
        if sched is not None:
            if was:
                sched.note("resumed")
            sched.wake()

    def runs_in_flight(self) -> list[Run]:
        """The RUNNING records of the loop's runs now in flight (oldest first)."""
        sched = self._sched
        return sched.runs_in_flight() if sched is not None else []

    def cancel_run(self, run_id: str | None = None) -> str:
        """Cancel one run in flight (``run_id``; None: the only one in flight). Returns its id."""
        sched = self._sched
        if sched is None:
            raise AutolabError("no loop is running under this control: nothing to cancel")
        if run_id is None:
            going = sched.runs_in_flight()
            if len(going) != 1:
                raise AutolabError(f"{len(going)} runs are in flight ({', '.join(r.id for r in going) or 'none'}); "
                                   "name the one to cancel: cancel_run(run_id)")
            run_id = going[0].id
        sched.cancel(run_id)
        return run_id

    def kill_in_flight(self, reason: str) -> None:
        """Kill every run in flight now, recorded KILLED ``reason`` (the process is exiting)."""
        sched = self._sched
        for run in sched.runs_in_flight() if sched is not None else []:
            sched.executor.cancel(run.id, reason)

    def stopped_because(self) -> str:
        """The loop's stop message once it decided to stop ('' while it goes on)."""
        sched = self._sched
        return sched.stopped if sched is not None else ""

    def _attach(self, sched: "_Scheduler | None") -> None:
        with self._lock:
            self._sched = sched
        if sched is not None:
            self.attached.set()


def _needs_warm_start(lab: Lab, seed: Candidate) -> bool:
    """The preset asks for a warm start (``warm_start = true``: its runs torch.compile) and this
    machine holds no compile cache of the lab's seed for the preset's device."""
    if not lab.preset.settings.get("warm_start"):
        return False
    return not seed_cache_ready(lab.key, seed.id, lab.preset.device)


class _Baseline:
    """The seed's selection-free runs, started without waiting: proposals are prepared while they run."""

    def __init__(self, lab: Lab, executor: Executor, on_event, bar, notify: Callable[[], None],
                 fits: Callable[..., bool] | None = None, track: Callable[[Run, object], None] | None = None):
        seed = lab.seed_candidate()
        seeds = missing_seeds(lab, seed, "confirm", lab.task.seeds.confirmation)
        self.futs = []
        for s in seeds:
            if fits is not None and not fits(Purpose.CONFIRM, of_seed=True, candidate_id=seed.id):
                break   # the time limit holds no more of them: the loop stops and says why
            run, fut = submit_run(lab, seed, s, purpose="confirm", executor=executor, on_event=on_event)
            if track is not None:
                track(run, fut)
            self.futs.append(fut)
        if not seeds and _needs_warm_start(lab, seed) and (fits is None or fits(Purpose.FINAL, of_seed=True,
                                                                                candidate_id=seed.id)):
            # a machine without the seed's compile cache: one of the seed's final-comparison runs
            # (needed anyway, never used for selection) writes it before any candidate compiles
            for s in missing_seeds(lab, seed, Purpose.FINAL, lab.task.seeds.final)[:1]:
                run, fut = submit_run(lab, seed, s, purpose=Purpose.FINAL, executor=executor, on_event=on_event)
                if track is not None:
                    track(run, fut)
                self.futs.append(fut)
                if on_event is not None:
                    on_event({"type": "warm_start", "run": run.id, "seed": s})
        for f in self.futs:
            f.add_done_callback(lambda _f: (bar.update(1) if bar is not None else None, notify()))

    def done(self) -> bool:
        return all(f.done() for f in self.futs)

    def error(self) -> BaseException | None:
        return next((f.exception() for f in self.futs if f.done() and f.exception() is not None), None)


class _LabLock:
    """One loop per lab: ``<lab>/loop.lock`` names the owner; a dead owner's lock is taken over."""

    def __init__(self, lab: Lab):
        self.path = lab.path / "loop.lock"

    def __enter__(self) -> "_LabLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                with os.fdopen(fd, "w") as f:
                    json.dump(current_owner(), f)
                return self
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text())
                except (OSError, json.JSONDecodeError):
                    owner = None
                if owner_alive(owner):
                    raise AutolabError(f"another loop (pid {owner.get('pid')}) is running on {self.path.parent}; "
                                       "stop it first (autolab stop, or lab.request_stop()) or use another --lab") from None
                self.path.unlink(missing_ok=True)
        raise AutolabError(f"could not take {self.path}; remove it if no loop is running")

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


class _Scheduler:
    def __init__(self, lab: Lab, iterations: int, threads: list[tuple[str, str]], proposer: Proposer,
                 implementer: Implementer | None, executor: Executor, on_event: Callable[[dict], None] | None,
                 confirm_margin_sd: float, max_confirming: int, bar, insights, merge_llm=None):
        self.lab, self.iterations, self.lines = lab, iterations, threads
        self.proposer, self.implementer, self.executor = proposer, implementer, executor
        self.on_event, self.margin_sd, self.max_confirming = on_event, confirm_margin_sd, max_confirming
        self.bar, self.insights, self.merge_llm = bar, insights, merge_llm
        self.cv = threading.Condition()
        self.claimed: set[tuple[str, str, int]] = set()   # (candidate, purpose, seed) in flight
        self.busy_candidates: set[str] = set()           # candidates being proposed/implemented/audited
        self.in_flight = 0
        self.stopped = ""
        self.error: BaseException | None = None
        self.proposing = 0
        self.line_rr = 0
        self.exhausted_at: int | None = None   # promotions seen when the proposer last had nothing to try
        self.reason = ""                       # one of STOP_REASONS once a stop is decided
        self.baseline: _Baseline | None = None
        self.early = 0                         # proposals started while the baseline runs
        self.limit: TimeLimit | None = None    # no run starts that would likely end past it
        self.hard_killed = False               # a hard time limit killed the runs in flight: nothing more starts
        self.deferred: tuple = ()              # the last time-limit refusal judged again once runs in flight end
        self.inflight_runs: dict[str, tuple[Run, object]] = {}   # run id -> (RUNNING record, future of the final one)
        self.n_slots = 1                       # the executor's slots for this preset's runs (set by loop())
        self.n_lanes = 0                       # GPUs whose runs take turns (gpu_baton); 0: every slot runs at once
        self.user_stopped = False                        # the user asked to stop: no run starts
        self.control: LoopControl | None = None          # stop / pause / cancel from another thread
        self.infra_retries = INFRA_RETRIES               # re-runs of a run the machine ended, per loop
        self.infra_failures: dict[tuple[str, str, int], int] = {}   # (candidate, purpose, seed) -> failures seen
        self.held: dict[tuple[str, str], str] = {}       # (candidate, purpose) -> why its runs wait for the next loop
        # PROPOSED ideas left without a candidate by an earlier process: implemented first
        self.orphans: list[Idea] = unimplemented_ideas(lab)
        self.ablate = "auto"                             # ABLATE_MODES: ablate the best once the research is idle
        self.ablation_plan: _ablation.Plan | None = None   # the ablation under way (from the log on resume)

    # -- what to do next (called with the lock held)
    def _confirm_targets(self) -> list[Candidate]:
        out = []
        for c in self.lab.log.candidates_list():
            if c.state is not State.READY or c.id in self.busy_candidates:
                continue
            sv = latest_verdict(self.lab, c, "screen")
            if sv is None or sv.state is not State.PENDING:
                continue
            if latest_verdict(self.lab, c, "confirm") and latest_verdict(self.lab, c, "confirm").state is not State.PENDING:
                continue
            out.append((c, sv.effect))
        # the most promising first (the larger screening gain): with max_confirming and a time box,
        # the slots go where a decision is likeliest to be worth having
        out.sort(key=lambda ce: -(ce[1] if isinstance(ce[1], (int, float)) and math.isfinite(ce[1]) else -math.inf))
        return [c for c, _ in out]

    def _unscreened(self) -> list[Candidate]:
        """READY candidates without a screening verdict (resume, reopened, hand-made, merges)."""
        lab = self.lab
        return [c for c in lab.log.candidates_list() if c.state is State.READY and c.parent_id
                and c.id not in self.busy_candidates and latest_verdict(lab, c, "screen") is None]

    def _baseline_ready(self) -> bool:
        if self.baseline is None or self.baseline.done():
            if self.baseline is not None and self.baseline.error() is not None and self.error is None:
                self.error = self.baseline.error()
            return True
        return False

    def _next_orphan(self) -> ImplementUnit | None:
        """Resume step: implement a PROPOSED idea an earlier process left without a candidate."""
        while self.orphans:
            idea = self.orphans.pop(0)
            room = _llm_room(None, self.implementer, 1) if self.implementer is not None else ""
            if room:
                self.orphans.insert(0, idea)
                self._set_stop(room, "cap")
                return None
            return ImplementUnit(idea)
        return None

    def _user_stop(self) -> None:
        """A stop asked by the user (STOP file or LoopControl): nothing new starts, and runs that were
        submitted but still wait for a slot are dropped (recorded KILLED "interrupted": re-run by the
        next loop), so the loop ends with the runs actually going."""
        if self.user_stopped:
            return
        self.user_stopped = True
        self._set_stop("stop requested", "interrupted")
        for run in self.runs_in_flight():
            self.executor.cancel(run.id, "interrupted", waiting_only=True)

    def _set_stop(self, msg: str, reason: str) -> None:
        if not self.stopped:
            self.stopped, self.reason = msg, reason

    def next_unit(self) -> Unit | None:
        unit = self._research_unit()
        return unit if unit is not None else self._ablation_step()

    def _research_unit(self) -> Unit | None:
        lab = self.lab
        stop_file = lab.path / "STOP"
        if stop_file.exists():   # consumed: a later loop must not find it
            stop_file.unlink(missing_ok=True)
            self._user_stop()
        if self.control is not None and self.control.stop_requested:
            self._user_stop()
        if self.limit is not None and self.limit.left() <= 0 and not self.stopped:
            self._set_stop(f"time limit reached ({self.limit.describe()})", "time_limit")
        if self.control is not None and self.control.paused:
            return None   # nothing new starts while paused; the workers wait (see worker())
        if not self._baseline_ready():
            # while the seed's runs go on, only prepare ideas (one per research thread)
            if self.stopped:
                return None
            unit = self._next_orphan()
            if unit is not None or self.stopped:
                return unit
            if self.early < len(self.lines) and len(goal_ideas(lab)) + self.proposing < self.iterations \
                    and not _llm_room(self.proposer, self.implementer, self.proposing + 1):
                self.early += 1
                return ProposeUnit()
            return None
        confirming = self._confirm_targets()
        for c in confirming[: self.max_confirming]:
            unit = self._paired_step(c, Purpose.CONFIRM, self._confirm_want(c))
            if unit is not None:
                return unit
        if self.stopped:
            return None
        unit = self._next_orphan()
        if unit is not None or self.stopped:
            return unit
        for c in self._unscreened():
            unit = self._paired_step(c, Purpose.SCREEN, lab.task.seeds.screening)
            if unit is not None:
                return unit
        n_ideas = len(goal_ideas(lab))
        if n_ideas + self.proposing < self.iterations and \
                (self.exhausted_at is None or self.exhausted_at != self._promotions()):
            # caps stop a proposal before it is made: room for it and for those under way
            room = _llm_room(self.proposer, self.implementer, self.proposing + 1)
            if room:
                if self.proposing == 0:
                    self._set_stop(room, "cap")
                return None
            return ProposeUnit()   # (after "nothing left to try", only once a promotion gave a new parent)
        return None

    def judge_ready(self) -> list[Candidate]:
        """The loop's first judging pass, before any run is launched or awaited: every audit the
        runs already in the log allow (a candidate reopened with its runs kept, an unscreened one
        whose runs and its parent's are in, a confirmation whose next seed is in), made in the order
        the loop would reach them, until none is left. Only once the seed's baseline is complete,
        so the verdicts are those the loop would reach after it; nothing waits for a run. Returns
        the candidates judged. (On an H100 three reopened candidates were judged only after the
        warm-start run ended 144 s later, while the second run slot stood idle.)"""
        lab = self.lab
        seed = lab.seed_candidate()
        if missing_seeds(lab, seed, Purpose.CONFIRM, lab.task.seeds.confirmation):
            return []
        judged, seen = [], set()
        while True:
            with self.cv:
                unit = next((u for u in self._ready_audits() if (u.candidate.id, u.stage, self._looked(u)) not in seen),
                            None)
                if unit is None:
                    return judged
                seen.add((unit.candidate.id, unit.stage, self._looked(unit)))
                self.busy_candidates.add(unit.candidate.id)
            try:
                self.run_unit(unit)
            finally:
                with self.cv:
                    self.busy_candidates.discard(unit.candidate.id)
            judged.append(unit.candidate)

    def _looked(self, unit: AuditUnit) -> int:
        """The confirmation seeds ``unit``'s candidate had at its last look (a new look is a new audit)."""
        return self._confirm_want(unit.candidate) if unit.stage == "confirm" else 0

    def _ready_audits(self):
        """The audits ``_research_unit`` would reach with no run to make first: of candidates under
        confirmation, then of unscreened ones (called with the lock held)."""
        lab = self.lab
        for c in self._confirm_targets():
            unit = self._paired_step(c, Purpose.CONFIRM, self._confirm_want(c))
            if isinstance(unit, AuditUnit):
                yield unit
        for c in self._unscreened():
            unit = self._paired_step(c, Purpose.SCREEN, lab.task.seeds.screening)
            if isinstance(unit, AuditUnit):
                yield unit

    # -- ablation (called with the lock held)
    def _research_idle(self) -> bool:
        """True when the research has nothing under way and nothing to start: no proposal, no
        research run or audit in flight, the baseline done, not paused. The loop would end now."""
        if self.control is not None and self.control.paused:
            return False
        if self.proposing or not self._baseline_ready():
            return False
        if any(k[1] != Purpose.ABLATION for k in self.claimed):
            return False
        ablating = self.ablation_plan.candidate_id if self.ablation_plan is not None else None
        return all(cid == ablating for cid in self.busy_candidates)

    def _ablation_step(self) -> Unit | None:
        """The ablation's next unit once the research is idle: a run of the plan under way (an
        interrupted plan first, else a new one for ``_ablation.due``), then the recording of its
        rows. Never after a user stop, a time limit or an error (a cap on LLM spending still lets
        it run: it needs no LLM)."""
        if self.ablate != "auto" or self.user_stopped or self.hard_killed or self.reason not in ("", "cap"):
            return None
        if not self._research_idle():
            return None
        lab = self.lab
        p = self.ablation_plan
        if p is None:
            p = self.ablation_plan = self._next_ablation()
            if p is None:
                return None
        missing = _ablation.missing_runs(lab, p)
        for c, s in missing:
            unit = RunUnit(c, Purpose.ABLATION, s)
            if unit.claim not in self.claimed and self._may_run(c, Purpose.ABLATION):
                return unit
        if missing or any(k[1] == Purpose.ABLATION for k in self.claimed) or p.candidate_id in self.busy_candidates:
            return None   # runs in flight, or held for the next loop: the plan stays in the log
        return AblationUnit(lab.candidate(p.candidate_id), p)

    def _next_ablation(self) -> "_ablation.Plan | None":
        """The ablation to work on: one an earlier process left unfinished, else a new plan for the
        candidate ``_ablation.due`` names (recorded in the log before any of its runs starts)."""
        lab = self.lab
        pend = _ablation.pending(lab)
        if pend:
            p = pend[0]
            self._note(f"ablation {p.ablation_id} of {p.candidate_id} (started earlier, by {p.by or 'hand'}): finishing "
                       f"it, {len(_ablation.missing_runs(lab, p))} run(s) to make")
            return p
        c = _ablation.due(lab)
        if c is None:
            return None
        try:
            p = _ablation.plan(lab, c, by="loop")
        except AutolabError as e:   # e.g. the task's [seeds] final is below 2
            self.ablate = "off"
            self._note(f"no ablation of {c.id}: {e}")
            return None
        n_changes = len(_ablation.changes(lab, c))
        self._note(f"ablation {p.ablation_id} of {c.id} (the best, {n_changes} changes): it and {len(p.to_run) - 1} "
                   f"variant(s) without one change each on final seeds {list(p.seeds)}, "
                   f"{len(_ablation.missing_runs(lab, p))} run(s) to make")
        return p

    def _cap(self) -> int:
        """The most confirmation seeds a candidate gets (the sequential rule's cap)."""
        return max(self.lab.task.seeds.confirmation, self.lab.task.significance.min_seeds)

    def _confirm_want(self, c: Candidate) -> int:
        """How many confirmation seeds ``c`` needs now: one more than at its last undecided look
        (the sequential rule), up to the cap; a task's own rule (the record rule) takes them all at once."""
        if self.lab.task.significance.test == "one_sample_below_target":
            return self._cap()
        v = latest_verdict(self.lab, c, "confirm")
        looked = int(v.meta.get("seeds_run") or 0) if v is not None and v.state is State.PENDING else 0
        cap = self._cap()
        want = min(cap, looked + 1)
        if self.limit is not None and want < cap:
            # the time box has no room for one look per seed still needed: spread them over the looks
            # that fit, as many at once as run side by side (never more: a seed that cannot start
            # before the limit would leave the look, and so the decision, undone)
            rounds, need = self._looks_left(c), cap - looked
            if 0 < rounds < need:
                at_once = max(1, self.n_lanes or self.n_slots)
                want = min(cap, looked + min(at_once, -(-need // rounds)))
        return want

    def _looks_left(self, c: Candidate) -> int:
        """How many one-seed confirmation looks at ``c``, one after another, fit in the time left
        (each a confirmation run's length, ``run_durations``). Looking less often than after every
        seed never raises the sequential rule's error rates: it is the same test, seen less often."""
        est, _, _ = run_durations(self.lab, Purpose.CONFIRM, candidate_id=c.id)
        left = self.limit.left() if self.limit is not None else math.inf
        return int(left // est) if est and est > 0 else 10**6

    def _paired_step(self, c: Candidate, purpose: Purpose, n: int) -> Unit | None:
        """The next unit of a paired comparison on the first ``n`` seeds of ``purpose``: a run of the
        candidate, then one of its parent on a seed the parent lacks (reused by every sibling), then
        the audit once nothing of either is missing or in flight. None while runs are in flight."""
        lab = self.lab
        parent = lab.candidate(c.parent_id) if c.parent_id else None
        sides = [c] + ([parent] if parent is not None else [])
        missing = [(x, s) for x in sides for s in missing_seeds(lab, x, purpose, n)]
        for x, s in missing:
            if RunUnit(x, purpose, s).claim not in self.claimed and self._may_run(x, purpose):
                return RunUnit(x, purpose, s)
        ids = {x.id for x in sides}
        if not missing and not any(k[0] == c.id or (k[0] in ids and k[1] == purpose) for k in self.claimed):
            return AuditUnit(c, purpose.value if purpose is Purpose.SCREEN else "confirm")
        return None

    def _may_run(self, c: Candidate, purpose: str) -> bool:
        """False once the user stopped the loop (runs in flight finish, none starts), and for a
        candidate whose runs of this purpose were held for the next loop (cancelled by the user,
        or ended by the machine more than ``infra_retries`` times)."""
        if self.user_stopped:
            return False
        return (c.id, Purpose.canonical_of(purpose)) not in self.held

    def _hold(self, run: Run, why: str) -> None:
        """Run nothing more of ``run``'s candidate and purpose in this loop (called with the lock held)."""
        key = (run.candidate_id, Purpose.canonical_of(run.purpose))
        if key not in self.held:
            self.held[key] = why

    def _after_run(self, final: Run) -> None:
        """Count a run the machine ended (not a verdict) toward the retry bound; hold its candidate's
        runs of that purpose for the next loop once the bound is passed."""
        reason = str((final.error or {}).get("reason") or "")
        if not not_a_verdict(final) or reason in (CANCELLED, TIME_LIMIT_REASON, "interrupted"):
            return
        claim = (final.candidate_id, Purpose.canonical_of(final.purpose), final.seed)
        with self.cv:
            n = self.infra_failures[claim] = self.infra_failures.get(claim, 0) + 1
            if n > self.infra_retries:
                self._hold(final, f"ended by the machine {n} times (last: {reason}); re-run by the next loop")
        if n > self.infra_retries:
            self.note(f"{final.candidate_id} {final.purpose} seed {final.seed}: ended by the machine {n} times, past the "
                      f"{self.infra_retries} retries of this loop (last: {reason}); its runs wait for the next loop "
                      "(not a verdict on the candidate)")
        else:
            self.note(f"{final.candidate_id} {final.purpose} seed {final.seed}: ended by the machine ({reason}); "
                      f"re-run ({n} of {self.infra_retries} retries); not a verdict on the candidate")

    def runs_in_flight(self) -> list[Run]:
        with self.cv:
            return [run for run, _ in self.inflight_runs.values()]

    def cancel(self, run_id: str) -> None:
        """Kill one run in flight; it is recorded KILLED "cancelled by the user" (not a verdict) and
        its candidate's runs of that purpose wait for the next loop."""
        with self.cv:
            entry = self.inflight_runs.get(run_id)
            if entry is None:
                going = ", ".join(self.inflight_runs) or "none"
                raise AutolabError(f"run {run_id} is not in flight in this loop (in flight: {going})")
            run = entry[0]
            key = (run.candidate_id, Purpose.canonical_of(run.purpose))
            was_held = key in self.held
            self._hold(run, "a run was cancelled by the user; re-run by the next loop")
        if not self.executor.cancel(run_id, CANCELLED):
            with self.cv:
                if not was_held:
                    self.held.pop(key, None)
            raise AutolabError(f"the {self.executor.name} executor could not cancel run {run_id} (it ended, or this "
                               "executor cannot cancel one run); stop the loop instead (handle.stop())")
        self.note(f"run {run_id} ({run.candidate_id} {run.purpose} seed {run.seed}) cancelled by the user; "
                  "its candidate's runs of that purpose wait for the next loop")

    def wake(self) -> None:
        with self.cv:
            self.cv.notify_all()

    def held_message(self) -> str:
        if not self.held:
            return ""
        parts = [f"{cid} {purpose} ({why})" for (cid, purpose), why in self.held.items()]
        return (f"runs of {len(self.held)} candidate(s) wait for the next loop: " + "; ".join(parts)
                + "; run the loop again to re-run them")

    def queue_ahead(self, runs: list[Run] | None = None) -> tuple[float, str]:
        """(seconds, what): how long a run started now waits for a lane (a slot, or a GPU whose runs
        take turns through the baton) before its own timed work can begin, from the runs in flight:
        each at the median duration ``run_durations`` expects of it (its candidate's own runs where
        there are some), counted from its start (``lane_wait_s``); (0, "") with none in flight."""
        with self.cv:
            going = sorted((run for run, _ in self.inflight_runs.values()), key=lambda r: r.started_at)
        if not going:
            return 0.0, ""
        runs = self.lab.log.runs_list() if runs is None else runs
        now = datetime.now(timezone.utc)

        def ago(stamp: str | None) -> float | None:   # seconds relative to now (negative: past)
            try:
                return (datetime.fromisoformat(stamp) - now).total_seconds()
            except (TypeError, ValueError):
                return None

        ids = {r.id for r in going}
        ended = [t for t in (ago(r.ended_at) for r in runs if r.id not in ids and r.state is not State.RUNNING)
                 if t is not None]
        seed_id = self.lab.seed_candidate().id
        ahead, parts = [], []
        for r in going:
            _, typical, how = run_durations(self.lab, r.purpose, runs, of_seed=r.candidate_id == seed_id,
                                            candidate_id=r.candidate_id)
            start = ago(r.started_at)
            start = 0.0 if start is None else min(0.0, start)
            ahead.append((start, typical))
            parts.append(f"{r.id} of {r.candidate_id}, {-start:.0f} s since its start, about {typical:.0f} s "
                         f"({how.replace('p90 of', 'median of', 1)})")
        lanes = max(1, self.n_lanes or self.n_slots)
        wait = lane_wait_s(ahead, ended, lanes)
        return wait, (f"{len(going)} run(s) in flight on {lanes} {'GPU' if self.n_lanes else 'slot'}(s) hold it "
                      f"about {wait:.0f} s: " + "; ".join(parts))

    def fits(self, purpose: str, of_seed: bool | None = None, candidate_id: str | None = None) -> bool:
        """True when a run of ``purpose`` (of ``candidate_id`` where known) submitted now would
        likely end before the time limit: the wait for a lane behind the runs in flight
        (``queue_ahead``) plus its own duration (``run_durations``' p90); else False, with a note
        that says what was estimated and from what. A refusal while runs are in flight waits for
        them (it is judged again as they end); one with nothing in flight stops the loop."""
        if self.limit is None:
            return True
        runs = self.lab.log.runs_list()
        est, _, how = run_durations(self.lab, purpose, runs, of_seed=of_seed, candidate_id=candidate_id)
        wait, queue = self.queue_ahead(runs)
        left = self.limit.left()
        if wait + est <= left:
            return True
        of = f" of {candidate_id}" if candidate_id else ""
        refusal = (f"time limit ({self.limit.describe()}): a {Purpose.canonical_of(purpose)} run{of} takes about {est:.0f} s "
                   f"({how})" + (f" after a wait for the GPU or slot ({queue})" if queue else ""))
        why = f"{refusal} and {max(0.0, left):.0f} s are left"
        if queue:   # judged again as the runs ahead end (the queue shortens, the estimate firms up)
            # the same refusal (the wait shrinks as time passes) is noted once per set of runs in flight
            key = (Purpose.canonical_of(purpose), candidate_id, est, how, tuple(sorted(self.inflight_runs)))
            if key != self.deferred:
                self.deferred = key
                self._note(why + ", so it waits for the runs in flight before it is judged again")
            return False
        self._set_stop(why + ", so it was not started", "time_limit")
        return False

    def admit(self, unit: Unit) -> bool:
        """The time limit's one gate on new work (called with the lock held): a run starts only if it
        would likely end in time; a proposal only if its screening run would; once the time limit
        stopped the loop, no run starts (runs under way finish), and after a hard kill nothing does."""
        if self.hard_killed:
            return False
        if self.limit is None:
            return True
        if isinstance(unit, RunUnit):
            return self.reason != "time_limit" and self.fits(
                unit.purpose, of_seed=unit.candidate.id == self.lab.seed_candidate().id, candidate_id=unit.candidate.id)
        if isinstance(unit, (ProposeUnit, ImplementUnit)):   # the screening run of a candidate not made yet
            ok = self.reason != "time_limit" and self.fits(Purpose.SCREEN, of_seed=False)
            if not ok and isinstance(unit, ImplementUnit) and unit.idea not in self.orphans:
                self.orphans.insert(0, unit.idea)   # still PROPOSED: implemented once a screen fits, or by the next loop
            return ok
        return True

    def kill_in_flight(self, executor: Executor) -> list[Run]:
        """A hard time limit: stop every run still going (the executor is shut down) and record each
        that did not complete as KILLED "time limit", which the ledger re-queues on resume."""
        with self.cv:
            self.hard_killed = True
            self._set_stop(f"time limit reached ({self.limit.label if self.limit else ''})", "time_limit")
            going = list(self.inflight_runs.values())
        executor.shutdown()
        killed = []
        for run, fut in going:
            try:
                final = fut.result(timeout=120)
            except Exception:   # noqa: BLE001 - the record below says what happened
                final = self.lab.log.get("run", run.id) or run
            if final.state is State.COMPLETE:
                continue
            k = final.with_state(State.KILLED, error={
                "ename": "TimeLimit", "evalue": f"killed at the loop's hard time limit ({self.limit.label if self.limit else ''}); "
                "re-run when the loop resumes", "reason": TIME_LIMIT_REASON, "cell": None, "traceback": ""})
            self.lab.log.append(k)
            killed.append(k)
        if killed:
            msg = f"at the hard limit {len(killed)} run(s) still going were killed and recorded KILLED 'time limit' " \
                  "(re-run when the loop resumes)"
            self._note(msg)
            with self.cv:
                self.stopped = f"{self.stopped}; {msg}"
        return killed

    def track(self, run: Run, fut) -> None:
        """Keep ``run`` among the runs in flight until its future resolves (for a hard time limit)."""
        with self.cv:
            self.inflight_runs[run.id] = (run, fut)

        def gone(f) -> None:
            with self.cv:
                self.inflight_runs.pop(run.id, None)
            try:
                final = f.result()
            except BaseException:   # noqa: BLE001 - submit_run records every ending; nothing to count
                final = None
            if isinstance(final, Run):
                self._after_run(final)
            self.wake()
        fut.add_done_callback(gone)

    def _promotions(self) -> int:
        return sum(c.state is State.PROMOTED for c in self.lab.log.candidates_list())

    def run_unit(self, unit: Unit) -> None:
        lab = self.lab
        if isinstance(unit, RunUnit):
            run, fut = submit_run(lab, unit.candidate, unit.seed, purpose=unit.purpose, executor=self.executor,
                                  on_event=self.on_event)
            self.track(run, fut)
            final = fut.result()
            self._tick(final)
        elif isinstance(unit, AuditUnit):
            c, stage = unit.candidate, unit.stage
            margin = self.margin_sd * (Ledger(lab).noise()["screen_sd"] or 0.0) if stage == "screen" else 0.0
            final = stage == "screen" or Ledger(lab).seeds_run(c, Purpose.CONFIRM) >= self._cap()
            v = audit(lab, c, stage=stage, screen_margin=margin, final=final)
            self._note(f"{c.id}: {v.state.value} ({v.reason})")
            if v.state is State.PROMOTED:
                self._maybe_merge()
        elif isinstance(unit, AblationUnit):
            rows = _ablation.record(lab, unit.plan)
            with self.cv:
                self.ablation_plan = None
            self._note(f"ablation {unit.plan.ablation_id} of {unit.candidate.id} recorded: " + "; ".join(
                f"#{r.change} {r.title[:40]}: {r.verdict}"
                + (f" ({r.effect:+.4g} [{r.ci_low:+.4g}, {r.ci_high:+.4g}], n={len(r.seeds)})"
                   if r.effect is not None and r.ci_low is not None and r.ci_high is not None else "") for r in rows))
        elif isinstance(unit, ProposeUnit):
            self._propose_and_implement()
        elif isinstance(unit, ImplementUnit):
            self._implement_orphan(unit.idea)

    def _implement_orphan(self, idea: Idea) -> None:
        """Implement a PROPOSED idea from an earlier process, or record it abandoned with the reason."""
        lab = self.lab
        made = [c for c in lab.log.candidates_list() if c.idea_id == idea.id]
        if made:   # killed between the candidate and the idea's READY: finish the bookkeeping
            lab.log.append(idea.with_state(State.READY, meta={**idea.meta, "candidate_id": made[0].id}))
            return
        if self.implementer is None and not idea.edit:
            lab.log.append(idea.with_state(State.FAILED, meta={
                **idea.meta, "abandoned": "free-form idea and no implementer in this loop; run the loop with "
                "--proposer llm:<model> to implement such ideas", "error": "abandoned: no implementer"}))
            self._note(f"idea {idea.id} abandoned: free-form and no implementer")
            return
        self._note(f"resuming idea {idea.id} ({idea.title!r}): implementing it")
        self._implement(idea)

    def _propose_and_implement(self) -> None:
        lab = self.lab
        with self.cv:
            name, direction = self.lines[self.line_rr % len(self.lines)]
            self.line_rr += 1
        parent = best_candidate(lab, thread=name if len(self.lines) > 1 else None)
        try:
            idea = self.proposer.propose(lab, parent, thread=name, direction=direction, insights=self.insights)
        except AutolabError as e:   # spending cap, or an LLM that cannot be reached or refuses the request
            self._stop(e)
            return
        if idea is None:
            with self.cv:
                self.exhausted_at = self._promotions()
            return
        if idea.state is not State.PROPOSED:
            return   # a failed or rejected proposal is recorded and counts as an experiment
        self._implement(idea)

    def _implement(self, idea: Idea) -> None:
        """Implement ``idea`` as a candidate; a bad edit is the idea's failure, a cap or an
        unreachable LLM stops the loop."""
        try:
            cand = implement(self.lab, idea, self.implementer)
        except CandidateError as e:
            self._note(f"idea {idea.id} not implemented: {e}")
            return
        except AutolabError as e:
            self._stop(e)
            return
        if cand is not None:
            self._note(f"{idea.title} -> {cand.id}")

    def _stop(self, e: BaseException) -> None:
        msg = f"{type(e).__name__}: {e}"
        self._note(f"stopping: {msg}")
        with self.cv:
            self._set_stop(msg, _stop_reason(e))

    def _maybe_merge(self) -> None:
        """After a promotion: combine the bests of two threads (3-way merge against their common
        ancestor). Clean merges, or conflicts the LLM resolved, become candidates of their own."""
        if len(self.lines) < 2:
            return
        ledger = Ledger(self.lab)
        bests = {}
        for name, _ in self.lines:
            b = ledger.best(thread=name)
            if b.state is State.PROMOTED and not b.meta.get("merge_of"):
                bests[name] = b
        done = merged_pairs(self.lab)
        names = sorted(bests)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                ca, cb = bests[a], bests[b]
                if ca.id == cb.id or frozenset((ca.id, cb.id)) in done:
                    continue
                m = merge_candidates(self.lab, ca, cb, llm=self.merge_llm)
                self._note(f"merge {ca.id} + {cb.id}: " + (f"candidate {m.id}" if m else "skipped (see events)"))

    def _tick(self, r: Run) -> None:
        if self.bar is not None:
            self.bar.update(1)
            m = r.metrics.get(self.lab.task.metric.name)
            self.bar.set_postfix_str(f"{r.purpose} {r.candidate_id} {r.state.value}" + (f" {m:.4f}" if m is not None else ""))

    def _note(self, msg: str) -> None:
        self.lab.log.event("loop", message=msg)
        if self.on_event:
            self.on_event({"type": "note", "message": msg})

    note = _note

    def worker(self) -> None:
        while True:
            with self.cv:
                unit = None
                while self.error is None:
                    unit = self.next_unit()
                    if unit is not None and not self.admit(unit):
                        unit = None   # the time limit refused it (the stop says why)
                    if unit is not None:
                        break
                    paused = self.control is not None and self.control.paused and not self.stopped
                    if not paused and self.in_flight == 0 and self.proposing == 0 and self._baseline_ready():
                        break
                    self.cv.wait(timeout=1.0)
                if unit is None or self.error is not None:
                    self.cv.notify_all()
                    return
                self.in_flight += 1
                if isinstance(unit, RunUnit):
                    self.claimed.add(unit.claim)
                elif isinstance(unit, (AuditUnit, AblationUnit)):
                    self.busy_candidates.add(unit.candidate.id)
                else:
                    self.proposing += 1
            try:
                self.run_unit(unit)
            except BaseException as e:
                with self.cv:
                    self.error = e
            finally:
                with self.cv:
                    self.in_flight -= 1
                    if isinstance(unit, RunUnit):
                        self.claimed.discard(unit.claim)
                    elif isinstance(unit, (AuditUnit, AblationUnit)):
                        self.busy_candidates.discard(unit.candidate.id)
                    else:
                        self.proposing -= 1
                    self.cv.notify_all()


def run_lanes(lab: Lab, executor: Executor) -> tuple[int, int]:
    """(slots, lanes): how many runs of the lab's preset ``executor`` holds at once (GPU or CPU
    threads), and how many GPUs serve them one at a time (runs_per_gpu with gpu_baton; 0: every
    slot runs at once)."""
    preset = lab.preset
    share = int(preset.settings.get("runs_per_gpu", 1)) if preset.gpus else 1
    cpu_threads = int(preset.settings.get("threads", 1))
    n_slots = max(1, executor.slots_for(preset.gpus, cpu_threads, share) if share > 1
                  else executor.slots_for(preset.gpus, cpu_threads))
    return n_slots, (max(1, n_slots // share) if share > 1 and preset.settings.get("gpu_baton") else 0)


def ensure_baseline(lab: Lab, executor: Executor, on_event=None, bar=None) -> list[Run]:
    """The seed's selection-free runs (the parent every first idea is measured against)."""
    seed = lab.seed_candidate()
    seeds = missing_seeds(lab, seed, Purpose.CONFIRM, lab.task.seeds.confirmation)
    futs = [submit_run(lab, seed, s, purpose=Purpose.CONFIRM, executor=executor, on_event=on_event)[1] for s in seeds]
    out = []
    for f in futs:
        out.append(f.result())
        if bar is not None:
            bar.update(1)
    return out


def loop(lab: Lab, iterations: int = 8, *, threads: int = 1, proposer: str | Proposer | None = "playbook",
         implementer: Implementer | None = None, executor: Executor | str | None = None,
         on_event: Callable[[dict], None] | None = None, progress: bool = True, confirm_margin_sd: float = 1.0,
         max_confirming: int = 2, proposer_seed: int | None = None, merge_llm=None,
         time_limit_s: float | None = None, more: int | None = None, max_time_s: float | None = None,
         deadline: datetime | None = None, hard_limit: bool = False, infra_retries: int = INFRA_RETRIES,
         control: LoopControl | None = None, ablate: str = "auto",
         reserve: Callable[[], float] | None = None, spare_worker: bool = True) -> LoopSummary:
    """Run the research loop on ``lab`` until it holds ``iterations`` experiments (ideas),
    every promising one is confirmed and audited, or a stop is requested. Resumable.

    ``threads`` lines of research run at once, each with a direction and its own best; with
    two or more, the bests of two threads are merged after each promotion (``merge_llm``
    resolves conflicts; without one a conflicting merge is skipped and recorded).

    The first proposals are prepared while the seed's baseline runs; PROPOSED ideas an
    earlier process left without a candidate are implemented first. ``LoopSummary.reason`` says
    why it ended (STOP_REASONS): only "goal" means ``iterations`` ideas were tried.

    ``iterations`` is the total number of experiments in the lab (a rerun with the same value
    only finishes pending work); ``more=N`` asks for N more than the lab holds now instead.

    Time-boxed (Slurm jobs, spot instances): with ``max_time_s`` (seconds from now; ``time_limit_s``
    is its old name) and/or ``deadline`` (an aware or local ``datetime``), the earlier of the two is
    the limit: no run starts that would likely end past it, judged from the lab's measured run
    durations (``run_duration_estimate``). Runs under way finish; with ``hard_limit`` they are
    killed at the limit and recorded KILLED "time limit", re-run when the loop resumes.
    ``reserve`` (with a limit): a function giving the seconds to keep free before it for work
    after the loop, asked again at each look (``TimeLimit.reserve``; the demo keeps the final
    comparison's ``final_comparison_s``).

    ``spare_worker`` (default): one worker more than run slots prepares the next proposal while
    every slot runs (an LLM's takes minutes); its run then waits in the executor for the next free
    slot, ahead of what the other workers choose once their runs end, so each step of a
    confirmation waits about a run's length for a slot (measured: 70 s of each 145 s step on
    cpu-tiny). False (the demo, whose playbook proposals take no time): as many workers as slots,
    and each run is chosen when a slot is free.

    A run the machine ended (``ledger.not_a_verdict``: a signal, a lost worker, the executor's
    timeout, a starved CPU-clock run) is no verdict on its candidate: it is re-run, at most
    ``infra_retries`` times per run in this loop; past that the candidate's runs of that purpose
    wait for the next loop (the summary says which, with reason "interrupted").

    ``control`` (a ``LoopControl``) steers the loop from another thread: stop, pause/resume,
    cancel one run. ``autolab.start_loop`` runs a loop in a background thread with one.

    ``ablate="auto"`` (default): once the research has nothing left under way, the best candidate,
    when two or more of the changes it carries relative to the seed (stacked promotions, a merge)
    can be removed alone (``autolab.ablation.due``), is ablated (``autolab.ablation``): it and each
    "it minus one change" run on the same final seeds, through the same executor, slots and time
    limit, and the rows are recorded in the log; once per candidate, and an ablation an earlier
    loop left unfinished is finished first. Its runs (purpose "ablation") decide nothing and count
    in ``runs`` (``LoopSummary.ablation_runs``). ``"off"``: none."""
    t0 = time.monotonic()
    if max_time_s is None:
        max_time_s = time_limit_s
    limit = TimeLimit.make(max_time_s, deadline, hard_limit, start=t0, reserve=reserve)
    ex = executor if isinstance(executor, Executor) else get_executor(executor or "local")
    prop = get_proposer(proposer, seed=proposer_seed, log=lab.log) if isinstance(proposer, str) or proposer is None else proposer
    bar = None
    if infra_retries < 0:
        raise AutolabError(f"infra_retries={infra_retries}: pass 0 or more (re-runs of a run the machine ended)")
    if ablate not in ABLATE_MODES:
        raise AutolabError(f"ablate={ablate!r}: pass one of {', '.join(map(repr, ABLATE_MODES))} (\"auto\": ablate the "
                           "best candidate when two or more of its changes can be removed alone; \"off\": never)")
    with _LabLock(lab):
        (lab.path / "STOP").unlink(missing_ok=True)   # a stale request from before this loop
        reaped = reap_interrupted(lab)
        lab.compare_here()   # the ledger compares runs within this machine's hardware from now on
        hardware_note = Ledger(lab).hardware_note()
        llm_reaped = lab.log.reap_llm_calls()
        n_start = len(goal_ideas(lab))
        if more is not None:
            iterations = n_start + more
        runs_start, verdicts_start = len(lab.log.runs_list()), len(lab.log.verdicts_list())
        lab.log.event("loop_start", iterations=iterations, threads=threads, proposer=getattr(prop, "name", str(proposer)),
                      ablate=ablate, hardware=lab.hardware,
                      time_limit=None if limit is None else {"label": limit.label, "left_s": round(limit.left(), 1)},
                      resumed_runs=[r.id for r in reaped], interrupted_llm_calls=llm_reaped,
                      unimplemented_ideas=[i.id for i in unimplemented_ideas(lab)])
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(desc=f"autolab {lab.task.name}/{lab.preset_name}", unit="run")
        try:
            insights = []
            try:
                from .knowledge import KnowledgeStore

                insights = KnowledgeStore().relevant(lab.task.name)
            except Exception:
                insights = []
            sched = _Scheduler(lab, iterations, research_lines(threads), prop, implementer, ex, on_event,
                               confirm_margin_sd, max_confirming, bar, insights, merge_llm=merge_llm)
            sched.limit = limit
            sched.infra_retries = infra_retries
            sched.control = control
            sched.ablate = ablate
            if control is not None:
                control._attach(sched)
            if hardware_note:
                sched._note(hardware_note)
            # with spare_worker, one worker more than slots: it prepares the next proposal (slow with
            # an LLM) while every slot runs; its run then waits in the executor for a free slot
            n_slots, sched.n_lanes = run_lanes(lab, ex)
            sched.n_slots = n_slots

            def wake() -> None:
                with sched.cv:
                    sched.cv.notify_all()

            sched.judge_ready()   # verdicts the log's runs allow now, before any run starts or is awaited
            sched.baseline = _Baseline(lab, ex, on_event, bar, wake, fits=sched.fits, track=sched.track)
            n_workers = n_slots + (1 if spare_worker else 0)
            workers = [threading.Thread(target=sched.worker, name=f"autolab-worker-{i}", daemon=True) for i in range(n_workers)]
            busy0 = ex.busy_s
            w0 = time.monotonic()
            for w in workers:
                w.start()
            for w in workers:
                while w.is_alive():
                    w.join(timeout=0.5)
                    if limit is not None and limit.hard and limit.left() <= 0 and not sched.hard_killed:
                        sched.kill_in_flight(ex)
            wall_loop = time.monotonic() - w0
            if sched.error is not None:
                raise sched.error
            idle = None
            if wall_loop > 0:
                idle = max(0.0, 1.0 - (ex.busy_s - busy0) / (n_slots * wall_loop))
            for f in sched.baseline.futs:
                f.result()
            n_ideas = len(goal_ideas(lab))
            stopped = sched.stopped or ("done" if n_ideas >= iterations else "the proposer has nothing left to try")
            reason = sched.reason or ("goal" if n_ideas >= iterations else "exhausted")
            held = sched.held_message()
            if held:   # work left for the next loop: not the goal
                stopped = held if reason in ("goal", "exhausted") else f"{stopped}; {held}"
                reason = "interrupted" if reason in ("goal", "exhausted") else reason
            if reason == "goal" and n_start >= iterations and len(lab.log.runs_list()) == runs_start \
                    and len(lab.log.verdicts_list()) == verdicts_start:
                stopped = (f"nothing to do: the lab already holds {n_start} experiments and iterations={iterations} "
                           "is the total in the lab, not a number to add; to run N more, pass --more N "
                           "(autolab.loop(lab, more=N))")
        finally:
            (lab.path / "STOP").unlink(missing_ok=True)   # a request made while this loop ran is consumed by its end
            if control is not None:
                control._attach(None)
            if bar is not None:
                bar.close()
            if ex is not executor:
                ex.shutdown()
        summary = summarize(lab, time.monotonic() - t0, idle, stopped, reason)
        lab.log.event("loop_end", **summary.to_dict())
        return summary


def summarize(lab: Lab, wall_s: float, idle: float | None, stopped: str, reason: str = "goal") -> LoopSummary:
    runs = lab.log.runs_list()
    ideas = [i for i in lab.log.ideas_list() if i.source != "merge"]
    ledger = Ledger(lab)
    seed = ledger.seed()
    best = ledger.best()
    totals = lab.log.llm_totals()
    decided = [c for c in lab.log.candidates_list() if c.parent_id and c.state in (State.PROMOTED, State.REJECTED)]
    ids = {c.id for c in decided}
    counted = (Purpose.SCREEN.value, Purpose.CONFIRM.value)
    mine = [r for r in runs if r.candidate_id in ids and Purpose.canonical_of(r.purpose) in counted
            and r.state is not State.RUNNING and r.preset == lab.preset_name]
    parents = {c.parent_id for c in lab.log.candidates_list() if c.parent_id}
    # a parent's screening runs exist only for pairing; its confirmation runs past the baseline's count too
    pairing = [r for r in runs if r.candidate_id in parents and r.preset == lab.preset_name and r.state is State.COMPLETE
               and (Purpose.canonical_of(r.purpose) == Purpose.SCREEN.value
                    or (Purpose.canonical_of(r.purpose) == Purpose.CONFIRM.value
                        and r.seed >= ledger_seed_range(Purpose.CONFIRM) + lab.task.seeds.confirmation))]
    return LoopSummary(
        lab=str(lab.path), task=lab.task.name, preset=lab.preset_name,
        experiments=len(lab.log.ideas_list()), runs=len(runs),
        failed=sum(r.state is State.FAILED for r in runs), killed=sum(r.state is State.KILLED for r in runs),
        promoted=sum(c.state is State.PROMOTED for c in lab.log.candidates_list()),
        baseline=ledger.mean(seed), best=ledger.mean(best), best_id=best.id, wall_s=round(wall_s, 1),
        slot_idle_fraction=None if idle is None else round(idle, 4), stopped=stopped,
        llm_calls=int(totals["calls"]), llm_cost=float(totals["cost"]), reason=reason,
        ideas_failed=sum(i.state is State.FAILED and not i.meta.get("abandoned") for i in ideas),
        ideas_rejected=sum(i.state is State.REJECTED for i in ideas),
        ideas_abandoned=sum(bool(i.meta.get("abandoned")) for i in ideas),
        ideas_pending=sum(i.state is State.PROPOSED for i in ideas),
        decisions=len(decided),
        runs_per_decision=round(len(mine) / len(decided), 3) if decided else None,
        confirm_runs_per_decision=(round(sum(Purpose.canonical_of(r.purpose) == Purpose.CONFIRM.value for r in mine)
                                         / len(decided), 3) if decided else None),
        pairing_runs=len(pairing),
        ablations=len({r.candidate_id for r in _ablation.ablation_rows(lab, latest=False)}),
        ablation_runs=sum(r.purpose == Purpose.ABLATION.value for r in runs),
    )


def final_comparison_s(lab: Lab, lanes: int = 1, n: int | None = None, *, candidate: bool = True) -> tuple[float, str]:
    """(seconds, how): how long ``final_comparison`` of a candidate not chosen yet against the seed
    will likely take if it starts now: the seed's final runs still missing and ``n`` (the task's
    ``final`` seeds) of the candidate's, each judged as the loop judges a run (``run_durations``,
    from the lab's measured runs of the seed, and of candidates), over ``lanes`` runs at once: the
    runs queue at their median durations, and the slowest kind's p90 stands for the last one.
    (0, why) while the lab holds no completed run of its preset: nothing to judge from yet.
    ``candidate=False``: the seed's runs only (the best is the seed: nothing was promoted)."""
    n = n or lab.task.seeds.final
    runs = lab.log.runs_list()
    if not any(r.state is State.COMPLETE and r.preset == lab.preset_name for r in runs):
        return 0.0, f"no completed run on {lab.preset_name} yet to judge the final comparison from"
    seed = lab.seed_candidate()
    queue, extra, parts = [], 0.0, []
    for of_seed, k in ((True, len(missing_seeds(lab, seed, Purpose.FINAL, n))), (False, n if candidate else 0)):
        if k:
            est, typical, how = run_durations(lab, Purpose.FINAL, runs, of_seed=of_seed)
            queue += [typical] * k
            extra = max(extra, est - typical)
            parts.append(f"{k} of {'the seed' if of_seed else 'a candidate'} at about {typical:.0f} s ({how})")
    free = [0.0] * max(1, lanes)
    for d in queue:
        i = min(range(len(free)), key=free.__getitem__)
        free[i] += d
    total = max(free) + extra if queue else 0.0
    return total, f"{len(queue)} final run(s) on {len(free)} slot(s): " + "; ".join(parts)


def final_comparison(lab: Lab, candidate: Candidate, n: int | None = None, *, executor: Executor | str | None = None,
                     on_event=None, progress: bool = True) -> dict:
    """Measure ``candidate`` against the seed on fresh seeds never used for selection or
    confirmation (the ``final`` range, the same seeds on both sides, on this machine's hardware), and test the gain
    one-sided by a paired t-test on the per-seed differences (``welch_p_value``: the unpaired
    test of the same runs, for comparison)."""
    from ._audit.stats import compare, paired

    n = n or lab.task.seeds.final
    seed = lab.seed_candidate()
    lab.compare_here()   # both sides on this machine's hardware (runs of another are not reused)
    ex = executor if isinstance(executor, Executor) else get_executor(executor or "local")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="final comparison on fresh seeds", unit="run", total=2 * n if candidate.id != seed.id else n)
    try:
        futs = []
        for c in ([seed, candidate] if candidate.id != seed.id else [seed]):
            for s in missing_seeds(lab, c, Purpose.FINAL, n):
                futs.append(submit_run(lab, c, s, purpose=Purpose.FINAL, executor=ex, on_event=on_event)[1])
        for f in futs:
            f.result()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if ex is not executor:
            ex.shutdown()
    direction = lab.task.metric.direction
    prs = Ledger(lab).pairs(candidate, seed, FINAL_RANGE)[:n]   # an ablation's runs are final-range runs too
    a, b = [c for _, c, _ in prs], [p for _, _, p in prs]
    t = paired(a, b, direction=direction) if candidate.id != seed.id else compare(a, b, direction=direction)
    w = compare(a, b, direction=direction, test="welch")
    return {"candidate_id": candidate.id, "candidate_final": a, "seed_final": b, "seeds": [s for s, _, _ in prs],
            "candidate_mean": sum(a) / len(a) if a else None, "seed_mean": sum(b) / len(b) if b else None,
            "test": t.test, "p_value": t.p_value, "effect": t.effect, "ci": [t.ci_low, t.ci_high],
            "welch_p_value": w.p_value}
