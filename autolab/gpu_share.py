"""What the GPU's driver says about the processes using it: NVML through ctypes.

One owner for the question "which process is using the GPU, and how much", asked by harnesses
that let two runs share a GPU (nanochat's overlap of one run's start-up with another's timed
training). Read-only: nothing here changes a setting of the device. Needs only the driver's
``libnvidia-ml.so.1`` (no Python package); :meth:`Nvml.open` returns None where there is none
(a CPU machine), and callers then fall back to what they can see without it. On a CPU device
:class:`CpuMeter` answers the same questions about the CPU (tests, wall-clock CPU presets).

Also the one probe of "what hardware does a run get" (:func:`hardware`): the GPU model names
(NVML's device names, else ``nvidia-smi``), or for a CPU run the CPU model from /proc/cpuinfo;
``$AUTOLAB_HARDWARE`` overrides it (a cluster's node class, or a test's stand-in machine).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import subprocess
import threading
import time
from dataclasses import dataclass

_SUCCESS, _INSUFFICIENT_SIZE = 0, 7
_NOT_FOUND = 6


class _ProcessInfo(ctypes.Structure):          # nvmlProcessInfo_t (v2/v3)
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


class _UtilSample(ctypes.Structure):           # nvmlProcessUtilizationSample_t
    _fields_ = [("pid", ctypes.c_uint), ("timeStamp", ctypes.c_ulonglong), ("smUtil", ctypes.c_uint),
                ("memUtil", ctypes.c_uint), ("encUtil", ctypes.c_uint), ("decUtil", ctypes.c_uint)]


@dataclass(frozen=True)
class Sample:
    """One per-process utilisation sample: the driver's time stamp (µs) and the SM share (%);
    ``span_us``: the time the share is over, where the source knows it (NVML does not: its
    samples come about once a second per process)."""
    pid: int
    t_us: int
    sm: int
    mem: int
    span_us: int | None = None


class Nvml:
    """One GPU seen through NVML. ``index`` is the NVML index (CUDA_VISIBLE_DEVICES may map
    differently: :func:`visible_index` resolves the usual case)."""

    _lock = threading.Lock()

    def __init__(self, lib: ctypes.CDLL, handle: ctypes.c_void_p):
        self._lib, self._h = lib, handle

    @staticmethod
    def library() -> "ctypes.CDLL | None":
        """The driver's NVML library, initialized (None: no driver, or it would not start)."""
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:
            return None
        with Nvml._lock:
            return lib if lib.nvmlInit_v2() == _SUCCESS else None

    @staticmethod
    def open(index: int = 0, lib: "ctypes.CDLL | None" = None) -> "Nvml | None":
        """Device ``index`` (through ``lib``, an initialized :meth:`library`, when the caller has one)."""
        lib = lib or Nvml.library()
        if lib is None:
            return None
        with Nvml._lock:
            h = ctypes.c_void_p()
            if lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(h)) != _SUCCESS:
                return None
        return Nvml(lib, h)

    def name(self) -> str | None:
        """The device's model name as the driver gives it (e.g. "NVIDIA H100 80GB HBM3")."""
        buf = ctypes.create_string_buffer(96)     # NVML_DEVICE_NAME_V2_BUFFER_SIZE
        if self._lib.nvmlDeviceGetName(self._h, buf, ctypes.c_uint(len(buf))) != _SUCCESS:
            return None
        return buf.value.decode(errors="replace").strip() or None

    def processes(self) -> dict[int, int]:
        """pid -> GPU memory in bytes of every process with a compute context on this GPU."""
        fn = getattr(self._lib, "nvmlDeviceGetComputeRunningProcesses_v3", None) or \
            self._lib.nvmlDeviceGetComputeRunningProcesses_v2
        n = ctypes.c_uint(64)
        buf = (_ProcessInfo * 64)()
        if fn(self._h, ctypes.byref(n), buf) != _SUCCESS:
            return {}
        return {int(buf[i].pid): int(buf[i].usedGpuMemory) for i in range(n.value)}

    def memory(self) -> tuple[int, int] | None:
        """(free, total) bytes of the GPU's memory."""
        info = (ctypes.c_ulonglong * 3)()      # nvmlMemory_t: total, free, used
        if self._lib.nvmlDeviceGetMemoryInfo(self._h, info) != _SUCCESS:
            return None
        return int(info[1]), int(info[0])

    def device_utilization(self) -> int | None:
        """The whole GPU's utilisation (% of the last sample period with a kernel running)."""
        rates = (ctypes.c_uint * 2)()
        if self._lib.nvmlDeviceGetUtilizationRates(self._h, rates) != _SUCCESS:
            return None
        return int(rates[0])

    def utilization(self, since_us: int = 0) -> tuple[list[Sample], int]:
        """Per-process SM samples newer than ``since_us``; and the newest time stamp seen."""
        fn = self._lib.nvmlDeviceGetProcessUtilization
        n = ctypes.c_uint(0)
        rc = fn(self._h, None, ctypes.byref(n), ctypes.c_ulonglong(since_us))
        if rc == _NOT_FOUND or n.value == 0:
            return [], since_us
        if rc not in (_SUCCESS, _INSUFFICIENT_SIZE):
            return [], since_us
        n = ctypes.c_uint(n.value + 64)          # room for samples taken between the two calls
        buf = (_UtilSample * n.value)()
        if fn(self._h, buf, ctypes.byref(n), ctypes.c_ulonglong(since_us)) != _SUCCESS:
            return [], since_us
        out = [Sample(int(buf[i].pid), int(buf[i].timeStamp), int(buf[i].smUtil), int(buf[i].memUtil))
               for i in range(n.value)]
        return out, max([since_us] + [s.t_us for s in out])


