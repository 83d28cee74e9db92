"""A Lab: one folder holding a research log, candidate objects and run outputs for one task."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Mapping

from .diffs import unified_diff
from .errors import AutolabError, CandidateError, TaskError
from .ledger import Ledger, first_seed_in_log
from .log import ResearchLog
from .records import Candidate, State, now
from .store import Store, candidate_id, sha256
from .task import Task, load_task


_WARNED: set[tuple[str, str]] = set()   # (lab, disk seed) pairs already warned about in this process


class SeedChangedWarning(UserWarning):
    """The task's seed on disk is not the seed a lab pinned."""


def check_compiles(files: Mapping[str, str], where: str = "after the edits") -> None:
    """Raise CandidateError if a .py file does not compile (nothing is executed)."""
    where = f" {where}" if where else ""
    for path, src in sorted(files.items()):
        if not path.endswith(".py"):
            continue
        try:
            compile(src, path, "exec", dont_inherit=True)
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
    ``runs/<run id>/`` (executed notebooks and result JSON).
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
        self.log = ResearchLog(self.path / "log.db")
        self.log.set_meta("task", self.task.name)
        self.log.set_meta("metric", self.task.metric.name)
        self.log.set_meta("direction", self.task.metric.direction)
        self.store = Store(self.path)
        self._meta_file = meta_file
        self._seed_id = self._pin_seed(meta)
        self.log.set_meta("preset", self.preset_name)
        self.log.set_meta("seed_candidate", self._seed_id)
        self._warn_if_seed_moved()

    @property
    def preset(self):
        return self.task.preset(self.preset_name)

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
        new = c.with_state(state, meta={**c.meta, **meta})
        self.log.append(new)
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
