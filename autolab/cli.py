"""The ``autolab`` command. Every long command shows progress, accepts ``--json`` for a
machine-readable summary, and exits non-zero with a message that says what to do."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from .errors import AutolabError

DEFAULT_LAB = "labs/{task}-{preset}"
DEFAULT_ITERATIONS = 8   # `autolab loop`'s total experiments when neither --iterations nor --more is given


def _lab(args, task: str | None = None, preset: str | None = None):
    from .lab import Lab

    if args.lab is None and task is None:
        raise AutolabError("pass --lab DIR (the lab folder to read)")
    path = args.lab or DEFAULT_LAB.format(task=task, preset=preset or "default")
    return Lab(path, task=task, preset=preset)


def _emit(args, obj: dict, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, default=str, indent=None))
    else:
        print(text)


# ---------------------------------------------------------------------------- commands

def cmd_tasks(args) -> int:
    from .task import discover_tasks, load_task

    out = []
    for name, path in sorted(discover_tasks().items()):
        try:
            t = load_task(path)
            out.append({"name": name, "title": t.title, "metric": f"{t.metric.name} ({t.metric.direction})",
                        "default_preset": t.default_preset,
                        "presets": {p.name: {"device": p.device, "budget_s": p.budget_s} for p in t.presets.values()}})
        except Exception as e:  # noqa: BLE001 - one broken task must not hide the others
            out.append({"name": name, "error": str(e) if isinstance(e, AutolabError) else f"{type(e).__name__}: {e}"})
    lines = []
    for t in out:
        if "error" in t:
            lines.append(f"{t['name']}: INVALID: {t['error']}")
            continue
        lines.append(f"{t['name']}: {t['title']}  [{t['metric']}]")
        for p, d in t["presets"].items():
            mark = " (default)" if p == t["default_preset"] else ""
            lines.append(f"    {p:<14} {d['device']:<5} budget {d['budget_s']:g} s{mark}")
    _emit(args, {"tasks": out}, "\n".join(lines) or "no tasks found (looked in benchmarks/ and $AUTOLAB_BENCHMARKS)")
    return 0 if all("error" not in t for t in out) else 1


def cmd_data(args) -> int:
    import importlib

    from .task import load_task

    task = load_task(args.task)
    where = f"{task.path / 'task.toml'}: [data] prepare"
    data = task.raw.get("data", {})
    spec = data.get("prepare") if isinstance(data, dict) else None
    if not spec:
        raise AutolabError(f"task {task.name!r} declares no data step; add [data] prepare = \"module:function\" "
                           f"to {task.path / 'task.toml'}")
    mod_name, sep, fn_name = str(spec).partition(":")
    if not sep or not mod_name or not fn_name:
        raise AutolabError(f"{where} = {spec!r}; write it as \"module:function\" (a module importable from the task folder)")
    preset = task.preset(args.preset)
    sys.path.insert(0, str(task.path))
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except ImportError as e:
        raise AutolabError(f"{where} = {spec!r}: cannot import {mod_name!r} ({e}); fix the module name") from None
    except AttributeError:
        raise AutolabError(f"{where} = {spec!r}: {mod_name!r} has no function {fn_name!r}; fix the name") from None
    info = fn({**preset.settings, "device": preset.device, "budget_s": preset.budget_s}, source=args.source,
              progress=not args.json)
    _emit(args, {"task": task.name, "preset": preset.name, **(info or {})},
          "\n".join(f"{k}: {v}" for k, v in (info or {}).items()))
    return 0


def cmd_run(args) -> int:
    from .records import Purpose
    from ._run import run

    lab = _lab(args, args.task, args.preset)
    if not args.candidate:
        cand = lab.seed_candidate()
    elif args.candidate.startswith("c-") and not os.path.exists(args.candidate):
        cand = lab.candidate(args.candidate)          # an id from `autolab log`
    else:
        cand = lab.candidate_from_dir(args.candidate)
    executor = args.executor
    if executor == "ray":
        from .executors import get_executor

        executor = get_executor("ray", address=args.ray_address)
    runs = run(lab, cand, seeds=args.seeds, purpose=Purpose.MANUAL, executor=executor, progress=not args.json,
               full=args.full)
    name = lab.task.metric.name
    vals = [r.metrics[name] for r in runs if r.ok]
    obj = {"lab": str(lab.path), "candidate": cand.id, "runs": [
        {"id": r.id, "seed": r.seed, "state": r.state.value, name: r.metrics.get(name), "notebook": str(lab.file(r.notebook)),
         "error": r.error} for r in runs],
        "mean": sum(vals) / len(vals) if vals else None}
    text = [f"lab {lab.path}, candidate {cand.id}"]
    for r in runs:
        text.append(f"  seed {r.seed}: {r.state.value}" + (f"  {name} = {r.metrics[name]:.4f}" if r.ok else
                    f"  {r.error.get('ename') if r.error else ''}: {str((r.error or {}).get('evalue', ''))[:200]}")
                    + f"\n    notebook: {lab.file(r.notebook)}")
    if vals:
        text.append(f"mean {name}: {obj['mean']:.4f} over {len(vals)} runs")
    _emit(args, obj, "\n".join(text))
    return 0 if len(vals) == len(runs) else 1


# ---------------------------------------------------------------------------- loop: LLM settings, exit codes

# `autolab loop` exit codes, one per LoopSummary.reason (autolab._loop.STOP_REASONS). Errors
# raised before the loop starts (bad arguments, a broken lab) also exit with ERROR.
EXIT_CODES = {
    "goal": 0,           # the lab holds --iterations ideas, each tried (the only success)
    "error": 2,          # an error stopped it: LLM server unreachable or refusing, a bad setting...
    "cap": 3,            # --max-llm-calls or --max-cost reached
    "time_limit": 4,     # --max-time / --deadline: the next run would likely end past the limit
    "exhausted": 5,      # the proposer has nothing left to try before --iterations
    "interrupted": 130,  # Ctrl-C or `autolab stop`
}

LOOP_EPILOG = """\
exit codes:
  0    goal reached: the lab holds --iterations ideas (failed and abandoned ones are counted in the summary);
       also when there was nothing to do (the message says so: --iterations is a total, --more N adds N)
  2    error: e.g. the LLM server unreachable or refusing (see the message), a bad option or lab
  3    an LLM cap was reached (--max-llm-calls, --max-cost); raise it and run the same command to resume
  4    --max-time / --deadline: the next run would likely have ended past the limit (judged from the
       lab's measured run durations), or the limit passed; run the loop again to resume (with --hard-limit,
       runs killed at the limit are recorded KILLED "time limit" and re-run then)
  5    the proposer had nothing left to try before --iterations
  130  interrupted (Ctrl-C or `autolab stop`); run the same command to resume

