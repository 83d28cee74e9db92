"""LLMProposer: asks a language model for the next experiment, as an Idea.

The prompt holds the task brief, the parent's code, a compact history from the research
log (best so far, recent results, failures, ideas already tried), retrieved insights and
the thread's direction. The model answers with one JSON object (``title``, ``hypothesis``,
``plan``). A malformed answer is retried once with the parse error shown, then recorded
as a FAILED idea; a near-duplicate of a tried idea is sent back once, then recorded as
REJECTED. The duplicate check and the append happen under one lock against the log as it
is at that moment, so proposals prepared at the same time (by the loop's parallel workers,
on any research thread) see each other. Every idea is appended to the log; LLM errors
(BudgetExceeded, LLMError) propagate.
"""

from __future__ import annotations

import difflib
import json
import re
import threading
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .errors import AutolabError
from .ledger import Ledger
from .records import Candidate, Idea, State, new_id

if TYPE_CHECKING:  # pragma: no cover
    from .lab import Lab
    from .llm import LLM, LLMReply

__all__ = ["LLMProposer", "make_llm_proposer", "ProposalParseError", "parse_idea_json", "title_similarity", "format_files"]

REQUIRED_KEYS = ("title", "hypothesis", "plan")

SYSTEM_PROMPT = """\
You are a senior machine-learning research engineer running careful experiments on one \
optimization task. You propose ONE next experiment at a time: a single, concrete, testable \
change to the current code that you expect to improve the task's metric under its fixed \
budget. Prefer changes with a clear mechanism; learn from the results and failures shown; \
never repeat an idea that was already tried. The harness (timer, data split, metric) is \
fixed and cannot be changed; gains must come from the editable files only."""

ANSWER_FORMAT = """\
Answer with ONE JSON object and nothing else (a ```json fence is fine):
{
  "title": "short imperative name of the change, at most 12 words",
  "hypothesis": "why it should improve the metric under this budget",
  "plan": "the concrete code changes, file by file, with the values to use",
  "expected_effect": "optional: your guess of the metric change",
  "risk": "optional: what could go wrong"
}"""

_LANG = {".py": "python", ".toml": "toml", ".md": "markdown", ".json": "json", ".sh": "bash", ".yaml": "yaml"}


class ProposalParseError(AutolabError):
    """The model's answer held no usable JSON idea."""


# ---------------------------------------------------------------------------- pure helpers

def format_files(files: dict[str, str], max_chars: int = 60_000) -> str:
    """The files as fenced blocks headed by their path, truncated to about ``max_chars`` in all."""
    out, left = [], max_chars
    for path, text in sorted(files.items()):
        lang = next((v for k, v in _LANG.items() if path.endswith(k)), "")
        body = text if len(text) <= max(left, 0) else text[:max(left, 2000)] + f"\n# [... {len(text) - max(left, 2000)} more characters not shown ...]\n"
        left -= len(body)
        out.append(f"{path}\n```{lang}\n{body}{'' if body.endswith(chr(10)) else chr(10)}```")
    return "\n\n".join(out)


def _normalize_title(t: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9.+-]+", " ", t.lower()).split())


def title_similarity(a: str, b: str) -> float:
    """Similarity of two idea titles in [0, 1]: the larger of difflib's ratio and token Jaccard."""
    na, nb = _normalize_title(a), _normalize_title(b)
    if not na or not nb:
        return 0.0
    ratio = difflib.SequenceMatcher(None, na, nb, autojunk=False).ratio()
    ta, tb = set(na.split()), set(nb.split())
    jaccard = len(ta & tb) / len(ta | tb)
    return max(ratio, jaccard)


def _json_candidates(text: str) -> list[str]:
    fences = re.findall(r"```[ \t]*([A-Za-z0-9_-]*)[^\n]*\n(.*?)```", text, flags=re.S)
    first = [body for lang, body in fences if lang.lower() in ("json", "json5", "javascript", "js")]
    return first + [body for lang, body in fences if lang.lower() not in ("json", "json5", "javascript", "js")] + [text]


def _decode_objects(chunk: str) -> Iterable[Any]:
    chunk = chunk.strip()
    for variant in (chunk, re.sub(r",\s*([}\]])", r"\1", chunk)):   # second try: without trailing commas
        try:
            yield json.loads(variant)
            return
        except json.JSONDecodeError:
            pass
        dec = json.JSONDecoder()
        for m in re.finditer(r"\{", variant):
            try:
                obj, _ = dec.raw_decode(variant, m.start())
            except json.JSONDecodeError:
                continue
            yield obj


