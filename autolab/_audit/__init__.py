"""Audit a candidate: generic checks, task probes, and the significance rule for promotion.

A candidate is compared with its parent on the same random seeds (paired), within a purpose:
screening seeds (1, ...) against the parent's screening runs on those seeds, confirmation seeds
(101, ...) against the parent's confirmation runs on those seeds. Screening can only reject a
candidate or pass it on to confirmation. Confirmation follows the sequential rule of
``stats`` (futility stop after any look, otherwise more seeds up to the cap, then a one-sided
paired t-test at the task's alpha). A lab whose parent has no run on the candidate's seeds (made
before pairing) is judged as before: against the parent's mean over its own selection-free
seeds, by the task's test (Welch by default). A task's own rule (speedrun's record rule) stays.
"""

from __future__ import annotations

from ..lab import Lab
from ..ledger import SELECTION_BY_RUN, SELECTION_FREE, Ledger, runs_of, set_aside   # SELECTION_FREE: runs whose seeds did not select the candidate
from ..records import Candidate, Check, Insight, Purpose, State, Verdict, new_id
from .checks import CHECKS, AuditContext, checks_for, register_check
from .stats import TestResult, compare, gains, paired, sequential_look


def run_checks(lab: Lab, candidate: Candidate, parent: Candidate | None = None, *, preset: str | None = None,
               purposes: tuple[str, ...] | None = None) -> list[Check]:
    ledger = Ledger(lab)
    # runs `autolab reopen` set aside were spoiled by a fault: their violations and probes say
    # nothing about the candidate (they rejected it once already; that is why it was reopened)
    runs = [r for r in ledger.runs_of(candidate, purposes=purposes, preset=preset, states=None) if not set_aside(r)]
    parent_runs = ledger.runs_of(parent, preset=preset) if parent else []
    ctx = AuditContext(lab, candidate, parent, runs, parent_runs)
    out = []
    for name, check in checks_for(lab.task):
        try:
            out.append(check(ctx))
        except Exception as e:  # a broken check rejects: the audit must fail closed
            out.append(Check(name, False, f"the check itself failed: {type(e).__name__}: {e}"))
    return out


