"""Bootstrap of autolab's sandbox. Standard library only; nothing here runs on import.

This one file has two roles, both driven by a JSON file that ``autolab.sandbox`` writes
into a run's private directory:

1. **Trampoline** (``python -I -S _sandbox_boot.py CONFIG``): the process that
   ``run_sandboxed`` starts. It sets the rlimits, enters new namespaces (network, mount,
   IPC, PID) where the kernel allows, hides ``read_deny`` paths under empty read-only
   mounts, gives the run a private ``/dev/shm``, prepares a Landlock ruleset that allows
   writes only in the run's writable directories, then forks a supervisor (the PID
   namespace's init, or a child subreaper) that starts the candidate after dropping
   capabilities and applying Landlock. When the candidate exits the supervisor ends every
   process the candidate left behind and exits with the candidate's status. Doing this in
   a small exec'd program rather than a ``preexec_fn`` keeps ``subprocess`` on its
   fork-safe path (a Jupyter kernel has threads, maybe CUDA) and lets the setup fork.
   Every step is best effort: what worked is written to ``status.json`` for the parent.

2. **sitecustomize** (copied as ``<private>/boot/sitecustomize.py``, first on
   ``PYTHONPATH``): installs, in every Python process of the run before any candidate
   code, an audit hook (``sys.addaudithook``, which cannot be removed) that denies with
   ``PermissionError`` and records as JSON lines: reads under ``read_deny``, writes outside
   the writable directories, network use, attempts to start a Python child without the
   hook, signals to processes outside the run, reads of other processes' environments,
   and tampering with the hook's own configuration. It also records reads of
   secret-looking environment variables by candidate code. The hook binds everything it
   uses (built-in functions, constants) as default arguments when it is made, so that
   monkeypatching ``os``, ``socket`` or ``builtins`` afterwards does not change it; a
   process that uses ``ctypes`` or ``gc`` can still defeat an in-process hook, which is why
   the kernel layers of role 1 exist.
"""

from __future__ import annotations

import os
import sys

ENV_CONFIG = "AUTOLAB_SANDBOX_CONFIG"

# --------------------------------------------------------------------------- constants

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000

_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18

_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
_PR_CAPBSET_DROP = 24
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4

# Capabilities the candidate keeps (it still runs as the same uid): file ownership and
# permission overrides, setuid/setgid, low ports, mlock, nice. Everything else goes,
# notably SYS_ADMIN (mount, setns back into the host network), SYS_PTRACE, NET_ADMIN,
# NET_RAW, SYS_RESOURCE (raising rlimits), DAC_READ_SEARCH (open_by_handle_at) and
# SYS_MODULE. Dropping them also makes the kernel refuse /proc/<pid>/environ and ptrace
# of processes (the parent) that hold more capabilities.
_KEEP_CAPS = (0, 1, 3, 4, 6, 7, 10, 14, 23)

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LL_EXECUTE = 1 << 0
_LL_WRITE_FILE = 1 << 1
_LL_READ_FILE = 1 << 2
_LL_READ_DIR = 1 << 3
_LL_REMOVE_DIR = 1 << 4
_LL_REMOVE_FILE = 1 << 5
_LL_MAKE_CHAR = 1 << 6
_LL_MAKE_DIR = 1 << 7
_LL_MAKE_REG = 1 << 8
_LL_MAKE_SOCK = 1 << 9
_LL_MAKE_FIFO = 1 << 10
_LL_MAKE_BLOCK = 1 << 11
_LL_MAKE_SYM = 1 << 12
_LL_REFER = 1 << 13
_LL_TRUNCATE = 1 << 14
_LL_NET_BIND_TCP = 1 << 0
_LL_NET_CONNECT_TCP = 1 << 1
_LL_SCOPE_ABSTRACT_UNIX = 1 << 0
_LL_SCOPE_SIGNAL = 1 << 1

# Device files a candidate may open for writing (GPU devices are added by glob).
_DEV_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
_DEV_GLOBS = ("/dev/nvidia*", "/dev/nvidia-caps/*", "/dev/dri/*", "/dev/infiniband/*", "/dev/kfd")


# =========================================================================== trampoline


class _Libc:
    def __init__(self):
        import ctypes

        self.ct = ctypes
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.syscall.restype = ctypes.c_long

    def _ret(self, r):
        return 0 if r >= 0 else (self.ct.get_errno() or 1)

    def unshare(self, flags):
        return self._ret(self.lib.unshare(self.ct.c_int(flags)))

    def prctl(self, option, a=0, b=0, c=0, d=0):
        c_ul = self.ct.c_ulong
        return self._ret(self.lib.prctl(self.ct.c_int(option), c_ul(a), c_ul(b), c_ul(c), c_ul(d)))

    def mount(self, source, target, fstype, flags, data=None):
        enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
        return self._ret(self.lib.mount(enc(source), enc(target), enc(fstype), self.ct.c_ulong(flags), enc(data)))

    def syscall(self, nr, *args):
        return self.lib.syscall(self.ct.c_long(nr), *args)


def _set_rlimits(limits):
    import resource

    def setr(res, soft, hard=None):
        hard = soft if hard is None else hard
        try:
            cur_soft, cur_hard = resource.getrlimit(res)
            if cur_hard != resource.RLIM_INFINITY:
                hard = min(hard, cur_hard)
                soft = min(soft, hard)
            resource.setrlimit(res, (soft, hard))
        except (OSError, ValueError):
            pass

    setr(resource.RLIMIT_CORE, 0)
    if limits.get("fsize") is not None:
        setr(resource.RLIMIT_FSIZE, int(limits["fsize"]))
    if limits.get("nofile") is not None:
        setr(resource.RLIMIT_NOFILE, int(limits["nofile"]))
    if limits.get("cpu") is not None:
        setr(resource.RLIMIT_CPU, int(limits["cpu"]), int(limits["cpu"]) + 2)


def _enter_userns(libc):
    """Unprivileged fallback: a user namespace mapping our own uid, so that the other
    namespaces can be made without root."""
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(_CLONE_NEWUSER):
        return False
    try:
        for path, text in (("/proc/self/setgroups", "deny"),
                           ("/proc/self/uid_map", "%d %d 1" % (uid, uid)),
                           ("/proc/self/gid_map", "%d %d 1" % (gid, gid))):
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
    except OSError:
        return False
    return True


def _loopback_up():
    import fcntl
    import socket
    import struct

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, 0x8913, req))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 1, b""))  # SIOCSIFFLAGS, IFF_UP
    finally:
        s.close()


def _is_under(path, parent):
    return path == parent or parent == "/" or path.startswith(parent.rstrip("/") + "/")