def _as_text(v: Any) -> str:
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, (list, tuple)):
        return "\n".join(f"- {_as_text(x)}" for x in v if _as_text(x))
    if isinstance(v, dict):
        return "\n".join(f"{k}: {_as_text(x)}" for k, x in v.items())
    return "" if v is None else str(v).strip()


def parse_idea_json(text: str) -> dict[str, Any]:
    """The idea object in a model's answer: ``{"title", "hypothesis", "plan", ...extra}``.

    Accepts a bare object, one inside a ```json fence, or one embedded in prose (trailing
    commas forgiven). Raises ProposalParseError saying what was wrong.
    """
    if not text or not text.strip():
        raise ProposalParseError("the answer was empty")
    best: dict[str, Any] | None = None
    for chunk in _json_candidates(text):
        for obj in _decode_objects(chunk):
            if isinstance(obj, dict) and obj:
                if "title" in obj:
                    best = obj
                    break
                best = best or obj
        if best is not None and "title" in best:
            break
    if best is None:
        raise ProposalParseError("no JSON object found in the answer")
    missing = [k for k in REQUIRED_KEYS if not _as_text(best.get(k))]
    if missing:
        raise ProposalParseError(f"the JSON object lacks non-empty {', '.join(repr(k) for k in missing)} "
                                 f"(keys found: {', '.join(map(repr, best)) or 'none'})")
    idea = {k: _as_text(best[k]) for k in REQUIRED_KEYS}
    idea["title"] = " ".join(idea["title"].split())[:200]
    idea["extra"] = {k: v for k, v in best.items() if k not in REQUIRED_KEYS}
    return idea


# ---------------------------------------------------------------------------- the proposer

