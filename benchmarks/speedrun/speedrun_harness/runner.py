"""One speedrun run: prepare data, train the candidate in a sandbox (through torchrun when the
preset has more than one GPU), re-check its final validation in a second sandboxed process,
run the probes, write the result JSON (the schema of docs/ARCHITECTURE.md, "A run").

Layout next to ``result_path`` (say ``R = result.json``)::

    result.work/        the candidate's private working copy: train_gpt.py, events.jsonl,
                        harness.rank<r>.json, model.pt
    result.harness/     run_config.json, eval_config.json, eval.json, train.log, eval.log

The time rules (task.md): the clock is the harness's, in the train process, and stops during
validation; before it starts the process may spend ``allowance_s`` (start-up, compilation,
warm-up), and all validations together may take ``val_allowance_s``. The runner checks the
clock from outside: it time-stamps the clock's events as they appear in events.jsonl and
compares. A train process alive at ``allowance_s + budget_s + val_allowance_s`` (+
``kill_grace_s``) is killed and the run is recorded as ``killed``.

On a preset with ``clock = "cpu"`` (the CPU presets) the same rules are kept in CPU seconds of
the whole train process tree (every process and thread): the harness's clock reads the tree's
CPU, the runner reads the same tree from outside at each clock event (``cpu_out`` of the
stamps, ``autolab.harnesskit.TreeCPU``), the sandbox kills the tree once it has used
``allowance_s + budget_s + val_allowance_s`` (+ ``kill_grace_s``) CPU seconds, and the wall
clock is only a safety net, ``wall_factor`` times that: a run it kills while the machine had no
CPU to give it was starved, and is recorded with a reason that starts with ``infrastructure:``
(not the candidate's fault), as is a re-check killed by ``eval_timeout_s`` while starved.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from . import ENV_CONFIG

HARNESS_DIR = Path(__file__).resolve().parent
TASK_DIR = HARNESS_DIR.parent
NANOCHAT_DIR = TASK_DIR.parent / "nanochat"
if str(NANOCHAT_DIR) not in sys.path:
    sys.path.append(str(NANOCHAT_DIR))

from nanochat_harness.data import atomic_write_json, prepare_data  # noqa: E402

from autolab.harnesskit import (TreeCPU, idle_core_seconds, machine_starved, result_skeleton,  # noqa: E402
                                wall_net_reason)
from nanochat_harness.runner import parse_summary, read_curve  # noqa: E402

EventFn = Callable[[dict], None]
SCRIPT = "train_gpt.py"
_METRIC_KEYS = ("steps", "tokens", "tokens_per_s", "mfu", "peak_mem_mb", "num_params", "train_loss")
CLOCK_EVENTS = ("init", "begin", "clock_start", "val_start", "val_end", "clock_stop", "final", "finish")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Tail(threading.Thread):
    """Follows events.jsonl while the train process runs: stamps each clock event with the
    runner's own clock (``t_out``: seconds since launch) when it appears, and forwards curve
    points. With ``live`` (the sandbox's shared dict, which names the tree's first process) each
    clock event also gets ``cpu_out``: the train process tree's CPU seconds then, read from
    outside (the CPU clock's outside view)."""

    def __init__(self, path: Path, t0: float, on_event: EventFn | None, poll_s: float = 0.02,
                 live: dict | None = None):
        super().__init__(daemon=True, name="speedrun-events")
        self.path, self.t0, self.on_event, self.poll_s = path, t0, on_event, poll_s
        self.stop = threading.Event()
        self.pos = 0
        self.stamps: list[dict[str, Any]] = []
        self.live, self.tree = live, None

    def _tree_cpu(self) -> float | None:
        if self.live is None:
            return None
        if self.tree is None:
            pid = self.live.get("pid")
            if not pid:
                return None
            self.tree = TreeCPU(int(pid))
        self.tree.rescan()              # a full scan at every clock event: no helper process is missed
        return round(self.tree(), 4)

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                data = fh.read()
        except OSError:
            return
        now = time.monotonic() - self.t0
        cpu: list[float | None] = []    # read once per poll, at the first clock event of it
        for line in data.split(b"\n")[:-1] if data else []:
            self.pos += len(line) + 1
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            if ev.get("ev") in CLOCK_EVENTS:
                stamp = {"ev": ev["ev"], "t_out": round(now, 4), "t": ev.get("t")}
                if self.live is not None:
                    if not cpu:
                        cpu.append(self._tree_cpu())
                    stamp["cpu_out"] = cpu[0]
                self.stamps.append(stamp)
            if self.on_event:
                try:
                    self.on_event({"type": "curve" if "loss" in ev else "clock", **ev})
                except Exception:  # noqa: BLE001 - a broken UI callback must not stop the run
                    pass

    def run(self) -> None:
        while not self.stop.wait(self.poll_s):
            self.poll()
        self.poll()


def _sandboxed(argv: list[str], *, cwd: Path, env: dict[str, str], read_deny: tuple[str, ...],
               write_allow: tuple[str, ...], wall_s: float, mem_mb: int | None, log_path: Path, echo: bool,
               loopback: bool = False, harden: bool = True, read_allow: tuple[str, ...] | None = None,
               end_marker: str | None = None, cpu_limit_s: float | None = None,
               live: dict | None = None) -> dict[str, Any]:
    """Run argv through ``autolab.sandbox.run_sandboxed``. ``read_allow``: reads by allow-list
    (Policy.read_allow); ``end_marker``: the output line that ends the candidate's work (Limits);
    ``cpu_limit_s``: the whole tree's CPU seconds past which it is killed (reason "cpu");
    ``live``: shared with the sandbox while it runs (it names the tree's first process)."""
    from autolab.sandbox import Limits, Policy, run_sandboxed

    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if echo:
            print(line, flush=True)

    kw = {"memory_mb": int(mem_mb)} if mem_mb else {}
    res = run_sandboxed(argv, cwd=cwd, env=env, on_line=on_line, log_path=log_path,
                        policy=Policy(read_deny=tuple(read_deny), write_allow=tuple(write_allow), loopback=loopback,
                                      harden=harden, read_allow=None if read_allow is None else tuple(read_allow)),
                        limits=Limits(wall_s=float(wall_s), end_marker=end_marker, tree_cpu_s=cpu_limit_s, **kw),
                        live=live)
    killed = res.state == "killed" and res.reason in ("timeout", "memory", "nproc", "cpu")
    return {"returncode": res.returncode, "state": res.state, "killed": killed, "kill_reason": res.reason,
            "violations": [dict(v) for v in res.violations], "wall_s": float(res.wall_s), "cpu_s": res.cpu_s,
            "wait_s": res.wait_s,
            "output": "\n".join(lines) if lines else res.stdout_tail, "peak_memory_mb": res.peak_memory_mb,
            "isolation": dict(res.isolation)}


def _copy_editable(task, src: Path, dst: Path) -> list[str]:
    copied = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and "__pycache__" not in p.parts and task.is_editable(rel):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dst / rel)
            copied.append(rel)
    return copied


