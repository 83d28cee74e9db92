"""LLMImplementer: turns an Idea into a Candidate through SEARCH/REPLACE edit blocks.

The model answers with blocks of this form (the path line may be wrapped in backticks,
or the block put inside a ``` fence)::

    path/to/file.py
    <<<<<<< SEARCH
    old lines, copied from the file
    =======
    new lines
    >>>>>>> REPLACE

``parse_edit_blocks`` and ``apply_edits`` are pure functions. Edits apply exactly first,
then ignoring trailing whitespace and a uniform indentation shift (the replacement is
re-indented to match), then also ignoring blank lines; several matches are an error.
Edits to protected or unknown files are refused, and Python files must compile. A
failure gets one repair round with the error shown to the model. Each attempt is an
``implement`` event in the log; the idea ends READY (with its candidate) or FAILED.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Mapping, Sequence

from .errors import AutolabError, CandidateError
from .records import Candidate, Idea, State

if TYPE_CHECKING:  # pragma: no cover
    from .lab import Lab
    from .llm import LLM

__all__ = ["EditBlock", "EditFormatError", "EditApplyError", "parse_edit_blocks", "apply_edits",
           "check_compiles", "LLMImplementer", "make_llm_implementer"]


from .lab import check_compiles  # noqa: E402  (the one compile check, shared)


class EditFormatError(CandidateError):
    """The answer's edit blocks are malformed (a marker missing, no file path)."""


class EditApplyError(CandidateError):
    """An edit block does not apply: SEARCH text not found, ambiguous, or a refused file."""


@dataclass(frozen=True)
class EditBlock:
    path: str
    search: str
    replace: str
    index: int = 1   # position in the answer, 1-based, for messages


# ---------------------------------------------------------------------------- parsing

_SEARCH = re.compile(r"^[ \t]*<{5,9}[ \t]*SEARCH\b.*$")
_DIVIDER = re.compile(r"^[ \t]*={5,9}[ \t]*$")
_REPLACE = re.compile(r"^[ \t]*>{5,9}[ \t]*REPLACE\b.*$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")
_PATH_OK = re.compile(r"^[\w.\-/+@]+$")
_PATH_PREFIX = re.compile(r"^(?:file(?:name)?|path)\s*[:=]\s*", re.I)


def _clean_path(line: str) -> str | None:
    s = line.strip()
    m = _FENCE.match(s)
    if m:  # "```python train.py" style: the path after the language tag
        parts = s[len(m.group(1)):].split()
        s = parts[-1] if len(parts) >= 2 else ""
    s = s.lstrip("#").strip()
    s = s[2:] if s.startswith("- ") else s
    s = _PATH_PREFIX.sub("", s)
    s = s.strip("`*'\" \t").rstrip(":").strip("`*'\" \t")
    s = _PATH_PREFIX.sub("", s).strip("`*'\" ")
    if s.startswith("./"):
        s = s[2:]
    if not s or not _PATH_OK.match(s) or not ("." in s or "/" in s) or set(s) <= {".", "/"}:
        return None
    return s


def _find_path(lines: list[str], at: int) -> str | None:
    """The file path on the lines just above a SEARCH marker (skipping blanks and fences)."""
    k, looked = at - 1, 0
    while k >= 0 and looked < 4:
        line = lines[k]
        if _REPLACE.match(line):
            return None
        if line.strip():
            looked += 1
            fence = _FENCE.match(line)
            path = _clean_path(line)
            if path is not None:
                return path
            if not fence:
                return None
        k -= 1
    return None


