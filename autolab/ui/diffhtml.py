"""Side-by-side, syntax-coloured diffs as a self-contained HTML table.

Two sources: the full old and new files (best: highlighting sees whole files, so
multi-line strings colour right) or a unified diff alone (what a Candidate record
carries). Each side is highlighted with pygments into per-line HTML with inline
colours; removed lines are tinted red, added lines green, changed pairs both.
"""

from __future__ import annotations

import difflib
import html
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

from ._style import FONT, MONO, esc

DEL_BG, ADD_BG = "#ffebe9", "#e6ffec"
DEL_NO_BG, ADD_NO_BG = "#ffd7d5", "#ccffd8"
SEP_BG = "#ddf4ff"


@dataclass
class Row:
    kind: str                 # equal | delete | insert | replace | sep
    old_no: int | None = None
    old: str | None = None    # highlighted HTML of the old line
    new_no: int | None = None
    new: str | None = None


@dataclass
class FileDiff:
    path: str
    rows: list[Row] = field(default_factory=list)
    added: int = 0
    removed: int = 0


# ---------------------------------------------------------------------------- highlighting

@lru_cache(maxsize=4)
def _style(name: str):
    from pygments.styles import get_style_by_name

    return get_style_by_name(name)


def _lexer(path: str, text: str):
    from pygments.lexers import TextLexer, get_lexer_for_filename, guess_lexer

    try:
        return get_lexer_for_filename(path, stripnl=False, ensurenl=False)
    except Exception:
        try:
            return guess_lexer(text, stripnl=False, ensurenl=False) if text.strip() else TextLexer()
        except Exception:
            return TextLexer()


def highlight_lines(text: str, path: str = "x.py", style: str = "default") -> list[str]:
    """Per-line HTML of ``text`` with inline colours (one entry per line of text)."""
    try:
        lexer = _lexer(path, text)
        sty = _style(style)
    except Exception:  # pygments missing: plain escaped lines
        return [esc(l) for l in text.split("\n")]
    lines: list[str] = [""]
    for ttype, value in lexer.get_tokens(text):
        css = ""
        s = sty.style_for_token(ttype)
        if s["color"]:
            css += f"color:#{s['color']};"
        if s["bold"]:
            css += "font-weight:bold;"
        if s["italic"]:
            css += "font-style:italic;"
        for k, piece in enumerate(value.split("\n")):
            if k:
                lines.append("")
            if piece:
                e = html.escape(piece, quote=False)
                lines[-1] += f'<span style="{css}">{e}</span>' if css else e
    return lines


def _split(text: str) -> list[str]:
    if not text:
        return []
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


# ---------------------------------------------------------------------------- building rows

def file_diff(path: str, old: str | None, new: str | None, *, context: int = 3) -> FileDiff:
    """Rows of a side-by-side diff of one file from its full old and new text."""
    a, b = _split(old or ""), _split(new or "")
    ha = highlight_lines("\n".join(a), path) if a else []
    hb = highlight_lines("\n".join(b), path) if b else []
    fd = FileDiff(path)
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    groups = list(sm.get_grouped_opcodes(context)) if context >= 0 else [sm.get_opcodes()]
    for gi, group in enumerate(groups):
        if gi:
            fd.rows.append(Row("sep"))
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                fd.rows += [Row("equal", i + 1, ha[i], j + 1, hb[j]) for i, j in zip(range(i1, i2), range(j1, j2))]
                continue
            fd.removed += i2 - i1
            fd.added += j2 - j1
            for k in range(max(i2 - i1, j2 - j1)):
                i, j = i1 + k, j1 + k
                o = (i + 1, ha[i]) if i < i2 else (None, None)
                n = (j + 1, hb[j]) if j < j2 else (None, None)
                kind = "replace" if o[0] and n[0] else ("delete" if o[0] else "insert")
                fd.rows.append(Row(kind, o[0], o[1], n[0], n[1]))
    return fd


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_unified(diff: str) -> list[FileDiff]:
    """Side-by-side rows from a unified diff (git-style a/ b/ headers)."""
    files: list[FileDiff] = []
    raw: list[list] = []   # per file: list of hunks, each a list of (tag, text)
    cur: FileDiff | None = None
    starts: list[list[tuple[int, int]]] = []
    lines = diff.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            a, b = line[4:].strip(), lines[i + 1][4:].strip()
            name = b[2:] if b.startswith("b/") else (a[2:] if a.startswith("a/") else b)
            cur = FileDiff(name)
            files.append(cur)
            raw.append([])
            starts.append([])
            i += 2
            continue
        m = _HUNK.match(line)
        if m and cur is not None:
            raw[-1].append([])
            starts[-1].append((int(m.group(1)), int(m.group(3))))
        elif cur is not None and raw[-1] and line[:1] in (" ", "-", "+"):
            raw[-1][-1].append((line[0], line[1:]))
        elif cur is not None and raw[-1] and line == "" and i < len(lines) - 1:
            raw[-1][-1].append((" ", ""))
        i += 1
    for fd, hunks, st in zip(files, raw, starts):
        old_text = "\n".join(t for h in hunks for tag, t in h if tag in " -")
        new_text = "\n".join(t for h in hunks for tag, t in h if tag in " +")
        ho, hn = iter(highlight_lines(old_text, fd.path)), iter(highlight_lines(new_text, fd.path))
        for hi, (hunk, (o_no, n_no)) in enumerate(zip(hunks, st)):
            if hi:
                fd.rows.append(Row("sep"))
            k = 0
            while k < len(hunk):
                tag, _ = hunk[k]
                if tag == " ":
                    fd.rows.append(Row("equal", o_no, next(ho, ""), n_no, next(hn, "")))
                    o_no, n_no, k = o_no + 1, n_no + 1, k + 1
                    continue
                dels, adds = [], []
                while k < len(hunk) and hunk[k][0] == "-":
                    dels.append(next(ho, "")); k += 1
                while k < len(hunk) and hunk[k][0] == "+":
                    adds.append(next(hn, "")); k += 1
                fd.removed += len(dels)
                fd.added += len(adds)
                for x in range(max(len(dels), len(adds))):
                    o = (o_no + x, dels[x]) if x < len(dels) else (None, None)
                    n = (n_no + x, adds[x]) if x < len(adds) else (None, None)
                    kind = "replace" if o[0] and n[0] else ("delete" if o[0] else "insert")
                    fd.rows.append(Row(kind, o[0], o[1], n[0], n[1]))
                o_no, n_no = o_no + len(dels), n_no + len(adds)
    return files