LLM settings (with --proposer llm:<litellm model>): any litellm model string works, e.g.
  openai/<name> with --api-base http://127.0.0.1:8000/v1 (or OPENAI_API_BASE) for a local
  OpenAI-compatible server (vLLM, llama.cpp, LM Studio), ollama_chat/<name> with
  --api-base http://127.0.0.1:11434 for Ollama. Models litellm cannot price cost $0 unless
  --input-cost-per-mtok / --output-cost-per-mtok are given.
"""

# CLI option -> LLMConfig field
_LLM_OPTIONS = {"api_base": "--api-base", "max_cost": "--max-cost", "max_llm_calls": "--max-llm-calls",
                "fallbacks": "--fallbacks", "timeout_s": "--llm-timeout", "max_retries": "--llm-retries",
                "deadline_s": "--llm-deadline", "temperature": "--temperature", "max_tokens": "--max-tokens",
                "extra": "--llm-param", "input_cost_per_mtok": "--input-cost-per-mtok",
                "output_cost_per_mtok": "--output-cost-per-mtok"}


def _llm_param(text: str) -> tuple[str, object]:
    """argparse type for --llm-param KEY=VALUE: the value is JSON when it parses (numbers, true,
    objects...), else the string as written."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE; write e.g. --llm-param top_p=0.9")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _llm_kwargs(args) -> dict:
    kw = {}
    for k in _LLM_OPTIONS:
        v = getattr(args, k, None)
        if v is None or v == []:
            continue
        if k == "fallbacks":
            v = [m.strip() for item in v for m in item.split(",") if m.strip()]
        elif k == "extra":
            v = dict(v)
        kw[k] = v
    return kw


def _warn(msg: str) -> None:
    print(f"autolab: warning: {msg}", file=sys.stderr, flush=True)


