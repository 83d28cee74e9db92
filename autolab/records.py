"""Frozen records of the research loop, each with an explicit state.

A record never changes in place: a state change is a new version of the record
(``dataclasses.replace``) appended to the research log under the same id. The log's
views show the latest version of each record.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping


class State(str, enum.Enum):
    """Every state a record can be in. Each record type allows a subset."""

    PROPOSED = "PROPOSED"    # an idea that has not been implemented yet
    READY = "READY"          # a candidate (or implemented idea) ready to run
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    KILLED = "KILLED"
    REJECTED = "REJECTED"
    PROMOTED = "PROMOTED"
    PENDING = "PENDING"      # a verdict that needs more evidence (e.g. screened, not confirmed)

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


class Purpose(str, enum.Enum):
    """Why a run was made. A ``str`` enum: stored values (and file formats) are the plain strings."""

    SCREEN = "screen"      # selection: the seeds that pick candidates (1, 2, ...)
    CONFIRM = "confirm"    # selection-free: fresh seeds (101, ...) for the significance test
    BASELINE = "baseline"  # the seed's confirmation runs (an alias of confirm)
    FINAL = "final"        # the final comparison on seeds never used before (1001, ...)
    MANUAL = "manual"      # `autolab run` / `autolab.run(...)` by hand
    REDTEAM = "redteam"    # red-team cases: never counted in any ranking
    ABLATION = "ablation"  # an ablation's runs (a candidate and it without one change): final seeds, counts as final

    __hash__ = str.__hash__   # hash like the stored string, so sets and dicts mix members and values

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value

    @property
    def canonical(self) -> "Purpose":
        """The purpose this one counts as. The one place that says "baseline is confirm" and
        "ablation is final" (an ablation's runs are on the final range, never used for selection,
        and a candidate's final runs serve its ablation and its final comparison alike)."""
        if self is Purpose.BASELINE:
            return Purpose.CONFIRM
        return Purpose.FINAL if self is Purpose.ABLATION else self

    @classmethod
    def parse(cls, value: "str | Purpose") -> "Purpose":
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown run purpose {value!r}; use one of: {known}") from None

    @classmethod
    def canonical_of(cls, value: "str | Purpose") -> str:
        """The canonical value of a stored purpose string (an unknown string is its own)."""
        try:
            return cls(value).canonical.value
        except ValueError:
            return str(value)

    @classmethod
    def aliases(cls, value: "str | Purpose") -> tuple["Purpose", ...]:
        """Every purpose that counts as ``value`` (e.g. confirm → (CONFIRM, BASELINE))."""
        canon = cls.parse(value).canonical
        return tuple(p for p in cls if p.canonical is canon)


def now() -> str:
    """UTC timestamp, ISO 8601 with milliseconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


@dataclass(frozen=True)
class _Record:
    kind: ClassVar[str] = "record"
    states: ClassVar[frozenset[State]] = frozenset(State)

    def __post_init__(self) -> None:
        state = getattr(self, "state")
        if not isinstance(state, State):
            object.__setattr__(self, "state", State(state))
        if self.state not in self.states:
            allowed = ", ".join(sorted(s.value for s in self.states))
            raise ValueError(f"{type(self).__name__} cannot be {self.state.value}; allowed: {allowed}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def with_state(self, state: State, **changes: Any):
        return dataclasses.replace(self, state=State(state), **changes)

    def __str__(self) -> str:
        return _render_text(self)


@dataclass(frozen=True)
class Idea(_Record):
    """A proposed change: what to try and why."""

    kind: ClassVar[str] = "idea"
    states: ClassVar[frozenset[State]] = frozenset({State.PROPOSED, State.READY, State.FAILED, State.REJECTED})

    id: str
    task: str
    title: str
    hypothesis: str = ""
    plan: str = ""
    source: str = "human"          # playbook | random | llm:<model> | human | merge
    thread: str = "main"
    parent_id: str | None = None   # the candidate this idea edits
    edit: dict[str, Any] | None = None  # structured edit (playbook) or None (free-form plan)
    state: State = State.PROPOSED
    created_at: str = field(default_factory=now)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate(_Record):
    """A snapshot of a solution's editable files, content-addressed in the lab."""

    kind: ClassVar[str] = "candidate"
    states: ClassVar[frozenset[State]] = frozenset({State.READY, State.FAILED, State.REJECTED, State.PROMOTED})

    id: str
    task: str
    files: dict[str, str]          # relative path -> sha256 of content
    parent_id: str | None = None
    idea_id: str | None = None
    thread: str = "main"
    diff: str = ""                 # unified diff against the parent
    state: State = State.READY
    created_at: str = field(default_factory=now)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run(_Record):
    """One execution of one candidate with one seed on one preset."""

    kind: ClassVar[str] = "run"
    states: ClassVar[frozenset[State]] = frozenset({State.RUNNING, State.COMPLETE, State.FAILED, State.KILLED})

    id: str
    task: str
    candidate_id: str
    preset: str
    seed: int
    purpose: str = "screen"        # a Purpose value: screen | confirm | baseline | final | manual | redteam | ablation
    state: State = State.RUNNING
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notebook: str | None = None    # the executed notebook, kept on success and failure
    result_path: str | None = None
    error: dict[str, Any] | None = None   # {cell, ename, evalue, traceback, reason}
    attempt: int = 1
    executor: str = "local"
    slot: str | None = None
    started_at: str = field(default_factory=now)
    ended_at: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # the hardware the run was given, as the runner saw it (``autolab.gpu_share.hardware``): the GPU
    # model(s), e.g. "NVIDIA H100 80GB HBM3" or "2 x NVIDIA H100 80GB HBM3", or the CPU model;
    # None: "unrecorded" (a run logged before autolab recorded it; see ``Ledger.hardware_of``)
    hardware: str | None = None

    @property
    def ok(self) -> bool:
        return self.state is State.COMPLETE


@dataclass(frozen=True)
class Check:
    """One audit check: its name, whether it passed, and what it saw."""

    name: str
    passed: bool
    detail: str = ""
    severity: str = "reject"   # reject | warn

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Verdict(_Record):
    """The audit's judgement of a candidate against its parent."""

    kind: ClassVar[str] = "verdict"
    states: ClassVar[frozenset[State]] = frozenset({State.PROMOTED, State.REJECTED, State.PENDING})

    id: str
    task: str
    candidate_id: str
    parent_id: str | None
    preset: str
    state: State = State.PENDING
    checks: list[dict[str, Any]] = field(default_factory=list)
    metric: str = ""
    candidate_mean: float | None = None
    parent_mean: float | None = None
    effect: float | None = None      # improvement in the metric's good direction (>0 is better)
    p_value: float | None = None
    n_candidate: int = 0
    n_parent: int = 0
    reason: str = ""
    created_at: str = field(default_factory=now)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["passed"] and c.get("severity", "reject") == "reject"]