def parse_edit_blocks(text: str) -> list[EditBlock]:
    """Every SEARCH/REPLACE block in a model's answer, in order.

    A block without a path line reuses the previous block's path. Raises EditFormatError
    when a block is cut short or has no path at all.
    """
    lines = text.replace("\r\n", "\n").splitlines(keepends=True)
    blocks: list[EditBlock] = []
    last_path: str | None = None
    i = 0
    while i < len(lines):
        if not _SEARCH.match(lines[i]):
            i += 1
            continue
        n = len(blocks) + 1
        path = _find_path(lines, i) or last_path
        if path is None:
            raise EditFormatError(f"edit block {n}: no file path before '<<<<<<< SEARCH'; put the file's path "
                                  "alone on the line above it")
        j, search = i + 1, []
        while j < len(lines) and not _DIVIDER.match(lines[j]):
            if _SEARCH.match(lines[j]) or _REPLACE.match(lines[j]):
                raise EditFormatError(f"edit block {n} ({path}): a '{lines[j].strip()}' line came before the "
                                      "'=======' line; each block needs SEARCH, =======, REPLACE in that order")
            search.append(lines[j])
            j += 1
        if j >= len(lines):
            raise EditFormatError(f"edit block {n} ({path}): no '=======' line after '<<<<<<< SEARCH' "
                                  "(was the answer cut off?)")
        j, replace = j + 1, []
        while j < len(lines) and not _REPLACE.match(lines[j]):
            if _SEARCH.match(lines[j]):
                raise EditFormatError(f"edit block {n} ({path}): a new '<<<<<<< SEARCH' began before "
                                      "'>>>>>>> REPLACE' closed this block")
            replace.append(lines[j])
            j += 1
        if j >= len(lines):
            raise EditFormatError(f"edit block {n} ({path}): never closed with '>>>>>>> REPLACE' "
                                  "(was the answer cut off?)")
        blocks.append(EditBlock(path, "".join(search), "".join(replace), n))
        last_path = path
        i = j + 1
    return blocks


# ---------------------------------------------------------------------------- applying

def _normalized(lines: Sequence[str]) -> tuple[list[str], int]:
    """Lines without trailing whitespace and without their common indentation; and that indentation."""
    exp = [l.rstrip("\r\n").expandtabs(4).rstrip() for l in lines]
    widths = [len(l) - len(l.lstrip()) for l in exp if l]
    ind = min(widths) if widths else 0
    return [l[ind:] if l else "" for l in exp], ind


def _trim_blank(lines: list[str]) -> tuple[list[str], int, int]:
    a, b = 0, len(lines)
    while a < b and not lines[a].strip():
        a += 1
    while b > a and not lines[b - 1].strip():
        b -= 1
    return lines[a:b], a, len(lines) - b


def _line_starts(content: str, needle: str) -> list[int]:
    """Offsets where needle occurs in content as whole lines (starting and ending at line boundaries)."""
    out, start = [], 0
    while True:
        k = content.find(needle, start)
        if k < 0:
            return out
        end = k + len(needle)
        if (k == 0 or content[k - 1] == "\n") and (needle.endswith("\n") or end == len(content) or content[end] == "\n"):
            out.append(k)
        start = k + 1


def _reindent(lines: list[str], delta: int) -> list[str]:
    out = []
    for l in lines:
        body = l.rstrip("\r\n")
        if not body.strip():
            out.append("\n")
        elif delta > 0:
            out.append(" " * delta + body + "\n")
        elif delta < 0:
            lead = len(body) - len(body.lstrip(" "))
            out.append(body[min(lead, -delta):] + "\n")
        else:
            out.append(body + "\n")
    return out


def _hint(c_lines: list[str], s_lines: list[str]) -> str:
    """The region of the file most similar to the SEARCH lines, for the repair round."""
    n = max(1, len(s_lines))
    target = "\n".join(l.strip() for l in s_lines)
    best, best_k = 0.0, -1
    if len(c_lines) * n <= 200_000:
        for k in range(max(1, len(c_lines) - n + 1)):
            window = "\n".join(l.strip() for l in c_lines[k:k + n])
            sm = difflib.SequenceMatcher(None, target, window, autojunk=False)
            if sm.quick_ratio() <= best * 0.5:
                continue
            matched = sum(m.size for m in sm.get_matching_blocks())
            score = (sm.ratio() + matched / max(1, len(target))) / 2   # similarity and coverage of the SEARCH
            if score > best:
                best, best_k = score, k
    if best < 0.5:
        return " No similar lines were found; check the file name and copy the SEARCH lines from the file."
    region = "".join(c_lines[best_k:best_k + n]).rstrip("\n")
    return f" The most similar lines in the file are:\n{region}\nCopy the SEARCH lines exactly from the file."