def cmd_loop(args) -> int:
    from . import registry
    from ._propose import get_proposer
    from ._loop import loop

    llm_opts = {flag: k for k, flag in _LLM_OPTIONS.items() if getattr(args, k, None) not in (None, [])}
    name = args.proposer.partition(":")[0]
    unused = [f for f, k in llm_opts.items() if k not in registry.accepted_options(registry.get("proposer", name), {k: 1})]
    if unused:   # checked before the lab folder is made
        raise AutolabError(f"{', '.join(unused)} only apply to an LLM proposer; add --proposer llm:<model> "
                           f"or leave {'them' if len(unused) > 1 else 'it'} out")
    lab = _lab(args, args.task, args.preset)
    if args.keep_models is not None:   # saved in lab.json: later runs and `autolab gc` follow it too
        lab.keep_models = args.keep_models
    # the same lookup as Python's autolab.loop(proposer="...") (autolab.registry, kind "proposer")
    proposer = get_proposer(args.proposer, seed=args.proposer_seed, log=lab.log, **_llm_kwargs(args))
    implementer = resolver = None
    llm = getattr(proposer, "llm", None)
    if llm is not None:
        # one gateway for proposals, edits and merge conflicts: its caps count every call
        from .llm_implement import LLMImplementer

        if args.max_cost is not None:
            unpriced = llm.unpriced_models()
            if unpriced:
                msg = (f"--max-cost {args.max_cost:g} cannot hold for {', '.join(unpriced)}: litellm has no price for "
                       f"{'them' if len(unpriced) > 1 else 'it'}, so every call is recorded at $0; give "
                       "--input-cost-per-mtok and --output-cost-per-mtok (USD per million tokens), or cap the calls "
                       "with --max-llm-calls")
                _warn(msg)
                lab.log.event("warning", message=msg)
        implementer, resolver = LLMImplementer(llm), llm
    executor = args.executor
    if executor == "ray":
        from .executors import get_executor

        executor = get_executor("ray", address=args.ray_address)
    iterations = DEFAULT_ITERATIONS if args.iterations is None else args.iterations
    s = loop(lab, iterations, threads=args.threads, proposer=proposer, implementer=implementer,
             executor=executor, progress=not args.json, proposer_seed=args.proposer_seed, merge_llm=resolver,
             more=args.more, max_time_s=args.max_time, deadline=args.deadline, hard_limit=args.hard_limit)
    code = EXIT_CODES.get(s.reason, EXIT_CODES["error"])
    text = (f"lab {s.lab}: {s.experiments} experiments ({s.ideas_failed} failed, {s.ideas_rejected} rejected as "
            f"duplicates, {s.ideas_abandoned} abandoned, {s.ideas_pending} not implemented yet), {s.runs} runs "
            f"({s.failed} failed, {s.killed} killed), {s.promoted} promoted, {s.decisions} decided at "
            f"{s.runs_per_decision if s.runs_per_decision is not None else '-'} runs per decision; LLM: {s.llm_calls} calls, ${s.llm_cost:.4f}\n"
            f"baseline {s.baseline}  best {s.best} ({s.best_id})  [{s.reason}: {s.stopped}]  exit code {code}")
    _emit(args, {**s.to_dict(), "exit_code": code}, text)
    if code == EXIT_CODES["error"]:
        print(f"autolab: error: {s.stopped}", file=sys.stderr)
    return code


def _llm_usage_text(usage: list[dict]) -> str:
    if not usage:
        return "LLM usage: no calls"
    lines = ["LLM usage per model:"]
    for u in usage:
        p50, p95 = u["latency_p50_s"], u["latency_p95_s"]
        lat = f"latency p50 {p50:.2f} s, p95 {p95:.2f} s" if p50 is not None else "no answered call"
        extra = "".join(f", {u[k]} {k.replace('_', ' ')}" for k in ("interrupted", "in_flight") if u[k])
        lines.append(f"  {u['model']}: {u['calls']} calls ({u['ok']} ok, {u['failed']} failed{extra}), "
                     f"tokens {u['prompt_tokens']} in / {u['completion_tokens']} out, ${u['cost']:.4f}, {lat}")
    return "\n".join(lines)


