"""Tasks: ``benchmarks/<name>/task.toml``, validated, discovered through a registry.

A malformed task.toml raises :class:`TaskError` naming the file, the key and the fix.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import math
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import TaskError

REPO_ROOT = Path(__file__).resolve().parent.parent
DIRECTIONS = ("minimize", "maximize")
TESTS = ("welch", "student", "one_sample_below_target")


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str
    unit: str = ""

    def better(self, a: float, b: float) -> bool:
        """True when a is strictly better than b."""
        return a < b if self.direction == "minimize" else a > b

    def gain(self, new: float, old: float) -> float:
        """Improvement of new over old in the good direction (positive is better)."""
        return old - new if self.direction == "minimize" else new - old


@dataclass(frozen=True)
class Preset:
    name: str
    device: str = "cpu"
    budget_s: float = 20.0
    timeout_s: float = 600.0
    settings: dict[str, Any] = field(default_factory=dict)   # everything else, passed to the harness

    @property
    def gpus(self) -> int:
        return int(self.settings.get("gpus", 0 if self.device == "cpu" else 1))


@dataclass(frozen=True)
class SeedsPolicy:
    screening: int = 1
    confirmation: int = 3
    final: int = 3


@dataclass(frozen=True)
class Significance:
    test: str = "welch"
    alpha: float = 0.05
    min_seeds: int = 2
    target: float | None = None   # for one_sample_below_target (a preset's `target` setting overrides)
    metric: str | None = None     # the result metric the test reads (default: the task's metric)
    time_alpha: float = 0.05      # one_sample_below_target: level of the time comparison with the parent


SEVERITIES = ("reject", "warn")


@dataclass(frozen=True)
class ProbeSpec:
    """A probe the task's harness writes under ``probes`` in its result JSON, as declared in
    ``[audit.probes.<name>]``: what passing it means, and whether a failure rejects or warns."""
    name: str
    description: str
    severity: str = "reject"


@dataclass(frozen=True)
class ScanPattern:
    """One ``[[audit.scan]]`` pattern: a regular expression searched in a candidate's added
    lines (comments stripped), what a match means, and its severity."""
    pattern: str
    what: str
    severity: str = "reject"


@dataclass(frozen=True)
class Plausibility:
    """``[audit.plausibility]``: the figure past which a result is implausible for the preset (a
    floor for a minimized metric, a ceiling for a maximized one). ``bound`` is the default,
    ``presets`` the per-preset values; a preset with neither has no bound."""
    kind: str                                   # "floor" | "ceiling"
    bound: float | None = None
    presets: dict[str, float] = field(default_factory=dict)

    def bound_for(self, preset: str) -> float | None:
        return self.presets.get(preset, self.bound)

    def implausible(self, value: float, preset: str) -> bool:
        """True when ``value`` is past the preset's bound (below a floor, above a ceiling)."""
        b = self.bound_for(preset)
        if b is None:
            return False
        return value < b if self.kind == "floor" else value > b


@dataclass(frozen=True)
class AuditSpec:
    """What ``[audit]`` declares: the generic checks the task turns on besides those that always
    run (``checks``), its harness's probes, its static-scan patterns and its plausibility bound."""
    checks: tuple[str, ...] = ()
    probes: tuple[ProbeSpec, ...] = ()
    scan: tuple[ScanPattern, ...] = ()
    plausibility: Plausibility | None = None
    names: tuple[str, ...] = ()    # every check and probe named, in order (a short-form probes list included)

    def probe(self, name: str) -> ProbeSpec | None:
        return next((p for p in self.probes if p.name == name), None)


