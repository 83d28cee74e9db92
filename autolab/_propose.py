"""Proposers turn the lab's state into the next Idea.

- ``PlaybookProposer`` (offline default): named, parameterized edits from the task's
  ``playbook.toml``, sampled by prior weight, thread direction and insight priors, never
  repeating an edit already tried on the same parent, and only on files a run of the lab's
  preset measures (``measured_files``: e.g. the kernels preset's problems).
- ``RandomProposer``: the random-edit baseline: scale or flip a random UPPERCASE setting.
- ``HumanProposer``: an idea typed by a researcher.
- ``LLMProposer`` lives in ``llm_propose`` (through ``autolab.llm``).
Proposers are plug-ins of :mod:`autolab.registry` (``register_proposer`` / ``get_proposer``;
the ``autolab.proposers`` entry-point group).
"""

from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import registry
from .errors import CandidateError, TaskError
from .lab import Lab
from .ledger import Ledger
from .records import Candidate, Idea, Insight, State, new_id

SETTING_LINE = r"^(?P<indent>)(?P<name>{name})\s*=\s*(?P<expr>.+?)(?P<comment>\s+#.*)?$"


class Proposer(Protocol):
    name: str

    def propose(self, lab: Lab, parent: Candidate, *, thread: str = "main", direction: str = "",
                insights: Sequence[Insight] = ()) -> Idea | None: ...


# ---------------------------------------------------------------------------- playbook

@dataclass(frozen=True)
class PlaybookEdit:
    name: str
    title: str
    setting: str
    op: str                   # scale | set | toggle
    values: tuple[Any, ...]
    hypothesis: str = ""
    file: str | None = None
    cast: str = "float"
    direction: str = ""
    prior: float = 1.0
    devices: tuple[str, ...] = ()   # preset devices the edit is meant for ("cpu", "cuda"); empty: all
    patch: str = ""                 # op = "patch": SEARCH/REPLACE blocks applied to `file`
    source: str = ""                # where the idea comes from (paper, blog post, record), in our words


OPS = ("scale", "set", "toggle", "patch")


def apply_patch(text: str, patch: str, *, path: str = "<file>") -> str:
    """Apply a playbook patch (SEARCH/REPLACE blocks, the format of ``llm_implement``, the path
    line optional) to one file's text; a block that does not match raises CandidateError naming
    the file and the block."""
    from .llm_implement import apply_edits, parse_edit_blocks

    blocks = parse_edit_blocks(f"{path}\n{patch}")
    if not blocks:
        raise CandidateError(f"{path}: the patch holds no SEARCH/REPLACE block; write it as "
                             "<<<<<<< SEARCH / ======= / >>>>>>> REPLACE blocks")
    wrong = sorted({b.path for b in blocks} - {path})
    if wrong:
        raise CandidateError(f"{path}: a playbook patch edits its own file only, not {', '.join(wrong)}; "
                             "split it into one [[edit]] per file")
    try:
        return apply_edits({path: text}, blocks)[path]
    except CandidateError as e:
        raise CandidateError(f"{path}: the patch does not apply to this version of the file: {e}") from None


DEVICES = ("cpu", "cuda")


