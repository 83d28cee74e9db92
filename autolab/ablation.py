"""Ablation: what each change a candidate carries is worth on its own.

A candidate of a lab carries the changes along its ancestry from the lab's seed: one per
step parent -> child (a stacked promotion is one step), and through a merge the changes of
both merged lines. For each change ``ablate`` builds "the candidate minus this change": the
change's diff is reverse-applied to the candidate's files (a 3-way merge whose base is the
change's result and whose other side is the change's starting point, like ``git revert``).
A change that no longer reverses cleanly (a later change rewrote its lines) is reported as
such and not guessed at; so is one whose removal leaves code that does not compile, or
leaves the candidate unchanged (a later change undid it).

Every variant and the full candidate then run on the same random seeds of the ``final``
range (1001, ...: seeds never used to select anything). A change's contribution is the
paired gain of the full candidate over the candidate without it (positive = the change
helps, in the metric's good direction), with its 95% interval and the one-sided paired
t-test's p-value (``_audit.stats.paired``).

The results are rows of the log's ``events`` table (kind ``"ablation"``, one per change),
so they survive a reopen and travel with the lab; :func:`ablation_table` returns them as a
DataFrame. A variant that is not already a candidate of the lab is added as one with no
parent (``meta.origin = "ablation"``, ``meta.ablation_of``, ``meta.without``; its ``diff`` is
against the full candidate, ``meta.diff_against``), so the loop never screens it and the
noise estimates never pair it with a parent it does not descend from.

An ablation is first planned (:func:`plan`: the variants, the seeds, an ``ablation_planned``
event), then its runs are made (purpose ``ablation``, which counts as ``final``: a candidate's
final runs serve its ablation and its final comparison alike), then it is recorded
(:func:`record`). A plan without rows is in progress (:func:`pending`); the loop finishes it
when it resumes (``autolab.loop(..., ablate="auto")``, see ``_loop``), and :func:`due` names the
candidate the loop ablates next: the lab's best when two or more of its changes can be removed
alone and it has no ablation yet. :func:`ablate` does all three steps at once (``autolab ablate``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from .diffs import diff_stat, merge3, unified_diff
from .errors import AutolabError
from .executors import Executor, get_executor
from .lab import Lab, check_compiles
from .ledger import FINAL_RANGE, Ledger, not_a_verdict, seed_range
from .records import Candidate, Purpose, State, new_id, now
from .store import candidate_id
from ._run import submit_run

EVENT = "ablation"     # the kind of the log's events rows that hold the results
PLAN_EVENT = "ablation_planned"   # one per ablation started: its id, candidate, seeds, runs

# a change's status in the table
MEASURED = "measured"              # both sides ran on paired seeds: effect, interval, p
NOT_REVERSIBLE = "not_reversible"  # the reverse diff conflicts with later changes
NO_EFFECT = "no_effect"            # removing it leaves the candidate's files unchanged
NOT_COMPILING = "does_not_compile" # the candidate without it does not compile
NO_RUNS = "no_runs"                # too few complete runs on paired seeds to measure it

# a change's verdict (the report's plain words), from its effect's 95% interval
CARRIES = "carries the gain"       # the interval lies above 0: removing it makes the candidate worse
NO_MEASURABLE = "no measurable effect"   # the interval holds 0
HURTS = "hurts"                    # the interval lies below 0: the candidate is better without it


@dataclass(frozen=True)
class Change:
    """One change a candidate carries: the step ``before`` -> ``after`` of its ancestry."""

    before: str            # candidate id the change starts from
    after: str             # candidate id the change made
    title: str             # the idea's title (or the candidate id)
    diff: str              # unified diff before -> after
    added: int = 0
    removed: int = 0


@dataclass(frozen=True)
class Variant:
    """The candidate without one change: the candidate that results, or why there is none."""

    change: Change
    status: str                          # MEASURED (to be run) or NOT_REVERSIBLE / NO_EFFECT / NOT_COMPILING
    candidate_id: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class AblationRow:
    """One row of an ablation's table, as stored in the log."""

    ablation_id: str
    candidate_id: str          # the full candidate
    change: int                # 1-based position along the ancestry, oldest first
    title: str
    before: str
    after: str
    status: str
    without_id: str | None     # the candidate without this change
    seeds: list[int] = field(default_factory=list)
    full: list[float] = field(default_factory=list)      # the full candidate's metric per seed
    without: list[float] = field(default_factory=list)   # the variant's, same seeds
    effect: float | None = None        # the change's contribution (positive = it helps)
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None       # one-sided paired t-test: the change helps
    metric: str = ""
    preset: str = ""
    detail: str = ""
    summary: str = ""          # what the change is, from its diff: files, lines added/removed, first added line
    created_at: str = field(default_factory=now)

    @property
    def verdict(self) -> str:
        return verdict(self.status, self.ci_low, self.ci_high)