def cmd_log(args) -> int:
    from .lab import Lab

    lab = Lab(args.lab)
    ledger = lab.ledger
    board, lineage = ledger.leaderboard(preset=lab.preset_name), lab.log.lineage()
    if args.export:
        files = lab.log.export(args.export, args.format)
        print(f"exported {len(files)} tables to {args.export}", file=sys.stderr)
    best, seed = ledger.best(), lab.seed_candidate()
    best_obj = {"candidate_id": best.id, "title": _title(lab, best), "state": best.state.value,
                "selection_free_mean": ledger.mean(best), "seed_id": seed.id, "seed_mean": ledger.mean(seed)}
    obj = {"lab": str(lab.path), "best": best_obj, "leaderboard": json.loads(board.to_json(orient="records")),
           "lineage": json.loads(lineage.to_json(orient="records")), "llm": lab.log.llm_totals(),
           "llm_usage": lab.log.llm_usage()}
    import pandas as pd

    m = best_obj["selection_free_mean"]
    best_line = (f"best: {best.id} {best_obj['title']} ({best.state.value}), {lab.task.metric.name} "
                 f"{'n/a' if m is None else f'{m:.4f}'} over selection-free seeds"
                 + (" (the seed: no promoted candidate beats it)" if best.id == seed.id else ""))
    with pd.option_context("display.width", 160, "display.max_columns", 12, "display.max_colwidth", 48):
        text = f"{best_line}\n\nleaderboard ({lab.task.metric.name}, {lab.task.metric.direction}; the best first):\n" \
               f"{board.to_string(index=False)}\n\n" \
               f"lineage:\n{lineage[['candidate_id', 'parent_id', 'depth', 'state', 'title']].to_string(index=False) if not lineage.empty else '(empty)'}" \
               f"\n\n{_llm_usage_text(obj['llm_usage'])}"
    _emit(args, obj, text)
    return 0


def cmd_report(args) -> int:
    from .report import build_report

    out = build_report(args.lab, args.output)
    _emit(args, {"report": str(out)}, f"report written to {out}")
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cmd_gc(args) -> int:
    from .lab import Lab

    lab = Lab(args.lab)
    if args.keep_models is not None and not args.dry_run:
        lab.keep_models = args.keep_models
    rec = lab.reclaim(args.keep_models, dry_run=args.dry_run)
    verb = "would free" if rec.dry_run else "freed"
    lines = [f"  {_mb(f.bytes):>10}  {f.path}  ({f.why})" for f in rec.freed]
    lines.append(f"{verb} {_mb(rec.bytes)} in {len(rec.freed)} files or folders of {lab.path}")
    if rec.kept:
        lines.append(f"model files kept (keep_models = {rec.keep_models}):")
        lines += [f"  {_mb(b):>10}  run {r}: {why}" for r, why, b in rec.kept]
    lines.append(f"the lab now holds {_mb(_folder_bytes(lab.path))}" if not rec.dry_run else
                 "nothing was removed (--dry-run); run again without it to free the space")
    _emit(args, {"lab": str(lab.path), **rec.to_dict(), "lab_bytes": _folder_bytes(lab.path)}, "\n".join(lines))
    return 0


def _folder_bytes(path) -> int:
    import os

    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def cmd_stop(args) -> int:
    from .lab import Lab

    p = Lab(args.lab).request_stop()
    _emit(args, {"stop": str(p)}, f"stop requested ({p}); the loop finishes its in-flight runs and exits")
    return 0


