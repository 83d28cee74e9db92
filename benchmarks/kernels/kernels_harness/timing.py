"""The harness's timer: CUDA events, an L2 flush and fresh inputs before every iteration.

Every function this module times with is captured when the module is imported, which
happens before any candidate code is loaded; a candidate that later replaces
``torch.cuda.Event.elapsed_time``, ``torch.cuda.synchronize`` or ``time.perf_counter``
changes nothing here (and ``guards`` reports the replacement).

One timed iteration on a GPU:

    inputs = fresh random inputs (new tensors; the previous iteration's are kept alive,
             so they sit at a different address)
    write a buffer larger than L2                        (L2 flush)
    keep the GPU busy for a fixed spin (torch.cuda._sleep), so that the host's launch
    latency is hidden and the kernel starts right after the start event
    record start; out = kernel(*inputs); record end       (on the current stream)
    synchronize the whole device, record done             (after every stream's work)
    t   = end - start                                     (the kernel time)
    gap = done - end, minus the same round trip measured with nothing running

``t`` is precise GPU time, free of host jitter. Work the kernel left on another stream
shows as ``gap``: its median over the iterations (``side_stream_s``) is reported, and
``side_stream`` is set when it exceeds max(250 us, t) - a stream-ordering violation. The
threshold is loose on purpose: the host's wake-up varies, and side-stream work that feeds
the output is already caught by the correctness check, which copies the output on the
current stream before any device synchronize.
(The first version stopped the timer after the device synchronize and subtracted a no-op's
round trip; on the H100 VM the host's wake-up latency drifted by 100+ us between windows
of a few seconds, which moved S by up to 0.4 between two identical runs. Method v2 keeps
the device synchronize, but as a check rather than as the clock.)

The reported time is the median of ``iters`` timed iterations after ``warmup`` untimed ones.
On the CPU (interpreter smoke runs) ``time.perf_counter`` brackets the call; such times are
meaningless for scoring.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch

_perf_counter = time.perf_counter
_cuda_synchronize = torch.cuda.synchronize
_Event = torch.cuda.Event
_event_record = torch.cuda.Event.record
_event_synchronize = torch.cuda.Event.synchronize
_event_elapsed = torch.cuda.Event.elapsed_time
_sleep = getattr(torch.cuda, "_sleep", None)
_median = statistics.median

METHOD = "events-v2"          # part of the baseline cache key: times of another method are not reused
SPIN_CYCLES = 1_000_000       # GPU spin before the start event (~0.5 ms at 2 GHz)
SIDE_STREAM_MIN_S = 250e-6   # generous: the host wake-up after a long wait varies by tens of us

MIN_FLUSH_BYTES = 256 * 1024 * 1024
_flush_buffers: dict[str, torch.Tensor] = {}


def is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def l2_bytes(device) -> int:
    props = torch.cuda.get_device_properties(torch.device(device))
    return int(getattr(props, "L2_cache_size", 0) or getattr(props, "l2_cache_size", 0) or 64 * 1024 * 1024)


def flush_buffer(device) -> torch.Tensor | None:
    """A uint8 buffer of max(4 x L2, 256 MiB) on ``device`` (None on the CPU)."""
    if not is_cuda(device):
        return None
    key = str(torch.device(device))
    if key not in _flush_buffers:
        n = max(4 * l2_bytes(device), MIN_FLUSH_BYTES)
        _flush_buffers[key] = torch.empty(n, dtype=torch.uint8, device=device)
    return _flush_buffers[key]


def _one(fn: Callable, inputs: Sequence, cuda: bool, flush: torch.Tensor | None):
    """One iteration: (kernel seconds, extra seconds after the kernel's stream, output)."""
    if cuda:
        flush.zero_()
        if _sleep is not None:
            _sleep(SPIN_CYCLES)
        start, end, done = _Event(enable_timing=True), _Event(enable_timing=True), _Event(enable_timing=True)
        _event_record(start)
        out = fn(*inputs)
        _event_record(end)
        _cuda_synchronize()
        _event_record(done)
        _event_synchronize(done)
        # the same host round trip with nothing outstanding: the gap's baseline
        a, b = _Event(enable_timing=True), _Event(enable_timing=True)
        _event_record(a)
        _cuda_synchronize()
        _event_record(b)
        _event_synchronize(b)
        gap = _event_elapsed(end, done) - _event_elapsed(a, b)
        return _event_elapsed(start, end) / 1e3, gap / 1e3, out
    t0 = _perf_counter()
    out = fn(*inputs)
    return _perf_counter() - t0, 0.0, out


def _noop(*_args):
    return None


def overhead(device, n: int = 30) -> float:
    """Median time of a no-op through the same procedure (0 on the CPU); reported, not subtracted."""
    if not is_cuda(device):
        return 0.0
    flush = flush_buffer(device)
    times = [_one(_noop, (), True, flush)[0] for _ in range(n + 3)][3:]
    return _median(times)


def time_kernel(fn: Callable, make_inputs: Callable[[int], Sequence], device, warmup: int, iters: int,
                verify: Callable[[Sequence, object], str] | None = None) -> dict:
    """Time ``fn`` over fresh inputs ``make_inputs(i)`` for each iteration ``i``.

    ``verify(inputs, out)`` (optional) runs after each iteration, outside the timed region,
    and returns "" when the output is right or a reason; the first failure stops timing.
    Returns {"median_s", "times_s", "n", "side_stream_s", "side_stream", "failure", "failure_iter", "method"}.
    """
    cuda = is_cuda(device)
    flush = flush_buffer(device)
    times: list[float] = []
    gaps: list[float] = []
    prev = None
    failure, failure_iter = "", -1
    for i in range(warmup + iters):
        inputs = make_inputs(i)
        t, gap, out = _one(fn, inputs, cuda, flush)
        if i >= warmup:
            times.append(t)
            gaps.append(gap)
        if verify is not None:
            why = verify(inputs, out)
            if why:
                failure, failure_iter = why, i
                break
        prev = inputs   # noqa: F841  (kept alive: the next inputs land elsewhere)
        del out
    del prev
    if failure or not times:
        return {"median_s": None, "times_s": times, "n": len(times), "side_stream_s": None, "side_stream": False,
                "failure": failure or "no timed iterations", "failure_iter": failure_iter, "method": METHOD}
    med = _median(times)
    side = max(_median(gaps), 0.0)
    return {"median_s": max(med, 1e-9), "times_s": times, "n": len(times), "side_stream_s": side,
            "side_stream": side > max(SIDE_STREAM_MIN_S, med), "failure": "", "failure_iter": -1,
            "method": METHOD}
