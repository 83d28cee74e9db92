"""What the three task harnesses (nanochat, speedrun, kernels) share: the result JSON's
skeleton, atomic JSON writes, importing a candidate's file as a module, the torch.compile
caches of a lab, and the CPU clock of the CPU presets (the CPU seconds of a process tree, read
from inside the train process or from outside it, and how to tell a run the machine starved
from one that idled).

It lives in the autolab package rather than in a task folder because every harness process
imports it: the papermill kernel that runs ``<task>_harness.runner``, and the sandboxed training,
evaluation and kernel-worker processes (their runners put the folder holding ``autolab`` on
``PYTHONPATH``, as they already do for ``autolab.sandbox``). A candidate cannot change it: its
editable files are the task's globs, the sandbox confines its writes to its own workspace, and
the package is the trusted code that hashes the protected files in the first place; a file in one
task folder would be protected for that task only. Standard library only: importing it loads no
pandas, torch or litellm, nor any other part of autolab.

    from autolab.harnesskit import atomic_write_json, load_module, result_skeleton, TreeCPU
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

CANDIDATE_MODULE = "__autolab_candidate__"


def result_skeleton(task: str, preset: str, seed: int, candidate_dir: str | os.PathLike, *,
                    timings: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A run's result JSON before anything is known: ``status`` "failed" with an empty reason,
    empty metrics, summary, curve, violations and probes (the contract in docs/ARCHITECTURE.md).
    ``timings`` starts the timings (e.g. the budget); ``extra`` adds task-specific keys after
    the common ones (``corpus``, ``target``, ``details``...)."""
    common = {"task", "preset", "seed", "candidate_dir", "status", "reason", "metrics", "timings", "summary",
              "curve", "violations", "probes"}
    clash = sorted(common & set(extra))
    if clash:
        raise TypeError(f"result_skeleton: {', '.join(clash)} are common keys; set them on the returned dict instead")
    return {"task": str(task), "preset": str(preset), "seed": int(seed), "candidate_dir": str(candidate_dir),
            "status": "failed", "reason": "", "metrics": {}, "timings": dict(timings or {}), "summary": {},
            "curve": [], "violations": [], "probes": {}, **extra}


def _tmp_name(path: Path) -> Path:
    # same folder (os.replace is atomic only within one file system), hidden, unique per writer
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")


def _atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, never
    a part: a temporary file in the same folder, fsynced, then ``os.replace``. A crash mid-write
    leaves the old file (and at most a hidden ``.<name>.tmp-*`` file next to it)."""
    _atomic(path, lambda fh: fh.write(data), "wb")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = True,
                      default: Callable[[Any], Any] | None = None, newline: bool = True) -> None:
    """``obj`` as JSON at ``path``, atomically (see :func:`atomic_write_bytes`); the text is
    ``json.dumps(obj, indent=, sort_keys=, default=)`` plus a final newline when ``newline``."""
    def write(fh) -> None:
        json.dump(obj, fh, indent=indent, sort_keys=sort_keys, default=default)
        if newline:
            fh.write("\n")

    _atomic(path, write, "w")


def load_module(path: str | os.PathLike, name: str = CANDIDATE_MODULE) -> ModuleType:
    """Import the Python file ``path`` as module ``name`` (registered in ``sys.modules``, so the
    classes it defines pickle and unpickle under that name); its ``if __name__ == "__main__":``
    block does not run. A file that fails to import is not left in ``sys.modules``."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}: not a Python source file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        if sys.modules.get(name) is mod:
            del sys.modules[name]
        raise
    return mod


# ----------------------------------------------------------------------------- compile caches
#
# torch.compile's caches (Inductor's FX graphs and AOT-autograd entries, Triton's kernels) kept
# across the runs of a lab, on the machine that runs them:
#
#     $AUTOLAB_CACHE/compile/<torch version>-<device>/<lab key>/<seed id>/{inductor,triton}
#
# Only the seed's own runs write that folder: it holds what compiling the lab's seed produced.
# Every other run gets a private folder, seeded from a copy of the seed's (plain files only), may
# read the seed's folder (Inductor's copied entries name their kernels there by absolute path),
# and its private folder is removed when the run has ended. So a candidate's cache entries
# (honest, stale, poisoned, or a file of weights saved to resume training from in a later run)
# reach no other run, not even its own next one, and nothing it writes reaches the harness
# (whose processes never compile). The lab names the candidate and its ancestors in the run's
# environment (COMPILE_CACHE_ENV); a run without it compiles cold, as before.