@dataclass(frozen=True)
class Plan:
    """An ablation under way: which candidates run on which seeds, recorded under ``ablation_id``."""

    ablation_id: str
    candidate_id: str          # the full candidate
    seeds: tuple[int, ...]     # the final-range seeds every side runs on
    to_run: tuple[str, ...]    # the full candidate, then each measured variant (candidate ids, once each)
    by: str = ""               # who started it: "loop", "cli", "python"
    created_at: str = field(default_factory=now)


def verdict(status: str, ci_low: float | None, ci_high: float | None) -> str:
    """A change's verdict in plain words: for a measured change, from the 95% interval of its
    contribution (CARRIES above 0, HURTS below 0, else NO_MEASURABLE); else why it was not measured."""
    if status == MEASURED and ci_low is not None and ci_high is not None:
        return CARRIES if ci_low > 0 else HURTS if ci_high < 0 else NO_MEASURABLE
    return {NO_EFFECT: "no effect left (a later change undid it)",
            NOT_REVERSIBLE: "not measured (later changes rewrote its lines)",
            NOT_COMPILING: "not measured (the candidate without it does not compile)",
            NO_RUNS: "not measured (too few complete paired runs)"}.get(status, f"not measured ({status})")


def describe(diff: str, limit: int = 70) -> str:
    """What a diff does, in one line: each file with its lines added and removed, and the first
    line it adds (or removes), e.g. ``train.py +1 -1: LR = 0.02``."""
    files: list[str] = []
    counts: dict[str, list[int]] = {}
    first = ""
    cur = ""
    for line in diff.splitlines():
        if line.startswith("+++ ") or line.startswith("--- "):
            path = line[4:].strip()
            if path != "/dev/null":
                cur = path[2:] if path[:2] in ("a/", "b/") else path
                if cur not in counts:
                    files.append(cur)
                    counts[cur] = [0, 0]
            continue
        if not cur or line.startswith("@@"):
            continue
        if line.startswith("+"):
            counts[cur][0] += 1
            first = first or ("" if not line[1:].strip() else line[1:].strip())
        elif line.startswith("-"):
            counts[cur][1] += 1
    if not files:
        return ""
    if not first:   # a change that only removes lines
        first = next((f"removes {l[1:].strip()}" for l in diff.splitlines()
                      if l.startswith("-") and not l.startswith("---") and l[1:].strip()), "")
    head = ", ".join(f"{f} +{counts[f][0]} -{counts[f][1]}" for f in files)
    text = f"{head}: {first}" if first else head
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _title(lab: Lab, c: Candidate) -> str:
    idea = lab.log.get("idea", c.idea_id) if c.idea_id else None
    return idea.title if idea is not None else c.id   # type: ignore[union-attr]


