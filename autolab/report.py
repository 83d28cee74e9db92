"""Reports: a research log → plots and tables → a self-contained HTML file.

``build_report(lab_dir, "report.html")`` executes ``notebooks/03_report.ipynb`` with
papermill on the lab and exports it with nbconvert: code hidden, plots embedded as PNG
data URIs, widget views dropped (the notebook renders static HTML and PNGs), and no
remote scripts, so the file reads offline. The figures and tables the notebook shows
are the functions below; they need only the lab's ``log.db`` (not the task folder).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

from . import ablation as _ablation
from .errors import AutolabError
from .ledger import Ledger
from .log import ResearchLog
from .records import Purpose
from .ui import _html as H
from .ui._plots import (PALETTE, STATE_COLORS, experiments, new_figure, png_bytes, result_curve,
                        running_best)
from .ui._plots import compare_figure as _compare_figure
from .ui._plots import progress_figure as _progress_figure

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NOTEBOOK = REPO_ROOT / "notebooks" / "03_report.ipynb"


# ---------------------------------------------------------------------------- data

def open_log(lab_dir) -> ResearchLog:
    path = Path(lab_dir)
    if not (path / "log.db").exists():
        raise AutolabError(f"{path} holds no research log (log.db); pass the folder given to --lab when the loop ran")
    return ResearchLog(path / "log.db")


def metric_of(log: ResearchLog) -> tuple[str, str]:
    return log.get_meta("metric", "metric"), log.get_meta("direction", "minimize")


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


_running_best = running_best   # the name earlier code used


def _curve(run, lab_dir: Path) -> list[dict]:
    return [{"t": t, "loss": l} for t, l in result_curve(lab_dir, run)]


# ---------------------------------------------------------------------------- figures

def progress_figure(log: ResearchLog):
    """Every experiment (mean over its seeds, coloured by outcome) and the running best of the
    lab and of each research line."""
    return _progress_figure(log)


def compare_figure(log: ResearchLog, a, b, lab_dir=None, *, labels=None):
    """Two candidates' training curves: mean ± 1 sd over their seeds."""
    return _compare_figure(log, Path(lab_dir) if lab_dir else log.path.parent, a, b, labels=labels)


