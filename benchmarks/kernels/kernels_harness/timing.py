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

**Watched calls.** ``time_kernel`` can be given ``watched_fn``, the same kernel wrapped in the
dispatch recorder (``scan.OpRecorder``). Every warm-up call runs watched, and so do ``k`` extra
timed iterations (``watched_count``: a fifth of ``iters``, at least one), placed by stratified
random sampling: the ``iters + k`` timed positions are cut into ``k`` equal blocks and one
position in each block is drawn from the operating system's random source (``SystemRandom``)
when the loop starts, so neither a call count nor a clock nor a seed predicts them, and a
kernel that changes behaviour for any stretch longer than two blocks is watched in it. Watched
iterations are timed (on a GPU with a longer spin, so the recorder's host overhead stays
hidden) but kept out of the median: the ``iters`` unwatched iterations alone make the figure.
On a GPU the two medians are compared: watched calls more than ``WATCH_RATIO`` times slower
than the unwatched ones (and by more than ``WATCH_MIN_S``) mean a kernel that behaves
differently when it is observed (``watch_gap``). The comparison is skipped on the CPU, where
host timings are noise.
"""

from __future__ import annotations

import math
import random
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

WATCH_SHARE = 0.2            # watched timed iterations, as a share of iters (at least one)
WATCH_SPIN_FACTOR = 4        # watched iterations spin longer: the recorder's host overhead stays hidden
WATCH_RATIO = 1.25           # watched median / unwatched median above this (on a GPU) is a violation ...
WATCH_MIN_S = 2e-6           # ... when the difference is also above this
WATCH_MIN_N = 3              # and at least this many timed iterations were watched

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


def _one(fn: Callable, inputs: Sequence, cuda: bool, flush: torch.Tensor | None, spin: int = SPIN_CYCLES):
    """One iteration: (kernel seconds, extra seconds after the kernel's stream, output)."""
    if cuda:
        flush.zero_()
        if _sleep is not None:
            _sleep(spin)
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


def watched_count(iters: int, share: float = WATCH_SHARE) -> int:
    """How many extra timed iterations run watched (0 when nothing is timed)."""
    return max(1, math.ceil(iters * share)) if iters > 0 else 0


def watched_positions(n_positions: int, k: int, rng: random.Random | None = None) -> list[int]:
    """``k`` of ``range(n_positions)``, one drawn at random in each of ``k`` equal blocks."""
    rng = rng or _system_random
    k = min(k, n_positions)
    out = []
    for b in range(k):
        lo, hi = (b * n_positions) // k, ((b + 1) * n_positions) // k
        out.append(rng.randrange(lo, hi))
    return out


_system_random = random.SystemRandom()


def time_kernel(fn: Callable, make_inputs: Callable[[int], Sequence], device, warmup: int, iters: int,
                verify: Callable[[Sequence, object], str] | None = None,
                watched_fn: Callable | None = None, rng: random.Random | None = None) -> dict:
    """Time ``fn`` over fresh inputs ``make_inputs(i)`` for each iteration ``i``.

    ``verify(inputs, out)`` (optional) runs after each iteration, outside the timed region,
    and returns "" when the output is right or a reason; the first failure stops timing.
    ``watched_fn`` (optional) is ``fn`` under the dispatch recorder: it runs the warm-up and a
    random sample of extra timed iterations, which are kept out of the statistics (see the
    module docstring); ``rng`` replaces the system's random source (tests only).
    Returns {"median_s", "times_s", "n", "side_stream_s", "side_stream", "failure", "failure_iter", "method",
    "watched_iters", "watched_times_s", "watched_median_s", "watch_gap"}.
    """
    cuda = is_cuda(device)
    flush = flush_buffer(device)
    k = watched_count(iters) if watched_fn is not None else 0
    sampled = set(watched_positions(iters + k, k, rng)) if k else set()
    times: list[float] = []
    watched_times: list[float] = []
    gaps: list[float] = []
    prev = None
    failure, failure_iter = "", -1
    for i in range(warmup + iters + k):
        inputs = make_inputs(i)
        watched = watched_fn is not None and (i < warmup or (i - warmup) in sampled)
        if watched:
            t, gap, out = _one(watched_fn, inputs, cuda, flush, spin=SPIN_CYCLES * WATCH_SPIN_FACTOR)
        else:
            t, gap, out = _one(fn, inputs, cuda, flush)
        if i >= warmup:
            if watched:
                watched_times.append(t)
            else:
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
    watch = {"watched_iters": sorted(warmup + p for p in sampled), "watched_times_s": watched_times,
             "watched_median_s": _median(watched_times) if watched_times else None, "watch_gap": False}
    if failure or not times:
        return {"median_s": None, "times_s": times, "n": len(times), "side_stream_s": None, "side_stream": False,
                "failure": failure or "no timed iterations", "failure_iter": failure_iter, "method": METHOD, **watch}
    med = _median(times)
    side = max(_median(gaps), 0.0)
    wmed = watch["watched_median_s"]
    watch["watch_gap"] = bool(cuda and len(watched_times) >= WATCH_MIN_N and wmed is not None
                              and wmed > WATCH_RATIO * med and wmed - med > WATCH_MIN_S)
    return {"median_s": max(med, 1e-9), "times_s": times, "n": len(times), "side_stream_s": side,
            "side_stream": side > max(SIDE_STREAM_MIN_S, med), "failure": "", "failure_iter": -1,
            "method": METHOD, **watch}
