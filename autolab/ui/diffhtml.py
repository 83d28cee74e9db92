"""Diffs as self-contained HTML tables: side by side (wrapped) or unified.

Two sources: the full old and new files (best: highlighting sees whole files, so
multi-line strings colour right) or a unified diff alone (what a Candidate record
carries). Each side is highlighted with pygments into per-line HTML with inline
colours; removed lines are tinted red, added lines green, and in a changed pair the
words that changed are marked more strongly (``autolab.diffs.inline_changes``).

Long lines wrap inside their half (a fixed table layout, ``pre-wrap``), so a long
unchanged line can never push the new side out of view, whatever the width.
"""

from __future__ import annotations

import difflib
import html
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

from ..diffs import inline_changes
from ._style import FONT, MONO, esc

DEL_BG, ADD_BG = "#ffebe9", "#e6ffec"
DEL_NO_BG, ADD_NO_BG = "#ffd7d5", "#ccffd8"
DEL_MARK, ADD_MARK = "#ffb1ab", "#94e6a8"     # the changed words of a changed line
SEP_BG = "#ddf4ff"
MODES = ("split", "unified")
# wrapped code: breaks anywhere in a long token rather than widening the table
WRAP = "white-space:pre-wrap; overflow-wrap:anywhere; word-break:break-word;"
NO_W = "3.4em"                                  # the line-number columns

Segments = list[tuple[str, str]]   # one line: (inline css, text) pieces


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


def line_segments(text: str, path: str = "x.py", style: str = "default") -> list[Segments]:
    """Per line of ``text``: its (css, text) pieces, coloured by pygments."""
    try:
        lexer = _lexer(path, text)
        sty = _style(style)
    except Exception:  # pygments missing: plain lines
        return [[("", l)] for l in text.split("\n")]
    lines: list[Segments] = [[]]
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
                lines.append([])
            if piece:
                lines[-1].append((css, piece))
    return lines


def render(segs: Segments, marks: list[tuple[int, int]] = (), mark_bg: str = "") -> str:
    """HTML of one line's pieces; the character spans in ``marks`` get the background ``mark_bg``."""
    out, pos = [], 0
    for css, text in segs:
        cuts = {0, len(text)}
        for a, b in marks:
            cuts.update(x - pos for x in (a, b) if pos < x < pos + len(text))
        cuts = sorted(cuts)
        for a, b in zip(cuts, cuts[1:]):
            piece = html.escape(text[a:b], quote=False)
            marked = any(m0 <= pos + a and pos + b <= m1 for m0, m1 in marks)
            style = css + (f"background:{mark_bg}; border-radius:2px;" if marked else "")
            cls = ' class="autolab-diff-mark"' if marked else ""
            out.append(f'<span{cls} style="{style}">{piece}</span>' if style else piece)
        pos += len(text)
    return "".join(out)


def _plain(segs: Segments) -> str:
    return "".join(t for _, t in segs)


def highlight_lines(text: str, path: str = "x.py", style: str = "default") -> list[str]:
    """Per-line HTML of ``text`` with inline colours (one entry per line of text)."""
    return [render(s) for s in line_segments(text, path, style)]


def _pair(old: Segments, new: Segments) -> tuple[str, str]:
    """HTML of a changed pair of lines, the words that changed marked on both sides."""
    da, db = inline_changes(_plain(old), _plain(new))
    return render(old, da, DEL_MARK), render(new, db, ADD_MARK)


def _split(text: str) -> list[str]:
    if not text:
        return []
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


# ---------------------------------------------------------------------------- building rows

def file_diff(path: str, old: str | None, new: str | None, *, context: int = 3) -> FileDiff:
    """Rows of a side-by-side diff of one file from its full old and new text."""
    a, b = _split(old or ""), _split(new or "")
    sa = line_segments("\n".join(a), path) if a else []
    sb = line_segments("\n".join(b), path) if b else []
    ha, hb = [render(x) for x in sa], [render(x) for x in sb]
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
                if kind == "replace":
                    oh, nh = _pair(sa[i], sb[j])
                    o, n = (o[0], oh), (n[0], nh)
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
        ho, hn = iter(line_segments(old_text, fd.path)), iter(line_segments(new_text, fd.path))
        for hi, (hunk, (o_no, n_no)) in enumerate(zip(hunks, st)):
            if hi:
                fd.rows.append(Row("sep"))
            k = 0
            while k < len(hunk):
                tag, _ = hunk[k]
                if tag == " ":
                    fd.rows.append(Row("equal", o_no, render(next(ho, [])), n_no, render(next(hn, []))))
                    o_no, n_no, k = o_no + 1, n_no + 1, k + 1
                    continue
                dels, adds = [], []
                while k < len(hunk) and hunk[k][0] == "-":
                    dels.append(next(ho, [])); k += 1
                while k < len(hunk) and hunk[k][0] == "+":
                    adds.append(next(hn, [])); k += 1
                fd.removed += len(dels)
                fd.added += len(adds)
                for x in range(max(len(dels), len(adds))):
                    if x < len(dels) and x < len(adds):
                        ho_x, hn_x = _pair(dels[x], adds[x])
                        fd.rows.append(Row("replace", o_no + x, ho_x, n_no + x, hn_x))
                    elif x < len(dels):
                        fd.rows.append(Row("delete", o_no + x, render(dels[x])))
                    else:
                        fd.rows.append(Row("insert", None, None, n_no + x, render(adds[x])))
                o_no, n_no = o_no + len(dels), n_no + len(adds)
    return files