def _hide_paths(libc, cfg):
    """Cover each existing read_deny path with an empty read-only mount (in our private
    mount namespace): a directory with an empty tmpfs, a file with an empty file."""
    protected = list(cfg["write_dirs"]) + [cfg["private_dir"], cfg["cwd"], sys.prefix, sys.base_prefix]
    done, skipped, by_landlock = 0, 0, 0
    read = cfg.get("read_allow")
    landlock = (read is not None and "landlock" not in cfg.get("relax", ())
                and libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, libc.ct.c_size_t(0), libc.ct.c_uint32(1)) >= 1)
    for p in cfg["read_deny"]:
        if not os.path.lexists(p):
            continue
        if landlock and not any(_is_under(p, t) for t in read["trees"]) and p not in read["files"]:
            # outside the read allow-list: Landlock refuses it. Left in sight, so that an attempt
            # to read it is made, refused and recorded rather than silently finding nothing.
            by_landlock += 1
            continue
        if any(_is_under(q, p) for q in protected):
            skipped += 1  # hiding it would hide the workspace or Python itself
            continue
        if os.path.isdir(p):
            err = libc.mount("tmpfs", p, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "size=4k,mode=000")
        else:
            err = libc.mount(cfg["empty_file"], p, None, _MS_BIND)
            if not err:
                err = libc.mount(None, p, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        if err:
            skipped += 1
        else:
            done += 1
    if not done and not skipped:
        return "landlock" if by_landlock else "none-existing"
    return "mount" if not skipped else "partial"


# Top-level folders left in place by the mount fallback of reads by allow-list: system
# folders every program needs (the same as autolab.sandbox's, /run aside).
_SYSTEM_TOP = ("usr", "lib", "lib32", "lib64", "libx32", "bin", "sbin", "etc", "proc", "sys", "dev")


def _mount_allow_list(libc, cfg):
    """Reads by allow-list without Landlock (in our private mount namespace, as root): cover
    every other top-level folder (/work, /root, /tmp, /home, /opt, /var, /run, ...) with an
    empty read-only tmpfs and bind back beneath it only the allowed trees and files (and the
    bare folders of the listable ones). Returns the isolation word."""
    read = cfg["read_allow"]
    allowed = sorted(set(read["trees"]) | set(read["files"]), key=len)
    binds = []
    for p in allowed:  # a path beneath an allowed tree comes with it
        if not any(_is_under(p, q) and os.path.isdir(q) for q, _ in binds):
            try:
                binds.append((p, os.open(p, os.O_PATH | os.O_CLOEXEC)))
            except OSError:
                continue
    covered, failed = 0, 0
    try:
        tops = sorted(os.listdir("/"))
    except OSError:
        return "none"
    for name in tops:
        top = "/" + name
        if name in _SYSTEM_TOP or os.path.islink(top) or not os.path.isdir(top):
            continue
        if any(_is_under(top, q) for q, _ in binds):
            continue  # the whole folder is allowed
        if libc.mount("tmpfs", top, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755,size=1m"):
            failed += 1
            continue
        covered += 1
        for d in read.get("lists", ()):
            if _is_under(d, top):
                try:
                    os.makedirs(d, exist_ok=True)
                except OSError:
                    pass
        for q, fd in binds:
            if not _is_under(q, top):
                continue
            try:
                if os.path.isdir("/proc/self/fd/%d" % fd):
                    os.makedirs(q, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(q), exist_ok=True)
                    os.close(os.open(q, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
            except OSError:
                failed += 1
                continue
            if libc.mount("/proc/self/fd/%d" % fd, q, None, _MS_BIND | _MS_REC):
                failed += 1
        libc.mount(None, top, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    for _, fd in binds:
        os.close(fd)
    try:
        os.chdir(cfg["cwd"])  # through the bound copy: '..' from here leads to nothing hidden
    except OSError:
        return "partial"
    if not covered:
        return "none"
    return "mount-allow-list" if not failed else "mount-allow-list (partial)"


def _private_shm(libc, cfg):
    if not os.path.isdir("/dev/shm"):
        return "none"
    size = cfg.get("shm_bytes")
    data = "mode=1777" + (",size=%d" % size if size else "")
    return "private" if not libc.mount("tmpfs", "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, data) else "host"


# Parts of /proc that a process running as root could use against the host even without
# capabilities (sysctls, the SysRq trigger, IRQ affinity, the NVIDIA driver registry):
# made read-only in the run's mount namespace, as container runtimes do.
_PROC_READONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs", "/proc/driver")


def _harden_proc(libc):
    done = []
    for p in _PROC_READONLY:
        if not os.path.lexists(p):
            continue
        if libc.mount(p, p, None, _MS_BIND | _MS_REC):
            return "partial" if done else "writable"
        if libc.mount(None, p, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC):
            return "partial"
        done.append(p)
    return "sys-readonly"


def _lock_files(libc, cfg, iso, mount_ok):
    """/proc hardening, then the Landlock ruleset (after any /proc remount: a rule made on
    one procfs instance does not cover another). Returns the ruleset fd or -1."""
    relax = cfg.get("relax", ())
    if mount_ok and "proc_ro" not in relax:
        iso["proc_ro"] = _harden_proc(libc)
    if "landlock" in relax:
        return -1
    # As uid 0 (no user namespace), /proc is writable only once its dangerous parts are read-only.
    proc_writable = iso.get("proc_ro") == "sys-readonly" or os.geteuid() != 0 or iso.get("privilege") == "userns"
    rfd, desc = _prepare_landlock(libc, cfg, proc_writable=proc_writable)
    if rfd >= 0:
        iso["fs_write"] = desc
        if cfg.get("read_allow") is not None:
            iso["fs_read"] = "landlock-allow-list"
    return rfd


def _prepare_landlock(libc, cfg, proc_writable=True):
    """Create a Landlock ruleset (write access only beneath the writable directories);
    return (fd, description). The candidate applies it with landlock_restrict_self."""
    import glob

    ct = libc.ct
    abi = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ct.c_size_t(0), ct.c_uint32(1))
    if abi < 1:
        return -1, "unavailable"

    class RulesetAttr(ct.Structure):
        _fields_ = [("fs", ct.c_uint64), ("net", ct.c_uint64), ("scoped", ct.c_uint64)]

    class PathBeneath(ct.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ct.c_uint64), ("fd", ct.c_int32)]

    fs = (_LL_WRITE_FILE | _LL_REMOVE_DIR | _LL_REMOVE_FILE | _LL_MAKE_CHAR | _LL_MAKE_DIR | _LL_MAKE_REG
          | _LL_MAKE_SOCK | _LL_MAKE_FIFO | _LL_MAKE_BLOCK | _LL_MAKE_SYM)
    if abi >= 2:
        fs |= _LL_REFER
    if abi >= 3:
        fs |= _LL_TRUNCATE
    # Reads by allow-list (read_allow set): reading, listing and executing are refused
    # everywhere except beneath the rules below (trees: read/list/execute; files: read and
    # execute that file; lists: directory listings only, no file contents).
    read = cfg.get("read_allow")
    rd = (_LL_READ_FILE | _LL_READ_DIR | _LL_EXECUTE) if read is not None else 0
    fs |= rd
    net = scoped = 0
    relax = cfg.get("relax", ())
    if abi >= 4 and not cfg["network"] and not cfg["loopback"] and "landlock-net" not in relax:
        net = _LL_NET_BIND_TCP | _LL_NET_CONNECT_TCP  # no rules: every TCP bind/connect refused
    if abi >= 6 and "landlock-scope" not in relax:
        scoped = _LL_SCOPE_SIGNAL | (0 if cfg["network"] else _LL_SCOPE_ABSTRACT_UNIX)
    attr = RulesetAttr(fs, net, scoped)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    rfd = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ct.byref(attr), ct.c_size_t(size), ct.c_uint32(0))
    if rfd < 0:
        return -1, "error %d" % ct.get_errno()
    os.set_inheritable(rfd, True)

    dir_rights = fs & ~(_LL_MAKE_CHAR | _LL_MAKE_BLOCK)
    file_rights = _LL_WRITE_FILE | (_LL_TRUNCATE if abi >= 3 else 0)
    file_only = _LL_EXECUTE | _LL_WRITE_FILE | _LL_READ_FILE | (_LL_TRUNCATE if abi >= 3 else 0)
    rules = [(d, dir_rights) for d in cfg["write_dirs"]]
    if os.path.isdir("/dev/shm"):
        rules.append(("/dev/shm", dir_rights))
    devs = list(_DEV_FILES)
    for pattern in _DEV_GLOBS:
        devs.extend(glob.glob(pattern))
    rules += [(f, file_rights | (_LL_READ_FILE if rd else 0)) for f in devs]
    rules.append((cfg["violations"], _LL_WRITE_FILE))  # append-only for the audit hook
    if proc_writable:
        # The process's own /proc entries (glibc names threads through /proc/self/task/*/comm;
        # CUDA fails to start without). Landlock cannot say "own pid only": the dangerous
        # parts of /proc were made read-only above, other processes' entries are guarded by
        # ptrace rules (we drop capabilities) and, with a PID namespace, are only the run's.
        rules.append(("/proc", file_rights))
    if read is not None:
        rules += [(t, rd) for t in read.get("trees", ())]
        rules += [(f, _LL_READ_FILE | _LL_EXECUTE) for f in read.get("files", ())]
        rules += [(d, _LL_READ_DIR) for d in read.get("lists", ())]
    failed = []
    for path, rights in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not os.path.isdir(path):
                rights &= file_only if path != cfg["violations"] else _LL_WRITE_FILE
            if not rights:
                continue
            pb = PathBeneath(rights & fs, fd)
            if libc.syscall(_SYS_LANDLOCK_ADD_RULE, ct.c_int(rfd), ct.c_int(1), ct.byref(pb), ct.c_uint32(0)) < 0:
                failed.append(path)
        finally:
            os.close(fd)
    desc = "landlock-abi%d" % abi
    if read is not None:
        desc += "+read-allow-list"
    if failed:
        desc += " (rules failed: %s)" % ", ".join(failed[:3])
    return rfd, desc


def _drop_caps(libc):
    ct = libc.ct
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 40
    for cap in range(last + 1):
        if cap not in _KEEP_CAPS:
            libc.prctl(_PR_CAPBSET_DROP, cap)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)

    class Header(ct.Structure):
        _fields_ = [("version", ct.c_uint32), ("pid", ct.c_int)]

    class Data(ct.Structure):
        _fields_ = [("effective", ct.c_uint32), ("permitted", ct.c_uint32), ("inheritable", ct.c_uint32)]

    hdr = Header(0x20080522, 0)
    data = (Data * 2)()
    if libc.lib.capget(ct.byref(hdr), data) != 0:
        return False
    keep = [0, 0]
    for cap in _KEEP_CAPS:
        keep[cap // 32] |= 1 << (cap % 32)
    for i in (0, 1):
        data[i].effective &= keep[i]
        data[i].permitted &= keep[i]
        data[i].inheritable &= keep[i]
    return libc.lib.capset(ct.byref(hdr), data) == 0


def _write_status(cfg, iso):
    import json

    tmp = cfg["status"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(iso, f)
    os.replace(tmp, cfg["status"])


def _exec_candidate(libc, cfg, ruleset_fd, parent):
    """In the forked child: last restrictions, then exec the candidate. It dies with its
    supervisor ``parent`` (its pid as the child sees it), and leaves at once if that one died
    between the fork and the tie."""
    argv = cfg["argv"]
    try:
        libc.prctl(_PR_SET_PDEATHSIG, 9)
        if os.getppid() != parent:
            os._exit(113)
        if cfg["harden"]:
            if "caps" not in cfg.get("relax", ()):
                _drop_caps(libc)
            if "nnp" not in cfg.get("relax", ()) or ruleset_fd >= 0:
                libc.prctl(_PR_SET_NO_NEW_PRIVS, 1)
            if ruleset_fd >= 0:
                if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, libc.ct.c_int(ruleset_fd), libc.ct.c_uint32(0)) < 0:
                    os.write(2, b"autolab sandbox: landlock_restrict_self failed; stopping\n")
                    os._exit(126)
                os.close(ruleset_fd)
        os.execvp(argv[0], argv)
    except BaseException as exc:  # noqa: BLE001 - report and leave with the shell's code
        try:
            os.write(2, ("autolab sandbox: cannot run %r: %s\n" % (argv[0], exc)).encode())
        finally:
            os._exit(127)


def _proc_table():
    """pid -> (ppid, state) for every process this /proc shows."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                data = f.read()
            rest = data[data.rfind(b")") + 2:].split()
            out[int(name)] = (int(rest[1]), rest[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def _children_of(pid):
    return [p for p, (ppid, _) in _proc_table().items() if ppid == pid]


def _descendants(me, zombies=False):
    """Live (not zombie, unless ``zombies``) descendants of ``me`` (a pid as this /proc numbers it)."""
    table = _proc_table()
    kids = {}
    for p, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(p)
    out, todo = [], list(kids.get(me, ()))
    while todo:
        p = todo.pop()
        if p == me or p in out:
            continue
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out if zombies else [p for p in out if table.get(p, (0, b"Z"))[1] != b"Z"]


def _kill_tree(me, pidns=False):
    """SIGKILL every descendant of ``me`` and reap them until none is left (at most about 2.5 s).
    Zombies are signalled too (a zombie leader whose other threads run is not dead); SIGKILL ends
    a stopped process as well. As pid 1 of a PID namespace (``pidns``), kill(-1) first reaches
    every other process in it."""
    import time

    for _ in range(500):
        if pidns and os.getpid() == 1:
            try:
                os.kill(-1, 9)
            except OSError:
                pass
        tree = _descendants(me, zombies=True)
        for p in tree:
            try:
                os.kill(p, 9)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if not tree:
            break
        time.sleep(0.005)


def _describe(pid):
    """{"pid", "comm", "cmdline"} of a process, as far as /proc still tells."""
    info = {"pid": pid, "comm": "?", "cmdline": ""}
    try:
        with open("/proc/%d/comm" % pid, "rb") as f:
            info["comm"] = f.read().decode("utf-8", "replace").strip()
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            info["cmdline"] = f.read(400).replace(b"\0", b" ").decode("utf-8", "replace")
            info["cmdline"] = " ".join(info["cmdline"].split())[:200]
    except OSError:
        pass
    return info


def _end_leftovers(cfg, status, pidns, grace_s=1.0):
    """The candidate's main process has exited (wait ``status``): give what it started
    ``grace_s`` to exit on its own (a resource tracker that sees its pipe close), then
    describe every process still alive (each is reported as a violation: nothing of the
    candidate may outlive it), kill them all and reap them. Writes ``end.json`` (the
    survivors and the CPU seconds of every process of the run, all reaped by now)."""
    import resource
    import time

    try:
        me = int(os.readlink("/proc/self"))
    except (OSError, ValueError):
        me = os.getpid()
    deadline = time.monotonic() + grace_s
    left = _descendants(me)
    while left and time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.02)
        left = _descendants(me)
    survivors = [_describe(p) for p in left[:50]]
    _kill_tree(me, pidns)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        import json

        tmp = cfg["end"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"survivors": survivors, "n_survivors": len(left), "status": status,
                       "cpu_s": round(ru.ru_utime + ru.ru_stime, 3)}, f)
        os.replace(tmp, cfg["end"])
    except (OSError, KeyError):
        pass


def _parent_gone(fd):
    """True once the other end of the pipe ``fd`` reads from is closed everywhere (the process
    that held it died). Nothing is ever written to it: readable means closed."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1) == b""
    except BlockingIOError:
        return False


def _end_tree_on(signum):
    """Subreaper mode: the trampoline is the run's supervisor and every orphan of the run comes to
    it, but a process it leaves behind when it dies goes to the host's init (or a subreaper above)
    and lives on, stopped forever if the run was frozen. So the death of the process that started
    the run reaches the trampoline as ``signum`` (PR_SET_PDEATHSIG), and it kills its whole tree
    (SIGKILL ends a stopped process too) and reaps it before it leaves. (In a PID namespace this is
    the kernel's work: the namespace's init dies with the trampoline, and the namespace with it.)"""
    import signal

    def handler(sig, frame):
        _kill_tree(os.getpid())
        try:   # leave as the signal would have ended us
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        except (OSError, ValueError):
            pass
        os._exit(128 + sig)

    signal.signal(signum, handler)


def _reap_until(pid):
    """Reap children (we are init or a subreaper) until ``pid`` exits; its wait status."""
    while True:
        try:
            wpid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 127 << 8
        except InterruptedError:
            continue
        if wpid == pid:
            return status


def _mirror(status):
    """Leave with the candidate's wait status: same exit code, or die by the same signal."""
    import signal

    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        except (OSError, ValueError):
            pass
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _trampoline(cfg_path):
    import json

    with open(cfg_path) as f:
        cfg = json.load(f)["trampoline"]
    libc = _Libc()
    # Nothing of the run may outlive the process that started it (a runner killed, even while it
    # held the run frozen): we die with it (SIGKILL reaches a stopped process too), and each level
    # below dies with its parent the same way (the PID namespace's init, the candidate).
    libc.prctl(_PR_SET_PDEATHSIG, 9)
    if os.getppid() != cfg["parent_pid"]:
        os._exit(113)  # the parent died before we could tie our life to it
    _set_rlimits(cfg["rlimits"])

    iso = {}
    harden, network = cfg["harden"], cfg["network"]
    relax = set(cfg.get("relax", ()))  # kernel layers the caller asked to leave out
    root = os.geteuid() == 0
    userns = False
    if (harden or not network) and not root:
        userns = _enter_userns(libc)
        # a change of credentials clears the parent-death signal; tie again (and check again)
        libc.prctl(_PR_SET_PDEATHSIG, 9)
        if os.getppid() != cfg["parent_pid"]:
            os._exit(113)
    iso["privilege"] = "root" if root else ("userns" if userns else "user")
    if network:
        iso["net"] = "host"
    elif not libc.unshare(_CLONE_NEWNET):
        iso["net"] = "netns"
        if cfg["loopback"]:
            try:
                _loopback_up()
                iso["loopback"] = "private"
            except OSError:
                iso["loopback"] = "down"
    else:
        iso["net"] = "audit-hook-only" if cfg["audit_python"] else "none"
    mount_ok = pid_ok = False
    ruleset_fd, iso["fs_write"] = -1, "audit-hook-only" if cfg["audit_python"] else "none"
    if cfg.get("read_allow") is not None:  # until Landlock takes it over (_lock_files)
        iso["fs_read"] = "audit-hook-only" if cfg["audit_python"] else "none"
    else:
        iso["fs_read"] = "deny-list"
    if harden:
        if "mount" not in relax and not libc.unshare(_CLONE_NEWNS):
            # Private propagation first, or our mounts would appear on the host.
            mount_ok = not libc.mount("none", "/", None, _MS_REC | _MS_PRIVATE)
        iso["mount"] = "private" if mount_ok else "host"
        iso["ipc"] = "ipcns" if "ipc" not in relax and not libc.unshare(_CLONE_NEWIPC) else "host"
        pid_ok = "pid" not in relax and not libc.unshare(_CLONE_NEWPID)
        iso["pid"] = "pidns" if pid_ok else "subreaper"
        if mount_ok:
            if cfg["read_deny"] and "read_deny" not in relax:
                iso["read_deny"] = _hide_paths(libc, cfg)
            ll_abi = -1 if "landlock" in relax else libc.syscall(
                _SYS_LANDLOCK_CREATE_RULESET, None, libc.ct.c_size_t(0), libc.ct.c_uint32(1))
            if cfg.get("read_allow") is not None and ll_abi < 1 and "mount_allow" not in relax:
                iso["fs_read"] = _mount_allow_list(libc, cfg)  # no Landlock: the mount table does it
            if "shm" not in relax:
                iso["shm"] = _private_shm(libc, cfg)
        iso["caps"] = "kept" if "caps" in relax else ("dropped" if (root or userns) else "none-held")
    else:
        iso["pid"] = "subreaper"

    if pid_ok:
        rfd, wfd = os.pipe()
        alive_r, alive_w = os.pipe()  # we hold alive_w until we die: then alive_r reads end-of-file
        init = os.fork()
        if init == 0:  # pid 1 of the new PID namespace
            os.close(rfd)
            os.close(alive_w)
            # Die with the trampoline: the kernel then kills every process of the namespace,
            # stopped ones too. Without this, a runner killed while it held the run frozen left
            # the init and the candidate stopped forever under the host's init. (getppid() is 0
            # here, the parent being outside the namespace: the pipe tells whether it died
            # before the tie was made.)
            libc.prctl(_PR_SET_PDEATHSIG, 9)
            if _parent_gone(alive_r):
                os._exit(113)
            os.close(alive_r)
            if mount_ok and "proc" not in relax:
                err = libc.mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
                iso["proc"] = "private" if not err else "host"
            ruleset_fd = _lock_files(libc, cfg, iso, mount_ok) if harden else -1
            _write_status(cfg, iso)
            child = os.fork()
            if child == 0:
                os.close(wfd)
                _exec_candidate(libc, cfg, ruleset_fd, parent=1)
            if ruleset_fd >= 0:
                os.close(ruleset_fd)
            status = _reap_until(child)
            _end_leftovers(cfg, status, pidns=True)
            os.write(wfd, b"%d\n" % status)
            os._exit(0)  # the kernel now kills anything still left in the namespace
        os.close(wfd)
        os.close(alive_r)
        _, init_status = os.waitpid(init, 0)
        data = b""
        while True:
            chunk = os.read(rfd, 64)
            if not chunk:
                break
            data += chunk
        _mirror(int(data) if data.strip() else init_status)

    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)
    # we are the supervisor: the runner's death ends the whole tree through us (_end_tree_on)
    import signal

    _end_tree_on(signal.SIGTERM)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != cfg["parent_pid"]:
        os._exit(113)
    if harden:
        ruleset_fd = _lock_files(libc, cfg, iso, mount_ok)
    _write_status(cfg, iso)
    me = os.getpid()
    child = os.fork()
    if child == 0:
        _exec_candidate(libc, cfg, ruleset_fd, parent=me)
    if ruleset_fd >= 0:
        os.close(ruleset_fd)
    try:
        with open(cfg["root_pid"] + ".tmp", "w") as f:
            f.write("%d" % child)
        os.replace(cfg["root_pid"] + ".tmp", cfg["root_pid"])
    except (OSError, KeyError):
        pass
    status = _reap_until(child)
    # End what the candidate left behind: as subreaper, every orphan comes to us.
    _end_leftovers(cfg, status, pidns=False)
    _mirror(status)


# =========================================================================== audit hook


def _boot_python():
    """Role 2: install the audit hook in this Python process (we are sitecustomize)."""
    cfg_path = os.environ.get(ENV_CONFIG)
    if not cfg_path:
        return
    import json

    try:
        with open(cfg_path) as f:
            cfg = json.load(f)["hook"]
        try:
            with open(cfg["status"]) as f:
                status = json.load(f)
        except (OSError, ValueError):
            status = {}
        vfd = os.open(cfg["violations"], os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except Exception as exc:  # noqa: BLE001 - fail closed
        sys.stderr.write("autolab sandbox: cannot set up the audit hook (%s: %s); refusing to run\n"
                         % (type(exc).__name__, exc))
        sys.stderr.flush()
        os._exit(70)
    hook, record = _make_hook(cfg, status, cfg_path, vfd)
    sys.addaudithook(hook)
    _guard_environ(record)
    _chain_sitecustomize(cfg["boot_dir"])


_EVENTS = frozenset([
    "open", "os.listdir", "os.scandir",
    "os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.link", "os.symlink", "os.truncate",
    "os.chmod", "os.chown", "os.utime", "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr",
    "os.mkfifo", "os.mknod", "shutil.rmtree", "shutil.copyfile", "shutil.copytree", "shutil.move",
    "shutil.copymode", "shutil.copystat", "shutil.chown", "shutil.unpack_archive",
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr", "socket.getnameinfo",
    "socket.sethostname",
    "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
    "os.kill", "os.killpg", "os.putenv", "os.unsetenv", "object.__setattr__",
])


def _make_hook(cfg, status, cfg_path, vfd):
    """Build the audit hook and its helpers.

    Every helper takes what it uses as default arguments (evaluated here, before any
    candidate code runs): no closures and no global or builtin name lookups at call time,
    so patching ``os``, ``socket``, ``builtins`` or this module later changes nothing.
    Replacing a helper's ``__code__``/``__defaults__`` is itself an audited event that the
    hook refuses. Returns (hook, record)."""
    import _socket
    import posix
    import re
    import shlex
    import stat as _stat

    try:
        from _json import encode_basestring_ascii as enc
    except ImportError:  # pragma: no cover
        from json.encoder import encode_basestring_ascii as enc

    def shell_split(text, _shlex=shlex.shlex, _list=list):
        """Shell words of ``text``, with ; && || | ( ) as words of their own."""
        lexer = _shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        return _list(lexer)

    vst = posix.fstat(vfd)
    C = {  # the hook's configuration, frozen into a tuple below
        "read_deny": tuple(cfg["read_deny"]),
        "write_dirs": tuple(cfg["write_dirs"]) + ("/dev/shm",),
        "write_files": frozenset(_DEV_FILES),
        "network": bool(cfg["network"]),
        "loopback": bool(cfg["loopback"]),
        "netns": status.get("net") == "netns",
        "pidns": status.get("pid") == "pidns",
        "cfg_path": cfg_path,
        "boot_dir": cfg["boot_dir"],
        "env_name": ENV_CONFIG,
        "vfd": vfd,
        "vid": (vst.st_dev, vst.st_ino),
        "local_hosts": frozenset(["localhost", "ip6-localhost", "ip6-loopback", "::1", "", posix.uname().nodename]),
        "own_file": __file__,
        "allow_on": cfg.get("read_allow") is not None,
        # the mount fallback hides what is not allowed: an attempt on a path that is not there
        # (for this process) is recorded too
        "allow_missing": str(status.get("fs_read", "")).startswith("mount-allow-list"),
        "read_trees": tuple((cfg.get("read_allow") or {}).get("trees", ())),
        "read_files": frozenset((cfg.get("read_allow") or {}).get("files", ())),
        "read_lists": tuple((cfg.get("read_allow") or {}).get("lists", ())),
    }
    Exc = (PermissionError, OSError, Exception)
    B = {  # built-ins and C functions, bound now
        "isinstance": isinstance, "len": len, "repr": repr, "type": type, "range": range,
        "int": int, "str": str, "bytes": bytes, "tuple": tuple, "list": list, "dict": dict,
        "getattr": getattr, "str_str": str.__str__, "decode": bytes.decode,
        "startswith": str.startswith, "split": str.split, "rfind": str.rfind, "rsplit": str.rsplit,
        "lstat": posix.lstat, "readlink": posix.readlink, "getcwd": posix.getcwd, "islnk": _stat.S_ISLNK, "isdir": _stat.S_ISDIR,
        "write": posix.write, "fstat": posix.fstat, "getpid": posix.getpid, "getsid": posix.getsid,
        "putenv": posix.putenv, "fspath": os.fspath, "enc": enc, "family": _socket.socket.__dict__["family"].__get__,
        "shell_split": shell_split,
        "assignment": re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=").match,
        "pycache_tmp": re.compile(r"/__pycache__/[^/]+\.pyc\.\d+$").search,
        "python_exe": re.compile(r"^(python|pypy)[0-9.]*[a-z]?$").match,
    }
    Ct = tuple(C.values())
    Ck = {k: i for i, k in enumerate(C)}
    Bt = tuple(B.values())
    Bk = {k: i for i, k in enumerate(B)}
    # Index constants (plain ints baked into default arguments).
    (RD, WD, WF, NET, LOOP, NETNS, PIDNS, CFG, BOOT, ENVN, VFD, VID, LOCAL, OWN, RA, RT, RF, RL, RM) = (
        Ck[k] for k in ("read_deny", "write_dirs", "write_files", "network", "loopback", "netns", "pidns",
                        "cfg_path", "boot_dir", "env_name", "vfd", "vid", "local_hosts", "own_file",
                        "allow_on", "read_trees", "read_files", "read_lists", "allow_missing"))
    b = Bk
    counter = [0]

    def record(kind, detail, _C=Ct, _B=Bt, _n=counter, _E=Exc, _i=(VFD, VID, b["fstat"], b["write"], b["enc"])):
        """Append one violation (at most 1000 per process) to the parent's log."""
        if _n[0] >= 1000:
            return
        _n[0] += 1
        try:
            fd = _C[_i[0]]
            st = _B[_i[2]](fd)
            if (st.st_dev, st.st_ino) != _C[_i[1]]:
                return  # our descriptor was closed and reused: write nothing into that file
            enc_ = _B[_i[4]]
            line = '{"kind": %s, "detail": %s}\n' % (enc_(kind), enc_(detail[:500]))
            _B[_i[3]](fd, line.encode("ascii"))
        except _E[2]:
            pass

    def fail(kind, detail, _record=record, _E=Exc):
        _record(kind, detail)
        raise _E[0]("autolab sandbox: %s denied: %s" % (kind, detail))

    def fs(p, _B=Bt, _i=(b["isinstance"], b["str"], b["bytes"], b["int"], b["str_str"], b["decode"], b["fspath"]),
           _E=Exc):
        """A path argument as an exact str; None for descriptors and anything else."""
        isinst = _B[_i[0]]
        for _ in (0, 1):
            if isinst(p, _B[_i[1]]):
                return _B[_i[4]](p)
            if isinst(p, _B[_i[2]]):
                return _B[_i[5]](p, "utf-8", "surrogateescape")
            if p is None or isinst(p, _B[_i[3]]):
                return None
            try:
                p = _B[_i[6]](p)
            except _E[2]:
                return None
        return None

    def realpath(path, dir_fd=None, _B=Bt, _E=Exc,
                 _i=(b["startswith"], b["readlink"], b["getcwd"], b["split"], b["rfind"], b["lstat"], b["islnk"],
                     b["isinstance"], b["int"])):
        """Resolve symlinks and '..' like os.path.realpath (non-strict), with bound built-ins."""
        sw, readlink, lstat, islnk, rfind = _B[_i[0]], _B[_i[1]], _B[_i[5]], _B[_i[6]], _B[_i[4]]
        if not sw(path, "/"):
            base = None
            if dir_fd is not None and _B[_i[7]](dir_fd, _B[_i[8]]) and dir_fd >= 0:
                try:
                    base = readlink("/proc/self/fd/%d" % dir_fd)
                except _E[1]:
                    base = None
            if base is None or not sw(base, "/"):
                base = _B[_i[2]]()
            path = base + "/" + path
        pending = _B[_i[3]](path, "/")
        pending.reverse()
        cur = ""  # the resolved prefix, "" for the root
        links = 0
        missing = False
        while pending:
            name = pending.pop()
            if name == "" or name == ".":
                continue
            if name == "..":
                cur = cur[:rfind(cur, "/")] if cur else ""
                continue
            cand = cur + "/" + name
            if missing:
                cur = cand
                continue
            try:
                st = lstat(cand)
            except _E[1]:
                missing = True  # nothing below a missing component exists either
                cur = cand
                continue
            if not islnk(st.st_mode):
                cur = cand
                continue
            links += 1
            if links > 40:
                return cand
            target = readlink(cand)
            if not sw(target, "/"):
                if sw(cand, "/proc/") and (":[" in target or sw(target, "anon_inode:")):
                    return "special:" + target  # a pipe or socket behind /proc/<pid>/fd/<n>
            else:
                cur = ""
            more = _B[_i[3]](target, "/")
            more.reverse()
            pending.extend(more)
        return cur or "/"

    def under(path, dirs, _sw=str.startswith):
        for d in dirs:
            if path == d or d == "/" or _sw(path, d + "/"):
                return True
        return False

    def writable(rp, _C=Ct, _B=Bt, _under=under, _sw=str.startswith, _i=(RD, WD, WF, b["getpid"])):
        if _sw(rp, "special:"):
            return True
        if _under(rp, _C[_i[0]]):
            return False
        if _under(rp, _C[_i[1]]) or rp in _C[_i[2]]:
            return True
        if _sw(rp, "/proc/%d/" % _B[_i[3]]()):
            return True  # this process's own /proc entries (comm, oom_score_adj...)
        return _sw(rp, "/dev/nvidia") or _sw(rp, "/dev/pts/")

    def check_write(p, dir_fd=None, what="write", _fs=fs, _rp=realpath, _w=writable, _fail=fail, _B=Bt, _E=Exc,
                    _i=b["pycache_tmp"]):
        s = _fs(p)
        if s is None:
            return
        rp = _rp(s, dir_fd)
        if not _w(rp):
            if _B[_i](rp):  # importlib's atomic .pyc write into a read-only tree: refuse quietly
                raise _E[0]("autolab sandbox: read-only tree")
            _fail("file_write", "%s %s (outside the writable directories)" % (what, rp))

    def check_read(p, dir_fd=None, what="open", _fs=fs, _rp=realpath, _under=under, _fail=fail, _C=Ct, _B=Bt,
                   _E=Exc, _i=(RD, b["startswith"], b["split"], b["len"], b["getpid"], RA, RT, RF, RL, b["lstat"],
                               b["isdir"], RM)):
        s = _fs(p)
        if s is None:
            return
        rp = _rp(s, dir_fd)
        deny = _C[_i[0]]
        if deny and _under(rp, deny):
            _fail("file_read", "%s %s (denied path)" % (what, rp))
        if _C[_i[5]] and not _B[_i[1]](rp, "special:") and not _under(rp, _C[_i[6]]) and rp not in _C[_i[7]]:
            # reads are an allow-list: outside it only listings of the listable folders
            try:
                st = _B[_i[9]](rp)
            except _E[1]:
                st = None  # nothing there to read (or hidden from us by the mount fallback)
            if (st is None and _C[_i[11]]) or (st is not None and not (_B[_i[10]](st.st_mode)
                                                                       and _under(rp, _C[_i[8]]))):
                _fail("file_read", "%s %s (outside the read allow-list)" % (what, rp))
        if _B[_i[1]](rp, "/proc/") and (rp[-8:] == "/environ" or rp[-4:] == "/mem"):
            parts = _B[_i[2]](rp, "/")
            if _B[_i[3]](parts) > 2 and parts[2] != "%d" % _B[_i[4]]():
                _fail("env", "%s %s (another process's environment or memory)" % (what, rp))

    def addr_ok(family, address, _C=Ct, _B=Bt, _rp=realpath, _under=under,
                _i=(NET, NETNS, LOOP, WD, RD, b["isinstance"], b["str"], b["bytes"], b["decode"], b["tuple"],
                    b["len"], b["startswith"])):
        if _C[_i[0]]:
            return True
        isinst = _B[_i[5]]
        if family == 1:  # AF_UNIX
            if isinst(address, _B[_i[7]]):
                address = _B[_i[8]](address, "utf-8", "surrogateescape")
            if not isinst(address, _B[_i[6]]) or address == "" or address[0] == "\0":
                return _C[_i[1]]  # abstract names are scoped to our network namespace
            rp = _rp(address)
            return _under(rp, _C[_i[3]]) and not _under(rp, _C[_i[4]])
        if family == 16:  # AF_NETLINK (interface queries)
            return True
        if family in (2, 10) and _C[_i[2]] and isinst(address, _B[_i[9]]) and _B[_i[10]](address) >= 1:
            host = address[0]
            if isinst(host, _B[_i[7]]):
                host = _B[_i[8]](host, "ascii", "replace")
            if not isinst(host, _B[_i[6]]):
                return False
            if host in ("localhost", "::1") or _B[_i[11]](host, "127."):
                return True
            return _C[_i[1]] and host in ("", "0.0.0.0", "::")
        return False

    def host_ok(host, _C=Ct, _B=Bt, _i=(NET, LOCAL, b["isinstance"], b["bytes"], b["str"], b["decode"],
                                         b["startswith"])):
        if _C[_i[0]] or host is None:
            return True
        if _B[_i[2]](host, _B[_i[3]]):
            host = _B[_i[5]](host, "ascii", "replace")
        if not _B[_i[2]](host, _B[_i[4]]):
            return False
        return host in _C[_i[1]] or _B[_i[6]](host, "127.")

    def fix_env(env, _C=Ct, _B=Bt, _fail=fail, _environ=os.environ,
                _i=(ENVN, CFG, BOOT, b["split"], b["putenv"], b["type"], b["dict"], b["list"], b["isinstance"],
                    b["bytes"], b["decode"])):
        """Make a child process inherit the hook: force our config variable and keep our
        boot directory first on PYTHONPATH, in the mapping it gets or in our environment."""
        name, cfg_path, boot = _C[_i[0]], _C[_i[1]], _C[_i[2]]
        if env is None or env is _environ:
            pp = _environ.get("PYTHONPATH", "") or ""
            if _B[_i[3]](pp, ":")[0] != boot:
                pp = boot + (":" + pp if pp else "")
            _B[_i[4]](name, cfg_path)  # also in the C environment, in case os.putenv/unsetenv
            _B[_i[4]]("PYTHONPATH", pp)  # were used behind os.environ's back
            return
        if _B[_i[5]](env) is not _B[_i[6]]:
            _fail("subprocess", "an environment of type %s cannot be checked" % _B[_i[5]](env).__name__)
        for k in _B[_i[7]](env):
            if _B[_i[8]](k, _B[_i[9]]) and _B[_i[10]](k, "utf-8", "replace") in (name, "PYTHONPATH"):
                del env[k]
        env[name] = cfg_path
        pp = env.get("PYTHONPATH") or ""
        if _B[_i[8]](pp, _B[_i[9]]):
            pp = _B[_i[10]](pp, "utf-8", "surrogateescape")
        if _B[_i[3]](pp, ":")[0] != boot:
            env["PYTHONPATH"] = boot + (":" + pp if pp else "")

    def check_argv(argv, _fs=fs, _fail=fail, _B=Bt, _C=Ct, _E=Exc,
                   _i=(b["isinstance"], b["str"], b["bytes"], b["len"], b["rsplit"], b["python_exe"],
                       b["startswith"], b["shell_split"], b["split"], b["range"], ENVN, b["assignment"])):
        """Refuse a Python child started so as to skip the hook (-I, -E, -S), and commands
        that clear or rewrite the variables that carry it. Shell strings are tokenized and
        checked too (three levels deep). Only words in command position count (first word,
        after ; && || | or a wrapper such as env, nice, timeout), so compiler flags such as
        ``-I/usr/include/python3.11`` are not mistaken for a Python."""
        isinst, len_, sw, assign = _B[_i[0]], _B[_i[3]], _B[_i[6]], _B[_i[11]]
        if argv is None or isinst(argv, (_B[_i[1]], _B[_i[2]])):
            argv = [argv]
        name = _C[_i[10]]
        seps = (";", "&&", "||", "|", "&", "(", ")", "{", "}", "then", "do", "else", "!", "`", "$(")
        wrappers = ("env", "exec", "nice", "nohup", "timeout", "time", "stdbuf", "taskset", "numactl", "setsid",
                    "sudo", "chrt", "ionice", "xargs", "command", "builtin", "eval", "unbuffer", "strace")
        work = [(argv, 0)]
        while work:
            argv, depth = work.pop()
            items = []
            try:
                for a in argv:
                    a = _fs(a)
                    if a is not None:
                        items.append(a)
            except _E[2]:
                continue
            n = len_(items)
            for i in _B[_i[9]](n):
                a = items[i]
                if sw(a, "PYTHONPATH=") or sw(a, name + "="):
                    _fail("subprocess", "command sets %s: %s" % (_B[_i[8]](a, "=")[0], " ".join(items)[:300]))
                if a in ("unset", "-u", "--unset") and i + 1 < n and items[i + 1] in ("PYTHONPATH", name):
                    _fail("subprocess", "command unsets %s" % items[i + 1])
                # command position: walk back over flags, numbers and VAR=value words
                k = i - 1
                while k >= 0 and (sw(items[k], "-") or items[k].isdigit() or assign(items[k])):
                    k -= 1
                command = not sw(a, "-") and (k < 0 or items[k] in seps
                                              or _B[_i[4]](items[k], "/", 1)[-1] in wrappers)
                base = _B[_i[4]](a, "/", 1)[-1]
                if command and _B[_i[5]](base):
                    j = i + 1
                    while j < n and sw(items[j], "-") and items[j] not in ("-c", "-m", "-"):
                        flag = items[j]
                        if sw(flag, "--"):
                            j += 1
                            continue
                        if flag[:2] in ("-W", "-X"):
                            j += 2 if flag in ("-W", "-X") else 1
                            continue
                        for letter in "IES":
                            if letter in flag[1:]:
                                _fail("subprocess", "python %s would skip the sandbox's audit hook: %s"
                                      % (flag, " ".join(items)[:300]))
                        if "c" in flag or "m" in flag:
                            break
                        j += 1
                if command and base == "env" and i + 1 < n:
                    nxt = items[i + 1]
                    if nxt in ("-", "-i", "--ignore-environment") or (
                            sw(nxt, "-") and not sw(nxt, "--") and "i" in nxt):
                        _fail("subprocess", "env %s would drop the sandbox's audit hook" % nxt)
                if depth < 3 and (" " in a or ";" in a or "\n" in a or "&" in a or "|" in a):
                    try:
                        toks = _B[_i[7]](a)
                    except _E[2]:
                        toks = _B[_i[8]](a)
                    work.append((toks, depth + 1))

    def hook(event, args, _Ev=_EVENTS, _C=Ct, _B=Bt, _E=Exc,
             _h=(check_write, check_read, addr_ok, host_ok, fix_env, check_argv, fail),
             _i=(b["isinstance"], b["int"], b["len"], b["fstat"], b["family"], b["repr"], b["getsid"], b["getpid"],
                 b["bytes"], b["decode"], b["getattr"], b["str"], b["tuple"], NET, PIDNS, VID, ENVN, CFG, OWN)):
        if event not in _Ev:
            return
        check_write, check_read, addr_ok, host_ok, fix_env, check_argv, fail = _h
        isinst, int_, len_ = _B[_i[0]], _B[_i[1]], _B[_i[2]]
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            if isinst(path, int_):
                return
            writing = isinst(flags, int_) and ((flags & 3) != 0 or (flags & 0o3100) != 0)  # O_CREAT|O_TRUNC|O_APPEND
            if isinst(mode, _B[_i[11]]) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode):
                writing = True
            if writing:
                check_write(path, what="open for writing")
            check_read(path)
        elif event == "os.listdir" or event == "os.scandir":
            if args and args[0] is not None:
                check_read(args[0], what="list")
        elif event == "os.remove" or event == "os.rmdir":
            check_write(args[0], args[1] if len_(args) > 1 else None, what=event[3:])
        elif event == "os.mkdir" or event == "os.mkfifo" or event == "os.mknod":
            check_write(args[0], args[-1], what=event[3:])
        elif event == "os.rename" or event == "os.link":
            check_read(args[0], args[2], what=event[3:])
            check_write(args[0], args[2], what=event[3:])
            check_write(args[1], args[3], what=event[3:])
        elif event == "os.symlink":
            check_write(args[1], args[2], what="symlink")
        elif event == "os.truncate":
            if isinst(args[0], int_):
                try:
                    st = _B[_i[3]](args[0])
                except _E[1]:
                    return
                if (st.st_dev, st.st_ino) == _C[_i[15]]:
                    fail("tamper", "truncate of the sandbox's violation log")
                return
            check_write(args[0], what="truncate")
        elif event == "os.chmod" or event == "os.chown" or event == "os.utime":
            check_write(args[0], args[-1], what=event[3:])
        elif event in ("os.chflags", "os.lchflags", "os.setxattr", "os.removexattr", "shutil.chown"):
            check_write(args[0], what=event)
        elif event == "shutil.rmtree":
            check_write(args[0], args[1] if len_(args) > 1 else None, what="rmtree")
        elif event in ("shutil.copyfile", "shutil.copytree", "shutil.copymode", "shutil.copystat"):
            check_write(args[1], what=event)
        elif event == "shutil.move":
            check_write(args[0], what="move")
            check_write(args[1], what="move")
        elif event == "shutil.unpack_archive":
            check_write(args[1] if args[1] is not None else ".", what="unpack_archive")
        elif event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"):
            if _C[_i[13]]:
                return
            try:
                family = _B[_i[4]](args[0])
            except _E[2]:
                family = -1
            address = args[1] if len_(args) > 1 else None
            if event == "socket.sendmsg" and address is None:
                return  # on a connected socket, whose connect was checked
            if not addr_ok(family, address):
                fail("network", "%s %s (network is off)" % (event[7:], _B[_i[5]](address)[:200]))
        elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
                       "socket.gethostbyaddr"):
            if not host_ok(args[0]):
                fail("network", "%s %s (network is off)" % (event[7:], _B[_i[5]](args[0])[:200]))
        elif event == "socket.getnameinfo":
            sa = args[0]
            if not _C[_i[13]] and not (isinst(sa, _B[_i[12]]) and len_(sa) >= 1 and host_ok(sa[0])):
                fail("network", "getnameinfo %s (network is off)" % _B[_i[5]](sa)[:200])
        elif event == "socket.sethostname":
            fail("network", "sethostname")
        elif event == "subprocess.Popen":
            check_argv(args[1])
            if args[0] is not None:
                check_argv([args[0]])
            fix_env(args[3])
        elif event == "os.exec" or event == "os.posix_spawn":
            check_argv(args[1])
            fix_env(args[2])
        elif event == "os.spawn":
            check_argv(args[2])
            fix_env(args[3])
        elif event == "os.system":
            check_argv([args[0]])
            fix_env(None)
        elif event == "os.kill" or event == "os.killpg":
            if _C[_i[14]]:
                return  # in our own PID namespace every visible process is ours
            pid = args[0]
            if not isinst(pid, int_):
                return
            target = pid if pid > 0 else -pid
            if target == 0 or target == _B[_i[7]]():
                return
            try:
                same = _B[_i[6]](target) == _B[_i[6]](0)
            except _E[1]:
                return
            if not same:
                fail("signal", "%s(%d) outside the sandbox's session" % (event[3:], pid))
        elif event == "os.putenv" or event == "os.unsetenv":
            key = args[0]
            if isinst(key, _B[_i[8]]):
                key = _B[_i[9]](key, "utf-8", "replace")
            if key == _C[_i[16]]:
                value = args[1] if event == "os.putenv" else None
                if isinst(value, _B[_i[8]]):
                    value = _B[_i[9]](value, "utf-8", "replace")
                if value != _C[_i[17]]:
                    fail("env", "%s %s" % (event[3:], key))
        elif event == "object.__setattr__":
            if len_(args) >= 2 and args[1] in ("__code__", "__defaults__", "__kwdefaults__"):
                code = _B[_i[10]](args[0], "__code__", None)
                if code is not None and _B[_i[10]](code, "co_filename", None) == _C[_i[18]]:
                    fail("tamper", "setting %s of the sandbox's own function %s" % (args[1], code.co_name))

    return hook, record


def _guard_environ(record):
    """Record reads of secret-looking environment variables by candidate code (libraries
    and the standard library are ignored): they are scrubbed, so code that asks for one is
    looking for something it should not have."""
    import sysconfig

    paths = sysconfig.get_paths()
    lib_dirs = tuple(sorted({os.path.realpath(p) + "/" for p in (
        paths.get("stdlib"), paths.get("platstdlib"), paths.get("purelib"), paths.get("platlib"),
        os.path.dirname(os.__file__)) if p}))
    skip = ("<frozen", os.path.realpath(__file__), __file__)

    def note(key, _secret=_is_secret_name, _getframe=sys._getframe, _lib=lib_dirs, _skip=skip, _record=record):
        try:
            name = key.decode() if isinstance(key, bytes) else str(key)
            if not _secret(name):
                return
            f = _getframe(2)
            while f is not None and (f.f_code.co_filename.startswith(_skip)
                                     or f.f_code.co_filename.endswith(("/os.py", "/_collections_abc.py"))):
                f = f.f_back
            if f is None:
                return
            fn = f.f_code.co_filename
            if "/site-packages/" in fn or "/dist-packages/" in fn or fn.startswith(_lib):
                return
            _record("env", "read of secret-looking variable %s at %s:%d" % (name, fn, f.f_lineno))
        except Exception:  # noqa: BLE001 - recording must never break the program
            pass

    env_cls = type(os.environ)

    class _Environ(env_cls):
        def __getitem__(self, key, _note=note, _get=env_cls.__getitem__):
            _note(key)
            return _get(self, key)

    try:
        os.environ.__class__ = _Environ
    except TypeError:  # pragma: no cover
        pass


def _is_secret_name(name):
    """Shared with autolab.sandbox: does an environment variable name look like a secret?"""
    up = name.upper()
    if up in _BENIGN_NAMES:
        return False
    if any(part in up for part in _SECRET_PARTS):
        return True
    return up.startswith(_SECRET_PREFIXES)


_SECRET_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
_SECRET_PREFIXES = ("OPENAI_", "ANTHROPIC_", "AWS_", "GOOGLE_", "AZURE_", "HF_", "HUGGING", "LITELLM_",
                    "GITHUB_", "GH_", "WANDB_", "COHERE_", "MISTRAL_", "GROQ_", "TOGETHER_", "GEMINI_",
                    "DEEPSEEK_", "XAI_", "REPLICATE_", "OPENROUTER_")
_BENIGN_NAMES = frozenset(["TOKENIZERS_PARALLELISM"])


def _chain_sitecustomize(boot_dir):
    """Run the sitecustomize we shadow, if the environment has one."""
    try:
        import importlib.machinery
        import importlib.util

        path = [p for p in sys.path if os.path.realpath(p or ".") != boot_dir]
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - like site.py: report and go on
        sys.stderr.write("Error in sitecustomize (chained by the autolab sandbox): %r\n" % (exc,))


if __name__ == "__main__":
    _trampoline(sys.argv[1])
elif __name__ == "sitecustomize":
    _boot_python()