# ----------------------------------------------------------------------------- probes

def _probe(passed: bool, detail: str, **extra: Any) -> dict[str, Any]:
    return {"passed": bool(passed), "detail": detail, **extra}


def clock_check(stamps: list[dict[str, Any]], reported_s: float, allowance_s: float, tol_s: float,
                wall_s: float | None = None, untimed_max_s: float | None = None, rel_tol: float = 0.03,
                floor_s: float = 0.25, validations: int | None = None,
                val_allowance_s: float | None = None, cpu: bool = False) -> dict[str, Any]:
    """The outside view of the clock: the seconds between clock_start and clock_stop as the
    runner saw them (its own time stamps of the events' arrival), less the validation pauses,
    must match the harness's timed seconds within ``min(tol_s, max(floor_s, rel_tol * reported))``
    (+ 0.05 s per pause): relative as well as absolute, so a short run cannot hide a fixed
    fraction of a second. The clock must have started within ``allowance_s`` of launch; the
    process's whole life (``wall_s``, measured by the sandbox) less the clock must fit
    ``untimed_max_s``; the pauses must be as many as the recorded ``validations`` and sum to at
    most ``val_allowance_s``. ``outside_s`` is what the run is timed by (with the reported figure
    as a floor): nothing the train process does to its own clock can make it shorter.

    ``cpu``: the clock is a CPU clock; every figure is then CPU seconds of the train process tree:
    the stamps' ``cpu_out`` (the tree's CPU when the runner saw the event) instead of their
    arrival time, and ``wall_s`` is the tree's whole CPU as the sandbox measured it."""
    key, u = ("cpu_out", "CPU s") if cpu else ("t_out", "s")
    stamps = [{**s, "t_out": s.get(key)} for s in stamps if isinstance(s.get(key), (int, float))]
    first = {}
    for s in stamps:
        first.setdefault(s["ev"], s["t_out"])
    if "clock_start" not in first or "clock_stop" not in first:
        return _probe(False, "the clock's start or stop was not seen in events.jsonl")
    pauses, open_at, n, pause_list = 0.0, None, 0, []
    for s in stamps:
        if s["t_out"] < first["clock_start"] or s["t_out"] > first["clock_stop"]:
            continue        # pauses count only between the clock's first start and first stop
        if s["ev"] == "val_start" and open_at is None:
            open_at = s["t_out"]
        elif s["ev"] == "val_end" and open_at is not None:
            pause_list.append(round(s["t_out"] - open_at, 4))
            pauses += s["t_out"] - open_at
            open_at, n = None, n + 1
    outside = first["clock_stop"] - first["clock_start"] - pauses
    tol = min(tol_s, max(floor_s, rel_tol * max(reported_s, 0.0))) + 0.05 * n
    pre = first["clock_start"]
    problems = []
    if abs(outside - reported_s) > tol:
        problems.append(f"the harness reports {reported_s:.2f} {u} on the clock, the runner saw {outside:.2f} {u} "
                        f"(tolerance {tol:.2f} {u}: {tol_s:g} {u} or {100 * rel_tol:g}% of the clock, whichever is "
                        f"smaller, at least {floor_s:g} {u}, + 0.05 {u} per validation)")
    if pre > allowance_s + tol:
        problems.append(f"the clock started {pre:.1f} {u} after launch, past the {allowance_s:g} {u} allowance for "
                        f"start-up, compilation and warm-up")
    if wall_s is not None and untimed_max_s is not None and wall_s - reported_s > untimed_max_s + tol:
        what = "the process tree used" if cpu else "the process lived"
        problems.append(f"{what} {wall_s:.1f} {u}, {wall_s - reported_s:.1f} {u} more than the clock ran, past "
                        f"the {untimed_max_s:g} {u} allowed off the clock")
    if validations is not None and n != validations:
        problems.append(f"the clock paused {n} times but {validations} validations were recorded: a pause that is not "
                        f"a validation stops the clock")
    if val_allowance_s is not None and pauses > val_allowance_s + tol:
        problems.append(f"validation pauses took {pauses:.1f} {u}, past val_allowance_s = {val_allowance_s:g} {u}")
    detail = "; ".join(problems) if problems else (
        f"clock {reported_s:.2f} {u} vs {outside:.2f} {u} seen from outside ({n} validation pauses, {pauses:.2f} {u}; "
        f"tolerance {tol:.2f} {u}); clock started {pre:.1f} {u} after launch (allowance {allowance_s:g} {u})")
    return _probe(not problems, detail, outside_s=round(outside, 4), pauses_s=round(pauses, 4), pre_s=round(pre, 4),
                  tolerance_s=round(tol, 3), pause_list=pause_list, clock="cpu" if cpu else "wall")


