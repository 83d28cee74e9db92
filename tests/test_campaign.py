"""Time-boxed loops (--max-time, --deadline, --hard-limit), unambiguous iteration goals
(--iterations is a total, --more N adds N) and the lab archive (export-lab / import-lab), on the
toy task's real papermill runs. Nothing here depends on how fast the machine is: runs that must
outlast a limit sleep far longer than it, and limits that must refuse a run are shorter than the
run's sleep."""

import argparse
import io
import json
import shutil
import tarfile
from datetime import datetime, timedelta, timezone

import pytest

import autolab
from autolab._loop import TimeLimit, p90, run_duration_estimate
from autolab.archive import export_lab, import_lab, lab_files
from autolab.cli import EXIT_CODES, main, parse_deadline, parse_duration
from autolab.errors import AutolabError
from autolab.ledger import missing_seeds
from autolab.records import Run, State
from toytask import SOLUTION, make_toy_task


def _json(capsys, argv):
    code = main(argv)
    out = capsys.readouterr().out
    return code, json.loads(out.strip().splitlines()[-1])


def _sleepy_task(root, seconds: float, timeout_s: int | None = None):
    """The toy task whose seed sleeps ``seconds`` when the benchmark imports it."""
    task = make_toy_task(root, solution=f"import time\ntime.sleep({seconds})\n" + SOLUTION)
    if timeout_s is not None:
        toml = task / "task.toml"
        toml.write_text(toml.read_text().replace("budget_s = 5", "budget_s = 1")
                        .replace("timeout_s = 60", f"timeout_s = {timeout_s}"))
    return task


# ---------------------------------------------------------------------------- parsing

def test_parse_duration_and_deadline():
    for text, want in (("90s", 90), ("20m", 1200), ("1h30m", 5400), ("1h30m15s", 5415), ("2h", 7200),
                       ("5400", 5400), ("2.5", 2.5), ("1.5m", 90), (" 45S ", 45)):
        assert parse_duration(text) == want, text
    for bad in ("", "abc", "10x", "m", "1m1h", "-5", "0", "0s", "inf", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)
    assert parse_deadline("2026-12-07T18:00:00+00:00") == datetime(2026, 12, 7, 18, tzinfo=timezone.utc)
    assert parse_deadline("2026-12-07T18:00Z").tzinfo is not None
    assert parse_deadline("2026-12-07T18:00").tzinfo is not None   # local time, made aware
    with pytest.raises(argparse.ArgumentTypeError):
        parse_deadline("tomorrow")