def changes(lab: Lab, candidate: Candidate | str) -> list[Change]:
    """The changes ``candidate`` carries relative to the lab's seed, oldest first: one per step
    of its ancestry; through a merge (``meta.merge_of``) the changes of both merged candidates
    (a change shared by both counts once). A candidate whose ancestry does not reach the seed
    contributes its steps up to its root."""
    c = lab.candidate(candidate) if isinstance(candidate, str) else candidate
    seed_id = lab.seed_candidate().id
    out: dict[tuple[str, str], Change] = {}
    order: list[tuple[str, str]] = []
    stack, seen = [c], set()
    steps: list[tuple[Candidate, Candidate]] = []
    while stack:
        cur = stack.pop()
        if cur.id in seen or cur.id == seed_id:
            continue
        seen.add(cur.id)
        merged = cur.meta.get("merge_of") if isinstance(cur.meta, dict) else None
        if merged:
            stack.extend(lab.candidate(m) for m in merged)
            continue
        if not cur.parent_id:
            continue
        parent = lab.candidate(cur.parent_id)
        steps.append((parent, cur))
        stack.append(parent)
    # oldest first: by the order the log holds the candidates (a child is logged after its parent)
    position = {x.id: i for i, x in enumerate(lab.log.candidates_list())}
    for parent, child in sorted(steps, key=lambda s: position.get(s[1].id, 0)):
        key = (parent.id, child.id)
        if key in out:
            continue
        diff = unified_diff(lab.files(parent), lab.files(child))
        added, removed = diff_stat(diff)
        out[key] = Change(parent.id, child.id, _title(lab, child), diff, added, removed)
        order.append(key)
    return [out[k] for k in order if out[k].diff]


def without(lab: Lab, candidate: Candidate, change: Change) -> tuple[dict[str, str] | None, str]:
    """The files of ``candidate`` with ``change`` reverse-applied, or (None, why) when it does
    not reverse cleanly. The reverse is a 3-way merge per file: base = the change's result,
    ours = the candidate, theirs = the change's starting point."""
    ours = lab.files(candidate)
    base, theirs = lab.files(change.after), lab.files(change.before)
    out: dict[str, str] = {}
    conflicts = []
    for path in sorted(set(ours) | set(base) | set(theirs)):
        o, b, t = ours.get(path), base.get(path), theirs.get(path)
        if b == t:                      # the change did not touch this file
            if o is not None:
                out[path] = o
            continue
        if o == b:                      # untouched since the change: its earlier version
            if t is not None:
                out[path] = t
            continue
        if o is None or b is None or t is None:
            conflicts.append(f"{path} (added or removed by the change and changed since)")
            continue
        m = merge3(b, o, t, labels=(candidate.id, f"without {change.after}"))
        if not m.clean:
            conflicts.append(f"{path} ({m.conflicts} conflicting hunk{'s' if m.conflicts > 1 else ''})")
            continue
        out[path] = m.text
    if conflicts:
        return None, ("the change no longer reverses cleanly: later changes rewrote its lines in "
                      + ", ".join(conflicts))
    return out, ""


def _removals(lab: Lab, full: Candidate) -> list[tuple[Change, str, dict[str, str] | None, str]]:
    """For each change of ``full``: (change, status, the files without it or None, why not). Adds nothing to the lab."""
    full_files = lab.files(full)
    out = []
    for ch in changes(lab, full):
        files, why = without(lab, full, ch)
        if files is None:
            out.append((ch, NOT_REVERSIBLE, None, why))
        elif files == full_files:
            out.append((ch, NO_EFFECT, None, "removing it leaves the candidate's files unchanged "
                                              "(a later change undid or replaced it)"))
        else:
            try:
                check_compiles(files, where=f"without change {ch.before} -> {ch.after}")
                out.append((ch, MEASURED, files, ""))
            except AutolabError as e:
                out.append((ch, NOT_COMPILING, None, str(e)))
    return out


def measurable(lab: Lab, candidate: Candidate | str) -> list[Change]:
    """The changes of ``candidate`` that can be removed alone (they reverse cleanly, the result
    differs from the candidate and compiles): those an ablation measures. Adds nothing to the lab."""
    full = lab.candidate(candidate) if isinstance(candidate, str) else candidate
    return [ch for ch, status, _, _ in _removals(lab, full) if status == MEASURED]