COMPILE_CACHE_ENV = "AUTOLAB_COMPILE_CACHE"          # "<lab key>/<candidate id>"
COMPILE_CACHE_FROM_ENV = "AUTOLAB_COMPILE_CACHE_FROM"  # ancestor ids, nearest first, comma-separated (the seed last)
_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."


def cache_root() -> Path:
    """``$AUTOLAB_CACHE`` or ``~/.cache/autolab``: this machine's cache folder."""
    return Path(os.environ.get("AUTOLAB_CACHE") or Path.home() / ".cache" / "autolab").expanduser()


def _slug(text: str) -> str:
    return "".join(c if c in _SAFE else "-" for c in text.strip())[:80].strip("-.") or "x"


def device_tag(device: str) -> str:
    """The torch version and the accelerator's model, read without initialising CUDA (the
    driver's /proc files): a cache written on one kind of GPU or torch is not read on another."""
    try:
        from importlib.metadata import version

        tv = version("torch")
    except Exception:  # noqa: BLE001 - no torch metadata: one tag for all
        tv = "torch"
    model = device
    if device.startswith("cuda"):
        for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
            try:
                for line in info.read_text().splitlines():
                    if line.startswith("Model:"):
                        model = line.split(":", 1)[1]
                        break
            except OSError:
                continue
            break
    return _slug(f"{tv}-{model}")


class CompileCache:
    """One run's torch.compile cache: ``folder`` (where it writes), ``read`` (folders it may also
    read), ``private`` (a per-run copy, removed by :meth:`discard` once the run has ended)."""

    def __init__(self, folder: Path, read: tuple[Path, ...] = (), private: bool = False):
        self.folder, self.read, self.private = folder, read, private

    def env(self) -> dict[str, str]:
        """The variables that point torch.compile (Inductor) and Triton at the folder."""
        return {"TORCHINDUCTOR_CACHE_DIR": str(self.folder / "inductor"), "TRITON_CACHE_DIR": str(self.folder / "triton")}

    def warm(self) -> bool:
        return any(p.is_file() for p in self.folder.rglob("*"))

    def discard(self) -> None:
        if self.private:
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)


def _lab_cache(tag: str, lab_key: str) -> Path:
    """A lab's compile-cache folder for one device tag (``device_tag``) on this machine."""
    return cache_root() / "compile" / tag / _slug(lab_key)


def compile_cache_for_run(device: str, env: dict[str, str] | None = None) -> CompileCache | None:
    """This run's compile cache (module comment above), or None when the run's environment names
    no lab candidate. ``device``: the preset's device. Trusted code (the task runners) calls it
    before the candidate starts, and :meth:`CompileCache.discard` after its processes ended."""
    env = os.environ if env is None else env
    lab_key, _, cand = env.get(COMPILE_CACHE_ENV, "").partition("/")
    if not lab_key or not cand:
        return None
    base = _lab_cache(device_tag(device), lab_key)
    chain = [a for a in env.get(COMPILE_CACHE_FROM_ENV, "").split(",") if a]
    if not chain:                                   # the seed's own run: the lab's shared folder
        own = base / _slug(cand)
        for sub in ("inductor", "triton"):
            (own / sub).mkdir(parents=True, exist_ok=True)
        return CompileCache(own)
    import secrets
    import shutil

    seed = base / _slug(chain[-1])
    private = base / "runs" / f"{_slug(cand)}.{os.getpid()}.{secrets.token_hex(4)}"
    private.parent.mkdir(parents=True, exist_ok=True)
    if seed.is_dir():
        try:
            shutil.copytree(seed, private, ignore=_only_plain)
        except (OSError, shutil.Error):
            shutil.rmtree(private, ignore_errors=True)
    for sub in ("inductor", "triton"):
        (private / sub).mkdir(parents=True, exist_ok=True)
    return CompileCache(private, read=(seed,) if seed.is_dir() else (), private=True)