def lineage_figure(log: ResearchLog):
    """The candidate tree: parent → child edges (merges dashed), coloured by state."""
    metric, _ = metric_of(log)
    lin = log.lineage()
    n = len(lin)
    depth = int(lin["depth"].max()) if n else 0
    fig = new_figure(min(16.0, max(9.0, 2.6 * (depth + 1))), min(16.0, max(2.8, 0.48 * n + 0.9)), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    if not n:
        ax.text(0.5, 0.5, "no candidates yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    rows = {r["candidate_id"]: r for _, r in lin.iterrows()}
    kids: dict[Any, list[str]] = {}
    for cid, r in rows.items():
        parent = r["parent_id"] if r["parent_id"] in rows else None
        kids.setdefault(parent, []).append(cid)
    pos: dict[str, tuple[float, float]] = {}
    leaf = [0]

    def place(cid: str, depth: int, seen: frozenset) -> float:
        ch = [k for k in kids.get(cid, []) if k not in seen]
        if not ch:
            y = float(leaf[0]); leaf[0] += 1
        else:
            ys = [place(k, depth + 1, seen | {cid}) for k in ch]
            y = sum(ys) / len(ys)
        pos[cid] = (2.2 * depth, y)
        return y

    for root in kids.get(None, []):
        place(root, 0, frozenset())
    for cid in rows:   # anything unreachable (a cycle): put it at the bottom
        if cid not in pos:
            pos[cid] = (0.0, float(leaf[0])); leaf[0] += 1
    for cid, r in rows.items():
        x, y = pos[cid]
        if r["parent_id"] in pos:
            px, py = pos[r["parent_id"]]
            ax.plot([px, x - 0.3, x - 0.3, x], [py, py, y, y], color="#8c959f", lw=1, zorder=1)
        for other in str(r.get("merge_of") or "").split(","):
            if other and other in pos and other != r["parent_id"]:
                ox, oy = pos[other]
                ax.plot([ox, x], [oy, y], color="#8250df", lw=1, ls="--", zorder=1)
    for cid, r in rows.items():
        x, y = pos[cid]
        color = STATE_COLORS.get(r["state"], "#57606a")
        ax.scatter([x], [y], s=80, color=color, zorder=3, edgecolor="white")
        m = r.get(f"metrics.{metric}")
        mtxt = f"  {m:.4g}" if isinstance(m, float) and m == m else ""
        ax.annotate(f"{str(r['title'] or cid)[:34]}{mtxt}", (x, y), xytext=(7, 3), textcoords="offset points",
                    va="bottom", fontsize=8, color="#24292f")
        ax.annotate(f"{cid} · {r['tags.thread']}", (x, y), xytext=(7, -3), textcoords="offset points", va="top",
                    fontsize=7.5, color="#6e7781")
    ax.set_xlim(-0.3, max(p[0] for p in pos.values()) + 2.3)
    ax.set_ylim(leaf[0] - 0.4, -0.6)
    handles = [ax.scatter([], [], color=c, label=s.lower()) for s, c in STATE_COLORS.items() if (lin["state"] == s).any()]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title("Lineage: each candidate under its parent (dashed: merged in)", fontsize=11)
    return fig


def thread_figure(log: ResearchLog, lab_dir=None):
    """Per research thread: its experiments and running best, and the training-loss curve
    of its best candidate (from the runs' result JSON)."""
    metric, direction = metric_of(log)
    lab_dir = Path(lab_dir) if lab_dir else log.path.parent
    ex = experiments(log)
    ledger = Ledger(log)
    fig = new_figure(11.5, 4.4, dpi=110)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    threads = sorted(set(ex["thread"])) if not ex.empty else []
    runs = log.runs_list()
    drawn = 0
    for k, th in enumerate(threads):
        color = PALETTE[k % len(PALETTE)]
        sel = ex[ex["thread"] == th]
        xs = [i + 1 for i in sel.index]
        ax1.scatter(xs, sel["mean"], color=color, s=22, alpha=0.7)
        ax1.step(xs, _running_best(list(sel["selection_free_mean"]), direction, list(sel["kept"])), where="post",
                 color=color, lw=1.6, label=th)
        best = ledger.best(th)
        if best is None:
            continue
        title = ex.loc[ex["candidate_id"] == best.id, "title"]
        title = str(title.iloc[0]) if len(title) else best.id
        for r in runs:
            if r.candidate_id == best.id and r.state.value == "COMPLETE":
                curve = [p for p in _curve(r, lab_dir) if p.get("loss") is not None]
                if curve:
                    ax2.plot([p.get("t", p.get("step")) for p in curve], [p["loss"] for p in curve], color=color, lw=1.3,
                             label=f"{th}: {title[:24]} (seed {r.seed})")
                    drawn += 1
                    break
    ax1.set_xlabel("experiment", fontsize=10)
    ax1.set_ylabel(metric, fontsize=10)
    ax1.set_title("Per thread: experiments and running best (kept)", fontsize=11)
    ax1.grid(alpha=0.3)
    if threads:
        ax1.legend(fontsize=8, title="thread", title_fontsize=8)
    ax2.set_title("Training loss of each thread's best candidate (the ledger's)", fontsize=11)
    ax2.set_xlabel("seconds", fontsize=10)
    ax2.set_ylabel("train loss", fontsize=10)
    ax2.grid(alpha=0.3)
    if drawn:
        ax2.legend(fontsize=8, loc="upper right")
    else:
        ax2.text(0.5, 0.5, "no training curves recorded", ha="center", va="center", transform=ax2.transAxes,
                 color="#6e7781")
    return fig


# ---------------------------------------------------------------------------- tables

def summary_html(log: ResearchLog) -> str:
    metric, direction = metric_of(log)
    ledger = Ledger(log)
    runs = log.runs_list()
    states: dict[str, int] = {}
    for r in runs:
        states[r.state.value] = states.get(r.state.value, 0) + 1
    cands = log.candidates_list()
    promoted = [c for c in cands if c.state.value == "PROMOTED"]
    best_txt = "— (no promoted candidate beats the seed)"
    best, seed = ledger.best(), ledger.seed()
    if best is not None and seed is not None and best.id != seed.id:
        seed_mean, best_mean = ledger.mean(seed, runs=runs), ledger.mean(best, runs=runs)
        gain = (seed_mean - best_mean if direction == "minimize" else best_mean - seed_mean) \
            if seed_mean is not None and best_mean is not None else None
        best_txt = (f"{H.code(best.id)} {H.esc(_title(log, best))}: <b>{H.fmt(best_mean)}</b>"
                    + (f" (seed {H.fmt(seed_mean)}, gain {H.fmt(gain)})" if gain is not None else "")
                    + " on selection-free seeds")
    rows = [("task", H.esc(log.get_meta("task", "?"))),
            ("metric", f"{H.esc(metric)} ({direction})"),
            ("ideas", str(len(log.ideas_list()))), ("candidates", str(len(cands))),
            ("runs", ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "0"),
            ("promoted", str(len(promoted))), ("best promoted", best_txt)]
    lost = (best.meta or {}).get("model_reclaimed") if best is not None else None
    if lost:   # promoted after its model files were reclaimed (Lab.set_state): say how to get one back
        from .lab import rerun_command

        cmd = rerun_command(log.get_meta("task", "TASK"), best.id, log.path.parent)
        rows.append(("best model", f"reclaimed (runs {H.esc(', '.join(lost.get('runs') or []))}); to get it back, "
                                   f"run the candidate again on a seed: {H.code(cmd)}"))
    llm = log.llm_totals()
    rows.append(("LLM calls", f"{llm['calls']} (${llm['cost']:.2f}, {llm['prompt_tokens'] + llm['completion_tokens']} tokens)"))
    return H.table(["", ""], [(f"<b>{k}</b>", v) for k, v in rows])


def _title(log: ResearchLog, c) -> str:
    idea = log.get("idea", c.idea_id) if c.idea_id else None
    return idea.title if idea is not None else ("seed" if c.parent_id is None else "")


def leaderboard_html(log: ResearchLog, limit: int | None = 25) -> str:
    metric, _ = metric_of(log)
    return H.leaderboard_table(Ledger(log).leaderboard(), metric, limit=limit)


def audit_summary_html(log: ResearchLog) -> str:
    """Verdict counts, one row per audited candidate (its final state, the stages of its audit,
    the ledger's mean as in the leaderboard, and its last verdict's test), and which checks
    failed how often."""
    ledger = Ledger(log)
    vs = log.verdicts_list()
    runs = log.runs_list()
    cands = {c.id: c for c in log.candidates_list()}
    ideas = {i.id: i for i in log.ideas_list()}
    by_cand: dict[str, list] = {}
    failing: dict[str, int] = {}
    for v in vs:
        by_cand.setdefault(v.candidate_id, []).append(v)
        for c in v.checks:
            if not c.get("passed"):
                failing[c["name"]] = failing.get(c["name"], 0) + 1
    counts: dict[str, int] = {}
    for cid, cvs in by_cand.items():
        final = cands[cid].state.value if cid in cands else cvs[-1].state.value
        counts[final] = counts.get(final, 0) + 1
    head = " &nbsp; ".join(f"{H.badge(s)} {n}" for s, n in sorted(counts.items())) or "no verdicts yet"
    rows = []
    for cid, cvs in by_cand.items():
        v = cvs[-1]
        c = cands.get(cid)
        title = ideas[c.idea_id].title if c is not None and c.idea_id in ideas else ""
        failed = ", ".join(sorted({k["name"] for x in cvs for k in x.checks if not k.get("passed")})) or "—"
        stages = " → ".join(f"{x.meta.get('stage') or 'audit'} {x.state.value.lower()}" for x in cvs)
        sf = ledger.values(cid, runs=runs)
        rows.append((H.code(cid), H.esc(title), H.badge(c.state if c is not None else v.state), H.esc(stages),
                     f"{H.fmt(ledger.mean(cid, runs=runs))} (n={len(sf)})", H.fmt(v.effect), H.fmt(v.p_value),
                     f"{v.n_candidate}/{v.n_parent}", H.esc(failed), H.esc(v.reason)))
    out = [f'<div style="{H.FONT} margin:4px 0;">{head}</div>',
           H.table(["candidate", "idea", "state", "verdicts", "mean (selection-free)", "effect", "p",
                    "n in test (cand/parent)", "failed checks", "reason"], rows),
           f'<div style="{H.FONT} color:#6e7781; font-size:11px;">mean: the ledger\'s, over the candidate\'s '
           f'selection-free runs, as in the leaderboard; effect, p and n: the last verdict\'s test (positive effect is '
           f'better).</div>']
    if failing:
        out.append(H.table(["check", "failures"], [(H.esc(k), str(n)) for k, n in sorted(failing.items(), key=lambda x: -x[1])],
                           caption="Checks that failed"))
    return "".join(out)


def _removal(row, direction: str) -> tuple[float | None, float | None, float | None]:
    """The effect of removing a change in the metric's own units (the candidate without it minus
    the full candidate, mean over paired seeds) and its 95% interval; the row's ``effect`` is the
    change's contribution in the good direction."""
    if row.effect is None:
        return None, None, None
    if direction == "minimize":
        return row.effect, row.ci_low, row.ci_high
    return -row.effect, (None if row.ci_high is None else -row.ci_high), (None if row.ci_low is None else -row.ci_low)


_VERDICT_COLORS = {_ablation.CARRIES: "#1a7f37", _ablation.HURTS: "#cf222e", _ablation.NO_MEASURABLE: "#57606a"}


def ablation_html(log: ResearchLog) -> str:
    """The ablations of the lab (``autolab.ablation``; the loop makes them, ``autolab ablate``
    too): for each ablated candidate, the latest ablation's rows, one per change it carries: what
    the change is (its idea's title and a one-line summary of its diff), the effect of removing it
    (mean difference over paired seeds in the metric's units, 95% interval, the one-sided p that the
    change helps, the number of paired seeds) and a plain verdict. Ablations still in progress
    are named."""
    metric, direction = metric_of(log)
    ledger = Ledger(log)
    best = ledger.best()
    rows = _ablation.ablation_rows(log)
    cands = {c.id: c for c in log.candidates_list()}
    out = []
    by_cand: dict[str, list] = {}
    for r in rows:
        by_cand.setdefault(r.candidate_id, []).append(r)
    order = sorted(by_cand, key=lambda cid: (best is None or cid != best.id, by_cand[cid][0].created_at))
    worse = "higher" if direction == "minimize" else "lower"
    for cid in order:
        rs = sorted(by_cand[cid], key=lambda r: r.change)
        c = cands.get(cid)
        head = (f"{H.code(cid)} {H.esc(_title(log, c) if c is not None else '')}"
                + (f" {H.badge(c.state)}" if c is not None else "")
                + (" <b>(the best)</b>" if best is not None and cid == best.id else "")
                + f" — {len(rs)} changes relative to the seed; ablation {H.code(rs[0].ablation_id)} on "
                  f"{H.esc(rs[0].preset)}, seeds {H.esc(', '.join(map(str, sorted({s for r in rs for s in r.seeds}))) or '—')}")
        table = []
        for r in rs:
            d, lo, hi = _removal(r, direction)
            summary = r.summary
            if not summary and r.after in cands:
                summary = _ablation.describe(cands[r.after].diff)
            verdict = r.verdict
            color = _VERDICT_COLORS.get(verdict, "#6e7781")
            table.append((
                str(r.change), H.esc(r.title if r.title != r.after else "(no idea title)"), H.code(summary) if summary else "—",
                f"{d:+.4g}" if d is not None else "—",
                f"[{lo:+.4g}, {hi:+.4g}]" if lo is not None and hi is not None else "—",
                H.fmt(r.p_value) if r.status == _ablation.MEASURED else "—",
                str(len(r.seeds)) if r.seeds else "0",
                f'<b style="color:{color};">{H.esc(verdict)}</b>'
                + (f'<div style="color:#6e7781; font-size:11px;">{H.esc(r.detail[:200])}</div>'
                   if r.status != _ablation.MEASURED and r.detail else "")))
        out.append(f'<div style="{H.FONT} margin:10px 0 4px 0;">{head}</div>')
        out.append(H.table(["#", "change", "what it is", f"removing it: Δ {metric}", "95% interval", "p (it helps)",
                            "paired seeds", "verdict"], table))
    for p in _ablation.pending(log):
        if p.candidate_id not in by_cand:
            out.append(f'<div style="{H.FONT} color:#6e7781; margin:6px 0;">Ablation {H.code(p.ablation_id)} of '
                       f'{H.code(p.candidate_id)} is in progress (planned {H.esc(p.created_at[:16])} by '
                       f'{H.esc(p.by or "hand")}): its rows appear once its runs are in; the next <code>autolab loop</code> '
                       f'(<code>--ablate auto</code>, the default) finishes it.</div>')
    if not out:
        return (f'<div style="{H.FONT} color:#6e7781;">No ablation recorded. The loop ablates the best candidate once '
                f'two or more of its changes (stacked promotions or a merge) can be removed alone '
                f'(<code>autolab loop --ablate off</code> turns it off); <code>autolab ablate LAB CANDIDATE</code> '
                f'ablates any candidate by hand.</div>')
    out.append(f'<div style="{H.FONT} color:#6e7781; font-size:11px; margin-top:4px;">Each change is removed alone from '
               f'the candidate (its diff reversed) and the candidate without it runs beside the full candidate on the '
               f'same final-range seeds, never used to select anything. Δ: the metric without the change minus with it, '
               f'mean over the paired seeds ({H.esc(metric)} is {"minimized" if direction == "minimize" else "maximized"}: '
               f'a {worse} value without the change means the change helps), with its 95% interval; p: one-sided paired '
               f't-test that the change helps. Verdict from the interval: "{_ablation.CARRIES}" when removing the change '
               f'makes the candidate worse, "{_ablation.HURTS}" when it makes it better, "{_ablation.NO_MEASURABLE}" when '
               f'the interval holds 0.</div>')
    return "".join(out)


# ---------------------------------------------------------------------------- provenance

def _git_commit(repo: Path = REPO_ROOT) -> str:
    """The autolab checkout's commit (short hash, "+ local changes" when the tree differs), or why not."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown (autolab is not run from a git checkout)"
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + (" + local changes" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git is not available)"


def provenance(log: ResearchLog, lab_dir=None) -> dict[str, str]:
    """What a reader needs to trust or reproduce the report: when and with what it was built, the
    lab's preset and where its runs ran, the seed policy and the corpus the runs read."""
    import datetime as dt
    import os
    import platform

    from . import __version__
    from .ledger import SEED_BASE

    lab_dir = Path(lab_dir) if lab_dir else log.path.parent
    try:
        lab_json = json.loads((lab_dir / "lab.json").read_text())
    except (OSError, ValueError):
        lab_json = {}
    runs = [r for r in log.runs_list() if r.purpose != Purpose.REDTEAM]
    presets: dict[str, int] = {}
    hosts: dict[str, int] = {}
    devices: dict[str, int] = {}
    corpora: dict[str, int] = {}
    seeds: dict[str, set] = {}
    for r in runs:
        presets[r.preset] = presets.get(r.preset, 0) + 1
        if r.meta.get("host"):
            hosts[str(r.meta["host"])] = hosts.get(str(r.meta["host"]), 0) + 1
        preset = r.meta.get("preset") if isinstance(r.meta.get("preset"), dict) else {}
        summary = r.meta.get("summary") or {}
        dev = summary.get("device") or preset.get("device")
        if dev:
            gpus = preset.get("gpus")
            key = f"{dev}" + (f" × {gpus}" if isinstance(gpus, int) and gpus > 1 else "")
            devices[key] = devices.get(key, 0) + 1
        corpus = r.meta.get("corpus")
        if isinstance(corpus, dict) and corpus:
            key = f"{corpus.get('name', '?')} train sha256 {str(corpus.get('train_sha256') or corpus.get('sha256') or '?')[:16]}…"
            corpora[key] = corpora.get(key, 0) + 1
        if r.ended_at:
            seeds.setdefault(Purpose.canonical_of(r.purpose), set()).add(r.seed)

    def counted(d: dict[str, int], none: str) -> str:
        return "; ".join(f"{k} ({n} run{'s' if n != 1 else ''})" for k, n in sorted(d.items(), key=lambda x: -x[1])) or none

    def seed_span(ss: set) -> str:
        ints = sorted(x for x in ss if isinstance(x, int))
        return (f"{ints[0]}–{ints[-1]}" if len(ints) > 1 else str(ints[0])) if ints else "—"

    policy = ", ".join(f"{p} from {SEED_BASE[p]}" for p in ("screen", "confirm", "final") if p in SEED_BASE)
    used = "; ".join(f"{p}: seeds {seed_span(ss)}" for p, ss in sorted(seeds.items()))
    return {
        "built": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "autolab": f"{__version__}, commit {_git_commit()}",
        "lab": f"{lab_dir.resolve().name} (created {lab_json.get('created_at') or log.get_meta('created_at', '?')})",
        "task": f"{log.get_meta('task', '?')}, metric {log.get_meta('metric', '?')} ({log.get_meta('direction', '?')})",
        "preset": f"{lab_json.get('preset') or log.get_meta('preset', '?')}"
                  + (f" (runs: {counted(presets, '')})" if presets else ""),
        "hardware": (f"runs on {counted(hosts, 'unrecorded hosts')}; devices {counted(devices, 'unrecorded')}"
                     f"; report built on {platform.node() or '?'} ({platform.machine()}, {os.cpu_count()} CPUs, "
                     f"{platform.system()} {platform.release()})"),
        "seed policy": (f"disjoint ranges per purpose ({policy}): selection never sees a confirmation or final seed"
                        + (f"; used: {used}" if used else "")),
        "corpus": counted(corpora, "none recorded by the runs (this task reads no corpus, or its harness does "
                                   "not report one)"),
    }


def provenance_html(log: ResearchLog, lab_dir=None) -> str:
    return H.table(["", ""], [(f"<b>{H.esc(k)}</b>", H.esc(v)) for k, v in provenance(log, lab_dir).items()],
                   caption="About this report")


def best_diff_html(log: ResearchLog, lab_dir=None) -> str:
    """The best candidate (the ledger's) against the lab's seed, side by side."""
    from .ui.diffhtml import side_by_side
    from .store import Store

    ledger = Ledger(log)
    best, seed = ledger.best(), ledger.seed()
    if best is None or seed is None or best.id == seed.id:
        return f'<div style="{H.FONT} color:#6e7781;">No promoted candidate yet (none beats the seed).</div>'
    store = Store(Path(lab_dir) if lab_dir else log.path.parent)
    try:
        return side_by_side(store.read(seed.files), store.read(best.files), max_height=None,
                            title=f"{best.id} (best promoted) vs {seed.id} (seed)")
    except AutolabError:
        from .ui.diffhtml import side_by_side_from_unified

        return side_by_side_from_unified(best.diff, max_height=None, title=f"{best.id} vs its parent")


def show(fig, alt: str | None = None) -> None:
    """Display a figure as an embedded PNG (works the same live and in exported HTML);
    ``alt`` (default: the figure's title) becomes the image's alternative text in the report."""
    from IPython.display import Image, display

    if alt is None:
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        alt = "; ".join(titles) or "a figure"
    display(Image(data=png_bytes(fig), metadata={"alt": alt}))


def show_html(text: str) -> None:
    from IPython.display import HTML, display

    display(HTML(text))


# ---------------------------------------------------------------------------- HTML export

_TEMPLATE = r"""{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block data_png scoped %}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}" alt="{{ (output | get_metadata('alt', 'image/png')) or 'a figure' | escape_html }}">
</div>
{% endblock data_png %}
"""
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_REMOTE = [re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//[^>]*>\s*</script>", re.I),
           re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//[^>]*>", re.I)]


def _staticize(nb) -> None:
    """Drop live-widget views (their static fallbacks stay) and the widget state."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data and _WIDGET_MIME in data:
                data.pop(_WIDGET_MIME)
                if set(data) <= {"text/plain"}:
                    continue   # a bare widget repr reads as noise in a report
            kept.append(out)
        cell["outputs"] = kept


def export_html(notebook, *, title: str | None = None) -> str:
    """Self-contained HTML of an executed notebook: inputs hidden, images inline, no remote scripts."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4) if isinstance(notebook, (str, Path)) else notebook
    _staticize(nb)
    if title:
        nb.metadata["title"] = title
    exporter = HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"autolab_report.html.j2": _TEMPLATE})],
                            template_file="autolab_report.html.j2")
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nb)
    for pat in _REMOTE:
        body = pat.sub("", body)
    return body


