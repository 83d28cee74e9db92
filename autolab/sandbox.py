"""Run untrusted candidate code in a sandboxed process tree.

``run_sandboxed(argv, cwd=..., policy=..., limits=...)`` starts ``argv`` with:

- a **scrubbed environment** (an allow-list; nothing that looks like a secret, ever);
- **no network**: a new network namespace without interfaces when the kernel allows
  (``net_isolation == "netns"``), plus, in every Python process, an audit hook that denies
  socket use (``"audit-hook-only"`` where namespaces are not available);
- **file-system rules**: reads of ``policy.read_deny`` and writes outside the working
  directory, ``policy.write_allow`` and a private tmp/home are denied by the audit hook in
  Python processes and, where the kernel allows, also below Python: denied paths are
  covered by empty read-only mounts in a private mount namespace and writes are confined
  by Landlock;
- **limits**: rlimits (file size, open files, CPU, no core dumps), and a watchdog (on the
  calling thread, which ``run_sandboxed`` blocks; output is read on a helper thread) that
  every 0.25 s sums the memory (PSS) of the whole process tree, counts its processes and
  checks the wall clock, killing the whole tree on excess (the tree's PSS is read at each poll
  only once its RSS, which is never less, is past 90% of the limit, else once a second for the
  reported peak: reading PSS walks a process's page tables, milliseconds for one that maps torch);
- **reads by allow-list** (``Policy(read_allow=(...))``): only the given paths, the workspace,
  the Python environment and the system folders can be opened, by Landlock where the kernel
  has it, else through the mount table; the audit hook (installed before the first line of
  the candidate's program) refuses and records every other read;
- **nothing outlives the work**: the tree runs in its own PID namespace (else under a child
  subreaper); what is still running when the main process has exited, or what works after
  the ``Limits.end_marker`` line, is killed and reported as a ``process`` violation, and the
  main process must exit within ``Limits.after_end_s`` of the marker. ``SandboxResult.cpu_s``
  counts the CPU of every process of the run;
- **less privilege**: capabilities such as SYS_ADMIN, SYS_PTRACE and NET_ADMIN are
  dropped and ``no_new_privs`` is set (when running as root, as on the lab machines).

Denied actions raise ``PermissionError`` inside the child and come back as
``SandboxResult.violations``. ``SandboxResult.isolation`` says which layers held on this
machine. The setup is done by ``autolab/_sandbox_boot.py`` (a trampoline exec'd by
``subprocess``, and the ``sitecustomize`` that installs the audit hook).

Importing this module has no side effects (no signal handlers, no logging setup, no event
loop), so it is safe in a Jupyter kernel.

Known gaps: the audit hook lives in the candidate's own process, so code that uses ctypes
(or digs through ``gc``) can get around it, and ``os.open(..., dir_fd=...)`` is not seen
by path; the kernel layers are what hold then, and ``isolation`` says whether they did.
Memory is polled, not capped by a cgroup: an allocation faster than 0.25 s can overshoot
before the kill; GPU memory is not counted. ``/proc`` stays writable for the process's own
entries (CUDA needs it); its host-wide parts are made read-only in the mount namespace.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from autolab import _sandbox_boot as _boot

__all__ = ["Limits", "Policy", "SandboxResult", "scrubbed_env", "run_sandboxed", "is_secret_name"]

ENV_CONFIG = _boot.ENV_CONFIG
_BOOT_FILE = Path(_boot.__file__).resolve()
_TAIL_CHARS = 20_000
_POLL_S = 0.25
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_PEAK_S = 1.0   # how often the tree's PSS is read for peak_memory_mb while its RSS is within the limit
_MAX_VIOLATIONS = 1000


# ----------------------------------------------------------------------------- types


@dataclass(frozen=True)
class Limits:
    wall_s: float = 600.0          # wall-clock limit: kill the whole tree after this
    memory_mb: int | None = 8192   # memory of the whole process tree (PSS); watchdog kills above it
    cpu_s: int | None = None       # RLIMIT_CPU per process
    tree_cpu_s: float | None = None  # CPU seconds (user + system) of the whole tree, every process and thread
    #                                  (polled from /proc like memory); the watchdog kills above it, reason "cpu"
    nproc: int | None = 256        # max processes in the tree (watchdog-enforced; RLIMIT_NPROC is not enforced for root)
    fsize_mb: int | None = 2048    # RLIMIT_FSIZE
    open_files: int = 1024
    # The end of the candidate's work (e.g. the model saved): the first output line that starts
    # with ``end_marker``. From then on a process of the tree other than the main one that uses
    # more than ``end_cpu_s`` of CPU (it is working after the end) is killed and reported as a
    # ``process`` violation, and the main process must exit within ``after_end_s`` (else the whole
    # run is killed and reported). Whether or not a marker is set, any process still alive when
    # the main process has exited (after a 1 s grace to exit on its own) is killed and reported.
    end_marker: str | None = None
    after_end_s: float = 10.0
    end_cpu_s: float = 0.3


@dataclass(frozen=True)
class Policy:
    read_deny: tuple[str, ...] = ()    # absolute paths (files or dirs) the child may not open for reading
    read_allow: tuple[str, ...] | None = None  # None: reads are a deny-list. A tuple: reads are an allow-list:
    #                                     these paths (dirs: everything beneath; files: that file) plus the
    #                                     sandbox's own (cwd, writable dirs, private tmp/home, the Python
    #                                     environment, system folders, $AUTOLAB_SANDBOX_READ_ALLOW); the
    #                                     folders on PYTHONPATH/sys.path may be listed, not read. Enforced by
    #                                     Landlock where the kernel has it, recorded by the audit hook always.
    write_allow: tuple[str, ...] = ()  # absolute dirs the child may write in (plus its cwd and a private tmp dir)
    network: bool = False               # False: no network at all
    audit_python: bool = True           # install the Python audit hook in Python children
    loopback: bool = False              # with network=False: a private loopback inside the run's own network
    #                                     namespace (torchrun/NCCL between the run's processes); the host's and
    #                                     the parent's servers stay unreachable
    harden: bool = True                 # kernel layers: mount/PID/IPC namespaces, Landlock, dropped capabilities
    deny_secrets: bool = True           # also deny reading well-known credential files (~/.ssh, ~/.aws, ...)
    relax: tuple[str, ...] = ()         # with harden: kernel layers to leave out, among "mount", "pid", "ipc",
    #                                     "proc", "proc_ro", "shm", "read_deny", "landlock", "landlock-net",
    #                                     "landlock-scope", "caps", "nnp" (for a machine where one breaks a tool)


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None
    state: str            # "ok" (exit 0), "failed" (non-zero exit), "killed"
    reason: str           # "", "timeout", "memory", "nproc", "cpu", "signal N", "exit code N"
    wall_s: float
    violations: tuple[dict, ...]   # each {"kind": "network"|"file_read"|"file_write"|"subprocess"|"env"|..., "detail": str}
    stdout_tail: str      # last ~20 kB of combined stdout/stderr
    net_isolation: str = "none"    # "netns", "audit-hook-only", "none" (no isolation), "host" (network allowed)
    isolation: Mapping[str, str] = field(default_factory=dict)  # which layers held (see module docstring)
    peak_memory_mb: float = 0.0
    peak_nproc: int = 0
    cpu_s: float | None = None     # CPU seconds (user + system) of every process of the run, children included
    wait_s: float | None = None    # seconds its processes' main threads waited for a CPU, runnable (schedstat run
    #                                delay, as last polled): a run starved by a busy machine waits a lot, a sleeper not
    end_s: float | None = None     # seconds from the start to the end marker's line (None: no marker seen)
    after_end_s: float | None = None  # seconds the run went on after the end marker
    survivors: tuple[dict, ...] = ()  # processes ended because they outlived the main one or the end marker

    @property
    def ok(self) -> bool:
        return self.state == "ok"


# ----------------------------------------------------------------------------- environment

is_secret_name = _boot._is_secret_name

_ALLOWED_NAMES = frozenset([
    "PATH", "LANG", "LC_ALL", "LC_CTYPE", "LANGUAGE", "TZ", "TERM",
    "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "TOKENIZERS_PARALLELISM", "LD_LIBRARY_PATH",
])
_ALLOWED_PREFIXES = ("NVIDIA_", "CUDA_", "TRITON_", "TORCH", "PYTORCH_", "NCCL_", "NVSHMEM_", "CUBLAS_", "CUDNN_")
# Writable locations (compile caches and the like) are not inherited: the candidate would
# either be refused writing there or share (and could poison) a cache with other runs. Pass
# one in ``env`` (and its folder in ``Policy.write_allow``) to share a cache on purpose.
_LOCATION_NAME = re.compile(r"CACHE|^TORCH_HOME$|^TRITON_HOME$|_EXTENSIONS_DIR$|_DUMP_DIR$|_OVERRIDE_DIR$|_DEBUG_DIR$")
# Values that are credentials whatever their variable is called.
_SECRET_VALUE = re.compile(
    r"(sk-[A-Za-z0-9_\-]{20,}|sk-ant-[A-Za-z0-9_\-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|hf_[A-Za-z0-9]{30,}|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{35})"
)


def _check_not_secret(name: str, value: str | None, where: str) -> None:
    if is_secret_name(name):
        raise ValueError(
            f"{where}: {name!r} looks like a secret (API key, token, credential); candidate code must "
            f"never see one. Remove it, or rename it if it is not a secret.")
    if value is not None and _SECRET_VALUE.fullmatch(value.strip()):
        raise ValueError(f"{where}: the value of {name!r} looks like an API key or token; remove it.")


def scrubbed_env(extra: Mapping[str, str] | None = None, *, keep: Iterable[str] = ()) -> dict[str, str]:
    """The environment a candidate gets: an allow-list taken from ``os.environ`` (PATH,
    locale, TZ, CUDA/NVIDIA/NCCL/NVSHMEM/TRITON/TORCH variables, thread counts; not cache
    locations such as TORCHINDUCTOR_CACHE_DIR) plus the names in ``keep``, then ``extra``.
    Secret-looking variables are never passed; asking for one in ``keep`` or ``extra``
    raises ``ValueError``. (``run_sandboxed`` then sets HOME and TMPDIR to private
    directories.)"""
    keep = [keep] if isinstance(keep, str) else list(keep)
    for name in keep:
        _check_not_secret(name, None, "scrubbed_env(keep=...)")
    env: dict[str, str] = {}
    for name, value in os.environ.items():
        if not (name in _ALLOWED_NAMES or name.startswith(_ALLOWED_PREFIXES) or name in keep):
            continue
        if name not in keep and _LOCATION_NAME.search(name):
            continue
        if is_secret_name(name) or _SECRET_VALUE.fullmatch(value.strip()):
            continue  # e.g. a TORCH_..._TOKEN: silently left out
        env[name] = value
    for name, value in (extra or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"scrubbed_env(extra=...): {name!r}={value!r}: names and values must be str")
        _check_not_secret(name, value, "scrubbed_env(extra=...)")
        env[name] = value
    env.setdefault("PATH", os.defpath)
    return env


_HOME_SECRETS = (
    ".ssh", ".aws", ".azure", ".config/gcloud", ".config/gh", ".docker", ".kube", ".gnupg", ".netrc",
    ".git-credentials", ".pypirc", ".kaggle", ".huggingface", ".cache/huggingface/token",
    ".cache/huggingface/stored_tokens", ".config/litellm", ".bash_history", ".python_history",
    ".npmrc", ".yarnrc", ".yarnrc.yml", ".cargo/credentials", ".cargo/credentials.toml", ".config/pip", ".pip",
    ".config/hub", ".config/openai", ".config/anthropic", ".claude", ".claude.json", ".wandb", ".netrc.gpg",
    ".config/rclone", ".terraform.d", ".vault-token", ".mlflow", ".databrickscfg",
)

# Paths that autolab's own processes put here (os.pathsep-separated) for every sandboxed child of
# theirs to be denied: the research log of the lab, the benchmark kernel's connection file and
# sockets. A run's papermill process and its kernel inherit it; the candidate never sees it.
PRIVATE_PATHS_ENV = "AUTOLAB_PRIVATE_PATHS"


def private_paths(*paths: str) -> str:
    """The value of AUTOLAB_PRIVATE_PATHS with ``paths`` added to what os.environ already has."""
    return os.pathsep.join(p for p in (*paths, os.environ.get(PRIVATE_PATHS_ENV, "")) if p)


def _secret_paths() -> list[str]:
    homes = {os.path.expanduser("~"), "/root"}
    paths = [os.path.join(h, rel) for h in sorted(homes) for rel in _HOME_SECRETS]
    for var, rel in (("HF_HOME", "token"), ("HF_TOKEN_PATH", "")):
        if os.environ.get(var):
            paths.append(os.path.join(os.environ[var], rel) if rel else os.environ[var])
    paths += [p for p in os.environ.get(PRIVATE_PATHS_ENV, "").split(os.pathsep) if os.path.isabs(p)]
    return paths


# ----------------------------------------------------------------------------- reads by allow-list

READ_ALLOW_ENV = "AUTOLAB_SANDBOX_READ_ALLOW"  # more readable paths for this machine (os.pathsep-separated)
# System folders every program needs (libraries, devices, the CUDA driver and toolkit under
# /usr, /proc and /sys for CPU and GPU discovery); nothing a lab writes lives there.
_SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev",
                "/run/nvidia-persistenced", "/run/nvidia-fabricmanager")


def python_read_paths(python: str | None = None) -> list[str]:
    """The folders of the Python environment: prefixes, stdlib, site-packages, the interpreter's folder."""
    import sysconfig

    out = [sys.prefix, sys.base_prefix, sys.exec_prefix, getattr(sys, "base_exec_prefix", sys.prefix)]
    out += [v for k, v in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib")]
    for exe in (sys.executable, python):
        if exe and os.path.isabs(exe):
            out.append(os.path.dirname(os.path.realpath(exe)))
    return out


def _read_allow_config(policy: Policy, argv: Sequence[str], cwd: str, write_dirs: Sequence[str], private: Path,
                       child_env: Mapping[str, str]) -> dict | None:
    """{"trees", "files", "lists"} (real paths) for the boot program and the audit hook, or None."""
    if policy.read_allow is None:
        return None
    trees: list[str] = [cwd, *write_dirs, str(private), *_SYSTEM_READ, *python_read_paths(argv[0])]
    files: list[str] = []
    given = [*policy.read_allow, *(p for p in os.environ.get(READ_ALLOW_ENV, "").split(os.pathsep) if p)]
    for p in given:
        if not os.path.isabs(p):
            raise ValueError(f"Policy.read_allow / ${READ_ALLOW_ENV}: {p!r} is not an absolute path; give "
                             f"absolute paths")
    # the dynamic linker's and CUDA's own folders, as the child's environment names them
    given += [p for p in child_env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if os.path.isabs(p)]
    given += [child_env[k] for k in ("CUDA_HOME", "CUDA_PATH") if os.path.isabs(child_env.get(k) or "")]
    for p in given:
        (trees if os.path.isdir(p) else files).append(p)
    # folders Python lists to import from: names only, never contents
    lists = [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if os.path.isabs(p)]
    lists += [p for p in sys.path[1:] if p and os.path.isabs(p)]  # not [0]: the calling script's folder
    # ...and the distribution metadata in them (importlib.metadata reads it: `import torch` looks
    # up its backends' entry points on every sys.path folder); metadata holds no data of a run
    trees += [str(m) for d in lists if os.path.isdir(d) for pat in ("*.dist-info", "*.egg-info")
              for m in Path(d).glob(pat) if m.is_dir()]

    def real(paths: Iterable[str]) -> list[str]:
        return list(dict.fromkeys(os.path.realpath(p) for p in paths if os.path.lexists(p)))

    trees = real(trees)
    files = [f for f in real(files) if not any(_is_under(f, t) for t in trees)]
    lists = [d for d in real(lists) if os.path.isdir(d) and not any(_is_under(d, t) for t in trees)]
    return {"trees": trees, "files": files, "lists": lists}


# ----------------------------------------------------------------------------- /proc


def _scan_proc() -> dict[int, tuple[int, int, int, bytes]]:
    """pid -> (ppid, session, start time, state) for every process we can see."""
    out = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            rest = data[data.rfind(b")") + 2:].split()
            out[int(name)] = (int(rest[1]), int(rest[3]), int(rest[19]), rest[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def _rss_kb(pid: int) -> int:
    """Resident set size, never less than the proportional set size and cheap to read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def _memory_kb(pid: int) -> int:
    """Proportional set size (shared pages split among their users, so the sum over a
    tree is not inflated by shared libraries or fork), falling back to RSS."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def _alive(pid: int, state: bytes) -> bool:
    """Whether a scanned process still runs code: not a zombie, or a zombie leader whose other
    threads go on (a main thread that called pthread_exit shows ``Z`` while its process runs)."""
    if state != b"Z":
        return True
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def _signal_members(members: dict, first: int, sig: int) -> None:
    """Send ``sig`` to every process of a tree scan but ``first`` (the tree's supervisor); a
    zombie too (a signal to a real one is ignored; a leader that shows ``Z`` may have threads
    that run: the signal stops or continues them all)."""
    for pid in members:
        if pid != first:
            try:
                os.kill(pid, sig)
            except OSError:
                pass


class _Tree:
    """The processes of one run: descendants of the root (by ppid), members of its session,
    and every process seen in it before (by pid and start time, so a process that called
    setsid and was re-parented is still found)."""

    def __init__(self, root: int):
        self.root = root
        self.root_reaped = False  # once it is, its pid (and group/session number) may be reused
        self.known: dict[int, int] = {}

    def scan(self) -> dict[int, tuple[int, int, int, bytes]]:
        procs = _scan_proc()
        children: dict[int, list[int]] = collections.defaultdict(list)
        for pid, (ppid, _, _, _) in procs.items():
            children[ppid].append(pid)
        alive_known = [p for p in procs if self.known.get(p) == procs[p][2]]
        # The session number stays reserved while one of its members lives: trust it while
        # the root is unreaped or a process we already know is still in the session.
        by_session = not self.root_reaped or any(procs[p][1] == self.root for p in alive_known)
        start = alive_known + [p for p in procs if (p == self.root and not self.root_reaped)
                               or (by_session and procs[p][1] == self.root)]
        members: dict[int, tuple[int, int, int, bytes]] = {}
        while start:
            pid = start.pop()
            if pid in members or pid not in procs:
                continue
            members[pid] = procs[pid]
            start.extend(children.get(pid, ()))
        self.known = {p: v[2] for p, v in members.items()}
        return members

    def kill(self, rounds: int = 60) -> None:
        """SIGKILL the whole tree, repeatedly, until nothing of it is left."""
        for _ in range(rounds):
            members = self.scan()
            alive = {p for p, v in members.items() if _alive(p, v[3])}
            if not alive:
                return
            if not self.root_reaped:
                try:
                    os.killpg(self.root, signal.SIGKILL)
                except OSError:
                    pass
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.02)


def _describe(pid: int) -> dict:
    info = {"pid": pid, "comm": "?", "cmdline": ""}
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            info["comm"] = f.read().decode("utf-8", "replace").strip()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            info["cmdline"] = f.read(400).replace(b"\0", b" ").decode("utf-8", "replace")
            info["cmdline"] = " ".join(info["cmdline"].split())[:200]
    except OSError:
        pass
    return info


class _Ender:
    """Ends the candidate's processes at the end of its work and says which ones it had to end.

    The main process is the candidate's first process: pid 2 of the run's PID namespace (the
    namespace's init is pid 1), or the pid the subreaper wrote to ``root_path``. After the end
    marker, every other process that works (uses more than ``end_cpu_s`` of CPU) is killed and
    reported, and the main process must exit within ``after_end_s``. (What outlives the main process is
    ended and reported by the supervisor itself, see _sandbox_boot._end_leftovers.) Also sums
    the CPU time of every process it sees, a fallback when the supervisor's exact figure is lost
    (a run killed for a limit)."""

    def __init__(self, trampoline: int, root_path: Path, limits: Limits):
        self.tramp, self.root_path, self.limits = trampoline, root_path, limits
        self.root: tuple[int, int] | None = None
        self.violations: list[dict] = []
        self.survivors: list[dict] = []
        self.reported: set[int] = set()
        self.ticks: dict[tuple[int, int], int] = {}
        self.waits: dict[tuple[int, int], int] = {}   # run-queue delay (ns) of each process's main thread
        self.at_end: dict[tuple[int, int], int] | None = None  # ticks when the end marker came
        self.root_over = False

    def account(self, members: Mapping[int, tuple]) -> None:
        for pid, v in members.items():
            if pid == self.tramp:
                continue
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    data = f.read()
                rest = data[data.rfind(b")") + 2:].split()
                t = int(rest[11]) + int(rest[12])
            except (OSError, ValueError, IndexError):
                continue
            key = (pid, v[2])
            self.ticks[key] = max(self.ticks.get(key, 0), t)
            try:
                with open(f"/proc/{pid}/schedstat", "rb") as f:
                    self.waits[key] = max(self.waits.get(key, 0), int(f.read().split()[1]))
            except (OSError, ValueError, IndexError):
                pass

    def cpu_estimate(self) -> float:
        return sum(self.ticks.values()) / (os.sysconf("SC_CLK_TCK") or 100)

    def wait_estimate(self) -> float | None:
        return sum(self.waits.values()) / 1e9 if self.waits else None

    def _find_root(self, members: Mapping[int, tuple], supervisors: set[int], pidns: bool) -> int | None:
        if self.root is not None:
            pid, st = self.root
            return pid if pid in members and members[pid][2] == st else None
        if pidns:
            for pid, v in members.items():
                if v[0] in supervisors and pid not in supervisors:
                    try:
                        with open(f"/proc/{pid}/status", "rb") as f:
                            ns = [ln for ln in f.read().splitlines() if ln.startswith(b"NSpid:")]
                    except OSError:
                        continue
                    if ns and ns[0].split()[-1] == b"2":
                        self.root = (pid, v[2])
                        return pid
            return None
        try:
            pid = int(self.root_path.read_text())
        except (OSError, ValueError):
            return None
        if pid in members and members[pid][0] == self.tramp:
            self.root = (pid, members[pid][2])
            return pid
        return None

    def add(self, info: Mapping, why: str) -> None:
        info = {"pid": info.get("pid"), "comm": str(info.get("comm", "?")), "cmdline": str(info.get("cmdline", ""))}
        self.survivors.append(info)
        cmd = f": {info['cmdline'][:120]}" if info["cmdline"] else ""
        self.violations.append({"kind": "process", "detail": f"process {info['pid']} ({info['comm']!r}{cmd}) {why}; "
                                                             f"it was ended (nothing of the candidate may outlive "
                                                             f"its work: end every process you start before then)"})

    def report(self, pids: Iterable[int], why: str) -> None:
        for pid in pids:
            if pid in self.reported:
                continue
            self.reported.add(pid)
            self.add(_describe(pid), why)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def after_marker(self, members: Mapping[int, tuple], pidns: bool, since: float) -> bool:
        """Called at each scan (after ``account``) once the end marker has come; True: end the
        whole run now."""
        if self.at_end is None:
            self.at_end = dict(self.ticks)
        supervisors = {self.tramp} | ({p for p, v in members.items() if v[0] == self.tramp} if pidns else set())
        root = self._find_root(members, supervisors, pidns)
        if root is None or not _alive(root, members[root][3]):
            return False  # the main process has exited: its supervisor ends and reports the rest
        hz = os.sysconf("SC_CLK_TCK") or 100
        busy = []
        for p, v in members.items():
            if p in supervisors or p == root or not _alive(p, v[3]):
                continue
            used = (self.ticks.get((p, v[2]), 0) - self.at_end.get((p, v[2]), 0)) / hz
            if used > self.limits.end_cpu_s:
                busy.append((p, used))
        for p, used in busy:
            self.report([p], f"was still working after the end marker ({self.limits.end_marker!r}, e.g. the model "
                             f"saved): {used:.2f}s of CPU in the {since:.1f}s since")
        if since >= self.limits.after_end_s and not self.root_over:
            self.root_over = True
            self.report([p for p, v in members.items() if p not in supervisors and p != root and _alive(p, v[3])],
                        f"was still running {since:.1f}s after the end marker ({self.limits.end_marker!r})")
            info = _describe(root)
            self.violations.append({"kind": "process", "detail": (
                f"the main process {root} ({info['comm']!r}) was still running {since:.1f}s after the end marker "
                f"({self.limits.end_marker!r}), past the allowance of {self.limits.after_end_s:g}s; the run was "
                f"ended. Exit right after the end (finish() then the summary lines)")})
            return True
        return False


# ----------------------------------------------------------------------------- output


class _Output:
    """Reads the child's combined stdout/stderr on a thread: lines go to the log file, a
    bounded tail, and a queue drained by the caller's thread for ``on_line``."""

    def __init__(self, fd: int, log, want_lines: bool, marker: str | None = None):
        self.fd = fd
        self.marker = marker
        self.marker_t: float | None = None  # monotonic time the first marker line arrived
        self.tail: collections.deque[str] = collections.deque()
        self.tail_chars = 0
        self.lines: queue.Queue[str] | None = queue.Queue() if want_lines else None
        self.dropped = 0
        self.log = log
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._pump, name="autolab-sandbox-output", daemon=True)
        self.thread.start()

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        if self.marker is not None and self.marker_t is None and line.startswith(self.marker):
            self.marker_t = time.monotonic()
        if self.log is not None:
            self.log.write(line + "\n")
        self.tail.append(line)
        self.tail_chars += len(line) + 1
        while self.tail_chars > _TAIL_CHARS and len(self.tail) > 1:
            self.tail_chars -= len(self.tail.popleft()) + 1
        if self.lines is not None:
            if self.lines.qsize() > 100_000:  # on_line is far behind: drop rather than slow the child
                self.dropped += 1
            else:
                self.lines.put(line)

    def _pump(self) -> None:
        buf = b""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        try:
            while not self.stop.is_set():
                if not poller.poll(100):
                    if self.log is not None:
                        self.log.flush()
                    continue
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    self._line(raw)
                if len(buf) > 65536:  # a very long line without newline: pass it on in pieces
                    self._line(buf)
                    buf = b""
            if buf:
                self._line(buf)
        except OSError:
            pass
        finally:
            if self.log is not None:
                self.log.flush()

    def close(self, grace_s: float) -> None:
        self.thread.join(grace_s)
        self.stop.set()
        self.thread.join(2.0)
        if self.log is not None and not self.thread.is_alive():
            self.log.close()

    def text(self) -> str:
        text = "\n".join(self.tail)
        return text[-_TAIL_CHARS:]


class _Violations:
    """Incremental reader of the violations file the audit hooks append to."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.items: list[dict] = []
        self.seen: set[tuple[str, str]] = set()

    def read(self) -> None:
        if len(self.items) >= _MAX_VIOLATIONS:
            return
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(1 << 20)
        except OSError:
            return
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        for raw in lines:
            self.add_line(raw)

    def add_line(self, raw: bytes) -> None:
        try:
            obj = json.loads(raw)
            item = {"kind": str(obj["kind"]), "detail": str(obj["detail"])}
        except (ValueError, KeyError, TypeError):
            return
        key = (item["kind"], item["detail"])
        if key not in self.seen and len(self.items) < _MAX_VIOLATIONS:
            self.seen.add(key)
            self.items.append(item)


# ----------------------------------------------------------------------------- running

_PY_EXE = re.compile(r"^(python|pypy)[0-9.]*[a-z]?$")


def _check_python_flags(argv: Sequence[str]) -> None:
    if not _PY_EXE.match(os.path.basename(argv[0])):
        return
    for arg in argv[1:]:
        if not arg.startswith("-") or arg in ("-c", "-m", "-"):
            return
        if arg.startswith("--") or arg[:2] in ("-W", "-X"):
            continue
        if any(letter in arg[1:] for letter in "IES"):
            raise ValueError(
                f"{argv[0]} {arg}: the sandbox's audit hook is installed through site and PYTHONPATH; "
                f"drop -I/-E/-S, or pass Policy(audit_python=False).")
        if "c" in arg or "m" in arg:
            return


def _python() -> str:
    exe = sys.executable or shutil.which("python3") or "/usr/bin/python3"
    return exe


def _abs_dirs(paths: Iterable[str], what: str) -> list[str]:
    out = []
    for p in paths:
        if not os.path.isabs(p):
            raise ValueError(f"Policy.{what}: {p!r} is not an absolute path")
        out.append(os.path.realpath(p))
    return out


def _is_under(path: str, parent: str) -> bool:
    return path == parent or parent == "/" or path.startswith(parent.rstrip("/") + "/")


def run_sandboxed(
    argv: Sequence[str],
    *,
    cwd: str | Path,
    policy: Policy = Policy(),
    limits: Limits = Limits(),
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    log_path: str | Path | None = None,
    keep: Iterable[str] = (),
    live: dict | None = None,
) -> SandboxResult:
    """Run ``argv`` in ``cwd`` under ``policy`` and ``limits``; block until it ends.

    ``env`` is added to the scrubbed environment (``PYTHONPATH`` only if given here);
    ``keep`` names more variables to copy from ``os.environ``. Output lines go to
    ``on_line`` (called on this thread) and ``log_path`` as they come. ``live``: a dict shared
    with the caller's other threads while the child runs: ``live["pid"]`` is set to the tree's
    first process once it started (the root of the tree, e.g. for a CPU reading of it from
    outside, ``autolab.harnesskit.TreeCPU``), and the tree is killed (reason
    ``timeout``) once ``time.monotonic()`` passes ``live["deadline"]`` when the caller has set
    one (a limit that can move while the run goes, e.g. once it has waited for a GPU). While the
    caller keeps ``live["freeze"]`` true, every process of the tree but the first is stopped
    (SIGSTOP, re-sent to any new one at each scan) and continued (SIGCONT) once it is false again;
    the frozen time (``live["frozen_s"]``, kept up to date here) does not count against
    ``Limits.wall_s`` nor ``live["deadline"]`` (a run held back so that another can use a shared
    device alone loses nothing). Never raises for what the child does: a crash, a kill or a
    denied action is in the result."""
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise ValueError("run_sandboxed: argv is empty")
    cwd_s = os.path.realpath(os.fspath(cwd))
    if not os.path.isdir(cwd_s):
        raise NotADirectoryError(f"run_sandboxed: cwd {cwd_s} is not a directory")
    if limits.wall_s <= 0:
        raise ValueError("Limits.wall_s must be positive")
    if policy.audit_python:
        _check_python_flags(argv)
    child_env = scrubbed_env(env, keep=keep)

    read_deny = _abs_dirs(policy.read_deny, "read_deny")
    if policy.deny_secrets:
        read_deny += [p for p in (os.path.realpath(q) for q in _secret_paths()) if p not in read_deny]
    for d in read_deny:
        if _is_under(cwd_s, d):
            raise ValueError(f"Policy.read_deny: {d} contains the working directory {cwd_s}")
    write_allow = _abs_dirs(policy.write_allow, "write_allow")
    for d in write_allow:
        if not os.path.isdir(d):
            raise ValueError(f"Policy.write_allow: {d} is not an existing directory; create it first")

    private = Path(tempfile.mkdtemp(prefix="autolab-sbx-")).resolve()
    proc: subprocess.Popen | None = None
    tree: _Tree | None = None
    out: _Output | None = None
    log = None
    try:
        tmp, home, boot = private / "tmp", private / "home", private / "boot"
        for d in (tmp, home, boot):  # private itself is 0700 (mkdtemp): the run's uid only
            d.mkdir(mode=0o755)
        violations_path = private / "violations.jsonl"
        violations_path.touch(mode=0o600)
        empty = private / "empty"
        empty.touch(mode=0o444)
        status_path = private / "status.json"
        config_path = private / "config.json"

        explicit = dict(env or {})
        for name, value in (("HOME", home), ("TMPDIR", tmp), ("TMP", tmp), ("TEMP", tmp)):
            if name not in explicit:
                child_env[name] = str(value)
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        child_env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        if policy.audit_python:
            shutil.copyfile(_BOOT_FILE, boot / "sitecustomize.py")
            user_pp = explicit.get("PYTHONPATH", "")
            child_env["PYTHONPATH"] = str(boot) + (os.pathsep + user_pp if user_pp else "")
            child_env[ENV_CONFIG] = str(config_path)
        else:
            child_env.pop(ENV_CONFIG, None)

        write_dirs = [cwd_s, *write_allow, str(tmp), str(home)]
        read_allow = _read_allow_config(policy, argv, cwd_s, write_dirs, private, child_env)
        end_path, root_path = private / "end.json", private / "root.pid"
        shm_bytes = limits.memory_mb * 2**20 if limits.memory_mb else None
        config = {
            "trampoline": {
                "argv": argv,
                "parent_pid": os.getpid(),
                "network": policy.network,
                "loopback": policy.loopback,
                "harden": policy.harden,
                "relax": list(policy.relax),
                "audit_python": policy.audit_python,
                "read_deny": read_deny,
                "write_dirs": write_dirs,
                "cwd": cwd_s,
                "private_dir": str(private),
                "empty_file": str(empty),
                "violations": str(violations_path),
                "status": str(status_path),
                "end": str(end_path),
                "root_pid": str(root_path),
                "read_allow": read_allow,
                "shm_bytes": shm_bytes,
                "rlimits": {
                    "fsize": limits.fsize_mb * 2**20 if limits.fsize_mb else None,
                    "nofile": limits.open_files,
                    "cpu": limits.cpu_s,
                },
            },
            "hook": {
                "read_deny": read_deny,
                "write_dirs": write_dirs,
                "network": policy.network,
                "loopback": policy.loopback,
                "violations": str(violations_path),
                "status": str(status_path),
                "boot_dir": str(boot),
                "read_allow": read_allow,
            },
        }
        config_path.write_text(json.dumps(config))

        reader = _Violations(violations_path)
        log = open(log_path, "w", encoding="utf-8", errors="replace") if log_path is not None else None
        start = time.monotonic()
        proc = subprocess.Popen(
            [_python(), "-I", "-S", str(_BOOT_FILE), str(config_path)],
            cwd=cwd_s, env=child_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, bufsize=0,
        )
        tree = _Tree(proc.pid)
        if live is not None:
            live["pid"] = proc.pid   # the tree's first process (a supervisor), for a caller's outside view of it
        out = _Output(proc.stdout.fileno(), log, on_line is not None, limits.end_marker)
        callback_error: BaseException | None = None

        def deliver(block_s: float) -> None:
            nonlocal callback_error
            if out.lines is None:
                time.sleep(block_s)
                return
            try:
                line = out.lines.get(timeout=block_s)
            except queue.Empty:
                return
            batch = [line]
            while len(batch) < 1000:
                try:
                    batch.append(out.lines.get_nowait())
                except queue.Empty:
                    break
            if callback_error is None:
                for item in batch:
                    try:
                        on_line(item)
                    except Exception as exc:  # noqa: BLE001 - a broken display must not kill the run
                        callback_error = exc
                        break

        reason = ""
        peak_kb, peak_n = 0, 0
        next_scan = next_peak = 0.0
        limit_kb = limits.memory_mb * 1024 if limits.memory_mb is not None else None
        pidns, status_seen = policy.harden, False
        ender = _Ender(proc.pid, root_path, limits)
        frozen_since: float | None = None   # live["freeze"]: the tree is stopped since then
        frozen_s = 0.0
        while proc.poll() is None:
            now = time.monotonic()
            held = frozen_s + (now - frozen_since if frozen_since is not None else 0.0)
            if live is not None:
                live["frozen_s"] = held
            if now - start - held > limits.wall_s or (live is not None and now - held > live.get("deadline", float("inf"))):
                reason = "timeout"
                break
            if live is not None and bool(live.get("freeze")) != (frozen_since is not None):
                if frozen_since is None:
                    frozen_since = now
                else:
                    frozen_s += now - frozen_since
                    frozen_since = None
                    _signal_members(tree.scan(), proc.pid, signal.SIGCONT)
                next_scan = now          # stop (or continue) at once
            if now >= next_scan:
                next_scan = now + _POLL_S
                members = tree.scan()
                if frozen_since is not None:
                    _signal_members(members, proc.pid, signal.SIGSTOP)
                if not status_seen and status_path.exists():
                    try:
                        pidns = json.loads(status_path.read_text()).get("pid") == "pidns"
                        status_seen = True
                    except (OSError, ValueError):
                        pass
                # our supervisors (trampoline, and the PID namespace's init) are not the candidate's
                n = max(0, len(members) - (2 if pidns else 1))
                peak_n = max(peak_n, n)
                if limits.nproc is not None and n > limits.nproc:
                    reason = "nproc"
                    break
                live_pids = [p for p, v in members.items() if _alive(p, v[3])]
                # PSS <= RSS for every process: a tree within the limit by RSS is within it by PSS (statm's
                # RSS counters may lag by a few pages per thread: PSS is read from 90% of the limit on)
                if now >= next_peak or (limit_kb is not None and sum(map(_rss_kb, live_pids)) > 0.9 * limit_kb):
                    next_peak = now + _PEAK_S
                    kb = sum(_memory_kb(p) for p in live_pids)
                    peak_kb = max(peak_kb, kb)
                    if limit_kb is not None and kb > limit_kb:
                        reason = "memory"
                        break
                ender.account(members)
                if limits.tree_cpu_s is not None and ender.cpu_estimate() > limits.tree_cpu_s:
                    reason = "cpu"
                    break
                if out.marker_t is not None and ender.after_marker(members, pidns, now - out.marker_t):
                    reason = "after_end"
                    break
                reader.read()
            deliver(min(0.05, max(0.0, next_scan - time.monotonic())))
        if frozen_since is not None:
            _signal_members(tree.scan(), proc.pid, signal.SIGCONT)   # a stopped process would not die of SIGTERM
            frozen_s += time.monotonic() - frozen_since
            if live is not None:
                live["frozen_s"] = frozen_s
        if reason:
            tree.kill()
        proc.wait()
        tree.root_reaped = True
        leftovers = tree.scan()
        stray = [p for p, v in leftovers.items() if _alive(p, v[3])]
        if stray:  # should never be: the supervisor ended them
            ender.report(stray, "outside the supervisor's reach")
        tree.kill()  # anything the candidate left behind (setsid'd daemons included)
        wall = time.monotonic() - start
        out.close(grace_s=2.0)
        while out.lines is not None and not out.lines.empty():
            deliver(0.0)
        reader.read()
        if reader.partial:
            reader.add_line(reader.partial)
        if callback_error is not None:
            warnings.warn(f"run_sandboxed: on_line raised {callback_error!r}; later lines were not delivered",
                          RuntimeWarning, stacklevel=2)
        cpu_s = ender.cpu_estimate()
        try:
            end_info = json.loads(end_path.read_text())
            cpu_s = max(cpu_s, float(end_info.get("cpu_s") or 0.0))
            for sv in end_info.get("survivors") or []:
                ender.add(sv, "was still running when the main process had exited")
            more = int(end_info.get("n_survivors") or 0) - len(end_info.get("survivors") or [])
            if more > 0:
                ender.violations.append({"kind": "process", "detail": f"{more} more processes were still running "
                                                                      f"when the main process had exited; ended"})
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        for v in ender.violations:
            reader.add_line(json.dumps(v).encode())
        isolation: dict[str, str] = {}
        try:
            isolation = json.loads(status_path.read_text())
        except (OSError, ValueError):
            pass
        isolation["audit_hook"] = "python" if policy.audit_python else "off"
        rc = proc.returncode
        if reason:
            state = "killed"
        elif rc == 0:
            state = "ok"
        elif rc is not None and rc < 0:
            state = "killed"
            reason = "cpu" if -rc == signal.SIGXCPU else f"signal {-rc}"
        else:
            state = "failed"
            reason = f"exit code {rc}"
        tail = out.text()
        if out.dropped:
            tail += f"\n[autolab sandbox: {out.dropped} lines were not passed to on_line]"
        return SandboxResult(
            returncode=rc,
            state=state,
            reason=reason,
            wall_s=round(wall, 3),
            violations=tuple(reader.items),
            stdout_tail=tail,
            net_isolation=isolation.get("net", "none" if not policy.network else "host"),
            isolation=isolation,
            peak_memory_mb=round(peak_kb / 1024, 1),
            peak_nproc=peak_n,
            cpu_s=round(cpu_s, 3),
            wait_s=None if ender.wait_estimate() is None else round(ender.wait_estimate(), 3),
            end_s=None if out.marker_t is None else round(out.marker_t - start, 3),
            after_end_s=None if out.marker_t is None else round(max(0.0, start + wall - out.marker_t), 3),
            survivors=tuple(ender.survivors),
        )
    finally:
        if proc is not None and proc.returncode is None:  # an exception (KeyboardInterrupt...) on the way
            tree = tree or _Tree(proc.pid)
            tree.kill()
            proc.wait()
            tree.root_reaped = True
            tree.kill(rounds=5)
        if out is not None and out.thread.is_alive():
            out.close(grace_s=0.0)
        if log is not None and not log.closed and (out is None or not out.thread.is_alive()):
            log.close()
        if proc is not None and proc.stdout is not None:
            try:
                proc.stdout.close()
            except OSError:
                pass
        shutil.rmtree(private, ignore_errors=True)
