"""Implement an idea as a candidate.

Structured (playbook / random) ideas are applied as a one-line rewrite of an UPPERCASE
setting; free-form ideas need an implementer (the LLM one in ``llm_implement``) or files
written by a researcher (``implement_files``). Every candidate must compile, and must change
something its preset measures: a change that touches none of the files a run of the lab's preset
uses (``Task.units``: the preset's problem files, or the measured files, and what they import) is
refused before it runs (``refusal``): the candidate is recorded FAILED with the reason, never
screened or promoted, and the idea FAILED with the same reason.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Protocol

from .errors import CandidateError
from .lab import Lab, check_compiles  # noqa: F401  (check_compiles re-exported: implementers use it)
from ._propose import SETTING_LINE, apply_patch
from .records import Candidate, Idea, State


class Implementer(Protocol):
    def implement(self, lab: Lab, idea: Idea, parent: Candidate) -> Candidate | None: ...


def apply_setting_edit(text: str, edit: Mapping[str, Any], *, path: str = "<file>") -> str:
    """Rewrite the single module-level line ``SETTING = <expr>  # comment`` per the edit (or, for
    ``op = "patch"``, apply the edit's SEARCH/REPLACE blocks)."""
    if edit["op"] == "patch":
        return apply_patch(text, edit["patch"], path=path)
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


def refusal(lab: Lab, parent: Candidate, cand: Candidate, preset: str | None = None) -> str | None:
    """Why ``cand`` must not run on ``preset`` (default: the lab's), or None: the same files as its
    parent, or a change to none of the files a run of the preset measures."""
    if cand.id == parent.id or cand.files == parent.files:
        return (f"the change leaves every file of {parent.id} as it was (a no-op edit); "
                "change a setting to a value it does not have yet")
    preset = preset or lab.preset_name
    old, new = lab.files(parent), lab.files(cand)
    if lab.task.changed_units(preset, old, new):
        return None
    changed = sorted(f for f in set(old) | set(new) if old.get(f) != new.get(f))
    units = lab.task.units(preset, new)
    measured = sorted(set().union(*units.values())) if units else []
    shown = ", ".join(measured[:12]) + (f", ... ({len(measured)} files)" if len(measured) > 12 else "")
    fix = (f", or run a preset whose problems include it ({lab.task.path / 'task.toml'}: [presets.{preset}] problems)"
           if lab.task.problem_file else f" ({lab.task.path / 'task.toml'}: [files] measured)")
    return (f"the change touches nothing preset {preset!r} measures: it changes {', '.join(changed)}, and a run of "
            f"{preset!r} uses only {shown or 'no file'}; edit one of those files{fix}")


def _refuse(lab: Lab, idea: Idea, parent: Candidate, cand: Candidate, why: str) -> None:
    """Record a refused change: the candidate FAILED (when it was made for this idea; an equal
    candidate of another idea, or the parent itself, is left as it is) and the idea FAILED."""
    if cand.id != parent.id and cand.idea_id == idea.id and cand.state is State.READY:
        lab.set_state(cand, State.FAILED, refused=why, refused_preset=lab.preset_name)
    lab.log.append(idea.with_state(State.FAILED, meta={**idea.meta, "candidate_id": cand.id, "refused": why,
                                                       "error": f"refused: {why}"}))
    lab.log.event("implement", idea_id=idea.id, ok=False, candidate_id=cand.id, refused=why)


def implement_files(lab: Lab, idea: Idea, files: Mapping[str, str], parent: Candidate | None = None,
                    implementer: str = "human") -> Candidate:
    """Make a candidate from files written by hand (only editable files; must compile; a change
    to nothing the lab's preset measures is recorded refused and raises CandidateError)."""
    parent = parent or (lab.candidate(idea.parent_id) if idea.parent_id else lab.seed_candidate())
    check_compiles(files)
    cand = lab.add_candidate(dict(files), parent, idea_id=idea.id, thread=idea.thread, meta={"implementer": implementer})
    why = refusal(lab, parent, cand)
    if why:
        _refuse(lab, idea, parent, cand, why)
        raise CandidateError(f"idea {idea.id} refused: {why}")
    lab.log.append(idea.with_state(State.READY, meta={**idea.meta, "candidate_id": cand.id}))
    return cand


def implement(lab: Lab, idea: Idea, implementer: Implementer | None = None) -> Candidate | None:
    """Turn an idea into a candidate. Returns None (and marks the idea FAILED) when it cannot."""
    parent = lab.candidate(idea.parent_id) if idea.parent_id else lab.seed_candidate()
    if implementer is not None and not idea.edit:
        cand = implementer.implement(lab, idea, parent)
        why = refusal(lab, parent, cand) if cand is not None else None
        if cand is not None and why:
            _refuse(lab, idea, parent, cand, why)
            return None
        return cand
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
        why = refusal(lab, parent, cand)
        if why:
            _refuse(lab, idea, parent, cand, why)
            return None
    except CandidateError as e:
        lab.log.append(idea.with_state(State.FAILED, meta={**idea.meta, "error": str(e)}))
        lab.log.event("implement", idea_id=idea.id, ok=False, error=str(e))
        return None
    lab.log.append(idea.with_state(State.READY, meta={**idea.meta, "candidate_id": cand.id}))
    lab.log.event("implement", idea_id=idea.id, ok=True, candidate_id=cand.id)
    return cand