@contextlib.contextmanager
def _kernel_transport():
    """Papermill arguments that start the report's kernel on Unix socket files in a short-lived
    folder (IPC transport), the way runs start theirs. Over TCP without CurveZMQ keys, ipykernel
    warns at every start that its traffic is unencrypted, and that warning ended up in the
    output of every ``autolab report``. Not POSIX: the default transport stays."""
    import os
    import shutil

    if os.name != "posix":
        yield {}
        return
    from ._papermill_run import _ipc_kernel_manager

    # a Unix socket path must stay under 108 bytes: a folder directly under /tmp
    folder = tempfile.mkdtemp(prefix="autolab-k-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        yield {"kernel_manager_class": _ipc_kernel_manager(folder)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build_report(lab_dir, out_html, *, notebook=None, smoke: bool = False, timeout: int = 900,
                 kernel_name: str | None = None, keep_notebook: str | Path | None = None) -> Path:
    """Execute the report notebook on ``lab_dir`` and write self-contained HTML to ``out_html``.

    ``keep_notebook`` saves the executed notebook too; on failure it is kept next to
    ``out_html`` (``.ipynb``) so the failing cell can be read.
    """
    import papermill as pm

    lab_dir = Path(lab_dir).resolve()
    open_log(lab_dir).close()   # a clear error before a kernel starts
    nb = Path(notebook) if notebook else DEFAULT_NOTEBOOK
    if not nb.exists():
        raise AutolabError(f"report notebook {nb} not found; pass notebook=... (autolab ships notebooks/03_report.ipynb)")
    out = Path(out_html).resolve()
    if out.is_dir():
        raise AutolabError(f"{out} is a folder; pass the report's file name, e.g. {out / 'report.html'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AutolabError(f"cannot write the report to {out}: {e.strerror}; pick a writable location") from None
    with tempfile.TemporaryDirectory(prefix="autolab-report-") as tmp, _kernel_transport() as transport:
        executed = Path(keep_notebook) if keep_notebook else Path(tmp) / "report.ipynb"
        try:
            pm.execute_notebook(str(nb), str(executed), parameters={"lab": str(lab_dir), "smoke": bool(smoke)},
                                progress_bar=False, log_output=False, kernel_name=kernel_name,
                                execution_timeout=timeout, cwd=str(nb.parent), **transport)
        except Exception as e:
            kept = out.with_suffix(".ipynb")
            if executed.exists() and executed != kept:
                kept.write_bytes(executed.read_bytes())
            raise AutolabError(f"the report notebook failed on {lab_dir}: {type(e).__name__}: {str(e)[-600:]}\n"
                               f"the executed notebook is kept at {kept}; open it to see the failing cell") from e
        task = ResearchLog(lab_dir / "log.db").get_meta("task", "")
        out.write_text(export_html(executed, title=f"autolab report: {task} ({lab_dir.name})"), encoding="utf-8")
    return out
