"""Implement an idea as a candidate.

Structured (playbook / random) ideas are applied as a one-line rewrite of an UPPERCASE
setting; free-form ideas need an implementer (the LLM one in ``llm_implement``) or files
written by a researcher (``implement_files``). Every candidate must compile.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Protocol

from .errors import CandidateError
from .lab import Lab, check_compiles  # noqa: F401  (check_compiles re-exported: implementers use it)
from ._propose import SETTING_LINE
from .records import Candidate, Idea, State


class Implementer(Protocol):
    def implement(self, lab: Lab, idea: Idea, parent: Candidate) -> Candidate | None: ...


def apply_setting_edit(text: str, edit: Mapping[str, Any], *, path: str = "<file>") -> str:
    """Rewrite the single module-level line ``SETTING = <expr>  # comment`` per the edit."""
    setting, op, value = edit["setting"], edit["op"], edit.get("value")
    pat = re.compile(SETTING_LINE.format(name=re.escape(setting)), re.M)
    matches = list(pat.finditer(text))
    if len(matches) != 1:
        raise CandidateError(f"{path}: expected exactly one line `{setting} = ...` at the top level, found {len(matches)}; "
                             "a playbook setting must be assigned once, on one line")
    m = matches[0]
    old = m.group("expr").strip()
    if op == "scale":
        if edit.get("cast", "float") == "int":
            new = f"max(1, int(round(({old}) * {float(value)!r})))"
        else:
            new = f"({old}) * {float(value)!r}"
    elif op == "set":
        new = repr(value)
    elif op == "toggle":
        new = {"True": "False", "False": "True"}.get(old, f"not ({old})")
    else:
        raise CandidateError(f"unknown edit op {op!r}; use scale, set or toggle")
    line = f"{m.group('name')} = {new}{m.group('comment') or ''}"
    return text[:m.start()] + line + text[m.end():]


def implement_files(lab: Lab, idea: Idea, files: Mapping[str, str], parent: Candidate | None = None,
                    implementer: str = "human") -> Candidate:
    """Make a candidate from files written by hand (only editable files; must compile)."""
    parent = parent or (lab.candidate(idea.parent_id) if idea.parent_id else lab.seed_candidate())
    check_compiles(files)
    cand = lab.add_candidate(dict(files), parent, idea_id=idea.id, thread=idea.thread, meta={"implementer": implementer})
    lab.log.append(idea.with_state(State.READY, meta={**idea.meta, "candidate_id": cand.id}))
    return cand


def implement(lab: Lab, idea: Idea, implementer: Implementer | None = None) -> Candidate | None:
    """Turn an idea into a candidate. Returns None (and marks the idea FAILED) when it cannot."""
    parent = lab.candidate(idea.parent_id) if idea.parent_id else lab.seed_candidate()
    if implementer is not None and not idea.edit:
        return implementer.implement(lab, idea, parent)
    if not idea.edit:
        lab.log.append(idea.with_state(State.FAILED, meta={**idea.meta, "error": "free-form idea and no implementer"}))
        raise CandidateError(f"idea {idea.id} ({idea.title!r}) has no structured edit: pass an implementer "
                             "(e.g. --proposer llm:<model>) or write the files with implement_files()")
    files = lab.files(parent)
    fname = idea.edit.get("file") or lab.task.editable[0]
    try:
        if fname not in files:
            raise CandidateError(f"{fname!r} is not a file of candidate {parent.id}")
        new = {fname: apply_setting_edit(files[fname], idea.edit, path=fname)}
        check_compiles(new)
        cand = lab.add_candidate(new, parent, idea_id=idea.id, thread=idea.thread, meta={"implementer": idea.source})
    except CandidateError as e:
        lab.log.append(idea.with_state(State.FAILED, meta={**idea.meta, "error": str(e)}))
        lab.log.event("implement", idea_id=idea.id, ok=False, error=str(e))
        return None
    lab.log.append(idea.with_state(State.READY, meta={**idea.meta, "candidate_id": cand.id}))
    lab.log.event("implement", idea_id=idea.id, ok=True, candidate_id=cand.id)
    return cand