@dataclass(frozen=True)
class Task:
    name: str
    path: Path
    title: str
    metric: Metric
    presets: dict[str, Preset]
    default_preset: str
    seed_dir: Path
    editable: tuple[str, ...]
    protected: tuple[str, ...]
    seeds: SeedsPolicy
    significance: Significance
    probes: tuple[str, ...]        # every name the audit runs for this task: audit.checks, then audit.probes
    notebook: Path
    brief: Path | None
    playbook: Path | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    audit: AuditSpec = field(default_factory=AuditSpec)
    measured: tuple[str, ...] = ()  # globs of the editable files a run measures (default: every editable file)
    problem_file: str | None = None  # "{problem}.py": one file per problem; a preset's `problems` picks some
    carry: bool = False            # a run may carry the parent's per-problem results of unchanged problems

    def preset(self, name: str | None = None) -> Preset:
        name = name or self.default_preset
        try:
            return self.presets[name]
        except KeyError:
            raise TaskError(
                f"task {self.name!r} has no preset {name!r}; choose one of: {', '.join(self.presets)} "
                f"(see {self.path / 'task.toml'})"
            ) from None

    def is_editable(self, rel: str) -> bool:
        return any(fnmatch.fnmatch(rel, pat) for pat in self.editable)

    def protected_files(self) -> list[Path]:
        """Every file under the task folder matched by a protected pattern, sorted."""
        out: set[Path] = set()
        for pat in self.protected:
            out.update(p for p in self.path.glob(pat) if p.is_file() and "__pycache__" not in p.parts)
        return sorted(out)

    def protected_hashes(self) -> dict[str, str]:
        return {str(p.relative_to(self.path)): _sha256(p) for p in self.protected_files()}

    def seed_files(self) -> dict[str, bytes]:
        """The seed solution's editable files: {relative path: content}."""
        files: dict[str, bytes] = {}
        for p in sorted(self.seed_dir.rglob("*")):
            rel = str(p.relative_to(self.seed_dir))
            if p.is_file() and "__pycache__" not in p.parts and self.is_editable(rel):
                files[rel] = p.read_bytes()
        if not files:
            raise TaskError(
                f"{self.path / 'task.toml'}: files.seed points at {self.seed_dir}, which holds no file matching "
                f"files.editable {list(self.editable)}; fix the path or the patterns"
            )
        return files

    # ------------------------------------------------------------------ what a run measures
    def problems(self, preset: str | None, files: "Mapping[str, Any]") -> list[str] | None:
        """The problems a run of ``preset`` evaluates (its ``problems`` setting, else every file of
        ``files`` that matches ``[files] problem_file``); None for a task without problems."""
        if not self.problem_file:
            return None
        listed = self.preset(preset).settings.get("problems")
        if listed:
            return [str(p) for p in listed]
        pre, _, post = self.problem_file.partition("{problem}")
        return sorted(f[len(pre):len(f) - len(post)] for f in files
                      if f.startswith(pre) and f.endswith(post) and len(f) > len(pre) + len(post)
                      and "/" not in f[len(pre):len(f) - len(post)] and not f[len(pre):].startswith("_"))

    def units(self, preset: str | None, files: "Mapping[str, str]") -> dict[str, frozenset[str]]:
        """What a run of ``preset`` measures, as ``{unit: the candidate files it depends on}``: one
        unit per problem (its file and the candidate's modules that file imports, transitively),
        or for a task without problems one unit ``"run"`` (every measured file and its imports)."""
        probs = self.problems(preset, files)
        if probs is None:
            roots = [f for f in files if any(fnmatch.fnmatch(f, pat) for pat in (self.measured or self.editable))]
            return {"run": local_closure(roots, files)}
        return {p: local_closure([self.problem_file.format(problem=p)], files) for p in probs}  # type: ignore[union-attr]

    def changed_units(self, preset: str | None, old: "Mapping[str, str]", new: "Mapping[str, str]") -> list[str]:
        """The units (see :meth:`units`) whose files differ between two versions of the editable
        files (``{path: text}``, e.g. a parent's and a candidate's); the imports of both count."""
        changed = {f for f in set(old) | set(new) if old.get(f) != new.get(f)}
        before, after = self.units(preset, old), self.units(preset, new)
        return [u for u in after if (after[u] | before.get(u, frozenset())) & changed] + \
               [u for u in before if u not in after and before[u] & changed]

    def brief_text(self) -> str:
        return self.brief.read_text() if self.brief and self.brief.exists() else ""


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# CPython before 3.11.8 / 3.12.1 shares the AST builder's recursion guard between threads
# (gh-106905): two threads parsing at once can fail with "SystemError: AST constructor recursion
# depth mismatch". The loop and the red team parse candidates' files in worker threads, so every
# parse and compile of source text in autolab goes through this lock.
_AST_LOCK = threading.Lock()


def parse_python(text: str) -> ast.Module:
    """``ast.parse(text)``, one thread at a time (see _AST_LOCK)."""
    with _AST_LOCK:
        return ast.parse(text)