def _apply_one(content: str, block: EditBlock) -> str:
    where = f"edit block {block.index} ({block.path})"
    search, replace = block.search, block.replace
    if not search.strip():                                   # create, or append to the end
        if not content.strip():
            return replace
        return content + ("" if content.endswith("\n") else "\n") + replace
    hits = _line_starts(content, search)
    if len(hits) == 1:
        k = hits[0]
        return content[:k] + replace + content[k + len(search):]
    if len(hits) > 1:
        raise EditApplyError(f"{where}: the SEARCH text occurs {len(hits)} times; include more surrounding "
                             "lines so it matches exactly one place")

    c_lines = content.splitlines(keepends=True)
    s_all = search.splitlines(keepends=True)
    s_lines, s_lead, s_tail = _trim_blank(s_all)
    r_lines = replace.splitlines(keepends=True)
    # drop the blank edge lines the search had, where the replacement repeats them
    for _ in range(s_lead):
        if r_lines and not r_lines[0].strip():
            r_lines.pop(0)
    for _ in range(s_tail):
        if r_lines and not r_lines[-1].strip():
            r_lines.pop()
    s_norm, s_ind = _normalized(s_lines)
    first = s_lines[0].strip()

    # level 1: ignore trailing whitespace and a uniform indentation shift
    matches: list[tuple[int, int, int]] = []
    n = len(s_lines)
    for k in range(len(c_lines) - n + 1):
        if c_lines[k].strip() != first:
            continue
        w_norm, w_ind = _normalized(c_lines[k:k + n])
        if w_norm == s_norm:
            matches.append((k, k + n, w_ind))
    # level 2: also ignore blank lines
    if not matches:
        s_nb = [l for l in s_norm if l]
        s_nb_raw = [l for l in s_lines if l.strip()]
        for k in range(len(c_lines)):
            if c_lines[k].strip() != first:
                continue
            picked, e = [], k
            while e < len(c_lines) and len(picked) < len(s_nb_raw):
                if c_lines[e].strip():
                    picked.append(c_lines[e])
                e += 1
            if len(picked) == len(s_nb_raw):
                w_norm, w_ind = _normalized(picked)
                if w_norm == s_nb:
                    matches.append((k, e, w_ind))
    if not matches:
        raise EditApplyError(f"{where}: the SEARCH text was not found, not even ignoring whitespace and "
                             f"indentation.{_hint(c_lines, s_lines)}")
    if len(matches) > 1:
        raise EditApplyError(f"{where}: the SEARCH text matches {len(matches)} places when whitespace is "
                             "ignored; include more surrounding lines so it matches exactly one place")
    start, end, w_ind = matches[0]
    new = _reindent(r_lines, w_ind - s_ind)
    if end == len(c_lines) and not content.endswith("\n") and new:
        new[-1] = new[-1].rstrip("\n")
    return "".join(c_lines[:start] + new + c_lines[end:])


def apply_edits(files: Mapping[str, str], blocks: Sequence[EditBlock]) -> dict[str, str]:
    """Apply blocks in order to a copy of ``{path: text}``; returns the new map (all files).

    An empty SEARCH creates a file that does not exist yet (or appends to an existing
    one). Raises EditApplyError naming the block and what to do.
    """
    out = dict(files)
    for b in blocks:
        if b.path not in out:
            if b.search.strip():
                raise EditApplyError(f"edit block {b.index}: {b.path} does not exist (files: {', '.join(sorted(out))}); "
                                     "to create a new file, leave the SEARCH section empty")
            out[b.path] = ""
        out[b.path] = _apply_one(out[b.path], b)
    return out


# ---------------------------------------------------------------------------- the implementer

