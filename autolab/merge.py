"""Branch merging: combine the bests of two research threads by a 3-way merge of their
files against their common ancestor. A conflict is resolved by the LLM when one is
configured; otherwise the merge is skipped and recorded as an event. A merge becomes an
ordinary candidate (source "merge"), screened, confirmed and audited like any other."""

from __future__ import annotations

import re

from .lab import check_compiles
from .lab import Lab
from .ledger import Ledger
from .records import Candidate, Idea, State, new_id
from .diffs import merge3

RESOLVE_PROMPT = """Two changes to the same file conflict. Resolve the conflict so that the file keeps the intent
of BOTH changes. Answer with the complete resolved file in one ```python fenced block, nothing else.

File: {path}

Common ancestor:
```python
{base}
```

Change A ({a_title}):
```python
{ours}
```

Change B ({b_title}):
```python
{theirs}
```

The automatic merge, with conflict markers:
```python
{merged}
```"""


def ancestors(lab: Lab, c: Candidate) -> list[str]:
    """Ids from ``c`` up to the root (c first)."""
    out, seen = [], set()
    cur: Candidate | None = c
    while cur is not None and cur.id not in seen:
        out.append(cur.id)
        seen.add(cur.id)
        cur = lab.log.get("candidate", cur.parent_id) if cur.parent_id else None  # type: ignore[assignment]
    return out


def common_ancestor(lab: Lab, a: Candidate, b: Candidate) -> Candidate | None:
    anc_b = set(ancestors(lab, b))
    for cid in ancestors(lab, a):
        if cid in anc_b:
            return lab.candidate(cid)
    return None


def merged_pairs(lab: Lab) -> set[frozenset[str]]:
    """Pairs already merged or tried (candidates with merge_of, and skipped merges)."""
    pairs = {frozenset(c.meta["merge_of"]) for c in lab.log.candidates_list() if c.meta.get("merge_of")}
    pairs |= {frozenset(e["pair"]) for e in lab.log.events("merge_skipped") if e.get("pair")}
    return pairs


def _title(lab: Lab, c: Candidate) -> str:
    idea = lab.log.get("idea", c.idea_id) if c.idea_id else None
    return idea.title if idea else c.id


def _fenced(text: str) -> str | None:
    m = re.search(r"```(?:python|py)?\n(.*?)```", text, re.S)
    return m.group(1) if m else None


def merge_candidates(lab: Lab, a: Candidate, b: Candidate, *, llm=None) -> Candidate | None:
    """3-way merge of ``a`` and ``b``; returns the merged candidate or None (recorded why)."""
    pair = [a.id, b.id]
    if a.id in ancestors(lab, b) or b.id in ancestors(lab, a):
        lab.log.event("merge_skipped", pair=pair, reason="one is an ancestor of the other")
        return None
    base = common_ancestor(lab, a, b)
    fa, fb = lab.files(a), lab.files(b)
    fbase = lab.files(base) if base else {}
    merged: dict[str, str] = {}
    resolved_by_llm = []
    for path in sorted(set(fa) | set(fb)):
        ta, tb, t0 = fa.get(path, ""), fb.get(path, ""), fbase.get(path, "")
        m = merge3(t0, ta, tb, labels=(a.id, b.id))
        if m.clean:
            merged[path] = m.text
            continue
        if llm is None:
            lab.log.event("merge_skipped", pair=pair, reason=f"{m.conflicts} conflict(s) in {path} and no LLM configured")
            return None
        try:
            reply = llm.complete([{"role": "user", "content": RESOLVE_PROMPT.format(
                path=path, base=t0, ours=ta, theirs=tb, merged=m.text, a_title=_title(lab, a), b_title=_title(lab, b))}],
                purpose="merge")
        except Exception as e:   # an LLM failure skips this merge; the loop goes on
            lab.log.event("merge_skipped", pair=pair, reason=f"LLM could not resolve {path}: {e}")
            return None
        text = _fenced(reply.text)
        if not text or "<<<<<<<" in text:
            lab.log.event("merge_skipped", pair=pair, reason=f"LLM answer for {path} had no clean file")
            return None
        merged[path] = text
        resolved_by_llm.append(path)
    try:
        check_compiles(merged)
    except Exception as e:
        lab.log.event("merge_skipped", pair=pair, reason=str(e))
        return None
    ledger = Ledger(lab)
    ma, mb = ledger.mean(a), ledger.mean(b)
    better = a if (mb is None or (ma is not None and ledger.better(ma, mb))) else b
    idea = Idea(id=new_id("i"), task=lab.task.name, title=f"Merge: {_title(lab, a)} + {_title(lab, b)}",
                hypothesis="the two threads' gains are independent and add up",
                plan=f"3-way merge of {a.id} and {b.id} against {base.id if base else 'nothing'}", source="merge",
                thread="merge", parent_id=better.id, state=State.READY,
                meta={"merge_of": pair, "resolved_by_llm": resolved_by_llm})
    lab.log.append(idea)
    cand = lab.add_candidate(merged, better, idea_id=idea.id, thread="merge",
                             meta={"merge_of": pair, "base": base.id if base else None,
                                   "resolved_by_llm": resolved_by_llm})
    lab.log.event("merged", pair=pair, candidate_id=cand.id, resolved_by_llm=resolved_by_llm)
    return cand