def cmd_demo(args) -> int:
    """The offline loop on nanochat cpu-tiny, end to end, then best vs seed on fresh seeds."""
    import shutil

    from .lab import Lab
    from ._loop import final_comparison, loop

    lab_path = Path(args.lab)
    if args.fresh and lab_path.exists():
        shutil.rmtree(lab_path)
    t0 = time.monotonic()
    lab = Lab(lab_path, task=args.task, preset=args.preset)
    if not args.json:
        print(f"autolab demo: offline research loop on {lab.task.name}/{lab.preset_name} in {lab.path}\n"
              f"  {args.iterations} playbook experiments (1 screening seed each), promising ones confirmed on "
              f"{lab.task.seeds.confirmation} fresh seeds, then the best against the seed on {lab.task.seeds.final} "
              "seeds never used for selection", flush=True)
    s = loop(lab, args.iterations, proposer="playbook", proposer_seed=args.proposer_seed, progress=not args.json)
    best = lab.ledger.best()
    fc = final_comparison(lab, best, progress=not args.json)
    name = lab.task.metric.name
    obj = {
        f"baseline_{name}": fc["seed_mean"], f"best_{name}": fc["candidate_mean"], "p_value": fc["p_value"],
        "effect": fc["effect"], "effect_ci95": fc["ci"], "test": fc["test"], "best_candidate": best.id,
        "best_title": _title(lab, best), "experiments": s.experiments, "runs": len(lab.log.runs_list()),
        "failed": s.failed, "killed": s.killed, "promoted": s.promoted, "lab": str(lab.path),
        "wall_s": round(time.monotonic() - t0, 1), "seed_final": fc["seed_final"], "best_final": fc["candidate_final"],
        "decisions": s.decisions, "runs_per_decision": s.runs_per_decision,
    }
    p = fc["p_value"]
    text = "\n".join([
        "", "--- autolab demo summary ---",
        f"experiments: {s.experiments}  runs: {obj['runs']}  failed: {s.failed}  killed: {s.killed}  promoted: {s.promoted}",
        f"best: {best.id}  {obj['best_title']}",
        f"baseline {name} (seed, fresh seeds): {fc['seed_mean']:.4f}  {fc['seed_final']}" if fc["seed_mean"] else "",
        f"best {name} (fresh seeds):           {fc['candidate_mean']:.4f}  {fc['candidate_final']}" if fc["candidate_mean"] else "",
        f"one-sided {'paired t' if fc['test'] == 'paired_t' else 'Welch'} p-value (same seeds): {p:.4g}" if p is not None and not math.isnan(p) else "p-value: n/a (no promoted candidate)",
        f"lab: {lab.path}   (autolab log --lab {lab.path}; autolab report --lab {lab.path} -o report.html)",
        f"wall time: {obj['wall_s']:.0f} s",
    ])
    _emit(args, obj, text)
    return 0


def _title(lab, c) -> str:
    if c.idea_id:
        idea = lab.log.get("idea", c.idea_id)
        if idea is not None:
            return idea.title
    return "seed" if c.parent_id is None else c.id


# ---------------------------------------------------------------------------- parser

def _whole(minimum: int):
    """argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{n} is below {minimum}; pass {minimum} or more")
        return n

    return parse


_count = _whole(1)    # seeds, experiments, threads
_count0 = _whole(0)   # retries


def _nonneg(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"{x} is below 0; pass 0 or more")
    return x


_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str) -> float:
    """argparse type: a duration in seconds from ``90s``, ``20m``, ``1h30m``, ``1h30m15s`` or plain
    seconds (``5400``, ``2.5``); above 0."""
    t = text.strip().lower()
    try:
        x = float(t)
    except ValueError:
        m = _DURATION.match(t)
        if not t or m is None or not any(m.groupdict().values()):
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration; write e.g. 90s, 20m, 1h30m or plain "
                                             "seconds") from None
        x = sum(float(v) * k for v, k in ((m["h"], 3600), (m["m"], 60), (m["s"], 1)) if v)
    if not (x > 0 and math.isfinite(x)):
        raise argparse.ArgumentTypeError(f"{text!r} must be a duration above 0")
    return x


def parse_deadline(text: str) -> datetime:
    """argparse type: an ISO 8601 time (``2026-12-07T18:00``, ``...+01:00``, ``...Z``); without a
    time zone it is this machine's local time."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO time; write e.g. 2026-12-07T18:00 or "
                                         "2026-12-07T18:00:00+00:00 (try: date -Iseconds -d '+2 hours')") from None
    return dt if dt.tzinfo is not None else dt.astimezone()


def _positive(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"{x} must be above 0")
    return x


# Each command's arguments; the registry (autolab/registry.py, kind "command") names these
# functions as the built-in commands, in this order. A plug-in adds a command the same way:
# an entry point in the ``autolab.commands`` group naming a ``setup(add)`` function.

def setup_tasks(add) -> None:
    add("tasks", cmd_tasks, "list tasks and their presets")


def setup_data(add) -> None:
    sp = add("data", cmd_data, "prepare a task's data (verify or download the corpus, train the tokenizer)")
    sp.add_argument("task"); sp.add_argument("--source", default=None, help="corpus folder or shard URL")
    sp.add_argument("--preset", default=None)


def setup_run(add) -> None:
    sp = add("run", cmd_run, "run a candidate (default: the seed) on fresh seeds")
    sp.add_argument("task"); sp.add_argument("--preset", default=None); sp.add_argument("--candidate", default=None,
                                                                                         help="folder with the candidate's editable files, or a candidate id of the lab")
    sp.add_argument("--seeds", type=_count, default=1); sp.add_argument("--lab", default=None)
    sp.add_argument("--executor", default="local", help="local | ray"); sp.add_argument("--ray-address", default=None)
    sp.add_argument("--full", action="store_true",
                    help="re-check everything: never carry the parent's results of unchanged problems (kernels)")


