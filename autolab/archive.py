"""A lab as one archive, to move a campaign between machines: ``export_lab`` writes the lab's
resumable core into a ``.tar.gz``, ``import_lab`` unpacks it into a new lab folder, where
``autolab loop`` resumes it.

What goes in (``lab_files``): ``lab.json``, the research log (a consistent copy made with
SQLite's backup API, so a loop may be writing meanwhile and the WAL is folded in),
``objects/``, ``candidates/`` and ``runs/``, without model files (``*.pt``, ``*.pth``,
``*.safetensors``, ``*.ckpt``, ``*.model/`` folders), ``__pycache__`` and cache folders. Nothing
else of the lab folder travels (``loop.lock``, ``STOP``, exports); the summary names what was
left out. Regular files only: a link is left out and named. With ``models`` the model files the
lab still holds travel too (the lab's space policy keeps those of the best and promoted
candidates and of the last runs, so this is what a user needs; ``*.model/`` copies never travel).

On request (``compile_caches``) the archive also carries the torch.compile caches the lab's seed
runs wrote on this machine, under ``compile-cache/`` beside ``lab/``, so that the first run on
the next machine of the same kind starts warm; ``import_lab`` hands them to a callback that
puts them in place (``autolab.harnesskit.install_compile_caches``: the cache layout is its own).

This module knows only the lab's folder layout (standard library only), so it sits beside
``autolab.lab``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sqlite3
import tarfile
import tempfile
from pathlib import Path
from collections.abc import Callable

from .errors import AutolabError

LAB_FILES = ("lab.json",)                       # top-level files that travel as they are
LAB_FOLDERS = ("objects", "candidates", "runs")  # top-level folders that travel, filtered
LOG = "log.db"                                  # copied through SQLite's backup API
MODEL_FILES = ("*.pt", "*.pth", "*.safetensors", "*.ckpt")
SKIP_FOLDERS = ("*.model", "__pycache__", ".ipynb_checkpoints", ".cache", "cache", "caches", "*_cache",
                "torchinductor_*", "triton", ".triton")
PREFIX = "lab"                                  # every lab member of the archive lies under lab/
CACHE_PREFIX = "compile-cache"                  # optional: the seed's compile caches (see above)


def _skipped(rel: Path, models: bool = False) -> str:
    """Why a path under the lab is left out of the archive ('' when it goes in)."""
    for part in rel.parts[:-1]:
        if any(fnmatch.fnmatch(part, pat) for pat in SKIP_FOLDERS):
            return f"folder {part}"
    if not (models and rel.parts[0] == "runs") and any(fnmatch.fnmatch(rel.name, pat) for pat in MODEL_FILES):
        return "model file"
    if rel.suffix == ".pyc":
        return "bytecode"
    return ""


def lab_files(lab_path: str | os.PathLike, *, models: bool = False) -> tuple[list[Path], list[str]]:
    """(the lab's files that go into an archive, relative to the lab folder, log.db excepted;
    what was left out, as 'path (why)'). Only this function decides what goes in; ``models``:
    the runs' model files go in too."""
    root = Path(lab_path)
    keep: list[Path] = []
    left: list[str] = []
    for name in LAB_FILES:
        if (root / name).is_file():
            keep.append(Path(name))
    for child in sorted(root.iterdir()):
        if child.name not in LAB_FILES + LAB_FOLDERS + (LOG, f"{LOG}-wal", f"{LOG}-shm"):
            left.append(f"{child.name} (not part of a lab's resumable core)")
    for folder in LAB_FOLDERS:
        base = root / folder
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            d = Path(dirpath)
            for sub in list(dirnames):
                if any(fnmatch.fnmatch(sub, pat) for pat in SKIP_FOLDERS):
                    dirnames.remove(sub)
                    left.append(f"{(d / sub).relative_to(root)}/ (model or cache folder)")
                elif (d / sub).is_symlink():
                    dirnames.remove(sub)
                    left.append(f"{(d / sub).relative_to(root)} (a link)")
            for fn in sorted(filenames):
                p = d / fn
                rel = p.relative_to(root)
                why = "a link" if p.is_symlink() else ("not a regular file" if not p.is_file() else _skipped(rel, models))
                if why:
                    left.append(f"{rel} ({why})")
                else:
                    keep.append(rel)
    return keep, left


def _log_copy(src: Path, dest: Path) -> None:
    """A consistent copy of the research log (its WAL folded in) through SQLite's backup API."""
    s = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    d = sqlite3.connect(dest)
    try:
        s.backup(d)
        d.execute("PRAGMA journal_mode=DELETE")
    finally:
        d.close()
        s.close()