# ---------------------------------------------------------------------------- HTML

_NO = f"{MONO} color:#6e7781; text-align:right; padding:0 6px; line-height:1.45; user-select:none; vertical-align:top;"
_CODE = f"{MONO} text-align:left; padding:0 6px; line-height:1.45; vertical-align:top; {WRAP}"


def _sign(text: str) -> str:
    return f'<span style="color:#6e7781; user-select:none;">{text}</span>'


def _cells(no: int | None, code_html: str | None, side: str, kind: str) -> str:
    tint = (kind in ("delete", "replace") and side == "old") or (kind in ("insert", "replace") and side == "new")
    bg = (DEL_BG if side == "old" else ADD_BG) if tint and no is not None else ("#f6f8fa" if no is None else "#fff")
    nbg = (DEL_NO_BG if side == "old" else ADD_NO_BG) if tint and no is not None else "#f6f8fa"
    sign = ("−" if side == "old" else "+") if tint and no is not None else "&nbsp;"
    return (f'<td style="{_NO} background:{nbg};">{no if no is not None else ""}</td>'
            f'<td style="{_CODE} background:{bg};">{_sign(sign)}{code_html or ""}</td>')


def _split_rows(fd: FileDiff) -> str:
    rows = []
    for r in fd.rows:
        if r.kind == "sep":
            rows.append(f'<tr><td colspan="4" style="{MONO} background:{SEP_BG}; color:#57606a; text-align:left; '
                        f'padding:1px 8px;">⋯</td></tr>')
        else:
            rows.append(f'<tr class="autolab-diff-{r.kind}">{_cells(r.old_no, r.old, "old", r.kind)}'
                        f'{_cells(r.new_no, r.new, "new", r.kind)}</tr>')
    cols = f'<colgroup><col style="width:{NO_W};"><col><col style="width:{NO_W};"><col></colgroup>'
    return (f'<table class="autolab-diff autolab-diff-split" style="border-collapse:collapse; width:100%; '
            f'table-layout:fixed;">{cols}{"".join(rows)}</table>')


def _unified_line(kind: str, old_no: int | None, new_no: int | None, code_html: str | None) -> str:
    bg, nbg, sign = {"delete": (DEL_BG, DEL_NO_BG, "−"), "insert": (ADD_BG, ADD_NO_BG, "+")}.get(
        kind, ("#fff", "#f6f8fa", "&nbsp;"))
    return (f'<tr class="autolab-diff-{kind}"><td style="{_NO} background:{nbg};">{old_no or ""}</td>'
            f'<td style="{_NO} background:{nbg};">{new_no or ""}</td>'
            f'<td style="{_CODE} background:{bg};">{_sign(sign)}{code_html or ""}</td></tr>')


def _unified_rows(fd: FileDiff) -> str:
    """One column: each block of changed rows as its removed lines, then its added lines."""
    rows, block = [], []

    def flush() -> None:
        rows.extend(_unified_line("delete", r.old_no, None, r.old) for r in block if r.old_no is not None)
        rows.extend(_unified_line("insert", None, r.new_no, r.new) for r in block if r.new_no is not None)
        block.clear()

    for r in fd.rows:
        if r.kind in ("delete", "insert", "replace"):
            block.append(r)
            continue
        flush()
        if r.kind == "sep":
            rows.append(f'<tr><td colspan="3" style="{MONO} background:{SEP_BG}; color:#57606a; text-align:left; '
                        f'padding:1px 8px;">⋯</td></tr>')
        else:
            rows.append(_unified_line("equal", r.old_no, r.new_no, r.new))
    flush()
    cols = f'<colgroup><col style="width:{NO_W};"><col style="width:{NO_W};"><col></colgroup>'
    return (f'<table class="autolab-diff autolab-diff-unified" style="border-collapse:collapse; width:100%; '
            f'table-layout:fixed;">{cols}{"".join(rows)}</table>')