@dataclass(frozen=True)
class Insight(_Record):
    """A promoted change, kept as reusable knowledge across tasks and labs."""

    kind: ClassVar[str] = "insight"
    states: ClassVar[frozenset[State]] = frozenset({State.COMPLETE, State.REJECTED})

    id: str
    task: str
    preset: str
    technique: str
    diff: str = ""
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    candidate_id: str | None = None
    tags: list[str] = field(default_factory=list)
    state: State = State.COMPLETE
    created_at: str = field(default_factory=now)
    meta: dict[str, Any] = field(default_factory=dict)


RECORD_TYPES: dict[str, type[_Record]] = {c.kind: c for c in (Idea, Candidate, Run, Verdict, Insight)}


def record_from_dict(kind: str, d: Mapping[str, Any]) -> _Record:
    try:
        cls = RECORD_TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown record kind {kind!r}; known: {sorted(RECORD_TYPES)}") from None
    return cls.from_dict(d)


def _render_text(r: _Record) -> str:
    """Plain-text rendering, used in terminals (the ui module adds widgets in notebooks)."""
    name = type(r).__name__
    lines = [f"{name} {getattr(r, 'id', '')} [{r.state.value}]"]
    if isinstance(r, Idea):
        lines += [f"  title: {r.title}", f"  source: {r.source}  thread: {r.thread}  parent: {r.parent_id}"]
        if r.hypothesis:
            lines.append(f"  hypothesis: {r.hypothesis}")
        if r.plan:
            lines.append(f"  plan: {r.plan}")
    elif isinstance(r, Candidate):
        lines.append(f"  parent: {r.parent_id}  idea: {r.idea_id}  files: {', '.join(sorted(r.files))}")
        if r.diff:
            lines.append("  diff: " + r.diff.count("\n+") * "+" + r.diff.count("\n-") * "-")
    elif isinstance(r, Run):
        m = ", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in sorted(r.metrics.items()))
        lines.append(f"  candidate: {r.candidate_id}  preset: {r.preset}  seed: {r.seed}  purpose: {r.purpose}"
                     f"  hardware: {r.hardware or 'unrecorded'}")
        if m:
            lines.append(f"  metrics: {m}")
        if r.error:
            lines.append(f"  error: {r.error.get('ename')}: {str(r.error.get('evalue', ''))[:200]} (cell {r.error.get('cell')})")
        if r.notebook:
            lines.append(f"  notebook: {r.notebook}")
    elif isinstance(r, Verdict):
        lines.append(f"  candidate: {r.candidate_id} vs parent {r.parent_id}  p={r.p_value}  effect={r.effect}")
        for c in r.checks:
            lines.append(f"  [{'ok' if c['passed'] else 'FAIL'}] {c['name']}: {c.get('detail', '')}")
        if r.reason:
            lines.append(f"  reason: {r.reason}")
    elif isinstance(r, Insight):
        lines.append(f"  {r.technique} on {r.task}/{r.preset}: effect {r.effect} [{r.ci_low}, {r.ci_high}]")
    return "\n".join(lines)