def lab_compile_caches(lab_key: str) -> dict[str, Path]:
    """The compile caches a lab's seed runs wrote on this machine, by ``<device tag>/<seed id>``
    (every device and torch version it ran on; the per-run private copies are not included).
    ``autolab export-lab --compile-cache`` carries them to the next machine."""
    out: dict[str, Path] = {}
    for tag in sorted((cache_root() / "compile").glob("*")):
        base = _lab_cache(tag.name, lab_key)
        if not base.is_dir() or base.is_symlink():
            continue
        for cand in sorted(base.iterdir()):
            if cand.is_dir() and not cand.is_symlink() and cand.name != "runs":
                out[f"{tag.name}/{cand.name}"] = cand
    return out


def seed_cache_ready(lab_key: str, seed_id: str, device: str) -> bool:
    """True when this machine holds the compile cache a lab's seed runs wrote for this device
    and torch version (what every other run of the lab starts from)."""
    return CompileCache(_lab_cache(device_tag(device), lab_key) / _slug(seed_id)).warm()


def install_compile_caches(lab_key: str, unpacked: Path, recorded_root: str) -> tuple[list[str], str]:
    """Put compile caches carried in a lab archive (``unpacked/<device tag>/<seed id>``) where
    this machine's runs of the lab look for them. Returns (what was installed, why the rest was
    not). Nothing is installed when the archive's cache root differs from this machine's
    (Inductor's entries name their kernels by absolute path there; the runs would compile cold
    anyway), and an existing folder is never replaced (it is this machine's own)."""
    import shutil

    here = str(cache_root().resolve())
    if recorded_root and recorded_root != here:
        return [], (f"not installed: the caches were written under {recorded_root}, and this machine's cache is "
                    f"{here} (set AUTOLAB_CACHE={recorded_root} to use them)")
    done, kept = [], []
    for tag in sorted(unpacked.iterdir()) if unpacked.is_dir() else []:
        for cand in sorted(tag.iterdir()) if tag.is_dir() else []:
            if not cand.is_dir() or cand.name == "runs" or _slug(tag.name) != tag.name or _slug(cand.name) != cand.name:
                continue
            dest = _lab_cache(tag.name, lab_key) / cand.name
            if dest.exists():
                kept.append(f"{tag.name}/{cand.name}")
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(cand, dest, ignore=_only_plain)
            done.append(f"{tag.name}/{cand.name}")
    return done, (f"kept this machine's own: {', '.join(kept)}" if kept else "")


def _only_plain(folder: str, names: list[str]) -> list[str]:
    """copytree's ignore: every name but plain files and folders. The copy runs in trusted code
    that may read what a run may not: a link must not be followed (its target would be copied
    in), and a FIFO must not be opened (the copy would block)."""
    import stat

    out = []
    for n in names:
        try:
            m = os.lstat(os.path.join(folder, n)).st_mode
        except OSError:
            out.append(n)
            continue
        if not (stat.S_ISREG(m) or stat.S_ISDIR(m)):
            out.append(n)
    return out


# ----------------------------------------------------------------------------- the CPU clock
#
# On a preset with ``clock = "cpu"`` (nanochat's and speedrun's CPU presets) the training budget
# is CPU seconds (user + system) of the whole train process tree, so that a busy machine slows a
# run down without shortening its training. The train process reads its own tree (the harness's
# clock); the runner reads the same tree from outside (its check of that clock); the sandbox
# enforces the limit on the tree's CPU and keeps a wall-clock safety net, whose kills are the
# machine's fault when the run was starved (:func:`machine_starved`, :func:`wall_net_reason`).


def _proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, first)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:].split()


