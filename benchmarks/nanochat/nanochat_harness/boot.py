"""The train process's first Python code (trusted): ``python <harness>/boot.py train.py``.

It starts what every run needs before any candidate code runs: torch, the harness (and its
read guards) and, on CUDA, the GPU's context. On a preset with ``gpu_baton`` it then says
:data:`READY_LINE` and waits until the runner has created the run's go file: the runner holds
one lock per GPU from a run's go to the end of its evaluation, so a run's start-up (papermill,
data, interpreter, imports) overlaps another run's timed training, but never its candidate
code, its clock or its evaluation. Then it runs the script as ``__main__``, as
``python train.py`` would have. No candidate code runs before the go (nothing of it has been
imported), so the time spent waiting is not the candidate's to use.
"""

from __future__ import annotations

import os
import runpy
import sys
import time

READY_LINE = "[nanochat-harness] started; waiting for the GPU"


def _warm_cuda(torch) -> None:
    """What a CUDA training script would otherwise do after its go, done here while the run waits
    (trusted, no candidate code): the CUDA context, cuBLAS and cuDNN loaded, and the compiler
    stack's modules (Dynamo, Inductor: seconds of imports on the device's CPU) imported. The
    script finds them loaded; nothing of it is compiled or run here."""
    torch.zeros(1, device="cuda")        # the CUDA context
    try:                                 # the rest only saves the script time: never fail the run for it
        a = torch.ones(16, 16, device="cuda", dtype=torch.bfloat16)
        (a @ a).sum().item()             # cuBLAS's handle and workspace
        torch.backends.cudnn.version()   # cuDNN's library (the seed's attention may use it)
        import torch._dynamo             # noqa: F401
        import torch._inductor.compile_fx  # noqa: F401
    except Exception:
        pass


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python boot.py SCRIPT [ARGS...]")
    script = sys.argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path[0] = os.getcwd()        # as `python SCRIPT` would: the script's folder first
    import torch                        # first, as a training script does: the import system's listings of
    import nanochat_harness as H        # the Python path are not the candidate's reads (the sandbox records reads)

    cfg = H.config() if os.environ.get("AUTOLAB_RUN_CONFIG") else {}
    if cfg.get("device") == "cuda" and torch.cuda.is_available():
        _warm_cuda(torch)
    go = cfg.get("baton_file")
    if go:
        os.write(1, (READY_LINE + "\n").encode())
        t0 = time.time()
        while not os.path.exists(go):
            time.sleep(0.02)
        live = H._cfg()                  # the harness's own hard deadline moves by the wait, as the runner's does
        if live.get("deadline"):
            live["deadline"] = float(live["deadline"]) + (time.time() - t0)
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