def load_playbook(path) -> list[PlaybookEdit]:
    """Parse a playbook.toml; errors name the file, the entry and the fix."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise TaskError(f"{path}: cannot read the playbook ({e}); fix the TOML syntax") from None
    edits, names = [], set()
    entries = [(f"[[edit]] #{i + 1}", e) for i, e in enumerate(data.get("edit", []))]
    entries += [(f"[[patch]] #{i + 1}", {**e, "op": e.get("op", "patch")}) for i, e in enumerate(data.get("patch", []))]
    for label, e in entries:
        where = f"{path}: {label}"
        if label.startswith("[[patch]]") and e["op"] != "patch":
            raise TaskError(f"{where} has op = {e['op']!r}; a [[patch]] is always a patch: remove 'op'")
        for key in ("name", "op") + (("file", "patch", "source") if e.get("op") == "patch" else ("setting",)):
            if key not in e:
                raise TaskError(f"{where} has no '{key}'; add it (see docs/ARCHITECTURE.md, playbook format)")
        if e["op"] not in OPS:
            raise TaskError(f"{where} op = {e['op']!r}; use scale, set, toggle or patch")
        if e["op"] == "patch" and ("<<<<<<< SEARCH" not in e["patch"] or not e["source"].strip()):
            raise TaskError(f"{where} ({e['name']}): a patch needs SEARCH/REPLACE blocks in 'patch' and the idea's "
                            "origin in 'source' (paper, blog post or record name)")
        if e["op"] not in ("toggle", "patch") and not e.get("values"):
            raise TaskError(f"{where} ({e['name']}) has no 'values'; list the parameters to try")
        if e["name"] in names:
            raise TaskError(f"{where}: name {e['name']!r} is used twice; names must be unique")
        names.add(e["name"])
        devices = e.get("devices", [])
        if isinstance(devices, str) or not all(d in DEVICES for d in devices):
            raise TaskError(f"{where} ({e['name']}) devices = {devices!r}; use a list of {', '.join(map(repr, DEVICES))}, "
                            "or leave it out for an edit that applies on every device")
        edits.append(PlaybookEdit(
            name=e["name"], title=e.get("title", e["name"]), setting=e.get("setting", e["name"]), op=e["op"],
            values=tuple(e.get("values", [None])) if e["op"] not in ("toggle", "patch") else (None,),
            hypothesis=e.get("hypothesis", ""), file=e.get("file"), cast=e.get("cast", "float"),
            direction=e.get("direction", ""), prior=float(e.get("prior", 1.0)), devices=tuple(devices),
            patch=e.get("patch", ""), source=e.get("source", ""),
        ))
    if not edits:
        raise TaskError(f"{path} has no [[edit]] or [[patch]] entries; add at least one")
    return edits


def measured_files(lab: Lab, files: dict[str, str]) -> set[str]:
    """The files of ``files`` (a candidate's ``{path: text}``) that a run of the lab's preset
    measures (``Task.units``): an edit anywhere else would be refused before it runs."""
    return set().union(*lab.task.units(lab.preset_name, files).values())


def _edit_key(edit: dict | None) -> str | None:
    if not edit:
        return None
    return f"{edit.get('file') or ''}:{edit.get('setting')}:{edit.get('op')}:{edit.get('value')!r}"


def tried_keys(lab: Lab, parent: Candidate) -> set[str]:
    """Structured edits already proposed on this parent (any source, any state)."""
    return {k for i in lab.log.ideas_list() if i.parent_id == parent.id and (k := _edit_key(i.edit))}


def _format_value(op: str, v: Any) -> str:
    if op == "toggle":
        return "toggle"
    if op == "patch":
        return "patch"
    if op == "scale":
        return f"×{v:g}"
    return repr(v)


def _side(edit: dict) -> tuple:
    """Which way an edit goes, for insights: a win of "BATCH_SIZE ×0.5" speaks for the smaller
    batch sizes of that edit, not for ×2. A scale goes down or up; a set or toggle is its value
    (a toggle has one); a patch is the patch. An insight of an older log without its edit counts
    for no side."""
    op, v = edit.get("op"), edit.get("value")
    if op == "scale" and isinstance(v, (int, float)):
        return ("scale", (v > 1) - (v < 1))
    if op in ("set", "toggle"):
        return (op, repr(v))
    if op == "patch":
        return ("patch",)
    return ("unknown",)


class PlaybookProposer:
    """Samples untried playbook edits for the parent, weighted by prior, the thread's
    direction (×3 when it matches) and insight priors (×(1 + successes) for an edit that
    was promoted before, on any task, going the same way: ``_side``)."""

    name = "playbook"

    def __init__(self, seed: int | None = None):
        self.rng = random.Random(seed)

    def propose(self, lab: Lab, parent: Candidate, *, thread: str = "main", direction: str = "",
                insights: Sequence[Insight] = ()) -> Idea | None:
        if lab.task.playbook is None:
            raise TaskError(f"task {lab.task.name!r} has no playbook (expected {lab.task.path / 'playbook.toml'}); "
                            "write one or use another proposer (--proposer llm:<model>)")
        edits = load_playbook(lab.task.playbook)
        tried = tried_keys(lab, parent)
        code = lab.files(parent)
        wins: dict[tuple, int] = {}
        for ins in insights:
            k = ins.meta.get("edit_name")
            if k and ins.state is State.COMPLETE and (ins.effect or 0) > 0:
                key = (k, _side(ins.meta.get("edit") or {}))
                wins[key] = wins.get(key, 0) + 1
        options, weights = [], []
        device = lab.preset.device
        measured = measured_files(lab, code)
        for e in edits:
            if e.devices and device not in e.devices:
                continue   # e.g. a choice of CUDA kernels, a no-op on a CPU preset
            fname = e.file or lab.task.editable[0]
            if fname not in measured:
                continue   # a problem (or file) this preset never evaluates: the run would measure noise
            if fname not in code:
                continue
            if e.op == "patch":
                try:
                    apply_patch(code[fname], e.patch, path=fname)
                except CandidateError:
                    continue   # this parent's file no longer has the lines the patch rewrites (applied already?)
            elif not re.search(SETTING_LINE.format(name=re.escape(e.setting)), code[fname], re.M):
                continue   # this parent no longer has that setting
            for v in e.values:
                edit = {"name": e.name, "file": fname, "setting": e.setting, "op": e.op, "value": v, "cast": e.cast}
                if e.op == "patch":
                    edit["patch"] = e.patch
                if _edit_key(edit) in tried:
                    continue
                w = e.prior * (3.0 if direction and e.direction == direction else 1.0) * (1 + wins.get((e.name, _side(edit)), 0))
                options.append((e, edit))
                weights.append(w / len(e.values))
        if not options:
            return None
        e, edit = self.rng.choices(options, weights=weights, k=1)[0]
        title = e.title if e.op == "patch" else f"{e.title} ({e.setting} {_format_value(e.op, edit['value'])})"
        plan = (f"In {edit['file']}, apply the playbook's patch {e.name!r}" if e.op == "patch" else
                f"In {edit['file']}, {e.op} {e.setting}"
                + (f" by {edit['value']}" if e.op == "scale" else f" to {edit['value']!r}" if e.op == "set" else ""))
        idea = Idea(id=new_id("i"), task=lab.task.name, title=title, hypothesis=e.hypothesis, plan=plan,
                    source="playbook", thread=thread, parent_id=parent.id, edit=edit,
                    meta={"direction": e.direction or direction, **({"idea_source": e.source} if e.source else {})})
        return lab.log.append(idea)  # type: ignore[return-value]


# ---------------------------------------------------------------------------- random baseline

_NUM_SETTING = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)\s*=\s*(?P<expr>.+?)(\s+#.*)?$", re.M)


class RandomProposer:
    """The random-edit baseline: pick any UPPERCASE setting of the parent's editable files and
    scale it by a random factor (numbers) or flip it (booleans). No knowledge, no priors."""

    name = "random"

    def __init__(self, seed: int | None = None):
        self.rng = random.Random(seed)

    def propose(self, lab: Lab, parent: Candidate, *, thread: str = "main", direction: str = "",
                insights: Sequence[Insight] = ()) -> Idea | None:
        files = lab.files(parent)
        tried = tried_keys(lab, parent)
        measured = measured_files(lab, files)
        options = []
        for fname, text in files.items():
            if fname not in measured:
                continue
            for m in _NUM_SETTING.finditer(text):
                expr = m.group("expr").strip()
                if expr in ("True", "False") or expr.endswith(("True)", "False)")):
                    options.append({"file": fname, "setting": m.group("name"), "op": "toggle", "value": None})
                elif re.search(r"\d", expr) and not expr.startswith(("'", '"', "[", "{", "(")):
                    cast = "int" if re.fullmatch(r".*get\([^,]+,\s*\d+\)|\d+", expr) else "float"
                    options.append({"file": fname, "setting": m.group("name"), "op": "scale", "cast": cast})
        for _ in range(50):
            if not options:
                return None
            edit = dict(self.rng.choice(options))
            if edit["op"] == "scale":
                edit["value"] = round(self.rng.choice([0.5, 0.67, 0.8, 1.25, 1.5, 2.0]), 2)
            edit["name"] = f"random_{edit['setting'].lower()}"
            if _edit_key(edit) not in tried:
                idea = Idea(id=new_id("i"), task=lab.task.name,
                            title=f"Random edit: {edit['setting']} {_format_value(edit['op'], edit['value'])}",
                            hypothesis="random perturbation (baseline proposer)",
                            plan=f"In {edit['file']}, {edit['op']} {edit['setting']}", source="random", thread=thread,
                            parent_id=parent.id, edit=edit)
                return lab.log.append(idea)  # type: ignore[return-value]
        return None


# ---------------------------------------------------------------------------- human

class HumanProposer:
    """An idea typed by a researcher (in a notebook cell or the IdeaCard widget)."""

    name = "human"

    def __init__(self, title: str, hypothesis: str = "", plan: str = "", edit: dict | None = None):
        self.title, self.hypothesis, self.plan, self.edit = title, hypothesis, plan, edit

    def propose(self, lab: Lab, parent: Candidate, *, thread: str = "main", direction: str = "",
                insights: Sequence[Insight] = ()) -> Idea:
        idea = Idea(id=new_id("i"), task=lab.task.name, title=self.title, hypothesis=self.hypothesis, plan=self.plan,
                    source="human", thread=thread, parent_id=parent.id, edit=self.edit)
        return lab.log.append(idea)  # type: ignore[return-value]


# ---------------------------------------------------------------------------- registry and step

def register_proposer(name: str, factory: Callable[..., Proposer]) -> None:
    """Make ``get_proposer(name)`` call ``factory(**options)`` and ``get_proposer("name:arg")``
    call ``factory(arg, **options)`` (kind ``"proposer"`` of :mod:`autolab.registry`)."""
    registry.register("proposer", name, factory)


def get_proposer(spec: str | Proposer | None = None, **kwargs) -> Proposer:
    """``"playbook"`` (default), ``"random"``, ``"llm:<litellm model>"`` (options: log, api_base,
    max_cost, max_llm_calls…), or a plug-in's name; a proposer object is returned as it is.

    The part before a colon names the registered factory, the part after it is passed as its
    first argument; each factory receives the options it accepts (``seed`` for the built-ins)."""
    if spec is None:
        spec = "playbook"
    if not isinstance(spec, str):
        return spec
    name, colon, arg = spec.partition(":")
    factory = registry.get("proposer", name)
    options = registry.accepted_options(factory, kwargs)
    return factory(arg, **options) if colon else factory(**options)


def propose(lab: Lab, proposer: str | Proposer | None = None, parent: Candidate | None = None, *,
            thread: str = "main", direction: str = "", insights: Sequence[Insight] = ()) -> Idea | None:
    """Propose the next idea for ``parent`` (default: the lab's best candidate). Returns None
    when the proposer has nothing left to try."""
    parent = parent or Ledger(lab).best(thread)
    return get_proposer(proposer).propose(lab, parent, thread=thread, direction=direction, insights=insights)