def compile_python(src: str, path: str) -> None:
    """Compile ``src`` (nothing is executed; SyntaxError as compile raises it), one thread at a time."""
    with _AST_LOCK:
        compile(src, path, "exec", dont_inherit=True)


def local_imports(text: str, files: "Mapping[str, Any]") -> set[str]:
    """The files of ``files`` (relative paths) that the Python source ``text`` imports by module
    name (``import x``, ``from x import y``, ``from . import x``); every ``.py`` file when the
    source does not parse (a file that cannot be read is assumed to use everything)."""
    by_module: dict[str, str] = {}
    for f in files:
        if f.endswith("/__init__.py"):
            by_module[f[:-len("/__init__.py")].replace("/", ".")] = f
        elif f.endswith(".py"):
            by_module[f[:-3].replace("/", ".")] = f
    try:
        tree = parse_python(text)
    except (SyntaxError, ValueError):
        return set(by_module.values())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names.add(base)
            names.update(f"{base}.{a.name}" if base else a.name for a in node.names)
    out = set()
    for n in names:
        parts = n.split(".")
        for i in range(len(parts), 0, -1):   # `import pkg.mod` uses pkg/__init__.py and pkg/mod.py
            if ".".join(parts[:i]) in by_module:
                out.add(by_module[".".join(parts[:i])])
    return out