def variants(lab: Lab, candidate: Candidate | str) -> list[Variant]:
    """For each change of ``candidate``, the candidate without it (added to the lab when new),
    or the reason there is none."""
    full = lab.candidate(candidate) if isinstance(candidate, str) else candidate
    out = []
    for ch, status, files, why in _removals(lab, full):
        if status != MEASURED or files is None:
            out.append(Variant(ch, status, detail=why))
        else:
            out.append(Variant(ch, MEASURED, candidate_id=_variant_candidate(lab, full, ch, files).id))
    return out


def _variant_candidate(lab: Lab, full: Candidate, ch: Change, files: dict[str, str]) -> Candidate:
    """The lab's candidate with these files: an existing one (e.g. the change's own parent when
    it was the last change), else a new root candidate recording what it is."""
    digests = lab.store.snapshot(files)
    cid = candidate_id(digests)
    existing = lab.log.get("candidate", cid)
    if existing is not None:
        return existing   # type: ignore[return-value]
    return lab.log.append(Candidate(   # type: ignore[return-value]
        id=cid, task=lab.task.name, files=digests, parent_id=None, thread=full.thread,
        diff=unified_diff(lab.files(full), files),
        meta={"origin": "ablation", "ablation_of": full.id, "without": [ch.before, ch.after],
              "diff_against": full.id, "title": f"{_title(lab, full)} without: {ch.title}"}))


def _check(lab: Lab, full: Candidate, n: int) -> list[Change]:
    """The changes of ``full``, or an error that says why it cannot be ablated."""
    if full.id == lab.seed_candidate().id:
        raise AutolabError(f"{full.id} is the lab's seed: it carries no change to ablate; pass a candidate that "
                           "descends from it (see `autolab log --lab " + str(lab.path) + "`)")
    chs = changes(lab, full)
    if len(chs) < 2:
        raise AutolabError(f"candidate {full.id} carries {len(chs)} change relative to the seed; an ablation needs "
                           "two or more (stacked promotions or a merge). Its one change is what the final comparison "
                           "against the seed measures: autolab.final_comparison(lab, candidate)")
    if n < 2:
        raise AutolabError(f"seeds={n}: an effect's interval and p-value need at least 2 paired seeds; pass 2 or more")
    return chs


def plan(lab: Lab, candidate: Candidate | str, *, seeds: int | None = None, by: str = "python") -> Plan:
    """Start an ablation of ``candidate``: build its variants (adding new ones to the lab), pick
    the seeds (the first ``seeds`` of the final range; default the task's ``[seeds] final``) and
    record the plan in the log (an ``ablation_planned`` event), so that a later process can
    finish it (:func:`pending`). Nothing runs here."""
    full = lab.candidate(candidate) if isinstance(candidate, str) else lab.candidate(candidate.id)
    n = int(seeds or lab.task.seeds.final)
    _check(lab, full, n)
    vs = variants(lab, full)
    to_run = tuple(dict.fromkeys([full.id] + [v.candidate_id for v in vs if v.status == MEASURED and v.candidate_id]))
    p = Plan(new_id("ab"), full.id, tuple(ablation_seeds(n)), to_run, by)
    lab.log.event(PLAN_EVENT, **asdict(p), variants=[
        {"change": i, "after": v.change.after, "status": v.status, "without_id": v.candidate_id}
        for i, v in enumerate(vs, 1)])
    return p


def plans(lab_or_log) -> list[Plan]:
    """Every planned ablation of the lab, oldest first."""
    log = getattr(lab_or_log, "log", lab_or_log)
    names = set(Plan.__dataclass_fields__)
    out = []
    for e in log.events(PLAN_EVENT):
        kw = {k: v for k, v in e.items() if k in names}
        out.append(Plan(**{**kw, "seeds": tuple(kw.get("seeds") or ()), "to_run": tuple(kw.get("to_run") or ())}))
    return out