def setup_loop(add) -> None:
    sp = add("loop", cmd_loop, "run the research loop (resumable: the same command continues)")
    sp.add_argument("task"); sp.add_argument("--preset", default=None)
    goal = sp.add_mutually_exclusive_group()
    goal.add_argument("--iterations", type=_count, default=None, metavar="N",
                      help=f"the total number of experiments (ideas) the lab should hold, counting those of earlier "
                           f"runs of the loop (default {DEFAULT_ITERATIONS}); a rerun with the same N only finishes "
                           "pending work")
    goal.add_argument("--more", type=_count, default=None, metavar="N",
                      help="run N more experiments than the lab holds now")
    sp.add_argument("--threads", type=_count, default=1, help="parallel lines of research")
    sp.add_argument("--proposer", default="playbook", help="playbook | random | llm:<litellm model>")
    sp.add_argument("--proposer-seed", type=int, default=None)
    sp.add_argument("--executor", default="local", help="local | ray")
    sp.add_argument("--ray-address", default=None)
    sp.add_argument("--max-time", "--time-limit", dest="max_time", type=parse_duration, default=None,
                    metavar="DURATION",
                    help="time box from now (90s, 20m, 1h30m or seconds): start no run that would likely end past "
                         "it, judged from the p90 of the lab's completed runs (before any run, the preset's "
                         "timeout_s); runs under way finish; exit code 4. --time-limit is an alias")
    sp.add_argument("--deadline", type=parse_deadline, default=None, metavar="ISO-TIME",
                    help="the same, as a wall-clock time (e.g. 2026-12-07T18:00+00:00; local time without a zone); "
                         "with --max-time too, the earlier one holds")
    sp.add_argument("--hard-limit", action="store_true",
                    help="at the limit, kill runs still going and record them KILLED \"time limit\" (re-run on resume) "
                         "instead of letting them finish")
    sp.add_argument("--keep-models", type=_count0, default=None, metavar="N",
                    help="model files kept: the best, promoted and undecided candidates' and the last N runs' "
                         "(default: lab.json's keep_models, else 2); saved in lab.json. See `autolab gc`")
    sp.epilog, sp.formatter_class = LOOP_EPILOG, argparse.RawDescriptionHelpFormatter
    g = sp.add_argument_group("LLM (with --proposer llm:<litellm model>)")
    g.add_argument("--api-base", default=None, help="LLM server URL (else litellm's env vars, e.g. OPENAI_API_BASE)")
    g.add_argument("--fallbacks", action="append", default=[], metavar="MODEL[,MODEL]",
                   help="litellm models tried in order when the primary fails (repeatable)")
    g.add_argument("--llm-timeout", dest="timeout_s", type=_positive, default=None, metavar="SECONDS",
                   help="timeout of one request (default 120)")
    g.add_argument("--llm-retries", dest="max_retries", type=_count0, default=None, metavar="N",
                   help="extra attempts per model after 429/5xx/timeouts/connection errors (default 4)")
    g.add_argument("--llm-deadline", dest="deadline_s", type=_positive, default=None, metavar="SECONDS",
                   help="give up on one LLM call after this long in all, retries included, and stop with exit "
                        "code 2 (default 300)")
    g.add_argument("--temperature", type=_nonneg, default=None, help="sampling temperature (default 0.7)")
    g.add_argument("--max-tokens", type=_count, default=None, help="longest answer in tokens (default 4096)")
    g.add_argument("--llm-param", dest="extra", action="append", type=_llm_param, default=[], metavar="KEY=VALUE",
                   help="any other litellm.completion parameter, the value as JSON if it parses "
                        "(e.g. top_p=0.9, seed=1, stop='[\"END\"]'); repeatable")
    g.add_argument("--input-cost-per-mtok", type=_nonneg, default=None, metavar="USD",
                   help="price per million prompt tokens, for models litellm cannot price (local, custom)")
    g.add_argument("--output-cost-per-mtok", type=_nonneg, default=None, metavar="USD",
                   help="price per million completion tokens, for models litellm cannot price")
    g.add_argument("--max-cost", type=_positive, default=None, help="stop when LLM spend in this lab reaches this (USD)")
    g.add_argument("--max-llm-calls", type=_count, default=None, help="stop after this many LLM calls in this lab")
    sp.add_argument("--lab", default=None)