def pause_check(probe: dict[str, Any], val_pass_s: float, factor: float = 3.0, slack_s: float = 1.0,
                threads: int = 1) -> dict[str, Any]:
    """After the re-check: no validation pause may be longer than ``factor`` times the trusted
    side's own pass over the val rows (``val_pass_s``, measured outside the train process) plus
    ``slack_s``: a longer pause stopped the clock for more than a validation. On a CPU clock the
    pauses are CPU seconds of the tree and the pass's wall seconds count ``threads`` times (the
    CPU threads a validation may keep busy)."""
    cpu = probe.get("clock") == "cpu"
    bound = factor * val_pass_s * (threads if cpu else 1) + slack_s
    u, per = ("CPU s", f" x {threads} threads") if cpu else ("s", "")
    long = [p for p in probe.get("pause_list", []) if p > bound]
    if not long or not probe.get("passed", True):
        return {**probe, "pause_bound_s": round(bound, 3)}
    return {**probe, "passed": False, "pause_bound_s": round(bound, 3),
            "detail": f"validation pauses of {', '.join(f'{p:.2f}' for p in long[:5])} {u}, longer than {factor:g}x the "
                      f"harness's own pass over the val rows ({val_pass_s:.2f} s{per}) + {slack_s:g} {u}: the clock was "
                      f"stopped for more than a validation"}


