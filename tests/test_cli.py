import json
import subprocess
import sys

import pytest

from autolab.cli import main
from toytask import make_toy_task


def _json(capsys, argv):
    code = main(argv)
    out = capsys.readouterr().out
    return code, json.loads(out.strip().splitlines()[-1])


def test_tasks_lists_presets(capsys):
    code, obj = _json(capsys, ["tasks", "--json"])
    names = {t["name"]: t for t in obj["tasks"]}
    assert code == 0 and "nanochat" in names
    assert {"cpu-tiny", "h100-90s", "h100-5min"} <= set(names["nanochat"]["presets"])


def test_run_loop_log_and_demo_on_toy(capsys, tmp_path, toy_task):
    lab = str(tmp_path / "lab")
    code, obj = _json(capsys, ["run", str(toy_task), "--seeds", "2", "--lab", lab, "--json"])
    assert code == 0 and len(obj["runs"]) == 2 and obj["mean"] is not None
    code, obj = _json(capsys, ["loop", str(toy_task), "--iterations", "3", "--lab", lab, "--proposer-seed", "0", "--json"])
    assert code == 0 and obj["experiments"] == 3 and obj["stopped"] == "done"
    code, obj = _json(capsys, ["log", "--lab", lab, "--json", "--export", str(tmp_path / "exp"), "--format", "csv"])
    assert code == 0 and obj["leaderboard"] and (tmp_path / "exp" / "runs.csv").exists()
    assert obj["summary"]["decisions"] >= 1 and obj["summary"]["noise"]["cross_seed_sd"] is not None

    # the text: a summary, then aligned tables (each row's columns start where the header's do)
    assert main(["log", "--lab", lab, "--last", "3"]) == 0
    text = capsys.readouterr().out
    for what in ("best: ", "noise: cross-seed sd", "runs per decision", "candidates with complete runs",
                 "runs (the last 3 of"):
        assert what in text, what
    lines = text.splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith("run ") and "purpose" in l)
    rule, rows = lines[head + 1], lines[head + 2:head + 5]
    starts = [i for i, ch in enumerate(rule) if ch == "-" and (i == 0 or rule[i - 1] == " ")]
    assert len(starts) == 9 and all(r[starts[1]:starts[1] + 2] == "c-" for r in rows), text   # 9: the hardware column

    # `autolab audit` re-checks a promoted candidate: the loop's verdict again, its state (and insights) unchanged
    import autolab

    promoted = [c for c in autolab.Lab(lab).log.candidates_list() if c.state.value == "PROMOTED"]
    assert promoted
    n_insights = len(autolab.Lab(lab).log.insights_list())
    code, v = _json(capsys, ["audit", lab, promoted[0].id, "--json"])
    assert code == 0 and v["state"] == "PROMOTED" and v["stage"] == "confirm" and v["candidate_id"] == promoted[0].id
    assert v["decided"] is False and len(autolab.Lab(lab).log.insights_list()) == n_insights
    assert autolab.Lab(lab).candidate(promoted[0].id).state.value == "PROMOTED"
    assert main(["audit", lab, autolab.Lab(lab).seed_candidate().id]) == 2
    assert "is the lab's seed" in capsys.readouterr().err
    assert main(["audit", lab, "c-000000000000"]) == 2
    assert "no candidate 'c-000000000000'" in capsys.readouterr().err
    # `autolab demo` on that lab: its loop already holds the 3 experiments (the loop's own path, from
    # a fresh lab, is the `loop` command above), so what runs is the demo's own part, the best
    # against the seed on fresh seeds
    before = {r.id for r in autolab.Lab(lab).log.runs_list()}
    n_runs = len(before)
    code, obj = _json(capsys, ["demo", "--task", str(toy_task), "--preset", "quick", "--lab", lab,
                               "--iterations", "3", "--json"])
    assert code == 0
    for key in ("baseline_loss", "best_loss", "p_value", "experiments", "failed", "promoted", "lab"):
        assert key in obj
    assert obj["best_loss"] < obj["baseline_loss"] and obj["p_value"] < 0.05
    assert obj["experiments"] == 3 and obj["runs"] > n_runs and obj["best_candidate"] in {c.id for c in promoted}
    # why the search ended: here --iterations (the lab held them), within the default time box
    assert obj["search_stopped"] == "goal" and obj["search_stop"].startswith("--iterations"), obj["search_stop"]
    assert obj["max_time_s"] == 14 * 60 and obj["final_expected_s"] > 0 and "final run(s)" in obj["final_expected"]
    added = [r for r in autolab.Lab(lab).log.runs_list() if r.id not in before]
    assert added and {getattr(r.purpose, "value", r.purpose) for r in added} == {"final"}   # the demo does not ablate unless asked