def test_cli_refuses_bad_limits_with_the_fix(capsys, toy_task):
    for argv, msg in ((["--max-time", "soon"], "is not a duration; write e.g. 90s"),
                      (["--deadline", "6pm"], "is not an ISO time"),
                      (["--iterations", "3", "--more", "1"], "not allowed with argument")):
        with pytest.raises(SystemExit) as e:
            main(["loop", str(toy_task), *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err, argv


def test_time_limit_picks_the_earlier_bound():
    soon = datetime.now(timezone.utc) + timedelta(seconds=30)
    lim = TimeLimit.make(3600, soon, hard=True)
    assert 0 < lim.left() <= 30 and lim.hard and "deadline" in lim.label and "hard" in lim.label
    assert TimeLimit.make(10, None).left() <= 10
    assert TimeLimit.make(None, None) is None


def test_duration_estimate_is_the_p90_of_measured_runs(toy_lab):
    assert p90([5.0]) == 5.0 and p90([float(i) for i in range(1, 11)]) == 9.0 and p90([1.0, 2.0, 100.0]) == 100.0
    # before any run: the preset's timeout
    est, how = run_duration_estimate(toy_lab, "screen", runs=[])
    assert est == toy_lab.preset.timeout_s and "timeout_s" in how
    toy_lab.preset.settings["expected_run_s"] = 42          # a preset may declare a typical run's length
    try:
        assert run_duration_estimate(toy_lab, "screen", runs=[]) == (42.0, "no completed run yet: the preset "
                                                                           f"{toy_lab.preset_name}'s expected_run_s")
    finally:
        toy_lab.preset.settings.pop("expected_run_s")

    def run(purpose, wall, state=State.COMPLETE, preset="quick"):
        r = Run(id=f"r-{purpose}-{wall}", task="toy", candidate_id="c-x", preset=preset, seed=1, purpose=purpose)
        return r.with_state(state, timings={"papermill_s": wall})

    runs = [run("screen", w) for w in (10, 11, 12, 13, 50)] + [run("confirm", 100), run("baseline", 120),
                                                                run("screen", 999, State.FAILED),
                                                                run("screen", 999, preset="other")]
    assert run_duration_estimate(toy_lab, "screen", runs=runs)[0] == 50              # same purpose and preset
    est, how = run_duration_estimate(toy_lab, "confirm", runs=runs)                 # baseline counts as confirm
    assert est == 120 and "2 completed confirm runs" in how
    est, how = run_duration_estimate(toy_lab, "final", runs=runs)                   # no final run: any purpose
    assert est == 120 and "any purpose" in how


# ---------------------------------------------------------------------------- time-boxed loops

def test_limit_shorter_than_the_preset_timeout_starts_nothing(capsys, tmp_path, toy_task):
    """A fresh lab has measured nothing: the preset's timeout_s (60 s) is the estimate, and 30 s
    cannot hold one run."""
    lab = str(tmp_path / "lab")
    code, obj = _json(capsys, ["loop", str(toy_task), "--lab", lab, "--max-time", "30s", "--json"])
    assert code == EXIT_CODES["time_limit"] == 4 and obj["reason"] == "time_limit"
    assert obj["runs"] == 0 and obj["experiments"] == 0
    assert "timeout_s" in obj["stopped"] and "so it was not started" in obj["stopped"]


def test_limit_shorter_than_a_measured_run_starts_nothing(capsys, tmp_path):
    """Runs of this seed take at least 2 s (it sleeps): once one is measured, a 1 s limit (or a
    deadline 1 s away) starts none, whatever the preset's timeout; a limit far above the measured
    time lets runs start even though the preset's timeout would not fit it."""
    task = _sleepy_task(tmp_path / "tasks", 2)
    lab = str(tmp_path / "lab")
    code, obj = _json(capsys, ["run", str(task), "--lab", lab, "--json"])
    assert code == 0
    for limit in (["--max-time", "1"], ["--deadline", (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()]):
        code, obj = _json(capsys, ["loop", str(task), "--lab", lab, *limit, "--json"])
        assert code == 4 and obj["runs"] == 1, obj
        assert "p90 of 1 completed run(s) of c-" in obj["stopped"], obj["stopped"]   # the seed's own run
    # the measured runs decide, not the timeout: with timeout_s far above the limit, runs still start
    toml = task / "task.toml"
    toml.write_text(toml.read_text().replace("timeout_s = 60", "timeout_s = 100000"))
    code, obj = _json(capsys, ["loop", str(task), "--lab", lab, "--iterations", "1", "--max-time", "2h", "--json"])
    assert code == 0 and obj["runs"] > 1 and obj["experiments"] == 1, obj


def test_hard_limit_kills_runs_in_flight_for_requeue(capsys, tmp_path):
    """The preset says a run takes at most 3 s, so a 6 s box starts the baseline; the seed in fact
    sleeps 60 s. At the limit the runs are killed, recorded KILLED "time limit", and re-queued."""
    task = _sleepy_task(tmp_path / "tasks", 60, timeout_s=3)
    lab_dir = tmp_path / "lab"
    code, obj = _json(capsys, ["loop", str(task), "--lab", str(lab_dir), "--max-time", "6s", "--hard-limit", "--json"])
    assert code == 4 and obj["reason"] == "time_limit" and obj["wall_s"] < 50, obj
    assert "recorded KILLED 'time limit'" in obj["stopped"], obj["stopped"]
    lab = autolab.Lab(lab_dir)
    runs = lab.log.runs_list()
    assert runs and all(r.state is State.KILLED and r.error["reason"] == "time limit" for r in runs), \
        [(r.state, r.error) for r in runs]
    seed = lab.seed_candidate()
    assert missing_seeds(lab, seed, "confirm", 3) == [101, 102, 103]   # the resumed loop runs them again
    assert not (lab_dir / "loop.lock").exists()


# ---------------------------------------------------------------------------- iterations and the archive

def test_iterations_is_a_total_more_adds_and_archive_round_trip(capsys, tmp_path, toy_task):
    lab = tmp_path / "lab"
    code, obj = _json(capsys, ["loop", str(toy_task), "--lab", str(lab), "--iterations", "1", "--proposer-seed", "0",
                               "--json"])
    assert code == 0 and obj["experiments"] == 1 and obj["stopped"] == "done"
    runs = obj["runs"]
    # the same command again: nothing to do, said plainly, goal code, --more named
    code, obj = _json(capsys, ["loop", str(toy_task), "--lab", str(lab), "--iterations", "1", "--json"])
    assert code == EXIT_CODES["goal"] == 0 and obj["runs"] == runs and obj["experiments"] == 1
    assert "nothing to do" in obj["stopped"] and "--more N" in obj["stopped"]
    assert main(["loop", str(toy_task), "--lab", str(lab), "--iterations", "1"]) == 0
    assert "--more N" in capsys.readouterr().out

    # the archive: the resumable core, without model files or caches
    run_dir = next((lab / "runs").iterdir())
    (run_dir / "model.pt").write_bytes(b"0" * 1000)
    (run_dir / "val.model").mkdir()
    (run_dir / "val.model" / "weights.bin").write_bytes(b"0" * 1000)
    (run_dir / "__pycache__").mkdir()
    (run_dir / "__pycache__" / "x.pyc").write_bytes(b"0")
    (lab / "exports").mkdir()
    keep, left = lab_files(lab)
    names = {p.as_posix() for p in keep}
    assert "lab.json" in names and any(n.startswith("objects/") for n in names)
    assert any(n.startswith("candidates/") for n in names) and any(n.endswith("/notebook.ipynb") for n in names)
    assert not any(n.endswith((".pt", ".pyc")) or ".model/" in n for n in names)
    assert any("model.pt (model file)" in x for x in left) and any("exports" in x for x in left)

    archive = tmp_path / "lab.tar.gz"
    code, obj = _json(capsys, ["export-lab", "--lab", str(lab), "-o", str(archive), "--json"])
    assert code == 0 and archive.is_file()
    with tarfile.open(archive) as tar:
        members = tar.getnames()
    assert "lab/log.db" in members and "lab/lab.json" in members
    assert not any(m.endswith(("model.pt", "weights.bin", ".pyc", "loop.lock")) or "log.db-" in m for m in members)

    before = autolab.Lab(lab).ledger.leaderboard().to_json()
    shutil.rmtree(lab)   # the lab moves: only the archive is left
    new = tmp_path / "moved" / "lab2"
    code, obj = _json(capsys, ["import-lab", str(archive), "--lab", str(new), "--json"])
    assert code == 0 and obj["lab"] == str(new.resolve()) and obj["task"] == "toy"
    moved = autolab.Lab(new)
    assert moved.log.integrity_check() == "ok" and moved.ledger.leaderboard().to_json() == before
    # it resumes there: --more 1 adds one experiment, and nothing done is redone
    code, obj = _json(capsys, ["loop", str(toy_task), "--lab", str(new), "--more", "1", "--proposer-seed", "0", "--json"])
    assert code == 0 and obj["experiments"] == 2 and obj["runs"] > runs, obj
    seed = moved.seed_candidate()
    # the seed's baseline (3 confirmation seeds) is not run again (its paired screening run may be new)
    assert len([r for r in moved.log.runs_list() if r.candidate_id == seed.id and r.purpose == "confirm"]) == 3
    # importing onto an existing lab is refused
    assert main(["import-lab", str(archive), "--lab", str(new)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_import_refuses_what_is_not_a_lab_archive(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for name in ("lab/lab.json", "lab/../../escape.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(AutolabError, match="unsafe member|not under"):
        import_lab(evil, tmp_path / "dest")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        info = tarfile.TarInfo("notes.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(AutolabError, match="not a lab archive"):
        import_lab(other, tmp_path / "dest")
    with pytest.raises(AutolabError, match="no lab at"):
        export_lab(tmp_path, tmp_path / "x.tar.gz")


def test_compile_caches_travel_with_the_lab_only_when_asked(capsys, tmp_path, toy_lab, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("AUTOLAB_CACHE", str(root))
    tag = root / "compile" / "2.11.0-NVIDIA-H100"
    seed = tag / toy_lab.key / "c-seed"
    (seed / "inductor" / "fx").mkdir(parents=True)
    (seed / "inductor" / "fx" / "entry").write_bytes(b"graph")
    (seed / "triton").mkdir()
    (seed / "triton" / "kernel.json").write_text("{}")
    (tag / toy_lab.key / "runs" / "c-other.1.ab").mkdir(parents=True)      # a run's private copy: never carried
    (tag / toy_lab.key / "runs" / "c-other.1.ab" / "poison").write_text("x")
    (tag / "another-lab" / "c-x").mkdir(parents=True)                      # another lab's cache: not this lab's
    (tag / "another-lab" / "c-x" / "f").write_text("x")
    plain = tmp_path / "plain.tar.gz"
    assert main(["export-lab", "--lab", str(toy_lab.path), "-o", str(plain)]) == 0
    with tarfile.open(plain) as tar:
        assert not any(m.startswith("compile-cache") for m in tar.getnames())
    archive = tmp_path / "lab.tar.gz"
    code, obj = _json(capsys, ["export-lab", "--lab", str(toy_lab.path), "-o", str(archive), "--compile-cache", "--json"])
    assert code == 0 and obj["compile_caches"] == ["2.11.0-NVIDIA-H100/c-seed"] and obj["compile_cache_bytes"] == 7
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "compile-cache/2.11.0-NVIDIA-H100/c-seed/inductor/fx/entry" in names
    assert not any("poison" in n or "another-lab" in n for n in names)

    shutil.rmtree(root / "compile")           # a fresh machine with the same cache path
    code, obj = _json(capsys, ["import-lab", str(archive), "--lab", str(tmp_path / "moved"), "--json"])
    assert code == 0 and obj["compile_cache"]["installed"] == ["2.11.0-NVIDIA-H100/c-seed"]
    assert (seed / "inductor" / "fx" / "entry").read_bytes() == b"graph"
    assert autolab.Lab(tmp_path / "moved").key == toy_lab.key    # the lab's key travels, so its runs find the cache
    (seed / "triton" / "kernel.json").write_text('{"own": 1}')    # this machine's own entries are never replaced
    code, obj = _json(capsys, ["import-lab", str(archive), "--lab", str(tmp_path / "again"), "--json"])
    assert obj["compile_cache"]["installed"] == [] and "kept this machine's own" in obj["compile_cache"]["why"]
    assert (seed / "triton" / "kernel.json").read_text() == '{"own": 1}'

    monkeypatch.setenv("AUTOLAB_CACHE", str(tmp_path / "elsewhere"))   # another cache path: entries name absolute paths
    code, obj = _json(capsys, ["import-lab", str(archive), "--lab", str(tmp_path / "third"), "--json"])
    assert code == 0 and obj["compile_cache"]["installed"] == [] and "AUTOLAB_CACHE=" in obj["compile_cache"]["why"]
    assert not (tmp_path / "elsewhere" / "compile").exists()


def test_the_estimate_tells_the_seeds_runs_from_candidates_runs(toy_lab):
    """A kernels candidate re-times only what it changed: its runs take a fraction of the seed's
    full runs, and the time box must not judge one by the other."""
    seed = toy_lab.seed_candidate()
    runs = []
    for i, (cand, wall) in enumerate([(seed.id, 90.0), (seed.id, 31.0), (seed.id, 33.0), ("c-x", 16.0), ("c-y", 18.0)]):
        r = Run(id=f"r-{i}", task="toy", candidate_id=cand, preset=toy_lab.preset_name, seed=101 + i, purpose="confirm")
        runs.append(r.with_state(State.COMPLETE, timings={"papermill_s": wall}))
    assert run_duration_estimate(toy_lab, "confirm", runs=runs)[0] == 90.0
    est, how = run_duration_estimate(toy_lab, "confirm", runs=runs, of_seed=False)
    assert est == 18.0 and "(candidates')" in how
    assert run_duration_estimate(toy_lab, "confirm", runs=runs, of_seed=True)[0] == 90.0
    assert run_duration_estimate(toy_lab, "screen", runs=runs[:3], of_seed=False)[0] == 90.0   # none of that kind yet


def test_a_machine_without_the_seeds_compile_cache_gets_a_warm_start_run_first(tmp_path, toy_task, monkeypatch):
    """warm_start presets (their runs torch.compile): on a machine that holds no compile cache of
    the lab's seed, a loop whose baseline is done first runs one of the seed's final-comparison
    seeds (which writes it); where the cache is there, it does not."""
    from autolab._loop import _Baseline
    from autolab.executors import get_executor
    from autolab.harnesskit import cache_root, device_tag
    from autolab.records import new_id

    monkeypatch.setenv("AUTOLAB_CACHE", str(tmp_path / "cache"))
    toml = toy_task / "task.toml"
    toml.write_text(toml.read_text().replace("[presets.quick]\n", "[presets.quick]\nwarm_start = true\n"))
    lab = autolab.Lab(tmp_path / "lab", task=str(toy_task))
    seed = lab.seed_candidate()
    for s in (101, 102, 103):       # the baseline, done on another machine
        r = lab.log.append(Run(id=new_id("r"), task="toy", candidate_id=seed.id, preset=lab.preset_name, seed=s,
                               purpose="baseline"))
        lab.log.append(r.with_state(State.COMPLETE, metrics={"loss": 4.0}))
    events = []
    with get_executor("local") as ex:
        b = _Baseline(lab, ex, events.append, None, lambda: None)
        for f in b.futs:
            f.result()
    finals = [r for r in lab.log.runs_list() if r.purpose == "final"]
    assert [(r.candidate_id, r.seed) for r in finals if r.state is State.COMPLETE] == [(seed.id, 1001)]
    assert any(e.get("type") == "warm_start" for e in events)
    # the toy's runs write no compile cache: as a GPU run's would, put the seed's folder in place
    folder = cache_root() / "compile" / device_tag("cpu") / lab.key / seed.id / "inductor"
    folder.mkdir(parents=True)
    (folder / "entry").write_text("compiled")
    with get_executor("local") as ex:
        assert _Baseline(lab, ex, None, None, lambda: None).futs == []


def test_a_queue_counts_typical_runs_ahead_and_a_refusal_waits_while_runs_are_in_flight(toy_lab):
    """Measured on an H100 (2026-12-07, nanochat h100-90s): with two runs in flight on one GPU and
    340 s left, the loop judged three runs at their p90 (3 x 137 s) and stopped for good, though
    the queue (two runs of about 97 s, then one) would have ended in time. Now the runs ahead count
    at their median and the new one at its p90; a refusal while runs are in flight waits for them
    and is judged again; only a refusal with nothing in flight stops the loop."""
    import time

    from autolab._loop import _Scheduler, run_durations

    lab = toy_lab
    runs = []
    for i, wall in enumerate([95.0, 97.0, 96.0, 139.0, 124.0]):
        r = lab.log.append(Run(id=f"r-q{i}", task="toy", candidate_id=f"c-{i}", preset=lab.preset_name, seed=1,
                               purpose="screen"))
        runs.append(lab.log.append(r.with_state(State.COMPLETE, timings={"papermill_s": wall})))
    assert run_duration_estimate(lab, "screen")[0] == 139.0 and run_durations(lab, "screen")[:2] == (139.0, 97.0)
    sched = _Scheduler(lab, 0, [("main", "")], None, None, None, None, 1.0, 2, None, [])
    sched.n_slots, sched.n_lanes = 2, 1
    sched.inflight_runs = {"r-a": (runs[0], None), "r-b": (runs[1], None)}
    sched.limit = TimeLimit(time.monotonic() + 345)
    assert sched.fits("screen") and not sched.stopped                   # 95 + 97 + 139 = 331 s <= 345 s
    sched.limit = TimeLimit(time.monotonic() + 300)
    assert not sched.fits("screen") and not sched.stopped and sched.reason == ""   # waits: judged again later
    notes = [e["message"] for e in lab.log.events("loop")]
    assert any("waits for the runs in flight" in m and "2 run(s) in flight on 1 GPU(s)" in m and "about 97 s" in m
               for m in notes), notes
    assert not sched.fits("screen") and len(lab.log.events("loop")) == len(notes)  # the same refusal is noted once
    sched.inflight_runs = {}
    sched.limit = TimeLimit(time.monotonic() + 120)
    assert not sched.fits("screen") and sched.reason == "time_limit" and "was not started" in sched.stopped
