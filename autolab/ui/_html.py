"""Static HTML for records and tables: inline styles only, so the same markup reads in
JupyterLab, in an exported report and in a browser with no stylesheet. No widgets here."""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping, Sequence

from ..records import Candidate, Idea, Insight, Run, State, Verdict, _Record
from ._style import FONT, MONO, esc  # noqa: F401  (re-exported)

STATE_COLORS = {
    "PROMOTED": "#1a7f37", "COMPLETE": "#1a7f37", "READY": "#0969da", "PROPOSED": "#8250df",
    "RUNNING": "#bf8700", "PENDING": "#bf8700", "REJECTED": "#6e7781", "FAILED": "#cf222e",
    "KILLED": "#cf222e",
}




def fmt(x: Any, digits: int = 4) -> str:
    """A number for a table: 4 significant digits, '—' for missing or NaN."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "—"
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}"
    try:  # numpy scalars
        return fmt(float(x), digits)
    except (TypeError, ValueError):
        return str(x)


def short(id_: Any, n: int = 12) -> str:
    s = "" if id_ is None else str(id_)
    return s if len(s) <= n else s[:n] + "…"


def badge(state: Any, text: str | None = None) -> str:
    s = state.value if isinstance(state, State) else str(state or "")
    color = STATE_COLORS.get(s, "#57606a")
    return (f'<span class="autolab-badge" style="display:inline-block; padding:1px 8px; border-radius:10px; '
            f'background:{color}; color:#fff; font-weight:600; font-size:11px; letter-spacing:.02em;">'
            f"{esc(text or s)}</span>")


def table(header: Sequence[str], rows: Iterable[Sequence[str]], *, raw: bool = True, max_height: str | None = None,
          caption: str = "") -> str:
    """An HTML table. Cells are inserted as given when ``raw`` (already-escaped HTML)."""
    th = "".join(f'<th style="text-align:left; padding:4px 10px; border-bottom:2px solid #d0d7de; '
                 f'white-space:nowrap;">{esc(h)}</th>' for h in header)
    body = []
    for i, row in enumerate(rows):
        bg = "#f6f8fa" if i % 2 else "#ffffff"
        tds = "".join(f'<td style="text-align:left; padding:3px 10px; border-bottom:1px solid #eaeef2; vertical-align:top;">'
                      f"{c if raw else esc(c)}</td>" for c in row)
        body.append(f'<tr style="background:{bg};">{tds}</tr>')
    if not body:
        body.append(f'<tr><td colspan="{len(header)}" style="text-align:left; padding:6px 10px; color:#6e7781;">(nothing yet)</td></tr>')
    cap = f'<caption style="text-align:left; font-weight:600; padding:4px 0;">{esc(caption)}</caption>' if caption else ""
    tbl = (f'<table class="autolab-table" style="border-collapse:collapse; {FONT} width:auto;">{cap}'
           f"<thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    if max_height:
        return f'<div style="max-height:{max_height}; overflow:auto;">{tbl}</div>'
    return tbl


def box(inner: str, *, border: str = "#d0d7de") -> str:
    return (f'<div class="autolab-card" style="{FONT} border:1px solid {border}; border-radius:6px; '
            f'padding:8px 12px; margin:4px 0;">{inner}</div>')


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """A row of 'key: value' items (values already HTML)."""
    return " &nbsp;·&nbsp; ".join(f'<span style="color:#57606a;">{esc(k)}</span> {v}' for k, v in pairs)


def code(text: str) -> str:
    return (f'<code style="{MONO} background:#f6f8fa; padding:0 3px; border-radius:3px; white-space:nowrap;">'
            f'{esc(text)}</code>')


def pre(text: str, max_height: str = "20em") -> str:
    return (f'<pre style="{MONO} background:#f6f8fa; padding:6px 8px; border-radius:4px; max-height:{max_height}; '
            f'overflow:auto; white-space:pre-wrap; margin:4px 0;">{esc(text)}</pre>')


# ---------------------------------------------------------------------------- records

def idea_html(i: Idea) -> str:
    head = f'<b style="font-size:14px;">{esc(i.title)}</b> {badge(i.state)}'
    meta = kv([("idea", code(i.id)), ("source", esc(i.source)), ("thread", esc(i.thread)),
               ("parent", code(short(i.parent_id, 14)) if i.parent_id else "—")])
    parts = [head, f'<div style="margin:2px 0 6px 0;">{meta}</div>']
    if i.hypothesis:
        parts.append(f"<div><b>Hypothesis.</b> {esc(i.hypothesis)}</div>")
    if i.plan:
        parts.append(f"<div><b>Plan.</b> {esc(i.plan)}</div>")
    if i.edit:
        parts.append(pre(json.dumps(i.edit, indent=1, sort_keys=True), "10em"))
    return box("".join(parts))


def candidate_html(c: Candidate, *, with_diff: bool = True) -> str:
    from ..diffs import diff_stat

    plus, minus = diff_stat(c.diff)
    head = f"<b>Candidate</b> {code(c.id)} {badge(c.state)}"
    meta = kv([("parent", code(short(c.parent_id, 14)) if c.parent_id else "— (seed)"), ("idea", esc(c.idea_id or "—")),
               ("thread", esc(c.thread)), ("files", esc(", ".join(sorted(c.files)))),
               ("diff", f'<span style="color:#1a7f37;">+{plus}</span> <span style="color:#cf222e;">−{minus}</span>')])
    parts = [head, f'<div style="margin:2px 0 6px 0;">{meta}</div>']
    if with_diff and c.diff:
        from .diffhtml import side_by_side_from_unified

        parts.append(side_by_side_from_unified(c.diff, max_height="24em"))
    return box("".join(parts))


def run_html(r: Run) -> str:
    head = f"<b>Run</b> {code(r.id)} {badge(r.state)}"
    meta = kv([("candidate", code(short(r.candidate_id, 14))), ("preset", esc(r.preset)), ("seed", esc(r.seed)),
               ("purpose", esc(r.purpose))])
    parts = [head, f'<div style="margin:2px 0 6px 0;">{meta}</div>']
    if r.state is State.COMPLETE and r.metrics:
        parts.append(table(["metric", "value"], [(esc(k), fmt(v)) for k, v in sorted(r.metrics.items())]))
    elif r.state in (State.FAILED, State.KILLED):
        # whatever numbers the harness wrote before it stopped (a parameter count, a partial loss) are not the metric
        parts.append(f'<div style="color:#57606a; margin-top:4px;">no metric: the run ended {esc(r.state.value)}</div>')
    if r.timings:
        t = ", ".join(f"{esc(k)}={fmt(v, 3)}" for k, v in sorted(r.timings.items()) if isinstance(v, (int, float)))
        parts.append(f'<div style="color:#57606a; margin-top:4px;">timings: {t}</div>')
    if r.error:
        parts.append(f'<div style="color:#cf222e; margin-top:4px;"><b>{esc(r.error.get("ename", "error"))}</b>: '
                     f'{esc(str(r.error.get("evalue", r.error.get("reason", "")))[:500])}'
                     f'{" (cell " + esc(r.error.get("cell")) + ")" if r.error.get("cell") is not None else ""}</div>')
    if r.notebook:
        parts.append(f'<div style="color:#57606a;">notebook: {code(r.notebook)}</div>')
    return box("".join(parts))


def checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for c in checks:
        ok = bool(c.get("passed"))
        sev = c.get("severity", "reject")
        mark = ('<span style="color:#1a7f37; font-weight:700;">✓ pass</span>' if ok else
                f'<span style="color:{"#cf222e" if sev == "reject" else "#bf8700"}; font-weight:700;">'
                f'✗ {"FAIL" if sev == "reject" else "warn"}</span>')
        rows.append((mark, esc(c.get("name", "")), esc(sev), esc(str(c.get("detail", ""))[:400])))
    return table(["", "check", "severity", "detail"], rows)


def verdict_html(v: Verdict, *, alpha: float | None = None, unit: str = "") -> str:
    p = v.p_value
    sig = ""
    if p is not None and alpha is not None:
        sig = (f' <span style="color:{"#1a7f37" if p < alpha else "#6e7781"};">'
               f'({"<" if p < alpha else "≥"} α={fmt(alpha, 3)})</span>')
    head = f'<span style="font-size:15px;">{badge(v.state)}</span> <b>Audit of</b> {code(v.candidate_id)}'
    vs = (f" vs parent {code(short(v.parent_id, 14))}" if v.parent_id else "") + \
        f' <span style="color:#6e7781; font-size:11px;">(verdict {esc(v.id)})</span>'
    u = f" {esc(unit)}" if unit else ""
    numbers = table(["", "mean over this audit's runs", "n"], [
        ("candidate", fmt(v.candidate_mean) + u, str(v.n_candidate)),
        ("parent", fmt(v.parent_mean) + u, str(v.n_parent)),
    ])
    stats = kv([("metric", esc(v.metric or "—")), ("effect", f"<b>{fmt(v.effect)}</b>{u} (positive is better)"),
                ("p-value", f"<b>{fmt(p)}</b>{sig}"), ("preset", esc(v.preset))])
    parts = [head + vs, f'<div style="margin:4px 0;">{stats}</div>', numbers]
    if v.reason:
        parts.append(f'<div style="margin:6px 0;"><b>Reason.</b> {esc(v.reason)}</div>')
    parts.append(checks_table(v.checks))
    border = STATE_COLORS.get(v.state.value, "#d0d7de")
    return box("".join(parts), border=border)


def insight_html(i: Insight) -> str:
    head = f"<b>Insight</b> {esc(i.technique)} {badge(i.state)}"
    meta = kv([("task", esc(i.task)), ("preset", esc(i.preset)), ("effect", fmt(i.effect)),
               ("95% CI", f"[{fmt(i.ci_low)}, {fmt(i.ci_high)}]"), ("tags", esc(", ".join(i.tags)) or "—")])
    return box(head + f'<div style="margin:2px 0;">{meta}</div>' + (pre(i.diff, "12em") if i.diff else ""))


def record_html(r: _Record) -> str:
    if isinstance(r, Idea):
        return idea_html(r)
    if isinstance(r, Candidate):
        return candidate_html(r)
    if isinstance(r, Run):
        return run_html(r)
    if isinstance(r, Verdict):
        return verdict_html(r)
    if isinstance(r, Insight):
        return insight_html(r)
    return pre(str(r))


# ---------------------------------------------------------------------------- DataFrame views

def leaderboard_table(board, metric: str, *, unit: str = "", limit: int | None = 20, max_height: str | None = None) -> str:
    """HTML of the ledger's leaderboard (``Ledger.leaderboard()``), one row per candidate with its
    final state: rank, candidate (the ledger's best marked), idea title, thread, state, the
    ledger's mean (selection-free runs), then every complete run's n, mean ± std and best value.
    The ledger's order is kept, except that rejected candidates go last: a rejected candidate is
    never first, whatever its number."""
    key = f"metrics.{metric}"
    sf_key = f"{key}_selection_free"
    rows = []
    if board is not None and not board.empty:
        records = [r for _, r in board.iterrows()]
        records = ([r for r in records if r.get("state") != "REJECTED"]
                   + [r for r in records if r.get("state") == "REJECTED"])
        for rank, r in enumerate(records, 1):
            if limit and rank > limit:
                break
            best = bool(r.get("best", False))
            cand = code(str(r["candidate_id"])) + (" " + badge("PROMOTED", "best") if best else "")
            sf = r.get(sf_key)
            sf_txt = f"<b>{fmt(sf)}</b>" if best else fmt(sf)
            n = r.get("n")
            rows.append((str(rank), cand, esc(r.get("title") or ""), esc(r.get("tags.thread") or ""),
                         badge(r.get("state") or ""), sf_txt, str(int(n)) if n == n and n is not None else "0",
                         f"{fmt(r.get(key))} ± {fmt(r.get(key + '_std'), 2)}", fmt(r.get(key + "_best"))))
    u = f" ({unit})" if unit else ""
    return table(["#", "candidate", "idea", "thread", "state", f"{metric}{u} (selection-free)",
                  "runs", "all runs: mean ± std", "best run"], rows, max_height=max_height)
