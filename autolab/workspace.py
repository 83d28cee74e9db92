"""Candidate snapshots: content-addressed files under the lab, diffs, and 3-way merges.

``<lab>/objects/ab/cdef…`` holds each distinct file content once; a candidate is a map
from relative path to content hash, and its id is a hash of that map. ``materialize``
writes a candidate's files to a private folder for a run.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .errors import CandidateError


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def candidate_id(files: Mapping[str, str]) -> str:
    """Deterministic id of a snapshot: the same files always give the same id."""
    return "c-" + sha256(json.dumps(sorted(files.items())).encode())[:12]


class Store:
    """Content-addressed object store of one lab."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)

    def _obj(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / digest[2:]

    def put(self, data: bytes) -> str:
        digest = sha256(data)
        path = self._obj(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)   # atomic: a crash leaves no half-written object
        return digest

    def get(self, digest: str) -> bytes:
        path = self._obj(digest)
        if not path.exists():
            raise CandidateError(f"object {digest} is missing from {self.root / 'objects'}; the lab is incomplete")
        data = path.read_bytes()
        if sha256(data) != digest:
            raise CandidateError(f"object {path} is corrupt (hash mismatch); delete it and re-create the candidate")
        return data

    def snapshot(self, files: Mapping[str, bytes | str]) -> dict[str, str]:
        """Store file contents; returns {path: digest}."""
        out = {}
        for rel, content in sorted(files.items()):
            if os.path.isabs(rel) or ".." in Path(rel).parts:
                raise CandidateError(f"file path {rel!r} must be relative and inside the candidate")
            out[rel] = self.put(content.encode() if isinstance(content, str) else content)
        return out

    def read(self, files: Mapping[str, str]) -> dict[str, str]:
        """{path: text} of a snapshot."""
        return {rel: self.get(d).decode() for rel, d in sorted(files.items())}

    def materialize(self, files: Mapping[str, str], dest: str | os.PathLike) -> Path:
        """Write the snapshot's files into dest (created fresh)."""
        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for rel, digest in files.items():
            p = dest / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(self.get(digest))
        return dest


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
