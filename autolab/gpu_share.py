"""What the GPU's driver says about the processes using it: NVML through ctypes.

One owner for the question "which process is using the GPU, and how much", asked by harnesses
that let two runs share a GPU (nanochat's overlap of one run's start-up with another's timed
training). Read-only: nothing here changes a setting of the device. Needs only the driver's
``libnvidia-ml.so.1`` (no Python package); :meth:`Nvml.open` returns None where there is none
(a CPU machine), and callers then fall back to what they can see without it.
"""

from __future__ import annotations

import ctypes
import threading
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
    """One per-process utilisation sample: the driver's time stamp (µs) and the SM share (%)."""
    pid: int
    t_us: int
    sm: int
    mem: int


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

    def utilization(self, since_us: int = 0) -> tuple[list[Sample], int]:
        """Per-process SM samples newer than ``since_us``; and the newest time stamp seen."""
        fn = self._lib.nvmlDeviceGetProcessUtilization
        n = ctypes.c_uint(0)
        rc = fn(self._h, None, ctypes.byref(n), ctypes.c_ulonglong(since_us))
        if rc == _NOT_FOUND or n.value == 0:
            return [], since_us
        if rc not in (_SUCCESS, _INSUFFICIENT_SIZE):
            return [], since_us
        buf = (_UtilSample * n.value)()
        if fn(self._h, buf, ctypes.byref(n), ctypes.c_ulonglong(since_us)) != _SUCCESS:
            return [], since_us
        out = [Sample(int(buf[i].pid), int(buf[i].timeStamp), int(buf[i].smUtil), int(buf[i].memUtil))
               for i in range(n.value)]
        return out, max([since_us] + [s.t_us for s in out])