# ---------------------------------------------------------------------------- HTML

def _cells(no: int | None, code_html: str | None, side: str, kind: str) -> str:
    tint = (kind in ("delete", "replace") and side == "old") or (kind in ("insert", "replace") and side == "new")
    bg = (DEL_BG if side == "old" else ADD_BG) if tint and no is not None else ("#f6f8fa" if no is None else "#fff")
    nbg = (DEL_NO_BG if side == "old" else ADD_NO_BG) if tint and no is not None else "#f6f8fa"
    sign = ("−" if side == "old" else "+") if tint and no is not None else "&nbsp;"
    return (f'<td style="{MONO} background:{nbg}; color:#6e7781; text-align:right; padding:0 6px; line-height:1.45; '
            f'user-select:none; width:1%;">{no if no is not None else ""}</td>'
            f'<td style="{MONO} background:{bg}; text-align:left; padding:0 6px; white-space:pre; width:49%; '
            f'vertical-align:top; line-height:1.45;">'
            f'<span style="color:#6e7781; user-select:none;">{sign}</span>{code_html or ""}</td>')


def files_html(files: list[FileDiff], *, max_height: str | None = "32em", title: str = "") -> str:
    if not files:
        return f'<div style="{FONT} color:#6e7781; padding:6px;">No changes.</div>'
    out = []
    if title:
        out.append(f'<div style="{FONT} font-weight:600; margin:2px 0 4px 0;">{esc(title)}</div>')
    for fd in files:
        out.append(f'<div style="{FONT} background:#f6f8fa; border:1px solid #d0d7de; border-bottom:none; '
                   f'border-radius:6px 6px 0 0; padding:4px 8px;"><b>{esc(fd.path)}</b> '
                   f'<span style="color:#1a7f37;">+{fd.added}</span> <span style="color:#cf222e;">−{fd.removed}</span></div>')
        rows = []
        for r in fd.rows:
            if r.kind == "sep":
                rows.append(f'<tr><td colspan="4" style="{MONO} background:{SEP_BG}; color:#57606a; text-align:left; '
                            f'padding:1px 8px;">⋯</td></tr>')
            else:
                rows.append(f'<tr class="autolab-diff-{r.kind}">{_cells(r.old_no, r.old, "old", r.kind)}'
                            f'{_cells(r.new_no, r.new, "new", r.kind)}</tr>')
        scroll = f"max-height:{max_height}; overflow:auto;" if max_height else ""
        out.append(f'<div style="border:1px solid #d0d7de; border-radius:0 0 6px 6px; margin-bottom:8px; {scroll}">'
                   f'<table class="autolab-diff" style="border-collapse:collapse; width:100%; table-layout:auto;">'
                   f'{"".join(rows)}</table></div>')
    return "".join(out)


def side_by_side(old: Mapping[str, str], new: Mapping[str, str], *, context: int = 3,
                 max_height: str | None = "32em", title: str = "") -> str:
    """HTML of the side-by-side diff between two {path: text} maps (changed files only)."""
    files = [file_diff(p, old.get(p), new.get(p), context=context)
             for p in sorted(set(old) | set(new)) if old.get(p) != new.get(p)]
    return files_html(files, max_height=max_height, title=title)


def side_by_side_from_unified(diff: str, *, max_height: str | None = "32em", title: str = "") -> str:
    return files_html(parse_unified(diff), max_height=max_height, title=title)


def code_html(files: Mapping[str, str], *, max_height: str | None = "32em", title: str = "") -> str:
    """Files shown whole, syntax-coloured, with line numbers (e.g. a seed, which has no parent)."""
    out = [f'<div style="{FONT} font-weight:600; margin:2px 0 4px 0;">{esc(title)}</div>'] if title else []
    for path, text in sorted(files.items()):
        lines = highlight_lines("\n".join(_split(text)), path)
        out.append(f'<div style="{FONT} background:#f6f8fa; border:1px solid #d0d7de; border-bottom:none; '
                   f'border-radius:6px 6px 0 0; padding:4px 8px;"><b>{esc(path)}</b> '
                   f'<span style="color:#6e7781;">{len(lines)} lines</span></div>')
        rows = "".join(
            f'<tr><td style="{MONO} background:#f6f8fa; color:#6e7781; text-align:right; padding:0 6px; width:1%; '
            f'user-select:none; line-height:1.45;">{k}</td><td style="{MONO} text-align:left; padding:0 6px; '
            f'white-space:pre; line-height:1.45;">{line}</td></tr>' for k, line in enumerate(lines, 1))
        scroll = f"max-height:{max_height}; overflow:auto;" if max_height else ""
        out.append(f'<div style="border:1px solid #d0d7de; border-radius:0 0 6px 6px; margin-bottom:8px; {scroll}">'
                   f'<table class="autolab-code" style="border-collapse:collapse; width:100%;">{rows}</table></div>')
    return "".join(out)
