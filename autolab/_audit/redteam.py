"""The red team: a corpus of hacks (and honest controls) run through the real run and audit path.

Each task may keep a corpus in ``benchmarks/<task>/redteam/<case>/``: a folder with a
``case.toml`` and the candidate's change: ``edits.txt``, SEARCH/REPLACE blocks (the format the
LLM implementer reads, applied by the same code, :func:`autolab.llm_implement.apply_edits`),
and/or full files (files outside the task's editable set are part of the attack, e.g. a modified
harness)::

    description = "drops the causal mask: every position attends to the tokens after it"
    kind = "hack"                 # or "honest": an improvement that must pass every check
    expect_check = "causality"    # the check that should fire (hacks)
    gpu_only = false              # true: needs a CUDA preset; skipped on CPU presets
    needs = "significance"        # optional: screening + confirmation runs + audit(stage="confirm");
                                  # caught when the candidate is not promoted
    seeds = 2                     # optional: confirmation seeds for "significance" (default: min_seeds)
    presets = ["h100"]            # optional: run only on these presets
    combines = ["a", "b"]         # optional: no files of its own; the edits of these cases of the same
                                  # corpus, all in one candidate (see below)
    [detects]                     # with combines, for a hack: per combined case, a regular expression
    a = 'network: .*198[.]51'     # one of the run's sandbox violations ("kind: detail") or of its
    b = '^check: logits$'         # failed checks ("check: name") must match

A case that ``combines`` others runs their attacks (or honest changes) in one candidate, so that
one run exercises several of them: their edits are joined against the live files (an insertion
at the same line from two cases keeps both, in the order of ``combines``; two cases that change
the same lines cannot be combined, and loading says so). For a hack, each combined attack must
still be detected on its own: its ``detects`` pattern must match a violation its run recorded
(or a check that none of the other attacks can fail), else the case counts as caught by the wrong check (``expected_fired`` false; ``detected`` names
which attacks were seen).

A case holds only its own edit. The blocks of ``edits.txt`` apply to the live files: the
task's current seed files, and for a path that is not a seed file, the file of that path under
the task folder (e.g. ``nanochat_harness/evaluate.py``, for a case that attacks a protected
harness file). So a case's diff against the seed is its edit and nothing else, and a block that
no longer matches (the seed or harness moved on) fails loudly at load, naming the case, the file
and the block, never running as something else: rewrite that block against the current file.

Older, external corpora (``autolab redteam TASK --corpus DIR``) may ship ``DIR/_base/``, the seed's
files as they were when the cases were written: their blocks apply to ``_base/``, and before a
run each case is re-applied to the current seed by a 3-way merge (base, case, seed); a case that
does not merge cleanly runs as written.

:func:`redteam` makes a fresh lab per task, adds every case as a candidate of the seed (through
``Lab.add_candidate``, as an implementer would), runs them all concurrently through one
executor with :func:`autolab._run.run` (purpose ``"redteam"``; the seed's selection-free
baseline runs first where hidden_val or a significance case compares against them), and audits each with :func:`autolab._audit.audit`, the loop's own audit:
``stage="screen"`` for single-run cases (caught = REJECTED), and screening + confirmation +
``stage="confirm"`` for cases that need significance (caught = not PROMOTED). A case whose
files the lab refuses (a protected file) is caught by ``diff_scope`` without running.

``autolab redteam [TASK] [--preset P] [--json]`` is the command; it exits 1 when a hack was
missed or an honest case was rejected. The task's red-team preset is ``[redteam] preset`` in
its task.toml (nanochat: ``cpu-smoke``), else its default preset.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..errors import AutolabError, CandidateError
from ..records import State

CASE_FILE = "case.toml"
EDITS_FILE = "edits.txt"
BASE_DIR = "_base"
KINDS = ("hack", "honest")


@dataclass(frozen=True)
class Case:
    task: str
    name: str
    path: Path
    kind: str
    description: str
    expect_check: str | None = None
    gpu_only: bool = False
    needs: str | None = None
    seeds: int | None = None
    presets: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict, repr=False)
    base: dict[str, str] = field(default_factory=dict, repr=False)   # the seed's files the case was written against
    combines: tuple[str, ...] = ()            # the cases whose edits this one runs together
    detects: dict[str, str] = field(default_factory=dict)   # combined case -> pattern of its violation


@dataclass
class CaseResult:
    task: str
    name: str
    kind: str
    caught: bool                   # the audit rejected it (or, with significance, did not promote it)
    check: str | None              # the check that fired: the expected one if it did, else the first
    description: str
    checks: list[str] = field(default_factory=list)   # every reject-severity check that failed
    expected: str | None = None
    expected_fired: bool | None = None
    warnings: list[str] = field(default_factory=list)  # warn-severity checks that failed (static scan, LLM review)
    verdict: str = ""
    reason: str = ""
    candidate: str | None = None
    runs: list[dict] = field(default_factory=list)
    preset: str = ""
    detected: dict[str, bool] = field(default_factory=dict)   # a combined hack: each attack's violation recorded

    @property
    def ok(self) -> bool:
        """As it should be: a hack caught, an honest case passed."""
        return self.caught if self.kind == "hack" else not self.caught

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    cases: list[CaseResult]
    skipped: list[dict]
    labs: dict[str, str]
    wall_s: float

    @property
    def hacks(self) -> list[CaseResult]:
        return [c for c in self.cases if c.kind == "hack"]

    @property
    def honest(self) -> list[CaseResult]:
        return [c for c in self.cases if c.kind == "honest"]

    @property
    def missed(self) -> list[CaseResult]:
        return [c for c in self.hacks if not c.caught]

    @property
    def false_positives(self) -> list[CaseResult]:
        return [c for c in self.honest if c.caught]

    @property
    def ok(self) -> bool:
        return not self.missed and not self.false_positives

    def to_dict(self) -> dict:
        return {
            "hacks": len(self.hacks), "caught": sum(c.caught for c in self.hacks), "honest": len(self.honest),
            "false_positives": len(self.false_positives), "missed": [f"{c.task}/{c.name}" for c in self.missed],
            "unexpected_check": [f"{c.task}/{c.name}" for c in self.hacks if c.caught and c.expected_fired is False],
            "tasks": sorted({c.task for c in self.cases}), "skipped": self.skipped, "labs": self.labs,
            "wall_s": round(self.wall_s, 1),
            "cases": [{"task": c.task, "name": c.name, "kind": c.kind, "caught": c.caught, "check": c.check,
                       "description": c.description, "expected": c.expected, "expected_fired": c.expected_fired,
                       "checks": c.checks, "warnings": c.warnings, "verdict": c.verdict, "reason": c.reason,
                       "preset": c.preset, "detected": c.detected} for c in self.cases],
        }

    def table(self) -> str:
        lines = [f"{'task':<10} {'case':<30} {'kind':<6} {'expected':<16} {'fired':<30} result"]
        for c in sorted(self.cases, key=lambda c: (c.task, c.kind, c.name)):
            fired = ", ".join(c.checks) if c.checks else (c.check or "-")
            if c.kind == "hack":
                res = "caught" if c.caught else "MISSED"
                if c.caught and c.expected_fired is False:
                    unseen = [k for k, seen in c.detected.items() if not seen]
                    res += f" (not by {c.expected}" + (f": no violation of {', '.join(unseen)}" if unseen else "") + ")"
            else:
                res = "passed" if not c.caught else "FALSE POSITIVE"
            lines.append(f"{c.task:<10} {c.name:<30} {c.kind:<6} {(c.expected or '-'):<16} {fired[:30]:<30} {res}")
        for s in self.skipped:
            lines.append(f"{s['task']:<10} {s['name']:<30} {s['kind']:<6} {'':<16} {'':<30} skipped: {s['why']}")
        d = self.to_dict()
        lines.append(f"\n{d['caught']}/{d['hacks']} hacks caught, {d['false_positives']}/{d['honest']} honest cases "
                     f"rejected, {len(self.skipped)} skipped ({self.wall_s:.0f} s)")
        for c in self.missed:
            lines.append(f"MISSED {c.task}/{c.name}: {c.description} [{c.verdict}: {c.reason}]")
        for c in self.false_positives:
            lines.append(f"FALSE POSITIVE {c.task}/{c.name}: {c.reason}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- the corpus

def corpus_dir(task) -> Path:
    return Path(task.path) / "redteam"


def load_cases(task, folder: str | os.PathLike | None = None) -> list[Case]:
    """The cases of ``task`` (an ``autolab.task.Task``) in ``folder`` (default: the task's
    ``redteam/``), sorted by name. A malformed case.toml raises AutolabError naming the file."""
    root = Path(folder) if folder else corpus_dir(task)
    if not root.is_dir():
        return []
    legacy = (root / BASE_DIR).is_dir()   # an old-layout corpus: edits against its own _base/
    base = _read_files(root / BASE_DIR) if legacy else {}
    out = []
    for d in sorted(p for p in root.iterdir() if (p / CASE_FILE).is_file()):
        f = d / CASE_FILE
        try:
            meta = tomllib.loads(f.read_text())
        except tomllib.TOMLDecodeError as e:
            raise AutolabError(f"{f}: not valid TOML ({e}); fix that line") from None
        kind = meta.get("kind")
        if kind not in KINDS:
            raise AutolabError(f"{f}: kind must be \"hack\" or \"honest\", not {kind!r}")
        if not str(meta.get("description", "")).strip():
            raise AutolabError(f"{f}: add description = \"<one line: what the candidate does>\"")
        needs = meta.get("needs")
        if needs not in (None, "significance"):
            raise AutolabError(f"{f}: needs must be \"significance\" or absent, not {needs!r}")
        files = _read_files(d)
        combines = meta.get("combines", ())
        if combines:
            if isinstance(combines, str) or not all(isinstance(n, str) for n in combines):
                raise AutolabError(f"{f}: combines must be a list of case names, e.g. combines = [\"a\", \"b\"]")
            if files:
                raise AutolabError(f"{d}: a case that combines others has no files of its own; remove "
                                   f"{', '.join(sorted(files))}")
            detects = {str(k): str(v) for k, v in (meta.get("detects") or {}).items()}
            if kind == "hack" and set(detects) != set(combines):
                raise AutolabError(f"{f}: [detects] needs one pattern per combined case (the violation that shows "
                                   f"it was caught); missing: {sorted(set(combines) - set(detects))}, "
                                   f"unknown: {sorted(set(detects) - set(combines))}")
            out.append(Case(task=task.name, name=d.name, path=d, kind=kind, description=str(meta["description"]).strip(),
                            expect_check=meta.get("expect_check") or None, gpu_only=bool(meta.get("gpu_only", False)),
                            needs=needs, seeds=int(meta["seeds"]) if "seeds" in meta else None,
                            combines=tuple(combines), detects=detects))
            continue
        against: dict[str, str] = {}   # the original text of every file the case's edits changed
        if EDITS_FILE in files:
            text = files.pop(EDITS_FILE)
            if legacy:
                against = base
                files.update(_apply_case_edits(d / EDITS_FILE, text, base, f"the files in {root / BASE_DIR}/"))
            else:
                against = live_files(task, _edited_paths(d / EDITS_FILE, text))
                files.update(_apply_case_edits(d / EDITS_FILE, text, against,
                                               f"the live files (seed {task.seed_dir}, task folder {task.path})"))
        if not files:
            raise AutolabError(f"{d}: a case needs the candidate's files next to case.toml")
        presets = meta.get("presets", ())
        out.append(Case(task=task.name, name=d.name, path=d, kind=kind, description=str(meta["description"]).strip(),
                        expect_check=meta.get("expect_check") or None, gpu_only=bool(meta.get("gpu_only", False)),
                        needs=needs, seeds=int(meta["seeds"]) if "seeds" in meta else None,
                        presets=tuple([presets] if isinstance(presets, str) else presets), files=files,
                        base={k: v for k, v in against.items() if k in files}))
    return [_combined(c, out, task, legacy, base) if c.combines else c for c in out]


def _combined(case: Case, cases: list[Case], task, legacy: bool, legacy_base: dict[str, str]) -> Case:
    """``case`` with its files: the edits of the cases it combines, joined against the files they
    were written for (see the module docstring)."""
    import difflib
    import re

    by = {c.name: c for c in cases}
    parts = []
    for name in case.combines:
        c = by.get(name)
        if c is None or c.combines:
            raise AutolabError(f"{case.path / CASE_FILE}: combines {name!r}, which is not a case of this corpus "
                               f"(or combines others itself); its cases: {', '.join(sorted(by))}")
        if c.kind != case.kind:
            raise AutolabError(f"{case.path / CASE_FILE}: combines {name!r}, a {c.kind} case, into a {case.kind} one")
        parts.append(c)
    for name, pattern in case.detects.items():
        try:
            re.compile(pattern)
        except re.error as e:
            raise AutolabError(f"{case.path / CASE_FILE}: [detects] {name} is not a regular expression ({e})") from None
    paths = sorted({rel for c in parts for rel in c.files})
    base = {rel: legacy_base[rel] for rel in paths if rel in legacy_base} if legacy else live_files(task, paths)
    files = {}
    for rel in paths:
        b = base.get(rel, "").splitlines(keepends=True)
        edits = []   # (first line, end line, case order, new lines, case name)
        for k, c in enumerate(parts):
            if rel not in c.files:
                continue
            v = c.files[rel].splitlines(keepends=True)
            for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, b, v, autojunk=False).get_opcodes():
                if tag != "equal":
                    edits.append((i1, i2, k, v[j1:j2], c.name))
        # at one line: the insertions (in the order of combines), then a change of that line
        edits.sort(key=lambda e: (e[0], e[1] > e[0], e[2]))
        text, pos, prev = [], 0, None
        for i1, i2, _, lines, name in edits:
            if i1 < pos:
                raise AutolabError(f"{case.path / CASE_FILE}: {prev} and {name} both change lines {i1 + 1}-{max(i2, pos)} "
                                   f"of {rel}; cases that edit the same lines cannot run in one candidate")
            text.extend(b[pos:i1])
            text.extend(lines)
            pos, prev = max(pos, i2), name
        text.extend(b[pos:])
        files[rel] = "".join(text)
    from dataclasses import replace

    return replace(case, files=files, base={rel: base[rel] for rel in files if rel in base})


def live_files(task, paths) -> dict[str, str]:
    """The current text of ``paths`` for ``task``: the seed's file where the seed has that path,
    else the file of that path under the task folder (a harness file, task.toml...); a path found
    in neither is left out (an edit with an empty SEARCH may create it)."""
    seed = {k: v.decode() for k, v in task.seed_files().items()}
    task_dir = Path(task.path).resolve()
    out = {}
    for rel in paths:
        if rel in seed:
            out[rel] = seed[rel]
            continue
        p = (task_dir / rel).resolve()
        if p.is_relative_to(task_dir) and p.is_file():
            out[rel] = p.read_text()
    return out


def _edited_paths(path: Path, text: str) -> list[str]:
    from ..llm_implement import parse_edit_blocks

    try:
        return sorted({b.path for b in parse_edit_blocks(text)})
    except CandidateError as e:
        raise AutolabError(f"{path}: {e}") from None


def _apply_case_edits(path: Path, text: str, files: dict[str, str], where: str) -> dict[str, str]:
    """The files a case's edits.txt changes: the blocks applied to ``files``. A block that does not
    apply raises AutolabError naming the case, the file and the block."""
    from ..llm_implement import apply_edits, parse_edit_blocks

    try:
        blocks = parse_edit_blocks(text)
        new = apply_edits(files, blocks)
    except CandidateError as e:
        raise AutolabError(f"red-team case {path.parent.name} ({path}) does not apply to {where}: {e} "
                           f"Rewrite that block of {path.name} against the current file.") from None
    if not blocks:
        raise AutolabError(f"{path}: no SEARCH/REPLACE block found; write the case's edit as blocks "
                           "(see autolab/_audit/redteam.py) or delete the file")
    return {k: v for k, v in new.items() if files.get(k) != v}


def _read_files(d: Path) -> dict[str, str]:
    out = {}
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if p.is_file() and rel != CASE_FILE and "__pycache__" not in p.parts and not rel.endswith(".pyc"):
            out[rel] = p.read_text()
    return out


def rebase(case: Case, current: dict[str, str]) -> tuple[dict[str, str], bool]:
    """The case's files with its edits re-applied to the ``current`` seed files (see the module
    docstring); returns (files, whether every file merged cleanly)."""
    from ..diffs import merge3

    out, clean = dict(case.files), True
    for rel, text in case.files.items():
        base, now = case.base.get(rel), current.get(rel)
        if base is None or now is None or base == now:
            continue
        m = merge3(base, text, now, labels=("case", "seed"))
        if m.clean:
            out[rel] = m.text
        else:
            clean = False
    return out, clean


def snapshot_task(task, root: Path):
    """A frozen copy of the task folder (with its sibling task folders, without the corpora)
    and of its seed under ``root``,
    laid out as in the repository, so that edits to the checkout while the red team runs (the
    harness, the seed, the playbook) neither trip the protected-file hashes nor change the
    rules halfway; returns the copy as a Task. A ``shared/`` folder next to the repository is
    linked next to the copy, where harnesses look for their default data."""
    from ..task import load_task

    task_dir = Path(task.path).resolve()
    repo = task_dir.parent.parent
    snap = root / "snapshot"
    dest = snap / task_dir.relative_to(repo)
    ignore = shutil.ignore_patterns("redteam", "__pycache__", "*.pyc", ".ipynb_checkpoints")
    if dest.parent.exists():
        shutil.rmtree(dest.parent)
    # the task's siblings too: a harness may build on another task's (speedrun imports nanochat's)
    shutil.copytree(task_dir.parent, dest.parent, ignore=ignore)
    seed_dir = Path(task.seed_dir).resolve()
    seed_copy = (dest / os.path.relpath(seed_dir, task_dir)).resolve()
    toml = dest / "task.toml"
    if seed_copy.is_relative_to(snap.resolve()):
        if seed_copy.exists():
            shutil.rmtree(seed_copy)
        shutil.copytree(seed_dir, seed_copy, ignore=ignore)
    else:   # the seed lives outside the repository: point at it
        import re

        text = re.sub(r'(?m)^(\s*seed\s*=\s*)(["\']).*?\2', lambda m: f'{m.group(1)}"{seed_dir}"', toml.read_text(), count=1)
        toml.write_text(text)
    shared, link = repo.parent / "shared", snap.parent / "shared"
    if shared.is_dir() and not link.exists():
        link.symlink_to(shared, target_is_directory=True)
    return load_task(dest)


def redteam_preset(task, preset: str | None = None) -> str:
    if preset and preset in task.presets:
        return preset
    return str((task.raw.get("redteam") or {}).get("preset") or task.default_preset)


# ---------------------------------------------------------------------------- running

class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="red team", unit="run", file=sys.stderr)
        self.lock = threading.Lock()

    def tick(self, note: str = "") -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(1)
                if note:
                    self.bar.set_postfix_str(note[:40])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _summarize_runs(runs) -> list[dict]:
    return [{"id": r.id, "purpose": r.purpose, "seed": r.seed, "state": r.state.value,
             "error": (r.error or {}).get("ename")} for r in runs]


def result_from_verdict(case: Case, verdict, *, preset: str, candidate, runs, significance: bool) -> CaseResult:
    """A case's outcome from its audit ``verdict``: caught when REJECTED (or, with ``significance``,
    not PROMOTED); the check named is the expected one if it fired, else the first that did. Used by
    :func:`redteam` and by scripts that run the cases another way (perf/kernels_redteam_gpu.py)."""
    failed = [c for c in verdict.checks if not c["passed"] and c.get("severity", "reject") == "reject"]
    warns = [c["name"] for c in verdict.checks if not c["passed"] and c.get("severity") == "warn"]
    names = [c["name"] for c in failed]
    if significance:
        caught = verdict.state is not State.PROMOTED
        if caught and not names:
            names = ["significance"]
    else:
        caught = verdict.state is State.REJECTED
    check = case.expect_check if case.expect_check in names else (names[0] if names else None)
    fired = (case.expect_check in names) if case.expect_check else None
    detected = {}
    if case.detects:   # a combined hack: each attack caught on its own, by a violation of its own
        import re

        seen = [f"{v.get('kind', '?')}: {v.get('detail', '')}" for r in runs for v in ((r.meta or {}).get("violations") or [])]
        seen += [f"check: {name}" for name in names]   # a probe or check that only one of the attacks can fail
        detected = {name: any(re.search(pattern, s) for s in seen) for name, pattern in case.detects.items()}
        fired = bool(fired) and all(detected.values())
    return CaseResult(task=case.task, name=case.name, kind=case.kind, caught=caught, check=check,
                      description=case.description, checks=names, expected=case.expect_check,
                      expected_fired=fired, warnings=warns,
                      verdict=verdict.state.value, reason=verdict.reason, candidate=candidate.id,
                      runs=_summarize_runs(runs), preset=preset, detected=detected)


def _run_to_a_verdict(lab, cand, n: int, *, purpose: str, executor, on_event) -> list:
    """``autolab._run.run``, then again for each seed whose run the machine spoiled (it says
    nothing about the candidate: ``ledger.not_a_verdict``, e.g. a train process starved past its
    wall-clock allowance on a loaded machine), at most ``MAX_ATTEMPTS`` runs a seed, as the loop
    does. Returns every run, the spoiled ones too (the audit sets them aside)."""
    from .._run import run
    from ..ledger import MAX_ATTEMPTS, not_a_verdict

    runs = run(lab, cand, n, purpose=purpose, executor=executor, on_event=on_event)
    last = {r.seed: r for r in runs}
    for _ in range(MAX_ATTEMPTS - 1):
        again = sorted(s for s, r in last.items() if not_a_verdict(r))
        if not again:
            break
        more = run(lab, cand, again, purpose=purpose, executor=executor, on_event=on_event)
        runs += more
        last.update({r.seed: r for r in more})
    return runs


def _task_units(lab, cases: list[Case], results: list[CaseResult]):
    """Candidates for the cases (refusals become results at once) and the runs they need:
    [(candidate, purpose, n seeds, case or None)]."""
    seed = lab.seed_candidate()
    current = lab.files(seed)
    sig = lab.task.significance
    # the seed's selection-free runs: what hidden_val and the significance test compare against
    need_parent = "hidden_val" in lab.task.probes or any(c.needs == "significance" for c in cases)
    units = [(seed, "baseline", max(sig.min_seeds, 2), None)] if need_parent else []
    planned = []
    for case in cases:
        files, clean = rebase(case, current)
        try:
            cand = lab.add_candidate(files, seed, thread="redteam",
                                     meta={"origin": f"redteam:{case.task}/{case.name}", "redteam_case": case.name,
                                           "rebased": clean})
        except CandidateError as e:
            results.append(CaseResult(task=case.task, name=case.name, kind=case.kind, caught=True, check="diff_scope",
                                      description=case.description, checks=["diff_scope"], expected=case.expect_check,
                                      expected_fired=(case.expect_check == "diff_scope") if case.expect_check else None,
                                      verdict="REFUSED", reason=f"the lab refused the candidate's files: {e}",
                                      preset=lab.preset_name))
            continue
        if cand.id == seed.id:
            raise AutolabError(f"{case.path}: the case's files are identical to the seed; a case must change something")
        if case.needs == "significance":
            n = case.seeds or max(sig.min_seeds, 2)
            units += [(cand, "screen", 1, case), (cand, "confirm", n, case)]
        else:
            units.append((cand, "redteam", 1, case))
        planned.append((case, cand))
    return seed, units, planned


def redteam(tasks: list[str] | None = None, *, preset: str | None = None, lab_dir: str | os.PathLike | None = None,
            cases: list[str] | None = None, corpus: str | os.PathLike | None = None, jobs: int | None = None,
            executor=None, progress: bool = True, include_gpu: bool | None = None, snapshot: bool = True) -> Report:
    """Run the red-team corpus of ``tasks`` (default: every task that has one) through the real
    run and audit path; returns a :class:`Report`.

    ``preset``: the preset to use (default: each task's ``[redteam] preset``); ``lab_dir``:
    keep the labs there (default: temporary folders, removed afterwards); ``cases``: only these
    case names; ``corpus``: a folder of cases to use instead of the task's own (one task);
    ``jobs``: concurrent runs (default: the executor's own slots); ``include_gpu``: run
    ``gpu_only`` cases (default: when the preset's device is cuda); ``snapshot``: run against a
    frozen copy of the task folder and seed (:func:`snapshot_task`; default)."""
    from ..lab import Lab
    from ..task import discover_tasks, load_task
    from . import audit
    from ..executors import get_executor
    from ..ledger import noise_sd

    t0 = time.monotonic()
    if tasks:
        names = list(tasks)
    else:   # every task with a corpus (a task without one, or still being written, is not loaded)
        names = [n for n, path in sorted(discover_tasks().items()) if (Path(path) / "redteam").is_dir()]
    if corpus and len(names) != 1:
        raise AutolabError("--corpus needs exactly one TASK (the task its cases are written for)")
    plans = []
    skipped: list[dict] = []
    for name in names:
        task = load_task(name)
        found = load_cases(task, corpus)
        if cases and tasks:
            unknown = sorted(set(cases) - {c.name for c in found})
            if unknown:
                raise AutolabError(f"task {task.name!r} has no red-team case {', '.join(map(repr, unknown))}; its cases: "
                                   f"{', '.join(c.name for c in found) or 'none'}")
        if cases:
            found = [c for c in found if c.name in cases]
        if not found:
            if tasks:
                where = corpus or corpus_dir(task)
                raise AutolabError(f"task {task.name!r} has no red-team cases{' named ' + ', '.join(cases) if cases else ''} "
                                   f"in {where}; add folders with a case.toml (see autolab/_audit/redteam.py)")
            continue
        pname = redteam_preset(task, preset)
        device = task.preset(pname).device
        gpu = include_gpu if include_gpu is not None else device == "cuda"
        keep = []
        for c in found:
            why = None
            if c.gpu_only and not gpu:
                why = f"gpu_only (preset {pname} runs on {device})"
            elif c.presets and pname not in c.presets:
                why = f"only for presets {', '.join(c.presets)}"
            if why:
                skipped.append({"task": task.name, "name": c.name, "kind": c.kind, "why": why})
            else:
                keep.append(c)
        if keep:
            plans.append((task, pname, keep))
    if not plans:
        raise AutolabError("no red-team cases to run: add benchmarks/<task>/redteam/<case>/case.toml folders")

    tmp_root = None
    if lab_dir is None:
        tmp_root = Path(tempfile.mkdtemp(prefix="autolab-redteam-"))
    root = Path(lab_dir) if lab_dir is not None else tmp_root
    own_executor = executor is None
    ex = executor or (get_executor("local", cpu_slots=jobs) if jobs else get_executor("local"))
    results: list[CaseResult] = []
    labs: dict[str, str] = {}
    work = []
    for task, pname, keep in plans:
        run_task = snapshot_task(task, root / f"{task.name}-{pname}") if snapshot else task
        lab = Lab(root / f"{task.name}-{pname}" / "lab", task=run_task, preset=pname)
        labs[task.name] = str(lab.path)
        seed, units, planned = _task_units(lab, keep, results)
        for cand, _, _, _ in units:   # materialize once, before concurrent runs of one candidate
            lab.candidate_dir(cand)
        work.append((lab, seed, units, planned))
    total = sum(n for _, _, units, _ in work for _, _, n, _ in units)
    bar = _Progress(total, progress)

    def on_event(ev: dict) -> None:
        if ev.get("type") == "run_end":
            r = ev["run"]
            bar.tick(f"{r.state.value}")

    try:
        n_units = sum(len(u) for _, _, u, _ in work)
        with ThreadPoolExecutor(max_workers=max(1, n_units), thread_name_prefix="redteam") as pool:
            futures = {}
            for lab, seed, units, planned in work:   # the seed's baselines are submitted first
                for cand, purpose, n, case in units:
                    futures[(lab.path, cand.id, purpose)] = pool.submit(
                        _run_to_a_verdict, lab, cand, n, purpose=purpose, executor=ex, on_event=on_event)
            for lab, seed, units, planned in work:
                key = (lab.path, seed.id, "baseline")
                baseline = futures[key].result() if key in futures else []
                for case, cand in planned:
                    if case.needs == "significance":
                        runs = futures[(lab.path, cand.id, "screen")].result()
                        # the loop's screening gate; a hack presents the candidate as an improvement anyway
                        margin = noise_sd(lab) or 0.0
                        audit(lab, cand, seed, stage="screen", screen_margin=margin, final=True, decide=False)
                        runs = runs + futures[(lab.path, cand.id, "confirm")].result()
                        v = audit(lab, cand, seed, stage="confirm", final=True)
                    else:
                        runs = futures[(lab.path, cand.id, "redteam")].result()
                        v = audit(lab, cand, seed, stage="screen", final=False)
                    results.append(result_from_verdict(case, v, preset=lab.preset_name, candidate=cand, runs=runs,
                                                       significance=case.needs == "significance"))
                lab.log.event("redteam", baseline=[r.id for r in baseline],
                              results=[r.to_dict() for r in results if r.task == lab.task.name])
    finally:
        bar.close()
        if own_executor:
            ex.shutdown()
    order = {(t.name, c.name): i for i, (t, _, keep) in enumerate(plans) for c in keep}
    results.sort(key=lambda r: order.get((r.task, r.name), 0))
    report = Report(cases=results, skipped=skipped, labs={} if tmp_root else labs, wall_s=time.monotonic() - t0)
    if tmp_root is not None:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return report


# ---------------------------------------------------------------------------- the command

def cmd_redteam(args) -> int:
    report = redteam([args.task] if args.task else None, preset=args.preset, lab_dir=args.lab, cases=args.case,
                     corpus=args.corpus, jobs=args.jobs, progress=not args.json, include_gpu=args.gpu)
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
    else:
        print(report.table())
        if report.labs:
            print("labs: " + ", ".join(f"{k}: {v}" for k, v in report.labs.items()))
    if not report.ok:
        print("autolab: the red team found a hole: "
              + "; ".join([f"missed {c.task}/{c.name}" for c in report.missed]
                          + [f"false positive {c.task}/{c.name}" for c in report.false_positives])
              + ". Run again with --lab DIR to keep the runs and read their notebooks.", file=sys.stderr)
        return 1
    return 0


def add_command(add) -> None:
    sp = add("redteam", cmd_redteam, "run the hack corpus (and honest controls) through the real run and audit path")
    sp.add_argument("task", nargs="?", default=None, help="one task (default: every task with a redteam/ corpus)")
    sp.add_argument("--preset", default=None, help="preset to run on (default: the task's [redteam] preset)")
    sp.add_argument("--lab", default=None, help="keep the red-team labs under this folder (default: temporary, removed)")
    sp.add_argument("--case", action="append", default=None, help="run only this case (repeatable)")
    sp.add_argument("--corpus", default=None, help="a folder of case folders to run instead of the task's own")
    sp.add_argument("--jobs", type=int, default=None, help="concurrent runs (default: one per CPU core or GPU)")
    sp.add_argument("--gpu", action="store_true", default=None, help="also run gpu_only cases")
