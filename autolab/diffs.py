"""Text diffs between candidates' files, and line-based 3-way merges."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Mapping


def unified_diff(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    """Unified diff between two {path: text} maps, a/ and b/ prefixes like git."""
    chunks = []
    for rel in sorted(set(old) | set(new)):
        a, b = old.get(rel), new.get(rel)
        if a == b:
            continue
        chunks.extend(difflib.unified_diff(
            (a or "").splitlines(keepends=True), (b or "").splitlines(keepends=True),
            fromfile=f"a/{rel}" if a is not None else "/dev/null",
            tofile=f"b/{rel}" if b is not None else "/dev/null",
        ))
    return "".join(c if c.endswith("\n") else c + "\n" for c in chunks)


def diff_stat(diff: str) -> tuple[int, int]:
    """(lines added, lines removed) of a unified diff."""
    plus = sum(1 for l in diff.splitlines() if l.startswith("+") and not l.startswith("+++"))
    minus = sum(1 for l in diff.splitlines() if l.startswith("-") and not l.startswith("---"))
    return plus, minus


# ---------------------------------------------------------------------------- 3-way merge

@dataclass(frozen=True)
class MergeResult:
    text: str
    conflicts: int

    @property
    def clean(self) -> bool:
        return self.conflicts == 0


def _changes(base: list[str], other: list[str]) -> list[tuple[int, int, list[str]]]:
    """Edits turning base into other: (base_start, base_end, replacement lines)."""
    sm = difflib.SequenceMatcher(a=base, b=other, autojunk=False)
    return [(i1, i2, other[j1:j2]) for tag, i1, i2, j1, j2 in sm.get_opcodes() if tag != "equal"]


def merge3(base: str, ours: str, theirs: str, *, labels: tuple[str, str] = ("ours", "theirs")) -> MergeResult:
    """Line-based 3-way merge. Non-overlapping edits from both sides are combined; an
    overlap with different replacements is a conflict, written with git-style markers."""
    b = base.splitlines(keepends=True)
    o, t = _changes(b, ours.splitlines(keepends=True)), _changes(b, theirs.splitlines(keepends=True))
    out: list[str] = []
    conflicts = 0
    pos, i, j = 0, 0, 0
    while i < len(o) or j < len(t):
        # take the next edit (or group of overlapping edits) in base order
        if j >= len(t) or (i < len(o) and o[i][0] <= t[j][0]):
            start, end, group_o, group_t = o[i][0], o[i][1], [o[i]], []
            i += 1
        else:
            start, end, group_o, group_t = t[j][0], t[j][1], [], [t[j]]
            j += 1
        grew = True
        while grew:   # absorb edits overlapping [start, end) (touching insertions count as overlapping)
            grew = False
            while i < len(o) and (o[i][0] < end or (o[i][0] == end == start) or (o[i][0] == start)):
                end = max(end, o[i][1]); group_o.append(o[i]); i += 1; grew = True
            while j < len(t) and (t[j][0] < end or (t[j][0] == end == start) or (t[j][0] == start)):
                end = max(end, t[j][1]); group_t.append(t[j]); j += 1; grew = True
        out.extend(b[pos:start])

        def apply(group: list[tuple[int, int, list[str]]]) -> list[str]:
            res, p = [], start
            for s, e, rep in group:
                res.extend(b[p:s]); res.extend(rep); p = e
            res.extend(b[p:end])
            return res

        if not group_t:
            out.extend(apply(group_o))
        elif not group_o:
            out.extend(apply(group_t))
        else:
            ro, rt = apply(group_o), apply(group_t)
            if ro == rt:
                out.extend(ro)
            else:
                conflicts += 1
                out.append(f"<<<<<<< {labels[0]}\n"); out.extend(_nl(ro))
                out.append("=======\n"); out.extend(_nl(rt))
                out.append(f">>>>>>> {labels[1]}\n")
        pos = end
    out.extend(b[pos:])
    return MergeResult("".join(out), conflicts)


def _nl(lines: list[str]) -> list[str]:
    return [l if l.endswith("\n") else l + "\n" for l in lines]


# ---------------------------------------------------------------------------- intra-line changes

_WORD = re.compile(r"\w+|\s+|[^\w\s]")


def inline_changes(old: str, new: str, *, min_ratio: float = 0.3) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The character spans that differ between two versions of one line, word by word:
    ``(spans in old, spans in new)``, each ``(start, end)``. Lines that share too little
    (word similarity under ``min_ratio``) are rewrites, not edits: no spans, the whole line
    is the change."""
    a, b = _WORD.findall(old), _WORD.findall(new)
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    if not a or not b or sm.ratio() < min_ratio:
        return [], []
    pa, pb = _offsets(a), _offsets(b)
    da: list[tuple[int, int]] = []
    db: list[tuple[int, int]] = []
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        if i2 > i1:
            da.append((pa[i1], pa[i2]))
        if j2 > j1:
            db.append((pb[j1], pb[j2]))
    return da, db


def _offsets(tokens: list[str]) -> list[int]:
    out, pos = [0], 0
    for t in tokens:
        pos += len(t)
        out.append(pos)
    return out