def local_closure(roots: "list[str]", files: "Mapping[str, str]") -> frozenset[str]:
    """``roots`` and every file of ``files`` they import, transitively (see :func:`local_imports`)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        if f in files and f.endswith(".py"):
            todo.extend(local_imports(files[f], files) - seen)
    return frozenset(seen)


# ---------------------------------------------------------------------------- parsing

class _Reader:
    """Reads keys from a parsed toml table and raises errors that name file, key and fix."""

    def __init__(self, file: Path, data: dict[str, Any]):
        self.file, self.data = file, data

    def fail(self, key: str, problem: str, fix: str) -> TaskError:
        return TaskError(f"{self.file}: key '{key}' {problem}; fix: {fix}")

    def get(self, key: str, typ: type | tuple[type, ...], default: Any = ..., fix: str = "") -> Any:
        node: Any = self.data
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict):
                table = ".".join(parts[:i])   # e.g. `audit = "all"` where [audit] is meant
                raise self.fail(table, f"must be a table, got {type(node).__name__} {node!r}", f"write it as [{table}] with its keys")
            if part not in node:
                if default is ...:
                    raise self.fail(key, "is missing", fix or f"add '{key}' to the file")
                return default
            node = node[part]
        if typ is float and isinstance(node, int) and not isinstance(node, bool):
            node = float(node)
        if not isinstance(node, typ) or (isinstance(node, bool) and typ in (int, float)):
            tname = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            a = "an" if tname[0] in "aeiou" else "a"
            raise self.fail(key, f"must be {a} {tname}, got {type(node).__name__} {node!r}", f"set '{key}' to {a} {tname}")
        if typ is float and not math.isfinite(node):
            raise self.fail(key, f"is {node}", f"set '{key}' to a finite number")
        return node


def load_task_file(toml_path: str | os.PathLike) -> Task:
    """Parse and validate one task.toml."""
    file = Path(toml_path).resolve()
    if not file.exists():
        raise TaskError(f"{file}: no such file; a task folder needs a task.toml (see docs/ARCHITECTURE.md)")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise TaskError(f"{file}: not valid TOML ({e}); fix the syntax at that line") from None
    except UnicodeDecodeError as e:
        raise TaskError(f"{file}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    r = _Reader(file, data)
    root = file.parent

    name = r.get("name", str, fix='add name = "<task name>" at the top')
    if not name.replace("-", "").replace("_", "").isalnum():
        raise r.fail("name", f"is {name!r}, not a plain identifier", "use letters, digits, '-' or '_'")
    metric = Metric(
        name=r.get("metric.name", str, fix='add [metric] with name = "val_bpb" (the result key to optimize)'),
        direction=r.get("metric.direction", str, fix='add direction = "minimize" or "maximize" under [metric]'),
        unit=r.get("metric.unit", str, ""),
    )
    if metric.direction not in DIRECTIONS:
        raise r.fail("metric.direction", f"is {metric.direction!r}", 'use "minimize" or "maximize"')

    presets_raw = r.get("presets", dict, fix="add at least one [presets.<name>] table with device and budget_s")
    if not presets_raw:
        raise r.fail("presets", "is empty", "add at least one [presets.<name>] table")
    presets: dict[str, Preset] = {}
    for pname, ptab in presets_raw.items():
        key = f"presets.{pname}"
        if not isinstance(ptab, dict):
            raise r.fail(key, "must be a table", f"write it as [presets.{pname}]")
        device = r.get(f"{key}.device", str, "cpu")
        if device not in ("cpu", "cuda"):
            raise r.fail(f"{key}.device", f"is {device!r}", 'use "cpu" or "cuda"')
        budget = r.get(f"{key}.budget_s", float, fix=f"add budget_s = <seconds> under [presets.{pname}]")
        timeout = r.get(f"{key}.timeout_s", float, max(120.0, budget * 4 + 120))
        if budget <= 0 or timeout <= budget:
            raise r.fail(f"{key}.timeout_s", f"({timeout}) must exceed budget_s ({budget}) > 0", "raise timeout_s")
        for k in ("threads", "gpus", "mem_mb"):   # read by autolab itself to size slots and limits
            if k in ptab:
                v, low = r.get(f"{key}.{k}", int), 1 if k == "threads" else 0
                if v < low:
                    raise r.fail(f"{key}.{k}", f"is {v}", f"use a whole number >= {low}")
        settings = {k: v for k, v in ptab.items() if k not in ("device", "budget_s", "timeout_s")}
        presets[pname] = Preset(pname, device, budget, timeout, settings)
    default_preset = r.get("default_preset", str, next(iter(presets)))
    if default_preset not in presets:
        raise r.fail("default_preset", f"names {default_preset!r}, which is not a preset", f"use one of {list(presets)}")

    seed_rel = r.get("files.seed", str, fix='add [files] with seed = "../../seeds/<task>"')
    seed_dir = (root / seed_rel).resolve()
    if not seed_dir.is_dir():
        raise r.fail("files.seed", f"points at {seed_dir}, which is not a folder", "make it the seed solution's folder, relative to task.toml")
    editable = r.get("files.editable", list, fix='add editable = ["train.py"] under [files]')
    protected = r.get("files.protected", list, [])
    for key, lst in (("files.editable", editable), ("files.protected", protected)):
        if not all(isinstance(x, str) for x in lst):
            raise r.fail(key, "must be a list of strings (glob patterns)", 'write e.g. ["train.py"]')
    if not editable:
        raise r.fail("files.editable", "is empty", "list the files a candidate may change")

    seeds = SeedsPolicy(
        screening=r.get("seeds.screening", int, 1),
        confirmation=r.get("seeds.confirmation", int, 3),
        final=r.get("seeds.final", int, 3),
    )
    if min(seeds.screening, seeds.confirmation, seeds.final) < 1:
        raise r.fail("seeds", "has a count below 1", "use at least 1 seed for screening, confirmation and final")
    sig = Significance(
        test=r.get("significance.test", str, "welch"),
        alpha=r.get("significance.alpha", float, 0.05),
        min_seeds=r.get("significance.min_seeds", int, 2),
        target=r.get("significance.target", float, None),
        metric=r.get("significance.metric", str, None),
        time_alpha=r.get("significance.time_alpha", float, 0.05),
    )
    if sig.test not in TESTS:
        raise r.fail("significance.test", f"is {sig.test!r}", f"use one of {', '.join(TESTS)}")
    for k, a in (("alpha", sig.alpha), ("time_alpha", sig.time_alpha)):
        if not 0 < a < 0.5:
            raise r.fail(f"significance.{k}", f"is {a}", "use a level between 0 and 0.5, e.g. 0.05")
    if sig.min_seeds < 2:
        raise r.fail("significance.min_seeds", f"is {sig.min_seeds}", "promotion never rests on one seed: use 2 or more")
    if seeds.confirmation < sig.min_seeds:
        raise r.fail("seeds.confirmation", f"({seeds.confirmation}) is below significance.min_seeds ({sig.min_seeds})",
                     "confirm on at least as many seeds as promotion needs")

    measured = r.get("files.measured", list, [])
    if not all(isinstance(x, str) for x in measured):
        raise r.fail("files.measured", "must be a list of strings (glob patterns)", 'write e.g. ["train.py"]')
    problem_file = r.get("files.problem_file", str, None)
    if problem_file is not None and "{problem}" not in problem_file:
        raise r.fail("files.problem_file", f"is {problem_file!r}, without {{problem}}",
                     'write the file of one problem as a pattern, e.g. "{problem}.py"')
    carry = r.get("files.carry", bool, False)
    if carry and not problem_file:
        raise r.fail("files.carry", "is true but the task declares no problem_file",
                     'add problem_file = "{problem}.py" under [files] (results are carried per problem), or remove carry')
    for pname, p in presets.items():
        listed = p.settings.get("problems")
        if listed is not None and (not isinstance(listed, list) or not all(isinstance(x, str) and x for x in listed)):
            raise r.fail(f"presets.{pname}.problems", "must be a list of problem names", 'write e.g. ["softmax", "rmsnorm"]')

    notebook = root / r.get("notebook", str, "benchmark.ipynb")
    if not notebook.exists():
        raise r.fail("notebook", f"points at {notebook}, which does not exist", "add the benchmark notebook or fix the name")
    brief = root / r.get("brief", str, "task.md")
    playbook_rel = r.get("playbook", str, "playbook.toml")
    playbook = root / playbook_rel
    audit = _audit_spec(r, metric, presets)
    probes = audit.names

    return Task(
        name=name, path=root, title=r.get("title", str, name), metric=metric, presets=presets,
        default_preset=default_preset, seed_dir=seed_dir, editable=tuple(editable), protected=tuple(protected),
        seeds=seeds, significance=sig, probes=probes, notebook=notebook,
        brief=brief if brief.exists() else None, playbook=playbook if playbook.exists() else None, raw=data,
        audit=audit, measured=tuple(measured), problem_file=problem_file, carry=carry,
    )


_PROBE_KEYS = ("description", "severity")
_SCAN_KEYS = ("pattern", "what", "severity")
_PLAUSIBILITY_KEYS = ("floor", "ceiling", "presets")


def _audit_spec(r: _Reader, metric: Metric, presets: dict[str, Preset]) -> AuditSpec:
    """``[audit]``: ``checks`` (names), ``probes`` (a table of ``[audit.probes.<name>]`` tables,
    or a plain list of names), ``[[audit.scan]]`` and ``[audit.plausibility]``."""
    checks = r.get("audit.checks", list, [])
    if not all(isinstance(x, str) and x for x in checks):
        raise r.fail("audit.checks", "must be a list of check names", 'write e.g. checks = ["hidden_val"]')

    raw_probes = r.get("audit.probes", (list, dict), [])
    probes: list[ProbeSpec] = []
    names: list[str] = list(checks)
    if isinstance(raw_probes, list):   # the short form: names only, described by the audit
        if not all(isinstance(x, str) and x for x in raw_probes):
            raise r.fail("audit.probes", "must be a list of names or [audit.probes.<name>] tables",
                         'write each probe as [audit.probes.<name>] with description = "..." and severity = "reject"')
        names += [x for x in raw_probes if x not in names]
    else:
        for pname, tab in raw_probes.items():
            key = f"audit.probes.{pname}"
            if not isinstance(tab, dict):
                raise r.fail(key, f"must be a table, got {type(tab).__name__} {tab!r}",
                             f'write it as [{key}] with description = "what passing means" and severity = "reject"')
            extra = sorted(set(tab) - set(_PROBE_KEYS))
            if extra:
                raise r.fail(f"{key}.{extra[0]}", "is not a probe key", f"use only {', '.join(_PROBE_KEYS)}")
            desc = r.get(f"{key}.description", str, fix=f'add description = "what passing the probe means" under [{key}]')
            sev = r.get(f"{key}.severity", str, "reject")
            if sev not in SEVERITIES:
                raise r.fail(f"{key}.severity", f"is {sev!r}", 'use "reject" or "warn"')
            if pname in names:
                raise r.fail(key, "is also listed in audit.checks", "keep one of them: a check of autolab or a probe of the harness")
            probes.append(ProbeSpec(pname, desc, sev))
            names.append(pname)

    scan_raw = r.get("audit.scan", list, [])
    scan: list[ScanPattern] = []
    for i, tab in enumerate(scan_raw):
        key = f"audit.scan[{i}]"
        if not isinstance(tab, dict):
            raise r.fail(key, f"must be a table, got {type(tab).__name__} {tab!r}",
                         "write each pattern as [[audit.scan]] with pattern, what and severity")
        extra = sorted(set(tab) - set(_SCAN_KEYS))
        if extra:
            raise r.fail(f"{key}.{extra[0]}", "is not a scan key", f"use only {', '.join(_SCAN_KEYS)}")
        for k in ("pattern", "what"):
            if not isinstance(tab.get(k), str) or not tab[k]:
                raise r.fail(f"{key}.{k}", "is missing or not a string",
                             "give every [[audit.scan]] a pattern (a Python regular expression), what a match "
                             'means, and severity = "reject" or "warn"')
        pat, what, sev = tab["pattern"], tab["what"], tab.get("severity", "reject")
        try:
            re.compile(pat)
        except re.error as e:
            raise r.fail(f"{key}.pattern", f"is not a valid regular expression ({e})",
                         "fix the expression (a TOML literal string '...' needs no escaping)") from None
        if sev not in SEVERITIES:
            raise r.fail(f"{key}.severity", f"is {sev!r}", 'use "reject" or "warn"')
        scan.append(ScanPattern(pat, what, sev))

    plaus = None
    ptab = r.get("audit.plausibility", dict, None)
    if ptab is not None:
        kind, wrong = ("floor", "ceiling") if metric.direction == "minimize" else ("ceiling", "floor")
        extra = sorted(set(ptab) - set(_PLAUSIBILITY_KEYS))
        if extra:
            raise r.fail(f"audit.plausibility.{extra[0]}", "is not a plausibility key",
                         f"use {kind} (the default bound) and presets (a table preset = bound)")
        if wrong in ptab:
            raise r.fail(f"audit.plausibility.{wrong}", f"does not fit metric.direction = {metric.direction!r}",
                         f"a {metric.direction}d metric's implausible results lie past a {kind}: write {kind} = <value>")
        bound = r.get(f"audit.plausibility.{kind}", float, None)
        per = r.get("audit.plausibility.presets", dict, {})
        bounds: dict[str, float] = {}
        for pname in per:
            if pname not in presets:
                raise r.fail(f"audit.plausibility.presets.{pname}", "names no preset",
                             f"use one of {', '.join(presets)}")
            bounds[pname] = r.get(f"audit.plausibility.presets.{pname}", float)
        if bound is None and not bounds:
            raise r.fail("audit.plausibility", "declares no bound", f"add {kind} = <value> or presets = {{ <preset> = <value> }}")
        plaus = Plausibility(kind, bound, bounds)

    return AuditSpec(tuple(checks), tuple(probes), tuple(scan), plaus, tuple(names))


# ---------------------------------------------------------------------------- registry

def _search_roots() -> list[Path]:
    roots: list[Path] = []
    env = os.environ.get("AUTOLAB_BENCHMARKS")
    if env:
        roots += [Path(p) for p in env.split(os.pathsep) if p]
    roots.append(REPO_ROOT / "benchmarks")
    return roots


def discover_tasks() -> dict[str, Path]:
    """Every task folder found: $AUTOLAB_BENCHMARKS, the repo's benchmarks/, and the
    ``autolab.tasks`` entry-point group (name -> callable returning a folder)."""
    found: dict[str, Path] = {}
    for root in _search_roots():
        if root.is_dir():
            for toml in sorted(root.glob("*/task.toml")):
                found.setdefault(toml.parent.name, toml.parent)
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="autolab.tasks"):
            found.setdefault(ep.name, Path(ep.load()()))
    except Exception:  # a broken plug-in must not hide the built-in tasks
        pass
    return found


def load_task(name_or_path: str | os.PathLike) -> Task:
    """Load a task by registered name (``"nanochat"``) or by folder / task.toml path."""
    p = Path(name_or_path)
    if p.suffix == ".toml":
        return load_task_file(p)
    if p.is_dir() and (p / "task.toml").exists():
        return load_task_file(p / "task.toml")
    tasks = discover_tasks()
    if str(name_or_path) in tasks:
        return load_task_file(tasks[str(name_or_path)] / "task.toml")
    known = ", ".join(sorted(tasks)) or "none"
    raise TaskError(f"no task named {str(name_or_path)!r}; known tasks: {known}. "
                    "Run `autolab tasks` to list them, or pass a folder that holds a task.toml.")