class CpuMeter:
    """The CPU standing in for the GPU (same questions as :class:`Nvml`): the processes whose
    command line contains ``match`` are "on the device", and a process's share is its CPU use
    (user + system, from /proc) since the previous call, at most 100%."""

    def __init__(self, match: bytes = b"boot.py"):
        self.match = match
        self._tick = os.sysconf("SC_CLK_TCK")
        self._prev: dict[int, tuple[int, float, float]] = {}   # pid -> (start time, CPU s, when)
        self._cmd: dict[tuple[int, int], bool] = {}

    def _scan(self) -> dict[int, tuple[int, float]]:
        out: dict[int, tuple[int, float]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                with open(f"/proc/{pid}/stat", "rb") as fh:
                    f = fh.read().rsplit(b")", 1)[1].split()
                start, cpu = int(f[19]), (int(f[11]) + int(f[12])) / self._tick
                key = (pid, start)
                if key not in self._cmd:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        self._cmd[key] = self.match in fh.read()
            except (OSError, ValueError, IndexError):
                continue
            if self._cmd[key]:
                out[pid] = (start, cpu)
        return out

    def processes(self) -> dict[int, int]:
        return {pid: 0 for pid in self._scan()}

    def memory(self) -> tuple[int, int] | None:
        return None                              # no device memory to share

    def utilization(self, since_us: int = 0) -> tuple[list[Sample], int]:
        now = time.monotonic()
        now_us = int(time.time() * 1e6)
        out = []
        seen = self._scan()
        for pid, (start, cpu) in seen.items():
            prev = self._prev.get(pid)
            if prev is not None and prev[0] == start and now > prev[2]:
                span = now - prev[2]
                share = min(100, round(100.0 * max(0.0, cpu - prev[1]) / span))
                out.append(Sample(pid, now_us, share, 0, int(span * 1e6)))
            self._prev[pid] = (start, cpu, now)
        self._prev = {p: v for p, v in self._prev.items() if p in seen}
        return out, now_us


# ---------------------------------------------------------------------------- the hardware of a run

HARDWARE_ENV = "AUTOLAB_HARDWARE"   # overrides the probe: a cluster's node class, a test's stand-in machine


def _nvml_names() -> list[str] | None:
    """The model name of every GPU NVML sees, in NVML's order; None without NVML."""
    lib = Nvml.library()
    if lib is None:
        return None
    with Nvml._lock:
        n = ctypes.c_uint(0)
        if lib.nvmlDeviceGetCount_v2(ctypes.byref(n)) != _SUCCESS:
            return None
    return [((dev := Nvml.open(i, lib)) and dev.name()) or "unknown GPU" for i in range(n.value)]


def _smi_names() -> list[str] | None:
    """The same from ``nvidia-smi`` (a machine whose NVML library ctypes cannot load)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names if out.returncode == 0 and names else None


@functools.cache
def gpu_names() -> tuple[str, ...]:
    """The model names of this machine's GPUs (NVML, else nvidia-smi; () when neither answers),
    asked once per process."""
    return tuple(_nvml_names() or _smi_names() or ())


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's "model name", else the platform's answer), read once
    per process."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _visible(ids: str | None, n_all: int) -> list[int] | None:
    """NVML indices of the GPUs a CUDA_VISIBLE_DEVICES-style list names (None: cannot tell,
    e.g. UUIDs; the caller then takes the machine's first GPUs)."""
    if ids is None:
        return None
    out = []
    for part in (p.strip() for p in ids.split(",")):
        if not part:
            continue
        if not part.isdigit():
            return None
        if int(part) < n_all:
            out.append(int(part))
    return out


def describe_gpus(names: list[str]) -> str:
    """One string for a run's GPUs: "NAME", "2 x NAME", or the names joined with " + "."""
    if len(set(names)) == 1:
        return names[0] if len(names) == 1 else f"{len(names)} x {names[0]}"
    return " + ".join(names)


def hardware(device: str, gpus: int = 1, ids: str | None = None) -> str | None:
    """The hardware a run of a preset on ``device`` ("cuda" or "cpu") with ``gpus`` GPUs gets on
    this machine: ``$AUTOLAB_HARDWARE`` when set; for a GPU run the model name(s) of its GPUs
    (``ids``: the CUDA_VISIBLE_DEVICES entries it was given, default this process's visible
    ones; CUDA's order is taken to be NVML's, which only matters on a machine of mixed GPUs);
    for a CPU run the CPU model. None for a GPU run on a machine where no GPU is seen."""
    forced = os.environ.get(HARDWARE_ENV, "").strip()
    if forced:
        return forced
    if not str(device).startswith("cuda"):
        return cpu_model()
    names = gpu_names()
    if not names:
        return None
    picked = _visible(ids if ids is not None else os.environ.get("CUDA_VISIBLE_DEVICES"), len(names))
    chosen = [names[i] for i in picked] if picked else names
    return describe_gpus(chosen[:max(1, int(gpus or 1))])