class LLMProposer:
    """``LLMProposer(llm).propose(lab, parent, thread="opt", direction="optimizer")`` → Idea."""

    def __init__(self, llm: "LLM", *, history: int = 10, max_code_chars: int = 60_000,
                 dup_threshold: float = 0.85, max_tried_shown: int = 40):
        self.llm = llm
        self.history = history
        self.max_code_chars = max_code_chars
        self.dup_threshold = dup_threshold
        self.max_tried_shown = max_tried_shown
        self._settle = threading.Lock()   # duplicate check + append: one proposal at a time

    @property
    def name(self) -> str:
        return f"llm:{self.llm.model}"

    # ------------------------------------------------------------------ prompt
    def _history(self, lab: "Lab", parent: Candidate) -> tuple[str, list[str]]:
        """A compact text history of the lab and the titles of the ideas already tried."""
        metric = lab.task.metric
        ideas = {i.id: i for i in lab.log.ideas_list()}
        cands = {c.id: c for c in lab.log.candidates_list()}
        runs = [r for r in lab.log.runs_list() if r.purpose != "redteam"]
        means: dict[str, list[float]] = {}
        for r in runs:
            v = r.metrics.get(metric.name)
            if r.state is State.COMPLETE and isinstance(v, (int, float)):
                means.setdefault(r.candidate_id, []).append(float(v))

        def label(cid: str) -> str:
            c = cands.get(cid)
            if c is None:
                return cid
            if c.idea_id in ideas:
                return f"{ideas[c.idea_id].title!r} ({cid})"
            return f"seed ({cid})" if c.parent_id is None else cid

        def mean(cid: str) -> str:
            v = means.get(cid)
            return f"{sum(v) / len(v):.4g} over {len(v)} run(s)" if v else "not measured yet"

        sections: list[str] = []
        sections.append(f"Parent of this experiment: {label(parent.id)}, {metric.name} {mean(parent.id)}.")

        try:
            board = Ledger(lab).leaderboard()   # the ledger's ranking: a rejected candidate is never "best so far"
        except Exception:  # noqa: BLE001 - a view problem must not stop a proposal
            board = None
        if board is not None and not board.empty:
            key = f"metrics.{metric.name}"
            rows = [f"- {label(row['candidate_id'])} [{row['state']}]: {metric.name} {row[key]:.4g} (n={int(row['n'])})"
                    for _, row in board.head(5).iterrows()]
            sections.append(f"Best so far ({metric.direction} {metric.name}):\n" + "\n".join(rows))

        recent = runs[-self.history:]
        if recent:
            lines = []
            for r in recent:
                v = r.metrics.get(metric.name)
                val = f"{metric.name} {v:.4g}" if isinstance(v, (int, float)) else "no metric"
                lines.append(f"- {label(r.candidate_id)} seed {r.seed} ({r.purpose}): {r.state.value}, {val}")
            sections.append("Recent runs (oldest first):\n" + "\n".join(lines))

        failures = []
        for r in [r for r in runs if r.state in (State.FAILED, State.KILLED)][-5:]:
            err = r.error or {}
            what = f"{err.get('ename', '')}: {str(err.get('evalue') or err.get('reason') or '')[:240]}".strip(": ")
            failures.append(f"- run of {label(r.candidate_id)}: {r.state.value}: {what or 'no error recorded'}")
        for i in [i for i in ideas.values() if i.state is State.FAILED and i.meta.get("error") and i.title][-5:]:
            failures.append(f"- idea {i.title!r} could not be implemented: {str(i.meta['error'])[:240]}")
        if failures:
            sections.append("Recent failures (avoid repeating them):\n" + "\n".join(failures))

        by_idea = {c.idea_id: c for c in cands.values() if c.idea_id}
        tried, lines = [], []
        for i in ideas.values():
            if not i.title:
                continue
            tried.append(i.title)
            c = by_idea.get(i.id)
            outcome = f"{c.state.value.lower()}, {metric.name} {mean(c.id)}" if c else i.state.value.lower()
            lines.append(f"- {i.title} [{i.thread}] → {outcome}")
        if lines:
            shown = lines[-self.max_tried_shown:]
            more = f"\n(and {len(lines) - len(shown)} earlier ones)" if len(lines) > len(shown) else ""
            sections.append("Ideas already tried (do NOT propose these again or close variants):\n"
                            + "\n".join(shown) + more)
        return "\n\n".join(sections), tried

    @staticmethod
    def _insight_lines(insights: Sequence[Any]) -> list[str]:
        lines = []
        for ins in insights:
            get = ins.get if isinstance(ins, dict) else (lambda k, d=None, _o=ins: getattr(_o, k, d))
            title = get("technique") or get("title") or ""
            if not title:
                continue
            effect = get("effect")
            eff = f", effect {effect:+.4g}" if isinstance(effect, (int, float)) else ""
            ci = (f" [{get('ci_low'):.3g}, {get('ci_high'):.3g}]"
                  if isinstance(get("ci_low"), (int, float)) and isinstance(get("ci_high"), (int, float)) else "")
            where = "/".join(str(x) for x in (get("task"), get("preset")) if x)
            lines.append(f"- {title}{eff}{ci}{f' on {where}' if where else ''}")
        return lines

    def build_messages(self, lab: "Lab", parent: Candidate, *, thread: str = "main", direction: str = "",
                       insights: Sequence[Any] = ()) -> tuple[list[dict[str, str]], list[str]]:
        """The chat messages for one proposal, and the titles already tried."""
        task, metric = lab.task, lab.task.metric
        preset = lab.preset
        history, tried = self._history(lab, parent)
        parts = [
            f"# Task: {task.title}\n\n{task.brief_text().strip() or '(no written brief; read the code)'}",
            f"Metric: {metric.name} ({metric.unit or 'no unit'}), {metric.direction}. "
            f"Preset {preset.name}: device {preset.device}, training budget {preset.budget_s:g} s.\n"
            f"Editable files (glob patterns): {', '.join(task.editable)}. Everything else is fixed.",
            "# Current code (the parent candidate)\n\n" + format_files(lab.files(parent), self.max_code_chars),
            "# History of this lab\n\n" + history,
        ]
        ins = self._insight_lines(insights)
        if ins:
            parts.append("# Insights from earlier work (effect: improvement in the good direction)\n\n" + "\n".join(ins))
        parts.append(f"# This research thread: {thread}\n\n"
                     + (f"Direction: {direction.strip()}. Stay within this direction."
                        if direction.strip() else "No fixed direction: pick the most promising change."))
        parts.append("# Your answer\n\n" + ANSWER_FORMAT)
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}], tried

    # ------------------------------------------------------------------ propose
    def _duplicate_of(self, title: str, tried: Iterable[str]) -> tuple[str, float] | None:
        best = max(((t, title_similarity(title, t)) for t in tried), key=lambda x: x[1], default=None)
        return best if best is not None and best[1] >= self.dup_threshold else None

    @staticmethod
    def _titles_now(lab: "Lab") -> list[str]:
        """Every idea title in the log at this moment (including those other proposals just added)."""
        return [i.title for i in lab.log.ideas_list() if i.title]

    def propose(self, lab: "Lab", parent: Candidate, *, thread: str = "main", direction: str = "",
                insights: Sequence[Any] = ()) -> Idea:
        """One new Idea for ``parent`` on ``thread``, appended to the log (PROPOSED, FAILED or REJECTED)."""
        messages, tried = self.build_messages(lab, parent, thread=thread, direction=direction, insights=insights)
        idea_id = new_id("i")
        usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
        model = self.llm.model

        def ask(purpose: str) -> "LLMReply":
            nonlocal model
            reply = self.llm.complete(messages, purpose=purpose, thread=thread, idea_id=idea_id)
            model = reply.model
            usage["calls"] += 1
            usage["prompt_tokens"] += reply.prompt_tokens
            usage["completion_tokens"] += reply.completion_tokens
            usage["cost"] += reply.cost
            messages.append({"role": "assistant", "content": reply.text})
            return reply

        def make(state: State, title: str = "", hypothesis: str = "", plan: str = "", **meta: Any) -> Idea:
            return Idea(id=idea_id, task=lab.task.name, title=title, hypothesis=hypothesis, plan=plan,
                        source=f"llm:{model}", thread=thread, parent_id=parent.id, state=state,
                        meta={"direction": direction, "usage": dict(usage), **meta})

        def ask_parsed(purpose: str) -> tuple[dict[str, Any] | None, str, str]:
            reply = ask(purpose)
            try:
                return parse_idea_json(reply.text), reply.text, ""
            except ProposalParseError as e:
                cut = " It was cut off at the token limit: be shorter." if reply.finish_reason == "length" else ""
                messages.append({"role": "user", "content": f"Your answer could not be used: {e}.{cut} "
                                 "Answer again with only the JSON object, with non-empty string values for "
                                 "\"title\", \"hypothesis\" and \"plan\"."})
            reply = ask(purpose + ":retry")
            try:
                return parse_idea_json(reply.text), reply.text, ""
            except ProposalParseError as e:
                return None, reply.text, str(e)

        parsed, raw, err = ask_parsed("propose")
        if parsed is None:
            return lab.log.append(make(State.FAILED, error=f"malformed proposal twice: {err}", raw=raw[:4000]))  # type: ignore[return-value]

        with self._settle:
            dup = self._duplicate_of(parsed["title"], [*tried, *self._titles_now(lab)])
            if dup is None:
                return lab.log.append(make(State.PROPOSED, parsed["title"], parsed["hypothesis"], parsed["plan"],
                                           llm_extra=parsed["extra"]))  # type: ignore[return-value]
        # a near-duplicate (of the log, or of a proposal that just settled): sent back once
        messages.append({"role": "user", "content":
                         f"{parsed['title']!r} is too close to an idea already tried ({dup[0]!r}). Propose a "
                         "clearly different change (another mechanism, not new values of the same knob), "
                         "in the same JSON format."})
        first_title = parsed["title"]
        parsed, raw, err = ask_parsed("propose:different")
        if parsed is None:
            return lab.log.append(make(State.FAILED, title=first_title,
                                       error=f"malformed proposal after a duplicate: {err}", raw=raw[:4000]))  # type: ignore[return-value]
        with self._settle:
            dup = self._duplicate_of(parsed["title"], [*tried, first_title, *self._titles_now(lab)])
            if dup is not None:
                return lab.log.append(make(State.REJECTED, parsed["title"], parsed["hypothesis"], parsed["plan"],
                                           duplicate_of=dup[0], similarity=round(dup[1], 3),
                                           reason="near-duplicate of an idea already tried or being tried"))  # type: ignore[return-value]
            return lab.log.append(make(State.PROPOSED, parsed["title"], parsed["hypothesis"], parsed["plan"],
                                       llm_extra=parsed["extra"]))  # type: ignore[return-value]

    __call__ = propose


def make_llm_proposer(spec: str = "", **kwargs: Any) -> LLMProposer:
    """``make_llm_proposer("openai/gpt-4o-mini", log=lab.log, api_base=..., max_cost=..., max_llm_calls=...)``.

    The registry's ``llm`` proposer: ``get_proposer("llm:<model>", **options)`` calls it with the
    part after the colon (see ``autolab/registry.py``). ``spec`` is a litellm model string (an
    ``llm:`` prefix and comma-separated fallbacks are accepted); the keyword arguments go to
    :func:`autolab.llm.build_llm`.
    """
    from .llm import build_llm

    return LLMProposer(build_llm(spec, **kwargs))