def export_lab(lab_path: str | os.PathLike, out: str | os.PathLike, *,
               compile_caches: dict[str, Path] | None = None, cache_root: str = "", models: bool = False) -> dict:
    """Write the lab at ``lab_path`` into the archive ``out`` (.tar.gz); returns a summary:
    ``archive``, ``files``, ``bytes`` (uncompressed), ``left_out`` ('path (why)' each), and
    ``compile_cache_bytes``. ``compile_caches``: folders to carry as ``compile-cache/<name>/``
    (plain files only), with ``cache_root`` (where they were written) in its manifest.
    ``models``: the model files the lab's runs still hold go in too (``model_files``: how many)."""
    root = Path(lab_path).resolve()
    out = Path(out).resolve()
    if not (root / "lab.json").is_file() or not (root / LOG).is_file():
        raise AutolabError(f"no lab at {root} (it needs lab.json and {LOG}); pass the lab folder with --lab")
    if out.is_dir():
        raise AutolabError(f"{out} is a folder; pass the archive's file name, e.g. -o lab.tar.gz")
    if out == root or root in out.parents:
        raise AutolabError(f"{out} lies inside the lab {root}; write the archive outside it")
    files, left = lab_files(root, models=models)
    total = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with tempfile.TemporaryDirectory(prefix="autolab-export-") as tmp:
        log_copy = Path(tmp) / LOG
        _log_copy(root / LOG, log_copy)
        try:
            with tarfile.open(tmp_out, "w:gz") as tar:
                tar.add(log_copy, arcname=f"{PREFIX}/{LOG}", recursive=False)
                total += log_copy.stat().st_size
                for rel in files:
                    p = root / rel
                    tar.add(p, arcname=f"{PREFIX}/{rel.as_posix()}", recursive=False)
                    total += p.stat().st_size
                cache_bytes = _add_caches(tar, compile_caches or {}, cache_root, Path(tmp)) if compile_caches else 0
            os.replace(tmp_out, out)
        finally:
            tmp_out.unlink(missing_ok=True)
    return {"archive": str(out), "lab": str(root), "files": len(files) + 1, "bytes": total,
            "archive_bytes": out.stat().st_size, "left_out": left, "compile_cache_bytes": cache_bytes,
            "compile_caches": sorted(compile_caches or {}),
            "model_files": sum(1 for p in files if any(fnmatch.fnmatch(p.name, pat) for pat in MODEL_FILES))}


def _add_caches(tar: tarfile.TarFile, folders: dict[str, Path], cache_root: str, tmp: Path) -> int:
    """Add each folder's plain files under compile-cache/<name>/, and the manifest."""
    total = 0
    for name, folder in sorted(folders.items()):
        for dirpath, dirnames, filenames in os.walk(folder):
            d = Path(dirpath)
            dirnames[:] = [x for x in dirnames if not (d / x).is_symlink()]
            for fn in sorted(filenames):
                p = d / fn
                if p.is_symlink() or not p.is_file():
                    continue
                tar.add(p, arcname=f"{CACHE_PREFIX}/{name}/{p.relative_to(folder).as_posix()}", recursive=False)
                total += p.stat().st_size
    manifest = tmp / "manifest.json"
    manifest.write_text(json.dumps({"cache_root": cache_root, "folders": sorted(folders)}))
    tar.add(manifest, arcname=f"{CACHE_PREFIX}/manifest.json", recursive=False)
    return total


def import_lab(archive: str | os.PathLike, dest: str | os.PathLike, *,
               install_caches: Callable[[Path, Path, dict], dict] | None = None) -> dict:
    """Unpack an archive made by ``export_lab`` into the new lab folder ``dest`` (which must not
    exist, or be empty); returns ``lab``, ``files``. Members outside ``lab/`` and
    ``compile-cache/``, absolute paths, ``..``, links and devices are refused (tarfile's "data"
    filter). Carried compile caches go to ``install_caches(lab, unpacked_caches, manifest)``
    (its answer is returned as ``compile_cache``); without it they are left out."""
    archive, dest = Path(archive), Path(dest).resolve()
    if not archive.is_file():
        raise AutolabError(f"no archive at {archive}; pass the file `autolab export-lab` wrote")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise AutolabError(f"{dest} already exists and is not empty; pass a new folder with --lab")
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise AutolabError(f"{archive} is not a readable archive ({e}); pass a file `autolab export-lab` wrote") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tar, tempfile.TemporaryDirectory(prefix=".autolab-import-", dir=dest.parent) as tmp:
        members = tar.getmembers()
        bad = [m.name for m in members if not any(m.name == x or m.name.startswith(x + "/") for x in (PREFIX, CACHE_PREFIX))]
        if bad:
            raise AutolabError(f"{archive} is not a lab archive (member {bad[0]!r} is not under {PREFIX}/); "
                               "make it with `autolab export-lab`")
        try:
            tar.extractall(tmp, members=members, filter="data")
        except tarfile.FilterError as e:
            raise AutolabError(f"{archive} holds an unsafe member ({e}); it was not unpacked") from None
        unpacked = Path(tmp) / PREFIX
        for need in ("lab.json", LOG):
            if not (unpacked / need).is_file():
                raise AutolabError(f"{archive} has no {PREFIX}/{need}; it is not a lab archive from `autolab export-lab`")
        try:
            task = json.loads((unpacked / "lab.json").read_text()).get("task", "")
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise AutolabError(f"{archive}: {PREFIX}/lab.json is not a lab's JSON; it is not an archive from "
                               "`autolab export-lab`") from None
        if dest.exists():
            dest.rmdir()
        os.replace(unpacked, dest)
        caches = Path(tmp) / CACHE_PREFIX
        carried: dict = {}
        if caches.is_dir():
            try:
                manifest = json.loads((caches / "manifest.json").read_text())
            except (OSError, ValueError):
                manifest = {}
            if install_caches is None:
                carried = {"installed": [], "why": "left out (no installer given)"}
            else:
                carried = install_caches(dest, caches, manifest if isinstance(manifest, dict) else {})
    return {"lab": str(dest), "task": task, "files": sum(1 for m in members if m.isfile() and m.name.startswith(PREFIX + "/")),
            **({"compile_cache": carried} if carried else {})}