def audit(lab: Lab, candidate: Candidate, parent: Candidate | None = None, *, preset: str | None = None,
          stage: str = "confirm", decide: bool = True, screen_margin: float = 0.0,
          final: bool = False) -> Verdict:
    """Judge ``candidate`` against ``parent`` (default: its recorded parent).

    stage="screen": checks plus "does the screening run beat the parent's mean by screen_margin";
    the verdict is PENDING (go on to confirmation) or REJECTED.
    stage="confirm": checks plus the task's significance rule; PROMOTED, REJECTED, or
    PENDING when there are not yet enough seeds.
    With ``decide`` the candidate's state follows a PROMOTED / REJECTED verdict. With
    ``final`` (all the runs the loop will make are in) too few runs rejects instead of waiting."""
    preset = preset or lab.preset_name
    task = lab.task
    if parent is None and candidate.parent_id:
        parent = lab.candidate(candidate.parent_id)
    checks = run_checks(lab, candidate, parent, preset=preset)
    failed = [c for c in checks if not c.passed and c.severity == "reject"]
    metric, sig = task.metric, task.significance
    ledger = Ledger(lab, preset=preset)
    noise = ledger.noise()
    # paired design: the candidate and its parent on the same random seeds (within a purpose)
    prs = ledger.pairs(candidate, parent, SELECTION_BY_RUN if stage == "screen" else SELECTION_FREE) if parent else []
    design = "paired" if prs else "unpaired"
    if prs:
        cand_vals, parent_vals = [c for _, c, _ in prs], [p for _, _, p in prs]
    else:   # a lab recorded before pairing, or a parent without runs on these seeds: its mean over other seeds
        parent_vals = [r.metrics[metric.name] for r in runs_of(lab, parent, purposes=SELECTION_FREE, preset=preset)] if parent else []
        cand_vals = [r.metrics[metric.name] for r in runs_of(lab, candidate, purposes=(SELECTION_BY_RUN if stage == "screen" else SELECTION_FREE), preset=preset)]
    cmean = sum(cand_vals) / len(cand_vals) if cand_vals else None
    pmean = sum(parent_vals) / len(parent_vals) if parent_vals else None
    test = TestResult(sig.test, None, None, None, None, None, len(cand_vals), len(parent_vals))
    seq = None
    seeds_run = ledger.seeds_run(candidate, Purpose.CONFIRM, preset)
    cap = max(task.seeds.confirmation, sig.min_seeds)
    if failed:
        state, reason = State.REJECTED, "audit failed: " + ", ".join(c.name for c in failed)
    elif parent is None:
        state, reason = State.PENDING, "the seed has no parent to beat"
    elif stage == "screen":
        on = "on the same seed" + ("s" if len(prs) > 1 else "") if prs else "(its mean over other seeds)"
        if not prs:   # unpaired (a lab recorded before pairing): other seeds' noise is in the difference
            screen_margin = max(screen_margin, noise["cross_seed_sd"] or 0.0)
        if cmean is None or pmean is None:
            state, reason = (State.REJECTED if final else State.PENDING), "no screening result or no parent baseline"
        elif metric.gain(cmean, pmean) > screen_margin:
            state, reason = State.PENDING, (f"screening: {cmean:.4f} beats the parent's {pmean:.4f} {on} by more than "
                                            f"{screen_margin:.4f}; confirm on more seeds")
        else:
            state, reason = State.REJECTED, (f"screening: {cmean:.4f} does not beat the parent's {pmean:.4f} {on} "
                                             f"by the noise margin {screen_margin:.4f}")
    elif sig.test == "one_sample_below_target":
        state, reason, test = _record_rule(lab, candidate, parent, preset, final)
    elif prs:
        state, reason, test, seq = _paired_rule(lab, cand_vals, parent_vals, noise, cap, final)
    else:
        test = compare(cand_vals, parent_vals, direction=metric.direction, test=sig.test, target=sig.target)
        need = sig.min_seeds
        enough = len(cand_vals) >= need and len(parent_vals) >= need
        if not enough and final:
            state, reason = State.REJECTED, f"only {len(cand_vals)} vs {len(parent_vals)} selection-free runs completed; promotion needs {need} on each side"
        elif not enough:
            state, reason = State.PENDING, f"needs {need} selection-free runs on each side (has {len(cand_vals)} vs {len(parent_vals)})"
        elif test.p_value is not None and test.p_value < sig.alpha and (test.effect or 0) > 0:
            state, reason = State.PROMOTED, f"{sig.test} p={test.p_value:.3g} < {sig.alpha}: gain {test.effect:+.4f}"
        else:
            p = "n/a" if test.p_value is None else f"{test.p_value:.3g}"
            state, reason = State.REJECTED, f"gain {test.effect if test.effect is not None else float('nan'):+.4f} not significant ({sig.test} p={p}, alpha {sig.alpha})"
    verdict = Verdict(id=new_id("v"), task=task.name, candidate_id=candidate.id, parent_id=parent.id if parent else None,
                      preset=preset, state=state, checks=[c.to_dict() for c in checks], metric=metric.name,
                      candidate_mean=cmean, parent_mean=pmean, effect=test.effect, p_value=test.p_value,
                      n_candidate=len(cand_vals), n_parent=len(parent_vals), reason=reason,
                      meta={"stage": stage, "ci": [test.ci_low, test.ci_high], "test": test.test, "design": design,
                            "paired_seeds": [s for s, _, _ in prs], "noise": noise, "screen_margin": screen_margin,
                            "sequential": seq.to_dict() if seq is not None else None, "seeds_run": seeds_run,
                            "cap": cap})
    lab.log.append(verdict)
    if decide and state in (State.PROMOTED, State.REJECTED):
        latest = lab.candidate(candidate.id)
        if latest.state is not State.PROMOTED or state is State.PROMOTED:
            lab.set_state(latest, state, verdict_id=verdict.id)
        if state is State.PROMOTED:
            _record_insight(lab, candidate, verdict, test)
    return verdict


def _paired_rule(lab: Lab, cand_vals: list[float], parent_vals: list[float], noise: dict, cap: int, final: bool):
    """Confirmation on paired seeds under the sequential rule (see ``stats``): stop early for
    futility, else another seed up to ``cap``; at the cap, the one-sided paired t-test at alpha."""
    metric, sig = lab.task.metric, lab.task.significance
    test = paired(cand_vals, parent_vals, direction=metric.direction)
    d = gains(cand_vals, parent_vals, metric.direction)
    seq = sequential_look(d, sigma=noise.get("diff_sd"), alpha=sig.alpha, cap=cap)
    n, need = len(d), max(2, sig.min_seeds)
    at_cap = final or seq.decision == "cap"
    if seq.decision == "futile":
        return (State.REJECTED, f"sequential rule: stopped for futility after {n} paired seed{'s' if n > 1 else ''} "
                f"(mean gain {test.effect:+.4f}; log-likelihood ratio {seq.llr:.3g} <= {seq.lower:.3g})", test, seq)
    if not at_cap:
        if n < need:
            return State.PENDING, f"needs {need} selection-free runs on each side (has {n} paired seed{'s' if n != 1 else ''}); another seed", test, seq
        return (State.PENDING, f"undecided after {n} paired seeds (mean gain {test.effect:+.4f}, log-likelihood ratio "
                f"{seq.llr if seq.llr is None else round(seq.llr, 3)}); another seed, up to {cap}", test, seq)
    if n < need:
        return (State.REJECTED, f"only {n} paired selection-free seeds completed; promotion needs {need} on each side",
                test, seq)
    if test.p_value is not None and test.p_value < sig.alpha and (test.effect or 0) > 0:
        return State.PROMOTED, f"paired t p={test.p_value:.3g} < {sig.alpha} over {n} seeds: gain {test.effect:+.4f}", test, seq
    p = "n/a" if test.p_value is None else f"{test.p_value:.3g}"
    return (State.REJECTED, f"gain {test.effect if test.effect is not None else float('nan'):+.4f} not significant "
            f"(paired t p={p} over {n} seeds, alpha {sig.alpha})", test, seq)