def test_errors_say_what_to_do(capsys):
    assert main(["run", "no-such-task", "--lab", "/tmp/x-autolab-none"]) == 2
    err = capsys.readouterr().err
    assert "no task named 'no-such-task'" in err and "autolab tasks" in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "autolab.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "loop" in out.stdout and "demo" in out.stdout


def test_data_prepares_the_nanochat_corpus_and_tokenizer(capsys):
    """`autolab data nanochat` (the README's set-up step): corpus verified against its manifest,
    tokenizer trained on train only and cached, token caches written."""
    from pathlib import Path

    code, obj = _json(capsys, ["data", "nanochat", "--preset", "cpu-smoke", "--json"])
    assert code == 0 and obj["task"] == "nanochat" and obj["preset"] == "cpu-smoke"
    manifest = json.loads((Path(obj["corpus"]["root"]) / "manifest.json").read_text())
    assert obj["corpus"]["train_sha256"] in json.dumps(manifest)
    assert obj["vocab_size"] == 2048
    for split in ("train", "val", "hidden_val"):
        assert Path(obj["splits"][split]["tokens"]).exists()


def test_data_step_errors_name_the_file_and_the_fix(capsys, toy_task):
    assert main(["data", str(toy_task)]) == 2
    assert "declares no data step" in capsys.readouterr().err
    toml = toy_task / "task.toml"
    base = toml.read_text()
    for spec, msg in [("nocolon", "write it as"), ("no_such_module:f", "cannot import"), ("json:nope", "has no function")]:
        toml.write_text(base + f'\n[data]\nprepare = "{spec}"\n')
        assert main(["data", str(toy_task)]) == 2
        err = capsys.readouterr().err
        assert msg in err and str(toml) in err, err


