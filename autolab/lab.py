"""A Lab: one folder holding a research log, candidate objects and run outputs for one task."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import shutil
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from .diffs import unified_diff
from .errors import AutolabError, CandidateError, TaskError
from .gpu_share import hardware as probe_hardware
from .ledger import HARDWARE_ASSUMED, REOPENED, UNRECORDED, Ledger, first_seed_in_log, not_a_verdict
from .log import ResearchLog
from .records import Candidate, Run, State, now
from .store import Store, candidate_id, sha256
from .task import Task, compile_python, load_task


_WARNED: set[tuple[str, str]] = set()   # (lab, disk seed) pairs already warned about in this process

# The lab's own folders: an old absolute path is re-rooted at the last of these it names.
LAB_FOLDERS = ("runs", "candidates", "objects")


def lab_file(lab_dir: str | os.PathLike, stored: str | os.PathLike | None) -> Path | None:
    """The file a record's stored path names, for a lab now at ``lab_dir``.

    Records store paths relative to the lab folder, so a lab copied or moved elsewhere still
    finds its files. Labs made before that stored absolute paths: one that still exists is
    used as it is; one that does not (the lab was moved) is re-rooted under ``lab_dir`` from
    the last lab folder it names (``.../old/lab/runs/r-1/result.json`` becomes
    ``<lab_dir>/runs/r-1/result.json``). None for no path."""
    if stored is None or str(stored) == "":
        return None
    p, root = Path(stored), Path(lab_dir)
    if not p.is_absolute():
        return root / p
    if p.exists():
        return p
    anchors = [i for i, part in enumerate(p.parts) if part in LAB_FOLDERS]
    for i in reversed(anchors):
        q = root.joinpath(*p.parts[i:])
        if q.exists():
            return q
    return root.joinpath(*p.parts[anchors[-1]:]) if anchors else p


def lab_relative(lab_dir: str | os.PathLike, path: str | os.PathLike) -> str:
    """``path`` as a record stores it: relative to the lab folder (POSIX separators) when it
    lies inside it, else absolute."""
    p, root = Path(path).resolve(), Path(lab_dir).resolve()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------------- what a run keeps
# A finished run keeps what the views need (the executed notebook, result.json, outcome.json,
# the harness's small configs and reports, its logs); slim_run removes the rest when the run
# ends, and reclaim removes model files no longer needed (Ledger.models_needed says which).
DEFAULT_KEEP_MODELS = 2                               # lab.json's keep_models when absent
MODEL_SUFFIXES = (".pt", ".pth", ".safetensors", ".ckpt")   # a run's model files (kept while needed)
VIEW_FILES = ("notebook.ipynb", "result.json", "outcome.json")   # never removed nor trimmed
SCRATCH_DIRS = ("*.model", "__pycache__", "*cache", "*-cache", "*_cache", ".triton", "torchinductor_*")
SCRATCH_FILE_BYTES = 4 << 20    # a larger file that is no model, view or log is scratch (token caches...)
LOG_SUFFIXES = (".log", ".jsonl", ".txt", ".out", ".err")
LOG_MAX_BYTES = 1 << 20         # a longer log keeps its head and tail
LOG_HEAD_BYTES, LOG_TAIL_BYTES = 128 << 10, 512 << 10


@dataclass(frozen=True)
class Freed:
    """One file or folder a lab removed (or trimmed) to save space."""

    path: str        # relative to the lab folder
    bytes: int       # what it gave back
    why: str
    run_id: str = ""


def _lost_models(runs: list[Run], has_model: Callable[[Run], bool], gone: set[str]) -> list[str]:
    """The ids of a candidate's ``runs`` whose model files a reclaim removed (``gone``), when none
    of its runs has a model file left (else [])."""
    lost = [r.id for r in runs if r.id in gone]
    return lost if lost and not any(has_model(r) for r in runs) else []


def rerun_command(task: str, candidate_id: str, lab_dir: str | os.PathLike = ".") -> str:
    """The command that gives a candidate a model again (one more run on a fresh seed), for the
    lab at ``lab_dir`` (records store it with ``.``: the lab's own folder, wherever it moved)."""
    return f"autolab run {task} --lab {lab_dir} --candidate {candidate_id} --seeds 1"


@dataclass(frozen=True)
class Reclaimed:
    """What :meth:`Lab.reclaim` freed (or, with ``dry_run``, would free), the model files it
    kept, and the candidates that should have a model but whose model files were reclaimed."""

    freed: tuple[Freed, ...]
    kept: tuple[tuple[str, str, int], ...]   # (run id, why, bytes of its model files)
    keep_models: int
    dry_run: bool
    missing: tuple[tuple[str, str, str], ...] = ()   # (candidate id, why it should have one, the command that remakes it)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.freed)

    def to_dict(self) -> dict:
        return {"freed_bytes": self.bytes, "dry_run": self.dry_run, "keep_models": self.keep_models,
                "freed": [vars(f) for f in self.freed],
                "kept": [{"run_id": r, "why": w, "bytes": b} for r, w, b in self.kept],
                "models_reclaimed": [{"candidate_id": c, "why": w, "rerun": cmd} for c, w, cmd in self.missing]}


def _size(p: Path) -> int:
    """Bytes under ``p`` (a file or a folder; symbolic links count as nothing and are not followed)."""
    if p.is_symlink() or not p.exists():
        return 0
    if p.is_file():
        return p.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(p):
        for f in files:
            q = Path(root) / f
            if not q.is_symlink():
                try:
                    total += q.stat().st_size
                except OSError:
                    pass
    return total


def _remove(p: Path) -> None:
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
    elif p.is_dir():
        shutil.rmtree(p, ignore_errors=True)


def _trim_log(p: Path) -> int:
    """Keep a long log's first LOG_HEAD_BYTES and last LOG_TAIL_BYTES (whole lines) with a line
    that says how much was cut; returns the bytes saved. Written beside it, then renamed (a
    symbolic link is never written through)."""
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(LOG_HEAD_BYTES)
        f.seek(size - LOG_TAIL_BYTES)
        tail = f.read()
    head = head[: head.rfind(b"\n") + 1] or head
    tail = tail[tail.find(b"\n") + 1:] if b"\n" in tail else tail
    cut = size - len(head) - len(tail)
    marker = (f"... [autolab: {cut} bytes cut from the middle of this log to keep the lab small] ...\n"
              if p.suffix != ".jsonl" else json.dumps({"type": "trimmed", "bytes": cut}) + "\n").encode()
    data = head + marker + tail
    tmp = p.with_name(f".{p.name}.{os.getpid()}.trim")
    tmp.write_bytes(data)
    os.replace(tmp, p)
    return size - len(data)


def _is_model(p: Path) -> bool:
    return p.suffix in MODEL_SUFFIXES


class SeedChangedWarning(UserWarning):
    """The task's seed on disk is not the seed a lab pinned."""


def check_compiles(files: Mapping[str, str], where: str = "after the edits") -> None:
    """Raise CandidateError if a .py file does not compile (nothing is executed)."""
    where = f" {where}" if where else ""
    for path, src in sorted(files.items()):
        if not path.endswith(".py"):
            continue
        try:
            compile_python(src, path)
        except SyntaxError as e:
            line = (e.text or "").rstrip()
            raise CandidateError(f"{path} does not compile{where}: {e.msg} at line {e.lineno}"
                                 + (f":\n    {line}" if line else "")) from None
        except ValueError as e:
            raise CandidateError(f"{path} does not compile{where}: {e}") from None


class Lab:
    """``Lab("labs/nano", task="nanochat", preset="cpu-tiny")`` creates or reopens a lab.

    Layout: ``log.db`` (the research log), ``lab.json`` (task, preset and the pinned seed
    candidate's id, ``seed_candidate``), ``objects/``
    (candidate files by content hash), ``candidates/<id>/`` (materialized files),
    ``runs/<run id>/`` (executed notebooks and result JSON). Every path a record stores is
    relative to the lab folder (:func:`lab_file` resolves it), so a copied lab works where
    it lands.
    """

    def __init__(self, path: str | os.PathLike, task: str | Task | None = None, preset: str | None = None):
        self.path = Path(path).resolve()
        if self.path.exists() and not self.path.is_dir():
            raise AutolabError(f"{self.path} is a file, not a lab folder; pass a folder (it is created if missing)")
        meta_file = self.path / "lab.json"
        try:
            meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        except (ValueError, UnicodeDecodeError) as e:
            raise AutolabError(f"{meta_file} is not valid JSON ({e}); restore it (keys task, task_path, preset) "
                               "or move the lab aside") from None
        if task is None and "task" not in meta:
            raise AutolabError(f"no lab at {self.path} (no lab.json); create one with Lab(path, task='nanochat') "
                               "or `autolab run TASK --lab PATH`")
        if isinstance(task, Task):
            self.task: Task = task
        elif task is not None:
            self.task = load_task(task)
        else:
            moved = meta.get("task_path") and not Path(meta["task_path"]).exists()
            self.task = load_task(meta["task"] if moved or not meta.get("task_path") else meta["task_path"])
        if meta.get("task") and meta["task"] != self.task.name:
            raise AutolabError(f"lab {self.path} belongs to task {meta['task']!r}, not {self.task.name!r}; "
                               "use another --lab folder")
        if preset and meta.get("preset") and preset != meta["preset"]:
            raise AutolabError(f"lab {self.path} was created for preset {meta['preset']!r}, not {preset!r}; results "
                               f"of different presets do not compare: leave the preset out or use another lab folder")
        self.preset_name = preset or meta.get("preset") or self.task.default_preset
        self.task.preset(self.preset_name)  # validates
        self.path.mkdir(parents=True, exist_ok=True)
        if not meta:
            meta = {"task": self.task.name, "task_path": str(self.task.path), "preset": self.preset_name, "created_at": now()}
            meta_file.write_text(json.dumps(meta, indent=2))
        # a stable name for the lab on any machine it moves to (machine-local caches are keyed by it)
        self.key = hashlib.sha256(f"{meta.get('task')}|{meta.get('created_at') or self.path}".encode()).hexdigest()[:12]
        self.log = ResearchLog(self.path / "log.db")
        self.log.set_meta("task", self.task.name)
        self.log.set_meta("metric", self.task.metric.name)
        self.log.set_meta("direction", self.task.metric.direction)
        self.store = Store(self.path)
        self._meta_file = meta_file
        # one reclaim at a time (runs end in several threads); a state change holds it too (set_state)
        self._space_lock = threading.RLock()
        self._seed_id = self._pin_seed(meta)
        self.log.set_meta("preset", self.preset_name)
        self.log.set_meta("seed_candidate", self._seed_id)
        self._warn_if_seed_moved()
        # the hardware this process compares the lab's runs on (the ledger keeps to it); None: every
        # run counts (views). The loop and final_comparison set it to this machine's (compare_here).
        self.hardware: str | None = None

    @property
    def preset(self):
        return self.task.preset(self.preset_name)

    # ------------------------------------------------------------------ hardware
    def machine_hardware(self) -> str | None:
        """The hardware a run of the lab's preset gets on this machine (what the runner records:
        ``$AUTOLAB_HARDWARE``, else the GPU model(s), else the CPU model for a CPU preset); None
        for a GPU preset on a machine where no GPU is seen."""
        p = self.preset
        return probe_hardware(p.device, p.gpus)

    def compare_here(self) -> str | None:
        """Compare this lab's runs within this machine's hardware from now on (``self.hardware``;
        the ledger's questions then read that hardware's runs only); returns it."""
        self.hardware = self.machine_hardware() or self.hardware
        return self.hardware

    def assume_hardware(self, hardware: str, *, reason: str = "") -> list[str]:
        """Record that the lab's runs logged without a hardware record ran on ``hardware``: an
        event of kind ``hardware_assumed`` (the hardware, the runs it covers, the reason) appended
        to the log; no run record is rewritten. The ledger then counts those runs as ``hardware``
        (``Ledger.hardware_of``; a later assumption naming a run replaces an earlier one). Returns
        the ids of the runs it covers (none: nothing is recorded)."""
        hardware = (hardware or "").strip()
        if not hardware or hardware == UNRECORDED:
            raise AutolabError("name the hardware the unrecorded runs ran on, as a run records it, e.g. "
                               "--assume 'NVIDIA H100 80GB HBM3' (`autolab hardware --lab LAB` shows this machine's)")
        runs = [r.id for r in self.log.runs_list() if not r.hardware]
        if runs:
            self.log.event(HARDWARE_ASSUMED, hardware=hardware, runs=runs,
                           reason=reason or "stated by the user: these runs ran on this hardware")
        return runs

    # ------------------------------------------------------------------ paths
    def file(self, stored: str | os.PathLike | None) -> Path | None:
        """The file a record's stored path names (relative to this lab; see :func:`lab_file`)."""
        return lab_file(self.path, stored)

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` as records store it: relative to the lab folder when inside it."""
        return lab_relative(self.path, path)

    def run_dir(self, run: Run) -> Path:
        """A run's folder (where its notebook and result JSON are)."""
        stored = run.notebook or run.result_path
        return self.file(stored).parent if stored else self.path / "runs" / run.id

    # ------------------------------------------------------------------ space
    @property
    def keep_models(self) -> int:
        """How many of the last runs keep their model file besides the ones still needed
        (lab.json's ``keep_models``, default DEFAULT_KEEP_MODELS)."""
        try:
            n = json.loads(self._meta_file.read_text()).get("keep_models", DEFAULT_KEEP_MODELS)
        except (OSError, ValueError):
            n = DEFAULT_KEEP_MODELS
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise AutolabError(f"{self._meta_file}: keep_models is {n!r}; set it to a whole number >= 0 "
                               f"(default {DEFAULT_KEEP_MODELS}) or remove the key")
        return n

    @keep_models.setter
    def keep_models(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise AutolabError(f"keep_models must be a whole number >= 0, not {n!r}")
        meta = json.loads(self._meta_file.read_text())
        if meta.get("keep_models") == n:
            return
        meta["keep_models"] = n
        tmp = self._meta_file.with_name(f".lab.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, self._meta_file)

    def _own_run_dir(self, run: Run) -> Path | None:
        """The run's folder if it lies under this lab's runs/ (nothing outside the lab is ever removed)."""
        d = self.run_dir(run)
        try:
            d.resolve().relative_to((self.path / "runs").resolve())
        except (ValueError, OSError):
            return None
        return d if d.is_dir() and not d.is_symlink() else None

    def slim_run(self, run: Run, *, dry_run: bool = False) -> list[Freed]:
        """Remove what an ended run's views do not need: the split evaluation's ``*.model/``
        copies, compile and other caches, any other file over SCRATCH_FILE_BYTES that is no
        model file, view file or log (token caches copied in, scratch), and trim logs longer
        than LOG_MAX_BYTES to their head and tail. Model files are left to :meth:`reclaim`.
        A RUNNING run is never touched."""
        d = self._own_run_dir(run) if run.state is not State.RUNNING else None
        if d is None:
            return []
        out: list[Freed] = []

        def note(p: Path, n: int, why: str) -> None:
            out.append(Freed(self.relative(p), n, why, run.id))

        for root, dirs, files in os.walk(d):
            here = Path(root)
            for name in list(dirs):
                p = here / name
                if p.is_symlink():
                    continue
                if any(fnmatch.fnmatch(name, pat) for pat in SCRATCH_DIRS):
                    dirs.remove(name)
                    n = _size(p)
                    if not dry_run:
                        _remove(p)
                    note(p, n, "the split evaluation's model copy" if name.endswith(".model") else "a cache")
            for name in files:
                p = here / name
                if p.is_symlink() or (here == d and name in VIEW_FILES) or _is_model(p):
                    continue
                try:
                    size = p.stat().st_size
                except OSError:
                    continue
                if p.suffix in LOG_SUFFIXES:
                    if size > LOG_MAX_BYTES:
                        saved = size - LOG_HEAD_BYTES - LOG_TAIL_BYTES if dry_run else _trim_log(p)
                        note(p, saved, "a long log, trimmed to its head and tail")
                elif size > SCRATCH_FILE_BYTES:
                    if not dry_run:
                        p.unlink(missing_ok=True)
                    note(p, size, "a large file no view needs")
        return out

    def model_files(self, run: Run) -> list[Path]:
        """The model files (MODEL_SUFFIXES) an ended run still has in its folder."""
        d = self._own_run_dir(run)
        if d is None:
            return []
        return sorted(Path(root) / f for root, _dirs, files in os.walk(d) for f in files
                      if _is_model(Path(f)) and not (Path(root) / f).is_symlink())

    def reclaim(self, keep_models: int | None = None, *, dry_run: bool = False) -> Reclaimed:
        """Free the space the lab's ended runs no longer need: :meth:`slim_run` on each, and the
        model files of every run the ledger does not name in ``models_needed(keep_models)``
        (default: lab.json's ``keep_models``): the best and promoted candidates keep one model
        each, the last ``keep_models`` runs keep theirs. With ``dry_run`` nothing is removed.
        Removals are recorded in the log (event ``reclaimed``, with ``model_runs``: the runs whose
        model files went). ``Reclaimed.missing`` names the best or promoted candidates whose
        model files were reclaimed earlier (before they were promoted), with the command that
        makes one again."""
        n = self.keep_models if keep_models is None else keep_models
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise AutolabError(f"keep_models must be a whole number >= 0, not {n!r}")
        with self._space_lock:
            runs = [r for r in self.log.runs_list() if r.state is not State.RUNNING]
            models = {r.id: self.model_files(r) for r in runs}
            needed = self.ledger.models_needed(n, has_model=lambda r: bool(models.get(r.id)))
            freed: list[Freed] = []
            kept: list[tuple[str, str, int]] = []
            model_runs: list[str] = []
            for run in runs:
                freed += self.slim_run(run, dry_run=dry_run)
                if models[run.id] and run.id in needed:
                    kept.append((run.id, needed[run.id], sum(_size(m) for m in models[run.id])))
                    continue
                if models[run.id]:
                    for m in models[run.id]:
                        size = _size(m)
                        if not dry_run:
                            m.unlink(missing_ok=True)
                        freed.append(Freed(self.relative(m), size, "a model file no longer needed", run.id))
                    model_runs.append(run.id)
                    if not dry_run:
                        models[run.id] = []
                freed += self._drop_candidate_copies(run, dry_run=dry_run)   # no model left to load them with
            if freed and not dry_run:
                self.log.event("reclaimed", bytes=sum(f.bytes for f in freed), files=len(freed), keep_models=n,
                               runs=sorted({f.run_id for f in freed}), model_runs=model_runs)
            missing = self._models_reclaimed(runs, models, set(model_runs))
            if not dry_run:
                self._note_models_restored(runs, models)
            return Reclaimed(tuple(freed), tuple(kept), n, dry_run,
                             tuple((cid, why, rerun_command(self.task.name, cid, self.path))
                                   for cid, (why, _runs) in missing.items()))

    def _reclaimed_model_runs(self) -> set[str]:
        """The runs whose model files a reclaim removed (the log's ``reclaimed`` events)."""
        return {rid for e in self.log.events("reclaimed") for rid in e.get("model_runs") or ()}

    def _models_reclaimed(self, runs: list[Run], models: Mapping[str, list[Path]],
                          also: set[str] = frozenset()) -> dict[str, tuple[str, list[str]]]:
        """{candidate id: (why it should have a model, its runs whose model files were reclaimed)}
        for the best and promoted candidates that have no model file left, where a reclaim
        removed one (a task whose runs never save a model is never named)."""
        gone = self._reclaimed_model_runs() | set(also)
        out: dict[str, tuple[str, list[str]]] = {}
        for cid, why in self.ledger.model_keepers().items():
            lost = _lost_models([r for r in runs if r.candidate_id == cid], lambda r: bool(models.get(r.id)), gone)
            if lost:
                out[cid] = (why, lost)
        return out

    def _note_models_restored(self, runs: list[Run], models: Mapping[str, list[Path]]) -> None:
        """A promoted candidate recorded as having lost its model (``model_reclaimed`` in its
        meta) that has one again (it was re-run): a new version of its record without the note."""
        for c in self.log.candidates_list():
            if c.meta.get("model_reclaimed") and any(models.get(r.id) for r in runs if r.candidate_id == c.id):
                meta = {k: v for k, v in c.meta.items() if k != "model_reclaimed"}
                self.log.append(dataclasses.replace(c, meta=meta))

    def _drop_candidate_copies(self, run: Run, *, dry_run: bool = False) -> list[Freed]:
        """A run without a model file keeps no copy of its candidate's own files (the harness's
        working copy, e.g. ``result.work/train.py``, which only a model needs, to be loaded): a
        file below the run folder whose name and content are those of one of the candidate's
        files is removed (the candidate's files stay in ``candidates/`` and ``objects/``). A file
        the run changed is no copy and stays; so do the run folder's own files."""
        d = self._own_run_dir(run)
        c = self.log.get("candidate", run.candidate_id)
        if d is None or c is None or not getattr(c, "files", None):
            return []
        by_name: dict[str, set[str]] = {}
        for rel, digest in c.files.items():
            by_name.setdefault(Path(rel).name, set()).add(digest)
        out = []
        for root, _dirs, files in os.walk(d):
            here = Path(root)
            for name in files:
                p = here / name
                if here == d or name not in by_name or p.is_symlink():
                    continue
                try:
                    data = p.read_bytes()
                except OSError:
                    continue
                if sha256(data) in by_name[name]:
                    if not dry_run:
                        p.unlink(missing_ok=True)
                    out.append(Freed(self.relative(p), len(data), "a copy of the candidate's file (kept in objects/)",
                                     run.id))
        return out

    def after_run(self, run: Run) -> Reclaimed | None:
        """What the lab does when a run ends: :meth:`reclaim` with lab.json's ``keep_models``.
        Never raises (the run is already recorded): a failure is recorded as an event."""
        return self._reclaim_quietly(run_id=run.id)

    def _reclaim_quietly(self, **context) -> Reclaimed | None:
        """The space policy, applied when a run ends or a candidate's state changes (which
        models are needed changes then); a failure is an event, never an exception."""
        try:
            return self.reclaim()
        except Exception as e:  # noqa: BLE001 - the records matter more than the space
            try:
                self.log.event("reclaim_failed", error=f"{type(e).__name__}: {e}", **context)
            except Exception:  # noqa: BLE001
                pass
            return None

    # ------------------------------------------------------------------ candidates
    def candidate(self, id: str) -> Candidate:
        c = self.log.get("candidate", id)
        if c is None:
            raise AutolabError(f"no candidate {id!r} in {self.path}; see lab.log.lineage() for the ids")
        return c  # type: ignore[return-value]

    def files(self, c: Candidate | str) -> dict[str, str]:
        """{path: text} of a candidate."""
        c = self.candidate(c) if isinstance(c, str) else c
        return self.store.read(c.files)

    @property
    def ledger(self) -> Ledger:
        """The read-only answers about this lab's log: best candidate, means, noise, seeds, owners."""
        return Ledger(self)

    def _disk_seed(self, *, store: bool) -> tuple[str, dict[str, str]]:
        """(candidate id, {path: digest}) of the task's seed folder as it is on disk now."""
        files = self.task.seed_files()
        digests = self.store.snapshot(files) if store else {k: sha256(v) for k, v in files.items()}
        return candidate_id(digests), digests

    def _pin_seed(self, meta: dict) -> str:
        """The id of the lab's seed candidate, pinned in lab.json: for a new lab the seed on disk;
        for a lab made before pinning, the oldest seed candidate in its log (else the disk's)."""
        pinned = meta.get("seed_candidate")
        if pinned and self.log.get("candidate", pinned) is not None:
            return pinned
        if pinned:   # lab.json names a seed the log lacks (a new log.db): it can only be the disk seed
            cid, digests = self._disk_seed(store=True)
            if cid != pinned:
                raise AutolabError(f"{self._meta_file} pins seed candidate {pinned}, which is not in {self.log.path} and "
                                   f"is not the seed on disk ({cid}); restore the log, or remove 'seed_candidate' from "
                                   "lab.json to pin the disk seed")
            self._append_seed(cid, digests)
            return pinned
        old = first_seed_in_log(self.log)
        if old is not None:
            cid, how = old.id, "the oldest seed candidate in the log"
        else:
            cid, digests = self._disk_seed(store=True)
            if self.log.get("candidate", cid) is None:
                self._append_seed(cid, digests)
            how = "the seed on disk"
        meta["seed_candidate"] = cid
        tmp = self._meta_file.with_name(f".lab.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, self._meta_file)
        self.log.event("seed_pinned", candidate_id=cid, how=how)
        return cid

    def _append_seed(self, cid: str, digests: dict[str, str]) -> Candidate:
        return self.log.append(Candidate(id=cid, task=self.task.name, files=digests, parent_id=None, thread="main",
                                         meta={"origin": "seed"}))  # type: ignore[return-value]

    def disk_seed_changed(self) -> str | None:
        """The candidate id of the seed on disk when it differs from the pinned seed, else None."""
        try:
            cid, _ = self._disk_seed(store=False)
        except TaskError:   # the seed folder is gone or empty: the pinned seed is all there is
            return None
        return cid if cid != self._seed_id else None

    def _warn_if_seed_moved(self) -> None:
        moved = self.disk_seed_changed()
        if moved is None or (str(self.path), moved) in _WARNED:
            return
        _WARNED.add((str(self.path), moved))
        warnings.warn(f"the seed of task {self.task.name!r} on disk ({self.task.seed_dir}, candidate {moved}) differs "
                      f"from the seed this lab pinned ({self._seed_id}); the lab keeps measuring against the pinned "
                      "seed. To try the new one, add it as a candidate: lab.add_seed_from_disk()",
                      SeedChangedWarning, stacklevel=3)

    def seed_candidate(self) -> Candidate:
        """The lab's seed solution: the candidate pinned in lab.json when the lab was created
        (a later change of the seed on disk does not change it; see add_seed_from_disk)."""
        return self.candidate(self._seed_id)

    def add_seed_from_disk(self) -> Candidate:
        """The seed folder as it is on disk now, as a new candidate whose parent is the pinned
        seed (the loop screens and confirms it like any other); the pinned seed if unchanged."""
        files = self.task.seed_files()
        seed = self.seed_candidate()
        return self.add_candidate({k: v.decode() for k, v in files.items()}, seed, thread="main",
                                  meta={"origin": "disk-seed", "seed_dir": str(self.task.seed_dir)})

    def add_candidate(self, files: dict[str, str | bytes], parent: Candidate | None, *, idea_id: str | None = None,
                      thread: str = "main", meta: dict | None = None) -> Candidate:
        """Snapshot files as a candidate of ``parent``; unknown or protected files are refused."""
        for rel in files:
            if not self.task.is_editable(rel):
                raise CandidateError(f"{rel!r} is not an editable file of task {self.task.name!r} "
                                     f"(editable: {list(self.task.editable)}); edit only those")
        merged = dict(self.files(parent)) if parent else {}
        merged.update({k: (v.decode() if isinstance(v, bytes) else v) for k, v in files.items()})
        digests = self.store.snapshot(merged)
        cid = candidate_id(digests)
        existing = self.log.get("candidate", cid)
        if existing is not None:
            return existing  # type: ignore[return-value]
        diff = unified_diff(self.files(parent) if parent else {}, merged)
        return self.log.append(Candidate(id=cid, task=self.task.name, files=digests, parent_id=parent.id if parent else None,
                                         idea_id=idea_id, thread=thread, diff=diff, meta=meta or {}))  # type: ignore[return-value]

    def candidate_from_dir(self, folder: str | os.PathLike, parent: Candidate | None = None) -> Candidate:
        """A hand-made candidate from a folder holding (some of) the task's editable files."""
        folder = Path(folder)
        if not folder.is_dir():
            hint = (f"; {folder} looks like a candidate id: use lab.candidate({str(folder)!r}) or its folder "
                    f"{self.path / 'candidates' / str(folder)}" if str(folder).startswith("c-") else "")
            raise CandidateError(f"{folder} is not a folder; pass the folder that holds the candidate's files{hint}")
        files = {}
        for p in sorted(folder.rglob("*")):
            rel = str(p.relative_to(folder))
            if p.is_file() and "__pycache__" not in p.parts and self.task.is_editable(rel):
                try:
                    files[rel] = p.read_text(encoding="utf-8")
                except UnicodeDecodeError as e:
                    raise CandidateError(f"{p} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        if not files:
            raise CandidateError(f"{folder} holds none of the editable files {list(self.task.editable)} of task "
                                 f"{self.task.name!r}")
        check_compiles({str(folder / k): v for k, v in files.items()}, where="")
        return self.add_candidate(files, parent or self.seed_candidate(), meta={"origin": str(folder)})

    def candidate_dir(self, c: Candidate) -> Path:
        """A materialized copy of the candidate's files (re-written if missing or stale)."""
        dest = self.path / "candidates" / c.id
        marker = self.path / "candidates" / f"{c.id}.files.json"
        want = json.dumps(c.files, sort_keys=True)
        if not (marker.exists() and marker.read_text() == want):
            self.store.materialize(c.files, dest)
            marker.write_text(want)
        return dest

    def set_state(self, c: Candidate, state: State, **meta) -> Candidate:
        """Record a candidate's new state (its latest record's meta, updated with ``meta``). A
        candidate promoted after its runs' model files were reclaimed (it was undecided and not
        among the last ``keep_models`` runs) says so in its meta ``model_reclaimed``: the runs and
        the command that makes a model again (``rerun_command``)."""
        with self._space_lock:   # no reclaim between the look at its model files and the record
            cur = self.log.get("candidate", c.id) or c
            meta = {**cur.meta, **meta}
            if state is State.PROMOTED:
                runs = [r for r in self.log.runs_list() if r.candidate_id == c.id and r.state is not State.RUNNING]
                lost = _lost_models(runs, lambda r: bool(self.model_files(r)), self._reclaimed_model_runs())
                if lost:
                    meta["model_reclaimed"] = {
                        "runs": lost,
                        "rerun": rerun_command(self.task.name, c.id),
                        "how": "its runs' model files were reclaimed before it was promoted (lab.json's "
                               "keep_models); run it again on a seed (the command, from the lab's folder): that "
                               "run keeps its model"}
            new = cur.with_state(state, meta=meta)
            self.log.append(new)
            if state is not cur.state:   # promoted or rejected: which models are needed has changed
                self._reclaim_quietly(candidate_id=c.id)
            return new

    # ------------------------------------------------------------------ researcher's decisions
    def promote(self, c: Candidate | str, reason: str = "promoted by hand") -> Candidate:
        """Mark a candidate PROMOTED by hand (recorded as such in its meta)."""
        c = self.candidate(c) if isinstance(c, str) else self.candidate(c.id)
        self.log.event("manual_decision", candidate_id=c.id, state="PROMOTED", reason=reason)
        return self.set_state(c, State.PROMOTED, manual=True, reason=reason)

    def reject(self, c: Candidate | str, reason: str = "rejected by hand") -> Candidate:
        """Mark a candidate REJECTED by hand; the loop will not build on it."""
        c = self.candidate(c) if isinstance(c, str) else self.candidate(c.id)
        self.log.event("manual_decision", candidate_id=c.id, state="REJECTED", reason=reason)
        return self.set_state(c, State.REJECTED, manual=True, reason=reason)

    def reopen(self, c: Candidate | str, reason: str, *, keep_runs: bool = False) -> tuple[Candidate, list[str]]:
        """Undo the decisions on a candidate whose runs a fault of the harness or the machine
        spoiled (say which in ``reason``): each of its ended runs that still counts is recorded
        KILLED with the reason ``infrastructure: reopened by hand: <reason>`` (so it is no verdict,
        and its seeds are run again), its verdicts are set aside (the ledger's ``latest_verdict``
        skips them), and the candidate is READY again: the next loop screens it anew.
        ``keep_runs``: the runs were sound and only the audit erred (a check fixed since): the
        verdicts alone are set aside, and the next loop judges the candidate on the runs it has.
        Returns the candidate and the ids of the runs set aside. Nothing is deleted: the old runs
        and verdicts stay in the log."""
        reason = (reason or "").strip()
        if not reason:
            raise AutolabError("say why the candidate is reopened (e.g. --reason 'the read guard did not know the "
                               "compile cache'): it is recorded with every run set aside")
        c = self.candidate(c) if isinstance(c, str) else self.candidate(c.id)
        if c.id == self.seed_candidate().id:
            raise AutolabError(f"{c.id} is the lab's seed: it is never decided, so there is nothing to reopen; "
                               "to re-measure it, run it on new seeds (autolab run)")
        why = f"{REOPENED} {reason}"
        counting = [] if keep_runs else [r for r in self.log.runs_list() if r.candidate_id == c.id
                                         and r.state in (State.COMPLETE, State.FAILED) and not not_a_verdict(r)]
        for r in counting:
            self.log.append(r.with_state(State.KILLED, error={**(r.error or {}), "reason": why, "ename": "Reopened",
                                                               "evalue": reason}))
        moved = [r.id for r in counting]
        aside = [v.id for v in self.log.verdicts_list() if v.candidate_id == c.id]
        self.log.event("manual_decision", candidate_id=c.id, state="READY", reason=why, runs=moved, verdicts=aside)
        return self.set_state(c, State.READY, manual=True, reason=why, verdicts_set_aside=aside), moved

    def request_stop(self) -> Path:
        """Ask a running loop to stop after its in-flight work (writes ``<lab>/STOP``)."""
        p = self.path / "STOP"
        p.write_text(now())
        self.log.event("stop_requested")
        return p

    @property
    def stop_requested(self) -> bool:
        return (self.path / "STOP").exists()

    def __repr__(self) -> str:
        return f"Lab({str(self.path)!r}, task={self.task.name!r}, preset={self.preset_name!r})"