def _record_rule(lab: Lab, candidate: Candidate, parent: Candidate | None, preset: str, final: bool):
    """The record rule of a time-to-target task: the mean of ``significance.metric`` (e.g. the final val loss)
    over selection-free runs is below the preset's target with a one-sided one-sample t-test at
    ``alpha`` (runs that missed the target count, with their loss), and the task's metric (the
    time) beats the parent's by a one-sided Welch test at ``time_alpha``."""
    task, sig = lab.task, lab.task.significance
    target = lab.task.preset(preset).settings.get("target", sig.target)
    tested = sig.metric or task.metric.name
    runs = [r for r in runs_of(lab, candidate, purposes=SELECTION_FREE, preset=preset, states=None)
            if r.state is State.COMPLETE or (
                r.state is State.FAILED and str((r.error or {}).get("reason", "")).startswith("target not reached"))]
    vals = [r.metrics[tested] for r in runs if tested in r.metrics]
    rule = compare(vals, [], direction="minimize", test="one_sample_below_target", target=target)
    if len(vals) < sig.min_seeds:
        return ((State.REJECTED if final else State.PENDING),
                f"the record rule needs {sig.min_seeds} runs with a final {tested} (has {len(vals)})", rule)
    if rule.p_value is None or rule.p_value >= sig.alpha:
        return (State.REJECTED, f"mean {tested} {sum(vals) / len(vals):.4f} not below target {target} with "
                f"p < {sig.alpha} (p={rule.p_value if rule.p_value is None else round(rule.p_value, 4)})", rule)
    if parent is None:
        return State.PROMOTED, f"record: mean {tested} below {target} (p={rule.p_value:.3g})", rule
    name = task.metric.name
    a = [r.metrics[name] for r in runs_of(lab, candidate, purposes=SELECTION_FREE, preset=preset) if name in r.metrics]
    b = [r.metrics[name] for r in runs_of(lab, parent, purposes=SELECTION_FREE, preset=preset) if name in r.metrics]
    t = compare(a, b, direction=task.metric.direction, test="welch")
    if t.p_value is not None and t.p_value < sig.time_alpha and (t.effect or 0) > 0:
        return (State.PROMOTED, f"record rule holds (p={rule.p_value:.3g} < {sig.alpha}) and {name} improves by "
                f"{t.effect:+.3f} (welch p={t.p_value:.3g} < {sig.time_alpha})", t)
    return (State.REJECTED, f"record rule holds but {name} does not beat the parent significantly "
            f"(welch p={'n/a' if t.p_value is None else f'{t.p_value:.3g}'})", t)


def _record_insight(lab: Lab, candidate: Candidate, verdict: Verdict, test: TestResult) -> Insight:
    idea = lab.log.get("idea", candidate.idea_id) if candidate.idea_id else None
    ins = Insight(id=new_id("n"), task=lab.task.name, preset=verdict.preset,
                  technique=idea.title if idea else f"candidate {candidate.id}", diff=candidate.diff,
                  effect=test.effect, ci_low=test.ci_low, ci_high=test.ci_high, candidate_id=candidate.id,
                  tags=[t for t in ((idea.meta.get("direction") if idea else None), lab.task.name) if t],
                  meta={"edit_name": (idea.edit or {}).get("name") if idea else None,
                        "edit": idea.edit if idea else None, "p_value": test.p_value})
    lab.log.append(ins)
    try:
        from ..knowledge import KnowledgeStore

        KnowledgeStore().add(ins)
    except Exception:
        pass   # the shared store is optional; the lab's log keeps the insight regardless
    return ins


__all__ = ["audit", "run_checks", "register_check", "compare", "CHECKS", "SELECTION_FREE"]