def test_bad_input_is_refused_with_the_fix(capsys, tmp_path, toy_task):
    """Bad paths, damaged labs and nonsense numbers give one line that says what to do, never a
    traceback, and leave nothing behind."""
    import autolab

    def err(argv):
        assert main(argv) == 2, argv
        return capsys.readouterr().err

    for argv, msg in ((["run", str(toy_task), "--seeds", "0"], "--seeds: 0 is below 1"),
                      (["loop", str(toy_task), "--iterations", "-1"], "--iterations: -1 is below 1"),
                      (["loop", str(toy_task), "--threads", "x"], "--threads: 'x' is not a whole number"),
                      (["loop", str(toy_task), "--max-cost", "-1"], "--max-cost: -1.0 must be above 0")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err, argv
    assert "only apply to an LLM proposer" in err(["loop", str(toy_task), "--max-cost", "1", "--lab", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()

    a_file = tmp_path / "afile"
    a_file.write_text("")
    assert "is a file, not a lab folder" in err(["log", "--lab", str(a_file)])
    missing = tmp_path / "nolab"
    assert "no lab at" in err(["log", "--lab", str(missing)]) and not missing.exists()
    assert "no task named" in err(["run", "no-such-task", "--lab", str(missing)]) and not missing.exists()

    lab_dir = tmp_path / "lab"
    autolab.Lab(lab_dir, task=str(toy_task))
    toml = toy_task / "task.toml"
    toml.write_text(toml.read_text() + '\n[presets.other]\ndevice = "cpu"\nbudget_s = 5\ntimeout_s = 60\nnoise = 0.1\n')
    assert "was created for preset 'quick'" in err(["run", str(toy_task), "--lab", str(lab_dir), "--preset", "other"])
    assert "no candidate 'c-000000000000'" in err(["run", str(toy_task), "--lab", str(lab_dir),
                                                   "--candidate", "c-000000000000"])
    assert "is a file" in err(["log", "--lab", str(lab_dir), "--export", str(a_file)])
    assert "is a folder" in err(["report", "--lab", str(lab_dir), "-o", str(tmp_path)])

    (lab_dir / "log.db").write_bytes(b"this is not sqlite" * 100)
    assert "not a readable research log" in err(["log", "--lab", str(lab_dir)])
    (lab_dir / "lab.json").write_text("{not json")
    assert "lab.json is not valid JSON" in err(["log", "--lab", str(lab_dir)])


def test_candidate_id_runs_from_the_lab(capsys, tmp_path, toy_task):
    import autolab

    lab = autolab.Lab(tmp_path / "lab", task=str(toy_task))
    seed = lab.seed_candidate()
    code, obj = _json(capsys, ["run", str(toy_task), "--lab", str(lab.path), "--candidate", seed.id, "--json"])
    assert code == 0 and obj["candidate"] == seed.id and len(obj["runs"]) == 1


def test_tasks_lists_every_task_even_with_a_broken_one(capsys, monkeypatch, tmp_path, toy_task):
    broken = tmp_path / "more" / "broken"
    broken.mkdir(parents=True)
    (broken / "task.toml").write_text('name = "broken"\nsignificance = 1\n')
    monkeypatch.setenv("AUTOLAB_BENCHMARKS", f"{broken.parent}{__import__('os').pathsep}{toy_task.parent}")
    code, obj = _json(capsys, ["tasks", "--json"])
    by_name = {t["name"]: t for t in obj["tasks"]}
    assert code == 1 and "toy" in by_name and "nanochat" in by_name
    assert "task.toml" in by_name["broken"]["error"]


def test_bad_corpus_path_fails_before_any_run(capsys, monkeypatch, tmp_path):
    """A wrong $AUTOLAB_DATA is reported by `autolab run` and `autolab loop` at once, with the whole
    message (the folder, where it came from, the fix), exit code 2, and no lab or run is made."""
    monkeypatch.setenv("AUTOLAB_DATA", str(tmp_path / "no-corpus"))
    for argv in (["run", "nanochat", "--preset", "cpu-smoke"], ["loop", "nanochat", "--preset", "cpu-smoke"]):
        lab = tmp_path / argv[0]
        assert main(argv + ["--lab", str(lab)]) == 2
        err = capsys.readouterr().err
        assert "no run was started" in err and str(tmp_path / "no-corpus") in err and "$AUTOLAB_DATA" in err
        assert "fix: point" in err and err.rstrip().endswith("download_shards"), err   # the whole message
        assert not lab.exists()


def test_terminal_progress_shows_phase_and_eta(tmp_path, toy_lab):
    """The terminal view of the run events: each phase in order (never back), the training clock
    against the budget, an ETA, the end line; in place on a TTY, plain lines otherwise."""
    import io

    from autolab.cli import TerminalProgress

    events = [{"type": "run_start", "run_id": "r-1", "seed": 3, "candidate_id": "c-1", "purpose": "screen"},
              {"type": "phase", "run_id": "r-1", "phase": "start-up"},
              {"type": "curve", "run_id": "r-1", "step": 10, "t": 2.0, "loss": 4.5},
              {"type": "phase", "run_id": "r-1", "phase": "evaluation"},
              {"type": "curve", "run_id": "r-1", "step": 11, "t": 5.0, "loss": 4.4},   # a late point: still evaluating
              {"type": "phase", "run_id": "r-1", "phase": "saving"},
              {"type": "note", "message": "c-1: PENDING (screening)"},
              {"type": "run_end", "run_id": "r-1", "run": None}]
    plain = io.StringIO()
    tp = TerminalProgress(toy_lab, stream=plain, tty=False)
    for e in events:
        tp(e)
    tp.close()
    lines = plain.getvalue().splitlines()
    assert [l.split(": ", 1)[1].split(" (")[0].split(",")[0] for l in lines[:4]] == \
           ["waiting to start", "start-up", "training 2 of 5 s", "evaluation"]
    assert "ETA > 3 s" in lines[2] and "saving" in lines[4] and lines[5] == "  c-1: PENDING (screening)"
    assert lines[6] == "screen c-1 seed 3 [r-1]: ended" and len(lines) == 7

    tty = io.StringIO()
    tp = TerminalProgress(toy_lab, stream=tty, tty=True)
    tp.durations = [20.0]   # earlier runs took 20 s: the ETA is what is left of that
    for e in events[:3]:
        tp(e)
    assert tp.status_line().startswith("[0 done, 1 in flight] seed 3: training 2 of 5 s, step 10, loss 4.5")
    assert "ETA 20 s" in tp.status_line() or "ETA 19 s" in tp.status_line()
    tp({"type": "run_start", "run_id": "r-2", "seed": 4, "candidate_id": "c-1", "purpose": "screen"})
    line = tp.status_line()   # two in flight: a few words each
    assert line.startswith("[0 done, 2 in flight] seed 3: training 2/5 s, 0 s, ETA") and "| seed 4: waiting, 0 s" in line
    tp.close()
    assert "\r\x1b[K" in tty.getvalue() and "\n" not in tty.getvalue()


def test_run_prints_phases_as_plain_lines(capsys, tmp_path):
    # the run folder is polled every 0.5 s: the notebook's last cell keeps the "saving" phase
    # (result written, run not ended) 3 s long, so that it is seen however fast the machine is
    # (without it the phase lasted a few ms on an idle machine and was missed)
    toy_task = make_toy_task(tmp_path / "tasks", extra="import time\ntime.sleep(3)\n")
    assert main(["run", str(toy_task), "--lab", str(tmp_path / "lab")]) == 0
    out, err = capsys.readouterr()
    assert "mean loss" in out
    phases = [l.split("]: ", 1)[1] for l in err.splitlines() if "]: " in l]
    assert phases[0].startswith("waiting to start") and phases[-1].startswith("COMPLETE loss = ")
    assert any(p.startswith("saving") for p in phases), err
