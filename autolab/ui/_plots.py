"""Matplotlib figures rendered to PNG bytes with the Agg canvas (no pyplot, no global
backend state), so they can be drawn from a background thread and embedded anywhere."""

from __future__ import annotations

import io
from typing import Iterable, Sequence

PALETTE = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83", "#e16f24", "#57606a"]


def new_figure(w: float = 6.4, h: float = 3.0, dpi: int = 96):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, *, dpi: int | None = None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, bbox_inches="tight")
    return buf.getvalue()


def curves_png(series: Sequence[tuple[str, Iterable[float], Iterable[float]]], *, xlabel: str = "seconds",
               ylabel: str = "train loss", budget_s: float | None = None, title: str = "",
               w: float = 6.4, h: float = 2.8, legend_outside: bool = False) -> bytes:
    """PNG of loss curves: ``series`` is [(label, xs, ys), ...]. ``legend_outside`` puts the
    legend to the right of the axes, where it never covers a curve."""
    fig = new_figure(w, h, dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for k, (label, xs, ys) in enumerate(series):
        xs, ys = list(xs), list(ys)
        if xs:
            ax.plot(xs, ys, color=PALETTE[k % len(PALETTE)], lw=1.4, label=label)
            drawn += 1
    if budget_s:
        ax.axvline(budget_s, color="#6e7781", ls="--", lw=0.8)
        ax.set_xlim(left=0, right=max(budget_s * 1.05, ax.get_xlim()[1]))
    if not drawn:
        ax.text(0.5, 0.5, "waiting for the first loss point…", ha="center", va="center", color="#6e7781",
                transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if drawn > 1 or (drawn == 1 and series and series[0][0]):
        if legend_outside:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        else:
            ax.legend(fontsize=8, loc="upper right")
    return png_bytes(fig)


# ---------------------------------------------------------------------------- the lab's progress

STATE_COLORS = {"PROMOTED": "#1a7f37", "REJECTED": "#8c959f", "FAILED": "#cf222e", "READY": "#0969da",
                "PENDING": "#bf8700"}


def experiments(log):
    """One row per evaluated candidate, in the order it was first run: thread, title,
    state, mean metric over complete runs (NaN when no run completed: a killed or failed
    run's numbers are never a metric), runs, failures, the selection-free mean (the
    ledger's mean, the number "best" is judged on) and ``kept`` (the seed or promoted:
    the ledger's candidates for best). Red-team and ablation runs are no experiments: left out."""
    import math

    import pandas as pd

    from ..ledger import Ledger
    from ..records import Purpose

    ledger = Ledger(log)
    metric = ledger.metric
    seed = ledger.seed()
    runs = log.runs_list()
    cands = {c.id: c for c in log.candidates_list()}
    ideas = {i.id: i for i in log.ideas_list()}
    verdicts = {v.candidate_id: v for v in log.verdicts_list()}
    order: dict[str, int] = {}
    vals: dict[str, list[float]] = {}
    fails: dict[str, int] = {}
    for k, r in enumerate(runs):
        if r.purpose in (Purpose.REDTEAM, Purpose.ABLATION):   # not experiments: an ablation decides nothing
            continue
        order.setdefault(r.candidate_id, k)
        if r.state.value == "COMPLETE" and isinstance(r.metrics.get(metric), (int, float)):
            vals.setdefault(r.candidate_id, []).append(float(r.metrics[metric]))
        elif r.state.value in ("FAILED", "KILLED"):
            fails[r.candidate_id] = fails.get(r.candidate_id, 0) + 1
    rows = []
    for cid in sorted(order, key=order.get):
        c = cands.get(cid)
        v = vals.get(cid, [])
        ver = verdicts.get(cid)
        sf = ledger.mean(cid, runs=runs)
        rows.append({
            "candidate_id": cid, "thread": c.thread if c else "", "parent_id": c.parent_id if c else None,
            "title": (ideas[c.idea_id].title if c and c.idea_id in ideas else ("seed" if c and c.parent_id is None else "")),
            "state": c.state.value if c else "", "mean": sum(v) / len(v) if v else math.nan, "n": len(v),
            "failed": fails.get(cid, 0), "verdict": ver.state.value if ver else None,
            "p_value": ver.p_value if ver else None,
            "kept": bool(c and ledger.is_kept(c, seed)),
            "selection_free_mean": math.nan if sf is None else float(sf),
        })
    return pd.DataFrame(rows, columns=["candidate_id", "thread", "parent_id", "title", "state", "mean", "n", "failed",
                                       "verdict", "p_value", "kept", "selection_free_mean"])


def running_best(values, direction: str, kept=None) -> list[float]:
    """The best value so far, counting only kept experiments (the seed and promoted ones:
    a rejected candidate's number, a hack's included, never becomes "the best")."""
    best, out = float("nan"), []
    for k, v in enumerate(values):
        if kept is not None and not kept[k]:
            out.append(best)
            continue
        if v == v and (best != best or (v < best if direction == "minimize" else v > best)):
            best = v
        out.append(best)
    return out


def progress_figure(log, *, w: float = 9.0, h: float = 4.2, title: str = "Progress: every experiment and the running best"):
    """Every experiment (its mean over complete runs, coloured by outcome) in the order it was
    first run, and the running best of each research line (the seed and promoted candidates
    by their selection-free mean: the ledger's rule, so a rejected number never counts)."""
    metric, direction = log.get_meta("metric", "metric"), log.get_meta("direction", "minimize")
    ex = experiments(log)
    fig = new_figure(w, h, dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    if ex.empty:
        ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes, color="#6e7781")
        ax.set_axis_off()
        return fig
    x = list(range(1, len(ex) + 1))
    ok = ex["mean"].notna()
    is_seed = ex["parent_id"].isna()
    if (ok & is_seed).any():
        ax.scatter([x[i] for i in range(len(ex)) if ok.iloc[i] and is_seed.iloc[i]], ex["mean"][ok & is_seed], s=90,
                   marker="*", color="#0969da", label="seed", zorder=4, edgecolor="white", linewidth=0.5)
    for state, color in STATE_COLORS.items():
        sel = ok & ~is_seed & (ex["state"] == state)
        if sel.any():
            ax.scatter([x[i] for i in range(len(ex)) if sel.iloc[i]], ex["mean"][sel], s=40, color=color,
                       label=state.lower(), zorder=3, edgecolor="white", linewidth=0.5)
    other = ok & ~is_seed & ~ex["state"].isin(list(STATE_COLORS))
    if other.any():
        ax.scatter([x[i] for i in range(len(ex)) if other.iloc[i]], ex["mean"][other], s=32, color="#57606a", zorder=3,
                   label="other")
    threads = list(dict.fromkeys(ex["thread"]))
    if len(threads) > 1:   # each line's running best: its own kept candidates, and the seed everyone starts from
        seed_rows = ex["parent_id"].isna()
        for k, th in enumerate(threads):
            mask = (ex["thread"] == th) | seed_rows
            best = running_best([v if m else float("nan") for v, m in zip(ex["selection_free_mean"], mask)], direction,
                                [kp and m for kp, m in zip(ex["kept"], mask)])
            ax.step(x, best, where="post", color=PALETTE[(k + 3) % len(PALETTE)], lw=1.3, ls="--", alpha=0.9,
                    label=f"best of {th}", zorder=2)
    best = running_best(list(ex["selection_free_mean"]), direction, list(ex["kept"]))
    ax.step(x, best, where="post", color="#0969da", lw=2.2, label="running best (selection-free mean)", zorder=2)
    if (~ok).any():
        top = (ex["mean"][ok].max() if direction == "minimize" else ex["mean"][ok].min()) if ok.any() else 0.0
        ax.scatter([x[i] for i in range(len(ex)) if not ok.iloc[i]], [top] * int((~ok).sum()), marker="x", s=44,
                   color="#cf222e", label="no complete run", zorder=3)
    for i, (_, r) in enumerate(ex.iterrows()):
        if r["state"] == "PROMOTED" and r["mean"] == r["mean"]:
            right = x[i] > (len(x) + 1) / 2     # labels on the right half grow leftwards: none leaves the axes
            ax.annotate(str(r["title"])[:30], (x[i], r["mean"]), textcoords="offset points",
                        xytext=(-4, 6) if right else (4, 6), ha="right" if right else "left", fontsize=8,
                        color="#1a7f37")
    ax.set_xlabel("experiment (candidate, in order of first run)", fontsize=10)
    ax.set_ylabel(f"{metric} ({'lower' if direction == 'minimize' else 'higher'} is better)", fontsize=10)
    ax.tick_params(labelsize=9)
    if len(x) <= 30:
        ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title, fontsize=11)
    return fig


def result_curve(lab_dir, run) -> list[tuple[float, float]]:
    """(seconds or step, train loss) points of a run's recorded curve (its result JSON)."""
    import json

    from ..lab import lab_file

    p = lab_file(lab_dir, getattr(run, "result_path", None))
    try:
        curve = json.loads(p.read_text()).get("curve") or [] if p else []
    except (OSError, ValueError, AttributeError):
        return []
    return [(float(q.get("t", q.get("step", k))), float(q["loss"])) for k, q in enumerate(curve)
            if isinstance(q, dict) and isinstance(q.get("loss"), (int, float)) and q["loss"] == q["loss"]]


def compare_figure(log, lab_dir, a, b, *, labels: Sequence[str] | None = None, w: float = 8.0, h: float = 3.8):
    """Two candidates' training curves, each the mean over its complete runs' seeds with a ± 1 sd
    band (the curves put on one time grid), and every seed's own curve faint behind it."""
    import numpy as np

    ids = [getattr(c, "id", c) for c in (a, b)]
    fig = new_figure(w, h, dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    runs = log.runs_list()
    for k, cid in enumerate(ids):
        curves = [result_curve(lab_dir, r) for r in runs if r.candidate_id == cid and r.state.value == "COMPLETE"]
        curves = [c for c in curves if len(c) >= 2]
        if not curves:
            continue
        color = PALETTE[k % len(PALETTE)]
        name = labels[k] if labels else cid
        end = min(c[-1][0] for c in curves)
        grid = np.linspace(max(c[0][0] for c in curves), end, 200)
        ys = np.array([np.interp(grid, [p[0] for p in c], [p[1] for p in c]) for c in curves])
        for c in curves:
            ax.plot([p[0] for p in c], [p[1] for p in c], color=color, lw=0.6, alpha=0.25)
        mean, sd = ys.mean(axis=0), ys.std(axis=0, ddof=1) if len(ys) > 1 else np.zeros(len(grid))
        ax.plot(grid, mean, color=color, lw=1.8, label=f"{name} (mean of {len(curves)} seed(s))")
        if len(ys) > 1:
            ax.fill_between(grid, mean - sd, mean + sd, color=color, alpha=0.18, lw=0)
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no training curves recorded for these candidates", ha="center", va="center",
                transform=ax.transAxes, color="#6e7781")
    ax.set_xlabel("seconds", fontsize=10)
    ax.set_ylabel("train loss", fontsize=10)
    ax.tick_params(labelsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8.5, loc="upper right")
    ax.set_title("Training curves: mean ± 1 sd over seeds", fontsize=11)
    return fig