def harness_probes(records: list[dict[str, Any]], *, world_size: int, target: float, val_tokens: int,
                   vocab_size: int, budget_s: float, init_slack: float) -> dict[str, dict[str, Any]]:
    """Probes read from the processes' harness records."""
    out: dict[str, dict[str, Any]] = {}
    ranks = sorted(r.get("rank", -1) for r in records)
    if ranks != list(range(world_size)):
        miss = sorted(set(range(world_size)) - set(ranks))
        out["records"] = _probe(False, f"no harness record from process(es) {miss}: H.finish(model) was not reached")
        return out
    main = next(r for r in records if r["rank"] == 0)
    reset = main.get("reset") or {}
    if not reset:
        out["reset_verified"] = _probe(False, "H.begin / H.warmup_done were never called: the warm-up reset was "
                                              "not verified")
    else:
        out["reset_verified"] = _probe(reset.get("passed", False),
                                       ("state at the clock's start equals the state at H.begin on every process ("
                                        + ("restored by the harness" if reset.get("restored_by_harness") else
                                           "reset by the candidate") + ")") if reset.get("passed") else
                                       f"state after the warm-up differs from H.begin: {reset.get('ranks')}",
                                       fingerprint=(main.get("begin") or {}).get("sha256"))
    init = main.get("init_loss")
    floor = math.log(vocab_size) - init_slack
    out["init_untrained"] = _probe(_finite(init) and init >= floor,
                                   f"validation loss of the state at H.begin is {init} (an untrained model: >= "
                                   f"ln(vocab) - {init_slack:g} = {floor:.3f})", init_loss=init)
    bad_tokens = [(r["rank"], v.get("i", "final"), v.get("tokens")) for r in records
                  for v in (r.get("validations") or []) + ([r["final"]] if r.get("final") else [])
                  if v.get("tokens") != val_tokens]
    seen = sorted({r["config_seen"].get("val_tokens") for r in records}, key=str)
    ok = not bad_tokens and seen == [val_tokens]
    out["val_tokens"] = _probe(ok, f"every validation measured exactly {val_tokens} tokens" if ok else
                               f"validations on other token counts (rank, validation, tokens): {bad_tokens[:5]}; "
                               f"val_tokens seen by the processes: {seen}", val_tokens=val_tokens)
    seen_t = sorted({r["config_seen"].get("target") for r in records}, key=str)
    final_t = sorted({(r.get("final") or {}).get("target") for r in records}, key=str)
    ok = seen_t == [target] and final_t == [target]
    out["target_unchanged"] = _probe(ok, f"target {target} as in task.toml" if ok else
                                     f"the processes saw target(s) {seen_t} / {final_t}, task.toml says {target}")
    outside = [(r["rank"], r.get("batches_outside")) for r in records if r.get("batches_outside")]
    early = [(r["rank"], x["phase"], x["path"]) for r in records for x in (r.get("train_reads") or [])
             if x.get("phase") in ("setup", "warmup")]
    why = []
    if outside:
        why.append(f"train batches drawn while the clock was stopped: {outside}")
    if early:
        why.append(f"the train split was read outside H.train_loader before the clock started (training in the "
                   f"untimed warm-up): {early[:3]}")
    out["train_data_in_clock"] = _probe(not (outside or early), "every train batch was drawn while the clock ran, "
                                        "and the train split was read only through H.train_loader before it"
                                        if not (outside or early) else "; ".join(why))
    broken = [(r["rank"], r["clock_intact"].get("replaced")) for r in records if not r["clock_intact"].get("passed")]
    out["clock_intact"] = _probe(not broken, "the clock's time functions and the harness's functions are the ones "
                                             "it imported" if not broken else f"replaced: {broken}")
    return out


# ----------------------------------------------------------------------------- the run

