"""What the GPU's driver says about the processes using it: NVML through ctypes.

One owner for the question "which process is using the GPU, and how much", asked by harnesses
that let two runs share a GPU (nanochat's overlap of one run's start-up with another's timed
training). Read-only: nothing here changes a setting of the device. Needs only the driver's
``libnvidia-ml.so.1`` (no Python package); :meth:`Nvml.open` returns None where there is none
(a CPU machine), and callers then fall back to what they can see without it. On a CPU device
:class:`CpuMeter` answers the same questions about the CPU (tests, wall-clock CPU presets).
"""

from __future__ import annotations

import ctypes
import os
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
    def open(index: int = 0) -> "Nvml | None":
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:
            return None
        with Nvml._lock:
            if lib.nvmlInit_v2() != _SUCCESS:
                return None
            h = ctypes.c_void_p()
            if lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(h)) != _SUCCESS:
                return None
        return Nvml(lib, h)

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