SYSTEM_PROMPT = """\
You are a careful research engineer. You implement one experiment idea as a minimal, \
correct change to the given code, by answering with SEARCH/REPLACE edit blocks. The code \
runs unattended under a fixed time budget, so it must be correct the first time."""

EDIT_FORMAT = """\
Answer with one or more edit blocks, each exactly in this form:

path/of/the/file.py
<<<<<<< SEARCH
lines copied exactly from the current file (same indentation), enough to match one place
=======
the lines that replace them
>>>>>>> REPLACE

Rules:
- The path line is the file's path alone (as listed above), on the line before <<<<<<< SEARCH.
- SEARCH must match the current file exactly once: copy whole lines, keep them few but unique.
- Use several small blocks rather than one huge one; blocks apply in order.
- To create a new file (only where allowed), leave the SEARCH section empty.
- Keep everything else working: imports, names used elsewhere, the script's entry point and \
its closing summary.
- One or two sentences of explanation before the blocks are fine; put no other code outside them."""


class LLMImplementer:
    """``LLMImplementer(llm).implement(lab, idea, parent)`` → Candidate, or None when it failed."""

    def __init__(self, llm: "LLM", *, max_code_chars: int = 80_000, repair_rounds: int = 1):
        self.llm = llm
        self.max_code_chars = max_code_chars
        self.repair_rounds = repair_rounds

    @property
    def name(self) -> str:
        return f"llm:{self.llm.model}"

    # ------------------------------------------------------------------ prompt
    def build_messages(self, lab: "Lab", idea: Idea, parent: Candidate) -> list[dict[str, str]]:
        from .llm_propose import format_files

        task, metric = lab.task, lab.task.metric
        files = lab.files(parent)
        new_ok = "New files matching those patterns may be created." if _allow_new(lab) else \
            "Do not create new files."
        parts = [
            f"# Task: {task.title}\n\n{task.brief_text().strip() or '(no written brief; read the code)'}",
            f"Metric: {metric.name} ({metric.unit or 'no unit'}), {metric.direction}.",
            f"# The idea to implement\n\nTitle: {idea.title}\nHypothesis: {idea.hypothesis or '-'}\n"
            f"Plan: {idea.plan or '-'}",
            "# Current code\n\n" + format_files(files, self.max_code_chars),
            f"# Files you may change\n\nOnly: {', '.join(sorted(files))} (editable patterns: "
            f"{', '.join(task.editable)}). {new_ok} The benchmark harness, its metric, timer and data are "
            "protected and cannot be edited.",
            "# Answer format\n\n" + EDIT_FORMAT,
        ]
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]

    # ------------------------------------------------------------------ checks
    def _check_paths(self, lab: "Lab", files: Mapping[str, str], blocks: Sequence[EditBlock]) -> list[EditBlock]:
        task, out = lab.task, []
        allow_new = _allow_new(lab)
        editable_now = ", ".join(sorted(files))
        for b in blocks:
            p = PurePosixPath(b.path)
            if p.is_absolute() or ".." in p.parts:
                raise EditApplyError(f"edit block {b.index}: {b.path} is outside the candidate; use a path "
                                     f"relative to it, one of: {editable_now}")
            path = str(p)
            if any(fnmatch.fnmatch(path, pat) for pat in task.protected) or \
                    (path not in files and (task.path / path).exists() and not task.is_editable(path)):
                raise EditApplyError(f"edit block {b.index}: {path} is protected (the harness, metric, timer and "
                                     f"data are fixed); change only: {editable_now}")
            if not task.is_editable(path):
                raise EditApplyError(f"edit block {b.index}: {path} is not an editable file of task "
                                     f"{task.name!r}; change only: {editable_now}")
            if path not in files and not allow_new:
                raise EditApplyError(f"edit block {b.index}: {path} does not exist in the parent and this task "
                                     f"allows no new files; change only: {editable_now}")
            out.append(dataclasses.replace(b, path=path))
        return out

    def edit_files(self, lab: "Lab", files: Mapping[str, str], answer: str) -> dict[str, str]:
        """Parse, check, apply and compile the answer's edits; returns only the changed files."""
        blocks = parse_edit_blocks(answer)
        if not blocks:
            raise EditFormatError("the answer holds no edit block; write each change as a path line, then "
                                  "<<<<<<< SEARCH, the old lines, =======, the new lines, >>>>>>> REPLACE")
        blocks = self._check_paths(lab, files, blocks)
        new = apply_edits(files, blocks)
        changed = {p: t for p, t in new.items() if files.get(p) != t}
        if not changed:
            raise EditApplyError("the edits change nothing (each REPLACE equals its SEARCH); make the change the "
                                 "idea describes")
        check_compiles(changed)
        return changed

    # ------------------------------------------------------------------ implement
    def implement(self, lab: "Lab", idea: Idea, parent: Candidate) -> Candidate | None:
        """Candidate of ``parent`` implementing ``idea`` (idea → READY), or None (idea → FAILED).

        BudgetExceeded and LLMError from the model propagate (recorded as an event first);
        the idea then keeps its state.
        """
        files = lab.files(parent)
        messages = self.build_messages(lab, idea, parent)
        errors: list[str] = []
        model = self.llm.model
        for rnd in range(self.repair_rounds + 1):
            try:
                reply = self.llm.complete(messages, purpose="implement" if rnd == 0 else "repair",
                                          thread=idea.thread, idea_id=idea.id)
            except AutolabError as e:
                lab.log.event("implement", idea_id=idea.id, ok=False, round=rnd, model=model,
                              error=f"{type(e).__name__}: {e}", fatal=True)
                raise
            model = reply.model
            messages.append({"role": "assistant", "content": reply.text})
            try:
                changed = self.edit_files(lab, files, reply.text)
            except CandidateError as e:
                err = str(e)
                if reply.finish_reason == "length":
                    err += " (the answer was cut off at the token limit: use fewer, smaller blocks)"
                errors.append(err)
                lab.log.event("implement", idea_id=idea.id, ok=False, round=rnd, model=model, error=err)
                messages.append({"role": "user", "content":
                                 f"Your edits could not be used: {err}\n\nNothing was applied. Answer again with "
                                 "the complete, corrected set of edit blocks against the original files shown "
                                 "above, in the same format."})
                continue
            meta = {"implementer": f"llm:{model}", "repair_rounds": rnd}
            cand = lab.add_candidate(changed, parent, idea_id=idea.id, thread=idea.thread, meta=meta)
            lab.log.event("implement", idea_id=idea.id, ok=True, round=rnd, model=model, candidate_id=cand.id,
                          files=sorted(changed))
            extra = {"candidate_id": cand.id, "implementer": f"llm:{model}"}
            if cand.idea_id != idea.id:
                extra["same_files_as_idea"] = cand.idea_id
            lab.log.append(idea.with_state(State.READY, parent_id=idea.parent_id or parent.id,
                                           meta={**idea.meta, **extra}))
            return cand
        lab.log.append(idea.with_state(State.FAILED, parent_id=idea.parent_id or parent.id,
                                       meta={**idea.meta, "error": errors[-1] if errors else "no answer",
                                             "errors": errors, "implementer": f"llm:{model}"}))
        return None

    __call__ = implement


def make_llm_implementer(spec: str, **kwargs: object) -> LLMImplementer:
    """``make_llm_implementer("openai/gpt-4o-mini", log=lab.log, api_base=..., max_cost=..., max_llm_calls=...)``;
    the keyword arguments go to :func:`autolab.llm.build_llm`."""
    from .llm import build_llm

    return LLMImplementer(build_llm(spec, **kwargs))  # type: ignore[arg-type]


def _allow_new(lab: "Lab") -> bool:
    """A task allows new files with ``allow_new_files = true`` under ``[files]`` in task.toml."""
    files = lab.task.raw.get("files", {}) if isinstance(lab.task.raw, dict) else {}
    return bool(files.get("allow_new_files", False))