def _file_head(path: str, extra: str) -> str:
    return (f'<div style="{FONT} background:#f6f8fa; border:1px solid #d0d7de; border-bottom:none; '
            f'border-radius:6px 6px 0 0; padding:4px 8px; {WRAP}"><b>{esc(path)}</b> {extra}</div>')


def files_html(files: list[FileDiff], *, max_height: str | None = "32em", title: str = "", mode: str = "split") -> str:
    """HTML of file diffs: ``mode`` "split" (side by side, each half wrapping its long lines) or
    "unified" (one column, removed lines then added ones)."""
    if mode not in MODES:
        raise ValueError(f"diff mode {mode!r} is not one of {', '.join(MODES)}")
    if not files:
        return f'<div style="{FONT} color:#6e7781; padding:6px;">No changes.</div>'
    out = []
    if title:
        out.append(f'<div style="{FONT} font-weight:600; margin:2px 0 4px 0;">{esc(title)}</div>')
    for fd in files:
        out.append(_file_head(fd.path, f'<span style="color:#1a7f37;">+{fd.added}</span> '
                                       f'<span style="color:#cf222e;">−{fd.removed}</span>'))
        scroll = f"max-height:{max_height}; overflow-y:auto;" if max_height else ""
        body = _split_rows(fd) if mode == "split" else _unified_rows(fd)
        out.append(f'<div style="border:1px solid #d0d7de; border-radius:0 0 6px 6px; margin-bottom:8px; {scroll}">'
                   f'{body}</div>')
    return "".join(out)


def side_by_side(old: Mapping[str, str], new: Mapping[str, str], *, context: int = 3,
                 max_height: str | None = "32em", title: str = "", mode: str = "split") -> str:
    """HTML of the diff between two {path: text} maps (changed files only); ``mode`` "split"
    (side by side, wrapped) or "unified"."""
    files = [file_diff(p, old.get(p), new.get(p), context=context)
             for p in sorted(set(old) | set(new)) if old.get(p) != new.get(p)]
    return files_html(files, max_height=max_height, title=title, mode=mode)


def side_by_side_from_unified(diff: str, *, max_height: str | None = "32em", title: str = "", mode: str = "split") -> str:
    return files_html(parse_unified(diff), max_height=max_height, title=title, mode=mode)


COLLAPSE_LINES = 200   # files shown whole: open when all of them together are at most this long


def code_html(files: Mapping[str, str], *, max_height: str | None = "32em", title: str = "",
              collapse_over: int = COLLAPSE_LINES) -> str:
    """Files shown whole, syntax-coloured, with line numbers (e.g. a seed, which has no parent).
    Each file is a collapsible section; when the files hold more than ``collapse_over`` lines
    together, every section starts closed, so a seed of many files reads as a list of them."""
    texts = {path: _split(text) for path, text in sorted(files.items())}
    total = sum(len(t) for t in texts.values())
    opened = " open" if total <= collapse_over else ""
    out = [f'<div style="{FONT} font-weight:600; margin:2px 0 4px 0;">{esc(title)}</div>'] if title else []
    if not opened and files:
        out.append(f'<div style="{FONT} color:#57606a; margin:2px 0 4px 0;">{len(files)} file(s), {total} lines: '
                   f'click a file to open it.</div>')
    for path, lines_text in texts.items():
        if opened:   # a short seed: coloured, numbered lines
            lines = highlight_lines("\n".join(lines_text), path) if lines_text else []
            body = ('<table class="autolab-code" style="border-collapse:collapse; width:100%; table-layout:fixed;">'
                    f'<colgroup><col style="width:{NO_W};"><col></colgroup>'
                    + "".join(f'<tr><td style="{_NO} background:#f6f8fa;">{k}</td><td style="{_CODE}">{line}</td></tr>'
                              for k, line in enumerate(lines, 1)) + "</table>")
        else:        # a long one: plain text, so the saved notebook stays about the size of the files
            body = (f'<pre class="autolab-code" style="{MONO} {WRAP} margin:0; padding:4px 8px; line-height:1.45;">'
                    f'{esc(chr(10).join(lines_text))}</pre>')
        scroll = f"max-height:{max_height}; overflow-y:auto;" if max_height else ""
        out.append(f'<details class="autolab-code-file" style="margin-bottom:6px;"{opened}>'
                   f'<summary style="{FONT} background:#f6f8fa; border:1px solid #d0d7de; border-radius:6px; '
                   f'padding:4px 8px; cursor:pointer;"><b>{esc(path)}</b> '
                   f'<span style="color:#6e7781;">{len(lines_text)} lines</span></summary>'
                   f'<div style="border:1px solid #d0d7de; border-top:none; border-radius:0 0 6px 6px; {scroll}">'
                   f'{body}</div></details>')
    return "".join(out)