def cmd_export_lab(args) -> int:
    from .archive import export_lab

    info = export_lab(args.lab, args.output)
    left = info["left_out"]
    text = (f"wrote {info['archive']}: {info['files']} files ({info['bytes'] / 1e6:.1f} MB, "
            f"{info['archive_bytes'] / 1e6:.1f} MB compressed) of lab {info['lab']}"
            + (f"; left out {len(left)}: " + ", ".join(left[:8]) + (" ..." if len(left) > 8 else "") if left else "")
            + f"\nunpack it with: autolab import-lab {info['archive']} --lab NEW")
    _emit(args, info, text)
    return 0


def cmd_import_lab(args) -> int:
    from .archive import import_lab

    info = import_lab(args.archive, args.lab)
    _emit(args, info, f"unpacked {info['files']} files into lab {info['lab']}; resume it with: "
                      f"autolab loop {info['task'] or 'TASK'} --lab {info['lab']}")
    return 0


def setup_export_lab(add) -> None:
    sp = add("export-lab", cmd_export_lab, "write a lab's resumable core (log, candidates, runs; no model files "
                                           "or caches) into one .tar.gz, to move it to another machine")
    sp.add_argument("--lab", required=True); sp.add_argument("-o", "--output", required=True, help="e.g. lab.tar.gz")


def setup_import_lab(add) -> None:
    sp = add("import-lab", cmd_import_lab, "unpack an archive from `autolab export-lab` into a new lab folder")
    sp.add_argument("archive"); sp.add_argument("--lab", required=True, help="the new lab folder (must not exist)")


def setup_log(add) -> None:
    sp = add("log", cmd_log, "show the leaderboard and lineage of a lab")
    sp.add_argument("--lab", required=True); sp.add_argument("--export", default=None, help="folder to export tables to")
    sp.add_argument("--format", default="parquet", choices=["parquet", "csv"])


def setup_report(add) -> None:
    sp = add("report", cmd_report, "render a lab's report notebook to self-contained HTML")
    sp.add_argument("--lab", required=True); sp.add_argument("-o", "--output", default="report.html")


def setup_gc(add) -> None:
    sp = add("gc", cmd_gc, "free a lab's space: scratch files of ended runs, and model files no longer needed")
    sp.add_argument("--lab", required=True)
    sp.add_argument("--dry-run", action="store_true", help="say what would be freed, remove nothing")
    sp.add_argument("--keep-models", type=_count0, default=None, metavar="N",
                    help="besides the best, promoted and undecided candidates' models, keep those of the last N runs "
                         "(default: lab.json's keep_models, else 2); saved in lab.json")


def setup_stop(add) -> None:
    sp = add("stop", cmd_stop, "ask a running loop on a lab to stop after its in-flight runs")
    sp.add_argument("--lab", required=True)


def setup_demo(add) -> None:
    sp = add("demo", cmd_demo, "the offline loop on nanochat cpu-tiny, end to end")
    sp.add_argument("--lab", default="labs/demo"); sp.add_argument("--fresh", action="store_true", help="start a new lab")
    sp.add_argument("--iterations", type=_count, default=8); sp.add_argument("--preset", default="cpu-tiny")
    sp.add_argument("--task", default="nanochat", help=argparse.SUPPRESS)
    sp.add_argument("--proposer-seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every registered command (built-ins first, then plug-ins); a plug-in that
    cannot be loaded is left out with a warning on stderr, so it cannot break the others."""
    from . import registry

    p = argparse.ArgumentParser(prog="autolab", description="Automate the research loop: propose, implement, run, audit.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help):
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        sp.add_argument("--json", action="store_true", help="print one JSON object instead of text")
        return sp

    for name in registry.names("command"):
        try:
            registry.get("command", name)(add)
        except (registry.RegistryError, argparse.ArgumentError) as e:   # e.g. a plug-in reusing a command's name
            print(f"autolab: warning: command {name!r} left out: {e}", file=sys.stderr)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except AutolabError as e:
        print(f"autolab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:   # a path the user gave that cannot be written or read
        where = f"{e.filename}: " if e.filename else ""
        print(f"autolab: error: {where}{e.strerror or e}; check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autolab: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_CODES["interrupted"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