class TreeCPU:
    """CPU seconds (user + system) used so far by a process tree: the root (all its threads), its
    children that were waited for, and its live descendants (with what they waited for in turn).
    ``root``: a pid, or None for this process (read with ``os.times``). The descendants are found
    by a scan of /proc at most every ``scan_s`` seconds (:meth:`rescan` forces one at the next
    reading); between scans only their own stat files are read. A reading never decreases.

    From inside the train process (``TreeCPU()``) it is the harness's CPU clock; from outside
    (``TreeCPU(pid)``, the sandbox's first process) it is the runner's view of the same tree, with
    the sandbox's supervisors' own few milliseconds on top."""

    def __init__(self, root: int | None = None, scan_s: float = 1.0) -> None:
        self.root, self.scan_s = root, float(scan_s)
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.desc: dict[int, bytes] = {}   # pid -> start time field (a reused pid is not ours)
        self.next_scan = 0.0
        self.best = 0.0

    _stat = staticmethod(_proc_stat)

    def rescan(self) -> None:
        self.next_scan = 0.0

    def _scan(self) -> None:
        children: dict[int, list[tuple[int, bytes]]] = {}
        try:
            names = os.listdir("/proc")
        except OSError:
            return
        for name in names:
            if name.isdigit():
                rest = self._stat(int(name))
                if rest and len(rest) > 19:
                    children.setdefault(int(rest[1]), []).append((int(name), rest[19]))
        found: dict[int, bytes] = {}
        todo = [os.getpid() if self.root is None else self.root]
        while todo:
            for pid, st in children.get(todo.pop(), ()):
                if pid not in found:
                    found[pid] = st
                    todo.append(pid)
        self.desc = found

    def _own(self) -> float:
        if self.root is None:
            t = os.times()
            return t.user + t.system + t.children_user + t.children_system
        rest = self._stat(self.root)
        if not rest or len(rest) <= 14:
            return 0.0                         # gone: the best reading so far stands
        return (int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])) / (self.hz or 100)

    def __call__(self) -> float:
        total = self._own()
        now = time.monotonic()
        if now >= self.next_scan:
            self.next_scan = now + self.scan_s
            self._scan()
        ticks = 0
        for pid, st in list(self.desc.items()):
            rest = self._stat(pid)
            if not rest or len(rest) <= 19 or rest[19] != st:
                del self.desc[pid]        # gone: its CPU is now in its parent's children figures
                continue
            ticks += int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])   # utime stime cutime cstime
        self.best = max(self.best, total + ticks / (self.hz or 100))
        return self.best


def idle_core_seconds() -> float | None:
    """Idle CPU seconds of the whole machine so far, summed over its cores (/proc/stat: idle +
    iowait), or None where it cannot be read."""
    try:
        with open("/proc/stat") as fh:
            f = fh.readline().split()
        return (int(f[4]) + int(f[5])) / (os.sysconf("SC_CLK_TCK") or 100)
    except (OSError, ValueError, IndexError):
        return None


def machine_starved(wall_s: float, cpu_s: float | None, wait_s: float | None, idle_s: float | None = None,
                    need_s: float | None = None) -> bool:
    """Did the machine starve a process tree that ran ``wall_s`` seconds? Yes when its processes
    were running (``cpu_s``) or runnable but waiting for a CPU (``wait_s``, the schedstat run
    delay) at least half of the time; where the wait is not known, when the machine had fewer
    idle core-seconds (``idle_s``) than the tree still needed (``need_s``)."""
    if wait_s is not None:
        return (cpu_s or 0.0) + wait_s >= 0.5 * wall_s
    return idle_s is not None and need_s is not None and idle_s < need_s


def wall_net_reason(wall_s: float, cpu_used: float, limit: float, factor: float, idle: float | None,
                    wait: float | None = None) -> str:
    """Why the wall-clock safety net of a cpu-clock run fired: the machine starved the run (an
    infrastructure failure, the reason starts with ``infrastructure:``) or the run did not use the
    CPU it could have (the candidate's, ``timeout:``). ``limit``: the run's CPU seconds limit;
    ``factor``: the preset's ``wall_factor``; ``idle``: the machine's idle core-seconds meanwhile;
    ``wait``: seconds the run's processes waited for a CPU."""
    need = max(0.0, limit - cpu_used)
    net = f"the wall-clock safety net ({factor:g} x the {limit:g} CPU s limit = {factor * limit:g} s)"
    if machine_starved(wall_s, cpu_used, wait, idle, need):
        waited = f", waited {wait:.0f} s for a CPU" if wait is not None else ""
        spare = f" (the machine had {idle:.1f} idle core-seconds)" if idle is not None else ""
        return (f"infrastructure: the machine was too busy: in {wall_s:.0f} s of wall time the run got "
                f"{cpu_used:.1f} of its {limit:g} CPU seconds{waited}{spare}, so {net} ended it; not the "
                f"candidate's fault: run it again on a less loaded machine (or raise wall_factor in task.toml)")
    return (f"timeout: the train process used only {cpu_used:.1f} CPU seconds in {wall_s:.0f} s of wall time while "
            f"the machine had {'' if idle is None else f'{idle:.0f} '}idle core-seconds: it waited (sleep, I/O, a "
            f"lock) instead of training, past {net}, and was killed")