def pending(lab_or_log) -> list[Plan]:
    """Planned ablations whose rows are not recorded yet (in progress, or interrupted), oldest first."""
    log = getattr(lab_or_log, "log", lab_or_log)
    done = {e.get("ablation_id") for e in log.events(EVENT)}
    return [p for p in plans(log) if p.ablation_id not in done]


def due(lab: Lab) -> Candidate | None:
    """The candidate the loop ablates next, or None: the lab's best (the ledger's) when it is a
    promoted candidate two or more of whose changes relative to the seed can be removed alone
    (:func:`measurable`), with no ablation recorded or in progress (one ablation per candidate;
    ``autolab ablate`` repeats one by hand, and ablates any candidate of two changes or more).
    With one removable change there is nothing to separate: the confirmation against its parent
    measured the change that can be removed (the others were rewritten by later ones)."""
    best = Ledger(lab).best()
    if best is None or best.state is not State.PROMOTED or best.id == lab.seed_candidate().id:
        return None
    if any(r.candidate_id == best.id for r in ablation_rows(lab, latest=False)) \
            or any(p.candidate_id == best.id for p in plans(lab)):
        return None
    return best if len(measurable(lab, best)) >= 2 else None


def missing_runs(lab: Lab, p: Plan) -> list[tuple[Candidate, int]]:
    """(candidate, seed) of the plan's runs still to make: seeds of ``p.seeds`` where the candidate
    has no final-range run that counts (complete, failed, running, or killed for a reason of its
    own; a run the machine or an interrupt ended is made again)."""
    out = []
    for cid in p.to_run:
        c = lab.candidate(cid)
        out += [(c, s) for s in _seeds_to_run(lab, c, p.seeds)]
    return out


def record(lab: Lab, p: Plan) -> list[AblationRow]:
    """Record the plan's rows in the log (one event per change) from the runs made, and return them."""
    full = lab.candidate(p.candidate_id)
    return _record(lab, full, variants(lab, full), p.seeds, p.ablation_id)


def ablate(lab: Lab, candidate: Candidate | str, *, seeds: int | None = None,
           executor: Executor | str | None = None, on_event: Callable[[dict], None] | None = None) -> list[AblationRow]:
    """Measure each change ``candidate`` carries on its own: run the candidate and each
    "candidate minus one change" on the same ``seeds`` fresh seeds of the final range (default:
    the task's ``[seeds] final``; :func:`ablation_seeds`), record one row per change in the log,
    return the rows. Runs that already exist on those seeds (an earlier ablation or the final
    comparison) are reused; a variant's failed run leaves that seed unpaired (NO_RUNS below 2).
    Interrupted, the plan stays in the log and the next ``autolab loop`` finishes it."""
    p = plan(lab, candidate, seeds=seeds, by="python")
    ex = executor if isinstance(executor, Executor) else get_executor(executor or "local")
    try:
        futures = [submit_run(lab, c, s, purpose=Purpose.ABLATION, executor=ex, on_event=on_event)[1]
                   for c, s in missing_runs(lab, p)]
        for f in futures:
            f.result()
    finally:
        if ex is not executor:
            ex.shutdown()
    return record(lab, p)


def ablation_seeds(n: int) -> list[int]:
    """The random seeds of an ablation: the first ``n`` of the final range, the same for the full
    candidate and every variant (never seeds that selected anything)."""
    first = seed_range(Purpose.FINAL.value)
    return list(range(first, first + n))


def _seeds_to_run(lab: Lab, c: Candidate, want: Sequence[int]) -> list[int]:
    """The seeds of ``want`` the candidate has no final-range run on yet that counts: a complete,
    failed or running one, or one killed for a reason of its own (``ledger.not_a_verdict``: a run
    interrupted or ended by the machine is run again)."""
    have = {r.seed for r in Ledger(lab).runs_of(c, purposes=FINAL_RANGE, states=None) if not not_a_verdict(r)}
    return [s for s in want if s not in have]