def run_benchmark(candidate_dir: str | os.PathLike | None, seed: int, preset: str | None,
                  result_path: str | os.PathLike, task_dir: str | os.PathLike | None = None,
                  on_event: EventFn | None = None, overrides: dict[str, Any] | None = None,
                  source: str | None = None, echo: bool = True, compile_cache: str | None = None,
                  harden: bool = True) -> dict[str, Any]:
    """Run one candidate for one seed on one preset; write and return the result dict.

    ``candidate_dir``: folder with the candidate's ``train_gpt.py`` (None: the task's seed).
    ``overrides``: preset keys to replace for this run (tests, calibration).
    ``source``: corpus folder (default: $AUTOLAB_DATA or the shared techtext corpus) or a URL of
    web-text parquet shards. ``compile_cache``: a folder for torch.compile's caches shared
    between runs (a trusted measurement only: it is writable by the candidate; it changes
    start-up time, never the clock). ``harden=False`` leaves out the sandbox's kernel layers
    (namespaces, Landlock) for a machine where they break CUDA; the result records it. Never
    raises for a failing candidate."""
    from autolab.errors import AutolabError
    from autolab.task import load_task

    t_start = time.monotonic()
    task = load_task(Path(task_dir) if task_dir else TASK_DIR)
    p = task.preset(preset)
    ov = dict(overrides or {})
    settings = {**p.settings, **{k: v for k, v in ov.items() if k not in ("device", "budget_s", "timeout_s")}}
    device = str(ov.get("device", p.device))
    budget_s = float(ov.get("budget_s", p.budget_s))
    allowance_s = float(settings.get("allowance_s", 15.0))
    val_allowance_s = float(settings.get("val_allowance_s", 15.0))
    grace_s = float(settings.get("kill_grace_s", 2.0))
    nproc = int(settings.get("nproc") or settings.get("gpus") or 1)
    clock = str(settings.get("clock", "wall"))
    cpu_clock = clock == "cpu"
    wall_factor = float(settings.get("wall_factor", 4.0)) if cpu_clock else 1.0
    target = float(settings["target"]) if "target" in settings else task.significance.target
    if target is None:
        raise AutolabError(f"{task.path / 'task.toml'}: preset {p.name!r} has no target; add target = <loss>")
    target = float(target)
    result_path = Path(result_path).resolve()
    result_path.parent.mkdir(parents=True, exist_ok=True)
    cand = Path(candidate_dir).resolve() if candidate_dir else task.seed_dir
    limit = allowance_s + budget_s + val_allowance_s
    result: dict[str, Any] = result_skeleton(
        task.name, p.name, seed, cand, timings={"budget_s": budget_s, "allowance_s": allowance_s + val_allowance_s,
                                                "startup_allowance_s": allowance_s, "val_allowance_s": val_allowance_s},
        target=target, val_curve=[], corpus={}, world_size=nproc)
    result["clock"] = clock

    def event(**kw: Any) -> None:
        if on_event:
            try:
                on_event(kw)
            except Exception:  # noqa: BLE001
                pass

    def done(status: str, reason: str = "") -> dict[str, Any]:
        result["status"], result["reason"] = status, reason
        result["timings"]["total_s"] = round(time.monotonic() - t_start, 3)
        atomic_write_json(result_path, result)
        event(type="phase", phase="done", status=status, reason=reason)
        if echo:
            print(f"[speedrun] {status}" + (f": {reason}" if reason else ""), flush=True)
        return result

    if clock not in ("wall", "cpu"):
        return done("failed", f"{task.path / 'task.toml'}: preset {p.name} has clock = {clock!r}; use \"wall\" or "
                              f"\"cpu\"")
    # --- data (cached after the first time; nanochat's tokenizer and token caches)
    event(type="phase", phase="data")
    t0 = time.monotonic()
    try:
        data = prepare_data({**settings, "device": device}, source=source or settings.get("source"), progress=echo)
    except AutolabError as e:
        return done("failed", f"data preparation failed: {e}")
    result["timings"]["data_s"] = round(time.monotonic() - t0, 3)
    result["corpus"] = {"name": data["corpus"]["name"], "train_sha256": data["corpus"]["train_sha256"],
                        "val_sha256": data["corpus"]["val_sha256"]}

    # --- private working copy and configs
    workdir = result_path.parent / (result_path.stem + ".work")
    hdir = result_path.parent / (result_path.stem + ".harness")
    for d in (workdir, hdir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    if not cand.is_dir():
        return done("failed", f"candidate folder {cand} does not exist; pass candidate_dir=<folder with {SCRIPT}>")
    copied = _copy_editable(task, cand, workdir)
    if SCRIPT not in copied:
        return done("failed", f"{cand} has no {SCRIPT} (editable files found: {copied or 'none'}); a speedrun "
                              f"candidate is a folder with {SCRIPT}")
    result["files"] = copied
    seq_len = int(settings.get("seq_len", 256))
    val_tokens = int(settings.get("val_tokens", 32768))
    common = {**settings, "task": task.name, "preset": p.name, "seed": int(seed), "device": device,
              "budget_s": budget_s, "allowance_s": allowance_s, "val_allowance_s": val_allowance_s,
              "target": target, "val_tokens": val_tokens, "vocab_size": data["vocab_size"], "seq_len": seq_len,
              "bos_id": data["bos_id"], "world_size": nproc, "corpus": result["corpus"]}
    launch = time.time()
    run_cfg = {**common, "events_path": str(workdir / "events.jsonl"), "record_dir": str(workdir),
               "model_path": str(workdir / "model.pt"),
               "data": {"train": data["splits"]["train"], "val": data["splits"]["val"],
                        "token_bytes": data["token_bytes"], "tokenizer": data["tokenizer"]},
               "launch_time": launch, "deadline": launch + wall_factor * limit,
               "finish_reserve_s": float(settings.get("finish_reserve_s", 5.0)),
               **({"cpu_limit_s": limit} if cpu_clock else {})}
    run_cfg_path = hdir / "run_config.json"
    atomic_write_json(run_cfg_path, run_cfg)
    # the train process validates on val itself; it never sees hidden_val or the corpus files
    denied = [data["splits"]["hidden_val"][k] for k in ("tokens", "offsets")] + [data["corpus"]["root"]]
    import autolab

    pypath = os.pathsep.join(dict.fromkeys([str(TASK_DIR), str(NANOCHAT_DIR),
                                            str(Path(autolab.__file__).resolve().parent.parent)]))
    env = {"PYTHONPATH": pypath, ENV_CONFIG: str(run_cfg_path), "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONDONTWRITEBYTECODE": "1"}
    write_allow = [str(workdir)]
    if device == "cpu":
        threads = str(max(1, int(settings.get("threads", 2)) // nproc))
        # passive waiting: on a shared machine, spinning OpenMP threads that lose their core stall each other
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, CUDA_VISIBLE_DEVICES="", OMP_WAIT_POLICY="PASSIVE")
    elif os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    run_cache = None
    if not compile_cache:   # the lab's cache for this run (autolab.harnesskit.compile_cache_for_run), if any
        from autolab.harnesskit import compile_cache_for_run

        run_cache = compile_cache_for_run(device)
        compile_cache = str(run_cache.folder) if run_cache is not None else None
    if compile_cache:
        cc = Path(compile_cache).resolve()
        (cc / "inductor").mkdir(parents=True, exist_ok=True)
        (cc / "triton").mkdir(parents=True, exist_ok=True)
        env.update(TORCHINDUCTOR_CACHE_DIR=str(cc / "inductor"), TRITON_CACHE_DIR=str(cc / "triton"))
        write_allow.append(str(cc))
    cache_reads = (*((str(Path(compile_cache).resolve()),) if compile_cache else ()),   # its own entries, and
                   *(map(str, run_cache.read) if run_cache is not None else ()))     # its ancestors' (read only)
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"  # no pool of compile workers left running at the end
    mem_mb = int(settings["mem_mb"]) if settings.get("mem_mb") else None
    # reads by allow-list: the workdir, the harnesses, the train and val files (not their folder:
    # hidden_val sits next to them), the Python environment and the system (autolab.sandbox)
    readable = (*(data["splits"][s][k] for s in ("train", "val") for k in ("tokens", "offsets")),
                data["token_bytes"], data["tokenizer"], str(run_cfg_path), str(TASK_DIR / "speedrun_harness"),
                str(NANOCHAT_DIR / "nanochat_harness"), str(Path(autolab.__file__).resolve().parent), *cache_reads)
    if nproc > 1:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", SCRIPT]
    else:
        argv = [sys.executable, SCRIPT]

    # --- train
    event(type="phase", phase="train", budget_s=budget_s, allowance_s=allowance_s, target=target)
    unit = "CPU s" if cpu_clock else "s"
    if echo:
        print(f"[speedrun] training {cand.name}/{SCRIPT}, seed {seed}, preset {p.name}, {nproc} process(es): "
              f"target {target:g}, budget {budget_s:g} {unit} (+ {allowance_s:g} {unit} start-up, {val_allowance_s:g} "
              f"{unit} validation)" + (f"; wall safety net {wall_factor * limit:g} s" if cpu_clock else ""), flush=True)
    t_launch = time.monotonic()
    live: dict[str, Any] | None = {} if cpu_clock else None
    tail = _Tail(workdir / "events.jsonl", t_launch, on_event, live=live)
    tail.start()
    idle0 = idle_core_seconds()
    try:
        tr = _sandboxed(argv, cwd=workdir, env=env, read_deny=tuple(denied), write_allow=tuple(write_allow),
                        wall_s=wall_factor * limit + grace_s, mem_mb=mem_mb, log_path=hdir / "train.log", echo=echo,
                        loopback=nproc > 1, harden=harden, read_allow=readable,
                        cpu_limit_s=limit + grace_s if cpu_clock else None, live=live)
    finally:
        tail.stop.set()
        tail.join(timeout=5)
        if run_cache is not None:
            run_cache.discard()   # a private copy: nothing a candidate wrote reaches another run
    idle1 = idle_core_seconds()
    cpu_used = float(tr["cpu_s"] or 0.0)
    # train_s is what the budget check compares with budget + allowances: the tree's CPU seconds on a
    # cpu clock, else the wall seconds until the last process of the run ended
    result["timings"]["train_s"] = round(cpu_used if cpu_clock else tr["wall_s"], 3)
    result["timings"]["train_wall_s"] = round(tr["wall_s"], 3)
    if tr["cpu_s"] is not None:
        result["timings"]["train_cpu_s"] = tr["cpu_s"]        # every process of the run, children included
    if tr["wait_s"] is not None:
        result["timings"]["train_wait_s"] = tr["wait_s"]      # runnable but waiting for a CPU (a busy machine)
    if idle0 is not None and idle1 is not None:
        result["timings"]["machine_idle_core_s"] = round(idle1 - idle0, 3)
    result["violations"] = list(tr["violations"])
    result["sandbox"] = {"train": {"isolation": tr["isolation"], "peak_memory_mb": tr["peak_memory_mb"],
                                   "state": tr["state"], "reason": tr["kill_reason"], "harden": harden}}
    result["summary"] = parse_summary(tr["output"])
    result["curve"] = [c for c in read_curve(workdir / "events.jsonl") if "ev" not in c]
    result["clock_events"] = tail.stamps
    for k in _METRIC_KEYS:
        if _finite(result["summary"].get(k)):
            result["metrics"][k] = result["summary"][k]
    records = []
    for f in sorted(workdir.glob("harness.rank*.json")):
        try:
            records.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            pass
    main = next((r for r in records if r.get("rank") == 0), None)
    if main:
        result["val_curve"] = [{"step": v["step"], "t": v["t"], "val_loss": v["val_loss"]} for v in main["validations"]]
        if main.get("final"):
            f = main["final"]
            result["val_curve"].append({"step": f["step"], "t": f["t"], "val_loss": f["val_loss"], "final": True})
        result["timings"].update(timed_s=main["timed_s"], val_s=round(main["val_s"] + ((main.get("final") or {})
                                                                                       .get("dur_s") or 0), 3),
                                 warmup_val_s=main["warmup_val_s"], script_pre_s=main["pre_s"])
        result["metrics"]["validations"] = len(main["validations"])
        if _finite(main.get("init_loss")):
            result["metrics"]["init_loss"] = main["init_loss"]
    if records:
        result["probes"].update(harness_probes(records, world_size=nproc, target=target, val_tokens=val_tokens,
                                               vocab_size=int(data["vocab_size"]), budget_s=budget_s,
                                               init_slack=float(settings.get("init_loss_slack", 1.0))))
    if main and main.get("final"):
        # on a cpu clock every figure is CPU seconds of the tree: the sandbox's measure of the whole
        # tree's CPU stands where the process's wall life stands on a wall clock
        result["probes"]["wall_consistent"] = clock_check(
            tail.stamps, float(main["timed_s"]), allowance_s, float(settings.get("clock_tolerance_s", 1.0)),
            wall_s=cpu_used if cpu_clock else tr["wall_s"], untimed_max_s=allowance_s + val_allowance_s,
            rel_tol=float(settings.get("clock_rel_tolerance", 0.03)),
            floor_s=float(settings.get("clock_floor_s", 0.25)), validations=len(main.get("validations") or []),
            val_allowance_s=val_allowance_s, cpu=cpu_clock)
        result["timings"]["pre_s"] = result["probes"]["wall_consistent"].get("pre_s")
    if tr["killed"]:
        why = {"timeout": f"timeout: the train process ran past allowance_s + budget_s + val_allowance_s = {limit:g}s "
                          f"and was killed (target not reached within the budget)",
               "memory": f"memory: the train process tree used more than mem_mb = {mem_mb} MB and was killed",
               "nproc": "nproc: the train process started too many processes and was killed",
               "cpu": "cpu: the train process hit its CPU-time limit and was killed"}.get(tr["kill_reason"],
                                                                                        tr["kill_reason"])
        if cpu_clock and tr["kill_reason"] == "cpu":
            why = (f"cpu: the train process tree used {cpu_used:.1f} CPU seconds (every process and thread counted), "
                   f"past allowance_s + budget_s + val_allowance_s = {limit:g} CPU s (clock = \"cpu\"), and was killed "
                   f"(target not reached within the budget); stop when H.time_left() is 0 or H.out_of_time(), and "
                   f"count helper processes' work inside the budget")
        elif cpu_clock and tr["kill_reason"] == "timeout":
            why = wall_net_reason(tr["wall_s"], cpu_used, limit, wall_factor, result["timings"].get("machine_idle_core_s"),
                                  tr["wait_s"])
        return done("killed", why)
    if cpu_clock and cpu_used > limit + grace_s:
        return done("killed", f"cpu: the train process tree used {cpu_used:.1f} CPU seconds in all (every process and "
                              f"thread, measured from outside), past allowance_s + budget_s + val_allowance_s = "
                              f"{limit:g} CPU s")
    if tr["returncode"] != 0:
        out_lines = tr["output"].strip().splitlines()
        ranked = [ln for ln in out_lines if ln.startswith("[rank")]     # torchrun: the processes' own tracebacks
        tail_txt = "\n".join((ranked or out_lines)[-15:])
        return done("failed", f"{SCRIPT} ended with {tr['kill_reason'] or 'exit code ' + str(tr['returncode'])}:\n"
                              f"{tail_txt}")
    if not main or not main.get("final") or not (workdir / "model.pt").exists():
        return done("failed", f"{SCRIPT} finished without H.finish(model): no final validation and no saved model")

    # --- the out-of-process re-check of the final validation (and hidden_val, and the probes): a
    # trusted process holds the targets, a sandboxed model process sees only a fresh folder with
    # train_gpt.py and the weights-only model (nanochat_harness.runner.split_evaluation)
    event(type="phase", phase="eval")
    eval_cfg_path, eval_out = hdir / "eval_config.json", hdir / "eval.json"
    atomic_write_json(eval_cfg_path, {**common, "world_size": 1,
                                      "data": {"val": data["splits"]["val"], "hidden_val": data["splits"]["hidden_val"]},
                                      "eval_timeout_s": float(settings.get("eval_timeout_s", 300))})
    eval_env = {k: v for k, v in env.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    if device == "cpu":
        eval_env.update(OMP_NUM_THREADS=str(settings.get("threads", 2)), MKL_NUM_THREADS=str(settings.get("threads", 2)))
    from nanochat_harness.runner import split_evaluation

    ev, er = split_evaluation(
        script=SCRIPT, cand=cand, workdir=workdir, mdir=result_path.parent / (result_path.stem + ".model"), hdir=hdir,
        eval_cfg_path=eval_cfg_path, eval_out=eval_out, trusted_module="speedrun_harness.evaluate",
        model_cfg={**common, "world_size": 1, "role": "model"}, config_env=ENV_CONFIG, env=eval_env,
        deny=[data["splits"][s][k] for s in ("val", "hidden_val") for k in ("tokens", "offsets")]
        + [data["corpus"]["root"], str(workdir), str(hdir), str(Path(data["token_bytes"]).parent)],
        device=device, threads=int(settings.get("threads", 2)), wall_s=float(settings.get("eval_timeout_s", 300)),
        mem_mb=mem_mb, echo=echo, harden=harden)
    result["timings"]["eval_s"] = round(ev["wall_s"], 3)
    result["violations"] += [{**v, "phase": "eval"} for v in ev["violations"]]
    result["sandbox"]["eval"] = {"isolation": ev["isolation"], "peak_memory_mb": ev["peak_memory_mb"],
                                 "state": ev["state"], "reason": ev["kill_reason"]}
    if er.get("violation"):
        result["violations"].append({**er["violation"], "phase": "eval"})
    if ev["killed"]:
        if ev["kill_reason"] == "timeout" and machine_starved(ev["wall_s"], ev.get("cpu_s"), ev.get("wait_s")):
            return done("failed", f"infrastructure: the machine was too busy: the re-check's model process got "
                                  f"{ev.get('cpu_s') or 0.0:.1f} CPU seconds and waited {ev['wait_s']:.0f} s for a CPU "
                                  f"in {ev['wall_s']:.0f} s, past eval_timeout_s = {settings.get('eval_timeout_s', 300)} "
                                  f"s; not the candidate's fault: run it again on a less loaded machine")
        return done("failed", f"the re-check was killed ({ev['kill_reason'] or 'limit'}); eval_timeout_s is "
                              f"{settings.get('eval_timeout_s', 300)}s")
    if not er.get("ok"):
        return done("failed", f"the re-check failed: {er.get('error', 'exit code ' + str(ev['returncode']))}")
    result["probes"].update(er.get("probes", {}))
    val_loss, inproc = er.get("val_loss"), main["final"]["val_loss"]
    tol = float(settings.get("recheck_tol", 0.01 if device == "cuda" else 1e-3))
    agree = _finite(val_loss) and _finite(inproc) and abs(val_loss - inproc) <= tol
    result["probes"]["loss_recheck"] = _probe(
        agree, f"final validation {inproc} in the train process, {val_loss} re-computed by the harness in its own "
               f"process (tolerance {tol:g})" if agree else
               f"the train process's final validation ({inproc}) differs from the harness's re-computation "
               f"({val_loss}) by more than {tol:g}: the loss, the data or the model changed",
        tokens=er.get("tokens"))
    if er.get("tokens") != val_tokens:
        result["probes"]["val_tokens"] = _probe(False, f"the re-check measured {er.get('tokens')} tokens, not "
                                                       f"{val_tokens}")
    for k in ("val_loss", "hidden_val_loss"):
        if _finite(er.get(k)):
            result["metrics"][k] = float(er[k])
    if _finite(inproc):
        result["metrics"]["val_loss_inprocess"] = float(inproc)
    if "num_params" not in result["metrics"] and _finite(er.get("num_params")):
        result["metrics"]["num_params"] = er["num_params"]
    if _finite(er.get("hidden_val_loss")) and _finite(val_loss):
        gap = float(er["hidden_val_loss"]) - float(val_loss)
        gmax = float(settings.get("hidden_gap_max", 0.5))
        result["probes"]["hidden_gap"] = _probe(gap <= gmax, f"hidden_val − val loss gap {gap:+.4f} (at most "
                                                             f"{gmax:+.3f}; a model tuned to val shows a larger gap)",
                                                gap=round(gap, 5))
    result["eval"] = {k: er[k] for k in ("val", "hidden_val", "rows", "seq_len", "timings", "transport") if k in er}
    wc = result["probes"].get("wall_consistent")
    if wc and _finite((er.get("timings") or {}).get("val_pass_s")):
        result["probes"]["wall_consistent"] = pause_check(wc, float(er["timings"]["val_pass_s"]),
                                                          threads=int(settings.get("threads", 2)))
    # the run is timed from outside: the runner's own stamps of the clock's start and stop, less the
    # validation pauses; the train process's figure is a floor (it cannot make the run shorter)
    timed = float(main["timed_s"])
    if wc and _finite(wc.get("outside_s")):
        result["timings"]["outside_s"] = wc["outside_s"]
        timed = max(timed, float(wc["outside_s"]))
    if not _finite(val_loss):
        return done("failed", f"the final validation loss is not finite ({val_loss})")
    if timed > budget_s:
        return done("failed", f"target not reached within the budget: {timed:.1f} {unit} on the clock > budget_s "
                              f"{budget_s:g} {unit} (final val_loss {val_loss:.4f}, target {target:g})")
    if val_loss > target:
        return done("failed", f"target not reached: final val_loss {val_loss:.4f} > target {target:g} "
                              f"(after {timed:.1f} {unit} on the clock)")
    result["metrics"]["time_s"] = round(timed, 4)
    return done("ok")


# ----------------------------------------------------------------------------- by hand

def main(argv: list[str] | None = None) -> int:
    import argparse

    from nanochat_harness.runner import _number

    ap = argparse.ArgumentParser(prog="python -m speedrun_harness.runner", description="one speedrun run")
    ap.add_argument("--candidate", default=None, help=f"folder with {SCRIPT} (default: the seed)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--out", default="result.json")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset key")
    a = ap.parse_args(argv)
    ov = {k: _number(v) for k, v in (s.split("=", 1) for s in a.set)}
    res = run_benchmark(a.candidate, a.seed, a.preset, a.out, overrides=ov)
    print(json.dumps({k: res[k] for k in ("status", "reason", "metrics", "timings")}, indent=2))
    return 0 if res["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
