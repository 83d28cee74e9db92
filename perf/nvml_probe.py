"""Device probe: does NVML's per-process view name the processes this machine's runner sees?

    python3 perf/nvml_probe.py > $OUT/nvml.json

Starts two GPU processes (one plain, one through autolab's sandbox, as a run's train process
starts), lets them work, and reads NVML (ctypes, libnvidia-ml.so.1: no pip package needed):
the compute processes with their memory, and per-process SM utilisation samples. Prints JSON:
which NVML pids matched the pids seen from here, and the samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autolab import gpu_share  # noqa: E402

BUSY = r"""
import os, sys, time, torch
x = torch.randn(4096, 4096, device="cuda")
print("pid", os.getpid(), open("/proc/self/status").read().split("NSpid:")[1].split("\n")[0].strip(), flush=True)
t0 = time.time(); duty = float(sys.argv[1])
while time.time() - t0 < 12:
    t = time.time()
    while time.time() - t < duty * 0.1:
        y = x @ x
    torch.cuda.synchronize()
    time.sleep((1 - duty) * 0.1)
"""


def main() -> None:
    out: dict = {"my_pid": os.getpid(), "pid_ns": os.readlink("/proc/self/ns/pid")}
    nv = gpu_share.Nvml.open()
    out["nvml"] = nv is not None
    plain = subprocess.Popen([sys.executable, "-c", BUSY, "0.9"], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []

    def sandboxed() -> None:
        from autolab.sandbox import Limits, Policy, run_sandboxed
        r = run_sandboxed([sys.executable, "-c", BUSY, "0.3"], cwd="/tmp", policy=Policy(),
                          limits=Limits(wall_s=60, memory_mb=16000), on_line=lines.append)
        out["sandboxed_state"] = [r.state, r.reason, r.stdout_tail[-800:], dict(r.isolation)]

    th = threading.Thread(target=sandboxed)
    th.start()
    samples = []
    procs = []
    t0 = time.time()
    seen = 0
    while time.time() - t0 < 11 and nv is not None:
        time.sleep(1.0)
        procs.append({"t": round(time.time() - t0, 1), "procs": {str(k): v for k, v in nv.processes().items()}})
        s, seen = nv.utilization(seen)
        samples.append({"t": round(time.time() - t0, 1), "samples": [vars(x) for x in s]})
    out["plain_pid"] = plain.pid
    out["plain_line"] = plain.stdout.readline().strip()
    plain.wait()
    th.join()
    out["sandbox_lines"] = lines[:5]
    out["procs"] = procs
    out["samples"] = samples
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