def _record(lab: Lab, full: Candidate, vs: Sequence[Variant], want: Sequence[int],
            aid: str | None = None) -> list[AblationRow]:
    from ._audit.stats import paired

    ledger = Ledger(lab)
    direction, metric = lab.task.metric.direction, lab.task.metric.name
    aid = aid or new_id("ab")
    rows = []
    for i, v in enumerate(vs, 1):
        ch = v.change
        base = dict(ablation_id=aid, candidate_id=full.id, change=i, title=ch.title, before=ch.before, after=ch.after,
                    without_id=v.candidate_id, metric=metric, preset=lab.preset_name, summary=describe(ch.diff))
        if v.status != MEASURED:
            rows.append(AblationRow(status=v.status, detail=v.detail, **base))
            continue
        prs = [p for p in ledger.pairs(full, v.candidate_id, FINAL_RANGE) if p[0] in set(want)]
        a, b = [x for _, x, _ in prs], [y for _, _, y in prs]
        if len(prs) < 2:
            rows.append(AblationRow(status=NO_RUNS, seeds=[s for s, _, _ in prs], full=a, without=b,
                                    detail=f"{len(prs)} paired seed(s) with complete runs on both sides; 2 are needed "
                                           "(see the runs' errors in `autolab log`, then run the ablation again)",
                                    **base))
            continue
        t = paired(a, b, direction=direction)
        rows.append(AblationRow(status=MEASURED, seeds=[s for s, _, _ in prs], full=a, without=b, effect=t.effect,
                                ci_low=t.ci_low, ci_high=t.ci_high, p_value=t.p_value, detail=t.reason, **base))
    for r in rows:
        lab.log.event(EVENT, **asdict(r))
    return rows


def ablation_rows(lab_or_log, candidate: str | None = None, *, latest: bool = True) -> list[AblationRow]:
    """The stored ablation rows (of one candidate, when given); with ``latest`` only the most
    recent ablation of each candidate."""
    log = getattr(lab_or_log, "log", lab_or_log)
    names = set(AblationRow.__dataclass_fields__)
    rows = [AblationRow(**{k: v for k, v in e.items() if k in names}) for e in log.events(EVENT)]
    if candidate is not None:
        rows = [r for r in rows if r.candidate_id == candidate]
    if latest:
        last: dict[str, str] = {}
        for r in rows:
            last[r.candidate_id] = r.ablation_id
        rows = [r for r in rows if last[r.candidate_id] == r.ablation_id]
    return rows


def ablation_table(lab_or_log, candidate: str | None = None, *, latest: bool = True):
    """The ablation results as a DataFrame, one row per change (the report's table): candidate,
    change (position, title, ids), status, n seeds, the full candidate's and the variant's
    means, the contribution (``effect``, positive = the change helps) with its 95% interval,
    the p-value, the ``verdict`` in plain words, ``summary`` (what the change is, from its diff)
    and ``detail``. Reads a Lab or a bare ResearchLog."""
    import pandas as pd

    cols = ["ablation_id", "candidate_id", "change", "title", "status", "n", "full_mean", "without_mean", "effect",
            "ci_low", "ci_high", "p_value", "verdict", "summary", "without_id", "before", "after", "metric", "preset",
            "created_at", "detail"]
    recs = []
    for r in ablation_rows(lab_or_log, candidate, latest=latest):
        recs.append({**asdict(r), "n": len(r.seeds), "verdict": r.verdict,
                     "full_mean": sum(r.full) / len(r.full) if r.full else None,
                     "without_mean": sum(r.without) / len(r.without) if r.without else None})
    return pd.DataFrame(recs, columns=cols) if recs else pd.DataFrame(columns=cols)


__all__ = ["Change", "Variant", "AblationRow", "Plan", "changes", "without", "measurable", "variants", "plan", "plans", "pending", "due",
           "missing_runs", "record", "ablate", "ablation_seeds", "ablation_rows", "ablation_table", "verdict", "describe",
           "EVENT", "PLAN_EVENT", "MEASURED", "NOT_REVERSIBLE", "NO_EFFECT", "NOT_COMPILING", "NO_RUNS", "CARRIES",
           "NO_MEASURABLE", "HURTS"]
