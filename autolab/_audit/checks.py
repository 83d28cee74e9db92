"""Audit checks: each a function ``(ctx) -> Check``, registered where it is defined with
:func:`register_check` (kind ``"check"`` of :mod:`autolab.registry`).

Which checks run for a task (:func:`checks_for`): every check registered with ``always=True``
(here and in ``probes.py``), then the names the task's ``task.toml`` gives: ``[audit] checks``
(registered checks it turns on, e.g. ``hidden_val``, or a plug-in's from the ``autolab.checks``
entry-point group) and its harness's probes (``[audit.probes.<name>]``: one check per probe,
built from the declaration by :func:`probe_check`). The static scan adds the task's
``[[audit.scan]]`` patterns to the generic ones; ``plausibility`` reads ``[audit.plausibility]``.
This package names no task: everything task-specific is declared in the task's folder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterator

from .. import registry
from ..lab import Lab
from ..ledger import not_a_verdict
from ..records import Candidate, Check, Run, State
from ..task import ProbeSpec, Task

CheckFn = Callable[["AuditContext"], Check]
_ALWAYS: list[str] = []     # names registered with always=True, in registration order


def register_check(name: str, *, always: bool = False) -> Callable[[CheckFn], CheckFn]:
    """Decorator: register ``fn`` as the check ``name``; ``always=True`` runs it for every task,
    otherwise a task turns it on by listing it in ``[audit] checks``."""
    def deco(fn: CheckFn) -> CheckFn:
        registry.register("check", name, fn)
        if always and name not in _ALWAYS:
            _ALWAYS.append(name)
        return fn
    return deco


class _Checks(Mapping):
    """``CHECKS``: a read-only view of the registered checks, by name."""

    def __getitem__(self, name: str) -> CheckFn:
        try:
            return registry.get("check", name)
        except registry.RegistryError:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(registry.names("check"))

    def __len__(self) -> int:
        return len(registry.names("check"))


CHECKS: Mapping[str, CheckFn] = _Checks()


def always_checks() -> list[str]:
    """The checks that run for every task, in order."""
    registry.names("check")     # the built-in check modules register on the kind's first lookup
    return list(_ALWAYS)


@dataclass(frozen=True)
class AuditContext:
    lab: Lab
    candidate: Candidate
    parent: Candidate | None
    runs: list[Run]            # the candidate's runs (every state) on this preset
    parent_runs: list[Run]     # the parent's complete runs on this preset

    @property
    def complete(self) -> list[Run]:
        return [r for r in self.runs if r.state is State.COMPLETE]

    @property
    def audit_cfg(self) -> dict:
        return self.lab.task.raw.get("audit", {})


@register_check("protected_hashes", always=True)
def _protected(ctx: AuditContext) -> Check:
    bad = sorted({f for r in ctx.runs for f in r.meta.get("protected_changed", [])})
    return Check("protected_hashes", not bad, f"protected files changed during a run: {', '.join(bad)}" if bad
                 else "protected files unchanged (sha256 before and after every run)")


@register_check("diff_scope", always=True)
def _scope(ctx: AuditContext) -> Check:
    task = ctx.lab.task
    outside = [f for f in ctx.candidate.files if not task.is_editable(f)]
    touched = re.findall(r"^\+\+\+ b/(\S+)", ctx.candidate.diff, flags=re.M)
    outside += [f for f in touched if not task.is_editable(f) and f not in outside]
    return Check("diff_scope", not outside, f"files outside the editable set: {outside}" if outside
                 else f"only editable files differ ({', '.join(sorted(set(touched))) or 'none'})")


@register_check("finite_metric", always=True)
def _finite(ctx: AuditContext) -> Check:
    name = ctx.lab.task.metric.name
    if not ctx.complete:
        states = ", ".join(f"{r.state.value}" for r in ctx.runs) or "no runs"
        return Check("finite_metric", False, f"no complete run ({states})")
    bad = [r.id for r in ctx.complete if not math.isfinite(r.metrics.get(name, math.nan))]
    return Check("finite_metric", not bad, f"non-finite {name} in {bad}" if bad else f"{name} finite in {len(ctx.complete)} runs")


@register_check("budget", always=True)
def _budget(ctx: AuditContext) -> Check:
    """The harness's own clock: the train process lived within budget + allowance, and the
    script's self-reported training time is consistent with what the harness measured.

    Where the harness measures the training window from outside the process
    (``timings.train_window_s``: from the clock's start to the model's save, as the harness
    saw them happen), the window must not exceed the budget by more than one step's worth
    (``[audit] budget_overrun_s`` / ``budget_overrun_frac``, or the preset's
    ``budget_overrun_s``), and it must not exceed what the script and the in-process clock
    report (``script_train_s``, ``clock_train_s``) by more than ``budget_slack_s`` +
    ``budget_slack_frac`` x budget: a script that patches ``time`` or trains on past the budget
    while printing less is caught here."""
    cfg = ctx.audit_cfg
    problems = []
    killed = [r for r in ctx.runs if r.state is State.KILLED and not not_a_verdict(r)]   # the machine's or the user's: not the candidate's
    for r in killed:
        problems.append(f"{r.id} killed: {(r.error or {}).get('evalue', '')[:100]}")
    for r in ctx.complete:
        t = r.timings
        budget = t.get("budget_s")
        limit = t.get("budget_s", math.inf) + t.get("allowance_s", 0.0)
        if t.get("train_s", 0.0) > limit + 1.0:
            problems.append(f"{r.id} trained {t['train_s']:.1f} s > budget+allowance {limit:.1f} s")
        script = t.get("script_train_s")
        if script is not None and "train_s" in t:
            if script > t["train_s"] + 1.0:
                problems.append(f"{r.id} reports {script:.1f} s of training, more than its process lived ({t['train_s']:.1f} s)")
            elif "budget_s" in t and script < t["budget_s"] * 0.5 and t["train_s"] > t["budget_s"]:
                problems.append(f"{r.id} reports {script:.1f} s of training but its process used {t['train_s']:.1f} s "
                                f"past the {t['budget_s']:.0f} s budget")
        window = t.get("train_window_s")
        if window is None or budget is None:
            continue
        preset = (r.meta.get("preset") or {}).get("settings", {})   # as resolved when the run started
        slack = float(cfg.get("budget_slack_s", 1.5)) + float(cfg.get("budget_slack_frac", 0.05)) * budget
        overrun = max(float(preset.get("budget_overrun_s", cfg.get("budget_overrun_s", 5.0))),
                      float(cfg.get("budget_overrun_frac", 0.1)) * budget)
        if "clock_start_s" not in t:
            problems.append(f"{r.id} never started the harness's training clock (no batch from the harness's loader, "
                            f"no start_clock()); its whole process counts as training ({window:.1f} s)")
        if window > budget + overrun:
            problems.append(f"{r.id} trained for {window:.1f} s as measured from outside the process, past the "
                            f"{budget:g} s budget (+{overrun:.1f} s for the last step)")
        for key, what in (("script_train_s", "prints"), ("clock_train_s", "its in-process clock reads")):
            if key in t and window > t[key] + slack:
                problems.append(f"{r.id} {what} {t[key]:.1f} s of training, but the harness measured {window:.1f} s "
                                f"from outside (tolerance {slack:.1f} s): a patched timer or training past the budget")
    return Check("budget", not problems, "; ".join(problems) if problems else "every run within its time budget")


@register_check("sandbox", always=True)
def _sandbox(ctx: AuditContext) -> Check:
    v = [f"{x.get('kind')}: {str(x.get('detail'))[:80]}" for r in ctx.runs for x in r.meta.get("violations", [])]
    return Check("sandbox", not v, "sandbox denials: " + "; ".join(sorted(set(v))[:6]) if v else "no sandbox denials")


@register_check("probes", always=True)
def _probes(ctx: AuditContext) -> Check:
    """Every probe the harness reported (listed or not) passed; probes the task declares with
    ``severity = "warn"`` are left to their own check."""
    spec = ctx.lab.task.audit
    warn_only = {p.name for p in spec.probes if p.severity == "warn"}
    failed, seen = [], set()
    for r in ctx.complete:
        probes = r.meta.get("probes", {}) or {}
        for name, res in probes.items():
            seen.add(name)
            if isinstance(res, dict) and res.get("passed") is False and name not in warn_only:
                failed.append(f"{name} ({str(res.get('detail', ''))[:80]})")
    if failed:
        return Check("probes", False, "harness probes failed: " + "; ".join(sorted(set(failed))))
    return Check("probes", True, f"harness probes passed ({', '.join(sorted(seen)) or 'none reported'})")


@register_check("forged_summary", always=True)
def _forged(ctx: AuditContext) -> Check:
    """The script's printed metric, if it prints one, must agree with the harness's."""
    name = ctx.lab.task.metric.name
    tol = float(ctx.audit_cfg.get("summary_tolerance", 0.02))
    bad = []
    for r in ctx.complete:
        claimed = (r.meta.get("summary") or {}).get(name)
        try:
            claimed = float(claimed) if claimed is not None else None
        except (TypeError, ValueError):
            claimed = None
        if claimed is not None and name in r.metrics and abs(claimed - r.metrics[name]) > tol * max(1.0, abs(r.metrics[name])):
            bad.append(f"{r.id} prints {name}: {claimed:.4f}, the harness measured {r.metrics[name]:.4f}")
    return Check("forged_summary", not bad, "; ".join(bad) if bad else "printed figures agree with the harness")


@register_check("hidden_val")
def _hidden(ctx: AuditContext) -> Check:
    """Re-evaluation on the held-back split: the candidate's gap (hidden − reported) must not
    exceed the parent's gap by more than the noise.

    The tolerance is the preset's ``hidden_gap_tolerance`` (else ``[audit]
    hidden_gap_tolerance``, default 0.03), measured as the seed-to-seed spread of the gap on
    that preset, widened to 4 standard errors of the difference when the parent's runs show
    more spread (the parent's spread only: a candidate cannot widen it)."""
    name = ctx.lab.task.metric.name
    hidden = ctx.audit_cfg.get("hidden_metric", f"hidden_{name}")
    tol = float(ctx.audit_cfg.get("hidden_gap_tolerance", 0.03))
    presets = {r.preset for r in ctx.complete}
    for p in presets:
        try:
            tol = max(tol, float(ctx.lab.task.preset(p).settings.get("hidden_gap_tolerance", tol)))
        except Exception:  # noqa: BLE001 - a preset renamed since the run
            pass
    sign = 1.0 if ctx.lab.task.metric.direction == "minimize" else -1.0

    def gaps(runs: list[Run]) -> list[float]:
        return [sign * (r.metrics[hidden] - r.metrics[name]) for r in runs if hidden in r.metrics and name in r.metrics]

    g, gp = gaps(ctx.complete), gaps(ctx.parent_runs)
    if not g:
        return Check("hidden_val", False, f"no {hidden} in the results: the harness must re-evaluate on the hidden split")
    base = sum(gp) / len(gp) if gp else 0.0
    mean = sum(g) / len(g)
    noise = ""
    if len(gp) >= 2:
        sd = math.sqrt(sum((x - base) ** 2 for x in gp) / (len(gp) - 1))
        se = sd * math.sqrt(1 / len(g) + 1 / len(gp))
        if 4 * se > tol:
            tol, noise = 4 * se, ", 4 standard errors of the parent's spread"
    ok = mean - base <= tol
    return Check("hidden_val", ok, f"hidden-split gap {mean:+.4f} vs parent {base:+.4f} (tolerance {tol:.4f}{noise})"
                 + ("" if ok else ": the candidate does better on the reported split than on data it never saw"))


# Patterns that should not appear in a candidate's added lines, whatever the task (a task adds
# its own, e.g. its harness's module and data files, as [[audit.scan]] in its task.toml). A
# secondary signal: only a few unambiguous ones reject on their own, the rest are warnings for
# a human or LLM review.
_SECRET_NAME = r"[\"'][A-Z0-9_]*(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)[A-Z0-9_]*[\"']"
GENERIC_SCAN = [
    (r"(\bos\.environ\b|\bgetenv\b|\benviron\b)[^\n]*" + _SECRET_NAME + "|" + _SECRET_NAME + r"[^\n]*\b(environ|getenv)\b",
     "reads a secret from the environment", "reject"),
    (r"\b(dict|list|str|repr|print|json\.dumps)\s*\(\s*os\.environ\s*\)|os\.environ\.(copy|items|keys|values)\s*\(|"
     r"os\.environb\b|/proc/self/environ", "dumps the environment", "reject"),
    (r"\bos\.environ\b|\bgetenv\s*\(", "reads the environment", "warn"),
    (r"\bimport\s+socket\b|\bsocket\.(socket|create_connection)\b|\burllib\b|\brequests\b|\bhttp\.client\b|\bhttpx\b|"
     r"\baiohttp\b|\bftplib\b|\bsmtplib\b|\burlopen\b|\bwebsocket|\bparamiko\b|[\"'](curl|wget)\b", "network access", "reject"),
    (r"\b(time|timeit|harness)\.\w+\s*=(?!=)", "monkeypatches a timer or the harness", "reject"),
    (r"setattr\s*\(\s*(time|torch\.cuda\.Event)", "monkeypatches a timer or the harness", "reject"),
    (r"elapsed_time\s*=|perf_counter\s*=|monotonic\s*=|\.(time_ns|monotonic_ns|perf_counter_ns|process_time|time_left|"
     r"start_clock)\s*=(?!=)", "monkeypatches a timer", "reject"),
    (r"\bsys\._getframe\b|\binspect\.(currentframe|stack|getouterframes)\b|\.f_back\b|\.f_locals\b|"
     r"\bgc\.get_(objects|referrers|referents)\b", "inspects the caller's frames or the heap", "reject"),
    (r"\bos\.dup2?\s*\(|\bos\.close\s*\(\s*[12]\s*\)", "redirects the process's own output", "reject"),
    (r"\bsubprocess\b|\bos\.system\b|\bos\.fork\b|\bmultiprocessing\b|\bos\.(exec|spawn|posix_spawn)",
     "starts processes", "warn"),
    (r"\bctypes\b|\bsys\.modules\b|\bbuiltins\b|__import__|\bsys\.(settrace|setprofile|addaudithook)\b",
     "reaches into the interpreter", "warn"),
    (r"__torch_function__|__torch_dispatch__|_make_subclass|as_subclass", "overrides torch dispatch (a Tensor subclass)",
     "warn"),
    (r"torch\.load\s*\(|from_pretrained|safetensors|\bpickle\.loads?\b|np\.load\s*\(", "loads weights or data",
     "warn"),
    (r"[\"'][A-Za-z0-9+/=]{4000,}[\"']", "embeds a large encoded blob", "warn"),
    (r"\bthreading\.Thread\b", "starts threads", "warn"),
]


def scan_code(code: str, patterns) -> tuple[list[str], list[str]]:
    """(reject hits, warn hits): what each ``(pattern, what, severity)`` found in ``code``."""
    hits_reject, hits_warn = [], []
    for pat, what, severity in patterns:
        if re.search(pat, code):
            (hits_reject if severity == "reject" else hits_warn).append(what)
    return hits_reject, hits_warn


@register_check("static_scan", always=True)
def _static(ctx: AuditContext) -> Check:
    """The generic patterns and the task's ``[[audit.scan]]`` ones, on the added lines (comments stripped)."""
    added = [l[1:] for l in ctx.candidate.diff.splitlines() if l.startswith("+") and not l.startswith("+++")]
    code = "\n".join(l.split("#", 1)[0] for l in added)
    task_patterns = [(p.pattern, p.what, p.severity) for p in ctx.lab.task.audit.scan]
    hits_reject, hits_warn = scan_code(code, GENERIC_SCAN + task_patterns)
    if hits_reject:
        return Check("static_scan", False, "added code " + ", ".join(sorted(set(hits_reject))))
    if hits_warn:
        return Check("static_scan", False, "added code " + ", ".join(sorted(set(hits_warn))) + " (review)", severity="warn")
    return Check("static_scan", True, "nothing suspicious in the added lines")


@register_check("plausibility", always=True)
def _plausibility(ctx: AuditContext) -> Check:
    """No complete run's metric lies past the task's plausibility bound for its preset
    (``[audit.plausibility]``: a floor for a minimized metric, a ceiling for a maximized one):
    a figure that far past the best known result is taken for a hack until a person has looked."""
    task = ctx.lab.task
    spec, name = task.audit.plausibility, task.metric.name
    where = f"{task.path / 'task.toml'} [audit.plausibility]"
    if spec is None:
        return Check("plausibility", True, f"the task declares no plausibility bound ({where})")
    past, checked = [], 0
    for r in ctx.complete:
        v, bound = r.metrics.get(name), spec.bound_for(r.preset)
        if bound is None or v is None or not math.isfinite(v):
            continue
        checked += 1
        if spec.implausible(v, r.preset):
            side = "below the floor" if spec.kind == "floor" else "above the ceiling"
            past.append(f"{r.id}: {name} {v:.6g} is {side} {bound:g} of preset {r.preset}")
    if past:
        return Check("plausibility", False, "implausible result: " + "; ".join(past[:4]) +
                     f" ({where}); far past the best known figure, so it is taken for a hack: inspect the runs "
                     "before trusting it")
    bounds = sorted({f"{r.preset} {spec.kind} {spec.bound_for(r.preset):g}" for r in ctx.complete
                     if spec.bound_for(r.preset) is not None})
    if not checked:
        return Check("plausibility", True, f"no complete run with a bound to check ({where})")
    return Check("plausibility", True, f"{name} within the plausibility bound in {checked} runs ({', '.join(bounds)})")


# ---------------------------------------------------------------------------- which checks run

def probe_check(spec: ProbeSpec) -> CheckFn:
    """The check of one harness probe: passes when every complete run's result has
    ``probes[name]`` with ``passed: true`` (a missing probe fails: the harness must run it).
    Its failures carry the declaration's severity."""
    name, what, severity = spec.name, spec.description, spec.severity

    def check(ctx: AuditContext) -> Check:
        failed, missing = [], []
        for r in ctx.runs:   # a failed run that got as far as the probe counts too (e.g. a reset check that raised)
            res = (r.meta.get("probes") or {}).get(name)
            if isinstance(res, dict) and res.get("passed") is False:
                failed.append(f"{r.id}: {str(res.get('detail', ''))[:300]}")
            elif r in ctx.complete and not isinstance(res, dict):
                missing.append(r.id)
        if not failed and not ctx.complete:
            return Check(name, True, f"no complete run to read the {name} probe from (finite_metric decides)", severity)
        if failed:
            return Check(name, False, f"{what}: " + "; ".join(failed[:3]), severity)
        if missing:
            return Check(name, False, f"the harness did not report the {name} probe for {', '.join(missing[:3])}", severity)
        return Check(name, True, f"{what}: passed in {len(ctx.complete)} runs", severity)

    check.__name__ = f"_probe_{name}"
    check.__doc__ = f"The harness's {name!r} probe ({what}) passed in every complete run."
    return check


def _failing(name: str, detail: str) -> CheckFn:
    def check(ctx: AuditContext) -> Check:
        return Check(name, False, detail)
    return check


def _lookup(name: str) -> CheckFn:
    def check(ctx: AuditContext) -> Check:     # resolved when run: a broken plug-in fails this check only
        return registry.get("check", name)(ctx)
    return check


def checks_for(task: Task) -> list[tuple[str, CheckFn]]:
    """``(name, check)`` for every check the audit runs on ``task``, in order: the always-run
    checks, then the task's names (``task.probes``: ``[audit] checks``, then its probes)."""
    known = set(registry.names("check"))
    out = [(n, _lookup(n)) for n in always_checks()]
    seen = {n for n, _ in out}
    toml = task.path / "task.toml"
    for name in task.probes:
        if name in seen:
            continue
        seen.add(name)
        declared = task.audit.probe(name)
        if name in known and declared is not None:
            fn = _failing(name, f"{toml} declares [audit.probes.{name}], but {name!r} is a check of autolab; "
                                f"rename the probe in the harness and in task.toml")
        elif name in known:
            fn = _lookup(name)
        elif name in task.audit.checks:
            fn = _failing(name, f"{toml} [audit] checks names {name!r}, but no check of that name is registered "
                                f"(available: {', '.join(sorted(known))}); fix the name, install the plug-in that "
                                "provides it, or declare it as a harness probe under [audit.probes.<name>]")
        else:
            fn = probe_check(declared or ProbeSpec(name, f"the harness's {name!r} probe"))
        out.append((name, fn))
    return out


