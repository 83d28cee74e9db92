"""Slim, portable labs: paths relative to the lab folder (a copied lab resumes where it lands,
an old lab's absolute paths are re-rooted), scratch removed when a run ends, and model files
kept only while they can still be needed (the ledger says which, the lab removes the rest)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

import autolab
from autolab.cli import main
from autolab.lab import (LOG_MAX_BYTES, SCRATCH_FILE_BYTES, Lab, lab_file, lab_relative)
from autolab.records import Candidate, Run, State, now
from toytask import make_toy_task

# What a harness leaves next to its result (the layout of the nanochat and speedrun runners):
# the candidate's working folder with its model, the split evaluation's copy of the model, a
# compile cache, a token cache copied in, and a long training log.
HARNESS_FILES = '''
rp = pathlib.Path(result_path)
work, mdir, hdir = (rp.parent / (rp.stem + s) for s in (".work", ".model", ".harness"))
for d in (work / "__pycache__", work / "inductor-cache", mdir, hdir):
    d.mkdir(parents=True, exist_ok=True)
model = os.urandom(300_000)
(work / "model.pt").write_bytes(model)
(work / "model.json").write_text('{"n_layer": 1}')
(mdir / "model.pt").write_bytes(model)
(work / "__pycache__" / "train.cpython.pyc").write_bytes(b"x" * 1000)
(work / "inductor-cache" / "kernel.so").write_bytes(b"x" * 200_000)
(work / "train.tokens.npy").write_bytes(b"t" * (5 << 20))
with open(hdir / "train.log", "w") as f:
    for i in range(60_000):
        f.write(f"step {i:06d} loss 1.2345 lr 0.001 tokens/s 123456\\n")
(hdir / "eval.json").write_text('{"ok": true}')
'''


def _du(path: Path) -> int:
    return sum(p.lstat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def _stored_paths(lab: Lab) -> list[str]:
    out = []
    for r in lab.log.runs_list():
        out += [r.notebook, r.result_path, r.meta["params"]["candidate_dir"], r.meta["params"]["result_path"]]
    return out


# ---------------------------------------------------------------------------- paths

def test_lab_file_resolves_relative_paths_and_re_roots_old_absolute_ones(tmp_path):
    lab = tmp_path / "new" / "lab"
    (lab / "runs" / "r-1").mkdir(parents=True)
    (lab / "runs" / "r-1" / "result.json").write_text("{}")
    assert lab_file(lab, "runs/r-1/result.json") == lab / "runs" / "r-1" / "result.json"
    assert lab_file(lab, None) is None and lab_file(lab, "") is None
    # an old lab's absolute path, the lab since moved: re-rooted from the last lab folder it names
    # (here the old lab itself lived under a folder called runs)
    assert lab_file(lab, "/gone/runs/old-lab/runs/r-1/result.json") == lab / "runs" / "r-1" / "result.json"
    assert lab_file(lab, "/gone/lab/runs/r-2/notebook.ipynb") == lab / "runs" / "r-2" / "notebook.ipynb"
    # an absolute path that exists is used as it is; one outside any lab folder stays as it was
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("{}")
    assert lab_file(lab, str(elsewhere)) == elsewhere
    assert lab_file(lab, "/gone/x.json") == Path("/gone/x.json")
    assert lab_relative(lab, lab / "runs" / "r-1" / "result.json") == "runs/r-1/result.json"
    assert lab_relative(lab, elsewhere) == str(elsewhere.resolve())


def test_a_copied_lab_resumes_where_it_lands(tmp_path, toy_task, capsys):
    """A real lab with completed runs, copied to another folder and the original deleted: its
    records name no absolute path, `autolab loop` resumes with nothing re-run, the audit reads
    the runs' files there, and `autolab log` / `autolab report` work there."""
    old = tmp_path / "first" / "lab"
    s = autolab.loop(Lab(old, task=str(toy_task)), iterations=2, proposer_seed=0, progress=False)
    assert s.reason == "goal" and s.runs >= 4, s
    lab = Lab(old)
    assert all(p and not os.path.isabs(p) for p in _stored_paths(lab)), _stored_paths(lab)
    runs_before = {r.id: r.state for r in lab.log.runs_list()}
    lab.log.close()

    new = tmp_path / "elsewhere" / "copied-lab"
    shutil.copytree(old, new)
    shutil.rmtree(old.parent)
    code = main(["loop", str(toy_task), "--iterations", "2", "--lab", str(new), "--proposer-seed", "0", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["reason"] == "goal" and out["experiments"] == 2, out
    moved = Lab(new)
    assert {r.id: r.state for r in moved.log.runs_list()} == runs_before   # nothing re-run
    for r in moved.log.runs_list():
        assert moved.file(r.notebook).is_file() and moved.file(r.result_path).is_file()
        assert str(tmp_path / "first") not in str(moved.file(r.result_path))

    # the audit reads the runs' files in the new place: a canary planted in one result is found
    from autolab._audit import run_checks

    cand = next(c for c in moved.log.candidates_list() if c.parent_id is not None)
    r = moved.ledger.runs_of(cand, states=None)[0]
    res = moved.file(r.result_path)
    res.write_text(res.read_text().replace('"summary"', '"leak": "sk-autolab-canary-0123", "summary"'))
    canary = {c.name: c for c in run_checks(moved, cand)}["canary"]
    assert not canary.passed and r.id in canary.detail

    assert main(["log", "--lab", str(new), "--json"]) == 0
    log = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert log["lab"] == str(new.resolve()) and log["leaderboard"]
    html = tmp_path / "report.html"
    assert main(["report", "--lab", str(new), "-o", str(html), "--json"]) == 0
    capsys.readouterr()
    assert html.stat().st_size > 10_000


def test_an_old_lab_with_absolute_paths_works_after_a_move(tmp_path, toy_task):
    """Labs made before relative paths stored absolute ones: after a move they are re-rooted
    under the lab's new folder (the report's curves, the audit's reads, a re-run's job)."""
    from autolab import report
    from autolab._run import build_job
    from autolab.executors import JobLimits

    old = tmp_path / "a" / "lab"
    lab = Lab(old, task=str(toy_task))
    (r,) = autolab.run(lab, seeds=1)
    absolute = lambda p: str(old.resolve() / p)   # noqa: E731 - what older labs stored
    params = {**r.meta["params"], "candidate_dir": absolute(r.meta["params"]["candidate_dir"]),
              "result_path": absolute(r.meta["params"]["result_path"])}
    lab.log.append(dataclasses.replace(r, notebook=absolute(r.notebook), result_path=absolute(r.result_path),
                                       meta={**r.meta, "params": params}))
    lab.log.close()
    new = tmp_path / "b" / "lab"
    shutil.move(str(old), str(new))

    moved = Lab(new)
    (r2,) = moved.log.runs_list()
    assert os.path.isabs(r2.result_path) and not Path(r2.result_path).exists()
    assert moved.file(r2.result_path) == new.resolve() / "runs" / r2.id / "result.json"
    assert moved.run_dir(r2) == new.resolve() / "runs" / r2.id
    assert len(report._curve(r2, new)) == 5
    job = build_job(moved, moved.seed_candidate(), r2, JobLimits(timeout_s=10))
    assert job.params["candidate_dir"] == str(new.resolve() / "candidates" / r2.candidate_id)
    assert job.params["result_path"] == str(new.resolve() / "runs" / r2.id / "result.json")
    assert job.run_dir == str(new.resolve() / "runs" / r2.id)


# ---------------------------------------------------------------------------- which models are needed

def _cand(lab: Lab, cid: str, state: State, parent: str | None, thread: str = "main") -> Candidate:
    return lab.log.append(Candidate(id=cid, task=lab.task.name, files={}, parent_id=parent, thread=thread,
                                    state=state))


def _run(lab: Lab, rid: str, cid: str, purpose: str, metric: float | None, ended: str,
         state: State = State.COMPLETE) -> Run:
    r = Run(id=rid, task=lab.task.name, candidate_id=cid, preset=lab.preset_name, seed=1, purpose=purpose,
            notebook=f"runs/{rid}/notebook.ipynb", result_path=f"runs/{rid}/result.json",
            meta={"params": {}})
    lab.log.append(r)
    return lab.log.append(r.with_state(state, metrics={} if metric is None else {"loss": metric}, ended_at=ended))


def test_models_needed_names_the_best_promoted_and_last_runs(toy_lab):
    lab, seed = toy_lab, toy_lab.seed_candidate().id
    _cand(lab, "c-prom", State.PROMOTED, seed)        # promoted, but the better one is best
    _cand(lab, "c-best", State.PROMOTED, "c-prom")
    _cand(lab, "c-rej", State.REJECTED, seed)
    _cand(lab, "c-open", State.READY, "c-best")       # screened, awaiting its confirmation
    t = lambda k: f"2026-01-01T00:00:{k:02d}.000+00:00"   # noqa: E731
    for k, v in enumerate((2.0, 2.1, 1.9)):
        _run(lab, f"r-seed{k}", seed, "confirm", v, t(k))
    _run(lab, "r-prom-screen", "c-prom", "screen", 1.0, t(10))
    _run(lab, "r-prom-conf", "c-prom", "confirm", 1.1, t(11))
    _run(lab, "r-prom-conf2", "c-prom", "confirm", 1.2, t(12))
    _run(lab, "r-best", "c-best", "confirm", 0.5, t(20))
    _run(lab, "r-rej", "c-rej", "confirm", 3.0, t(30))
    _run(lab, "r-open", "c-open", "screen", 0.4, t(40))
    _run(lab, "r-red", "c-open", "redteam", 0.1, t(41))
    _run(lab, "r-failed", "c-rej", "screen", None, t(50), state=State.FAILED)
    _run(lab, "r-last", "c-rej", "screen", 3.0, t(51))
    lab.log.append(Run(id="r-live", task=lab.task.name, candidate_id="c-rej", preset=lab.preset_name, seed=9))

    assert lab.ledger.best().id == "c-best"
    assert lab.ledger.model_keepers() == {"c-best": "the best candidate", "c-prom": "a promoted candidate"}
    need = lab.ledger.models_needed(keep_last=2)
    assert need == {"r-best": "the best candidate", "r-prom-conf2": "a promoted candidate",
                    "r-failed": "among the last 2 runs", "r-last": "among the last 2 runs"}
    # the seed is decided (not best, not promoted): none of its runs is needed; nor a rejected one's; an
    # undecided candidate's model counts within the last runs: with 0, the best and promoted ones only
    assert set(lab.ledger.models_needed(keep_last=0)) == {"r-best", "r-prom-conf2"}
    assert lab.ledger.models_needed(keep_last=4)["r-open"] == "among the last 4 runs"   # r-open, r-red, r-failed, r-last
    assert "r-open" not in lab.ledger.models_needed(keep_last=3)
    # a keeper's run is chosen among those that still have a model: c-prom's last confirmation lost its
    # model, so an earlier one with a model stands for it; a candidate with no model left names no run
    has = lambda r: r.id not in {"r-prom-conf2", "r-best"}   # noqa: E731
    assert lab.ledger.models_needed(keep_last=0, has_model=has) == {"r-prom-conf": "a promoted candidate"}
    only_screen = lambda r: r.id == "r-prom-screen"   # noqa: E731 - a screen run when no selection-free one has one
    assert lab.ledger.models_needed(keep_last=0, has_model=only_screen) == {"r-prom-screen": "a promoted candidate"}


# ---------------------------------------------------------------------------- what a run keeps

def test_slim_run_removes_scratch_keeps_views_and_never_leaves_the_run_folder(toy_lab, tmp_path):
    lab = toy_lab
    d = lab.path / "runs" / "r-s"
    for sub in ("result.work/__pycache__", "result.model", "result.harness"):
        (d / sub).mkdir(parents=True)
    (d / "notebook.ipynb").write_bytes(b"{" + b" " * (SCRATCH_FILE_BYTES + 10) + b"}")   # a view: kept whole
    (d / "result.json").write_text("{}")
    (d / "result.work" / "model.pt").write_bytes(b"m" * (SCRATCH_FILE_BYTES + 10))   # left to reclaim
    (d / "result.model" / "model.pt").write_bytes(b"m" * 1000)
    (d / "result.work" / "__pycache__" / "a.pyc").write_bytes(b"c" * 10)
    (d / "result.work" / "cache.bin").write_bytes(b"b" * (SCRATCH_FILE_BYTES + 1))
    (d / "result.work" / "small.bin").write_bytes(b"b" * 100)
    lines = [f"line {i:07d} " + "x" * 40 + "\n" for i in range(2 * LOG_MAX_BYTES // 50)]
    (d / "result.harness" / "train.log").write_text("".join(lines))
    outside = tmp_path / "outside.bin"   # a link out of the run folder: neither followed nor its target removed
    outside.write_bytes(b"o" * (SCRATCH_FILE_BYTES + 1))
    (d / "result.work" / "link.bin").symlink_to(outside)
    (d / "result.work" / "linkdir-cache").symlink_to(tmp_path, target_is_directory=True)
    run = _run(lab, "r-s", lab.seed_candidate().id, "manual", 2.0, now())

    dry = lab.slim_run(run, dry_run=True)
    assert (d / "result.model").exists() and (d / "result.work" / "cache.bin").exists()
    freed = lab.slim_run(run)
    assert [(f.path, f.why) for f in freed] == [(f.path, f.why) for f in dry]
    gone = {f.path for f in freed}
    assert gone == {"runs/r-s/result.model", "runs/r-s/result.work/__pycache__", "runs/r-s/result.work/cache.bin",
                    "runs/r-s/result.harness/train.log"}
    assert not (d / "result.model").exists() and not (d / "result.work" / "cache.bin").exists()
    assert (d / "notebook.ipynb").stat().st_size > SCRATCH_FILE_BYTES and (d / "result.json").exists()
    assert (d / "result.work" / "model.pt").exists() and (d / "result.work" / "small.bin").exists()
    assert outside.exists() and (d / "result.work" / "link.bin").is_symlink() and tmp_path.exists()
    log = (d / "result.harness" / "train.log").read_text()
    assert len(log) < LOG_MAX_BYTES and log.startswith(lines[0]) and log.endswith(lines[-1])
    assert "bytes cut from the middle of this log" in log
    assert all(ln.startswith("line ") or ln.startswith("... [autolab") for ln in log.splitlines())

    # a run whose stored folder lies outside the lab's runs/ is never touched; nor a running one
    ext = tmp_path / "ext"
    (ext / "result.model").mkdir(parents=True)
    stray = dataclasses.replace(run, id="r-ext", result_path=str(ext / "result.json"), notebook=None)
    assert lab.slim_run(stray) == [] and (ext / "result.model").exists()
    assert lab.slim_run(dataclasses.replace(run, state=State.RUNNING)) == []


def test_the_loop_keeps_a_model_only_while_it_can_be_needed_and_gc_reclaims_the_rest(tmp_path, capsys):
    """Real runs of a task whose notebook leaves a harness's files: each run ends slim (views
    kept, scratch gone, logs trimmed), the loop keeps the model files the ledger names, and
    `autolab gc` frees the others, saying what and how much."""
    task = make_toy_task(tmp_path / "tasks", extra=HARNESS_FILES)
    lab = Lab(tmp_path / "lab", task=str(task))
    lab.keep_models = 1
    assert json.loads((lab.path / "lab.json").read_text())["keep_models"] == 1
    s = autolab.loop(lab, iterations=2, proposer_seed=0, progress=False)
    assert s.reason == "goal" and s.runs >= 4, s
    # two more runs by hand, of a candidate rejected by hand: kept as the last runs, until gc
    lab.keep_models = 2
    odd = lab.add_candidate({"solution.py": "X = 0.5\n"}, lab.seed_candidate())
    lab.reject(odd)
    hand = autolab.run(lab, odd, seeds=2)
    runs = [r for r in lab.log.runs_list()]
    with_model = {r.id for r in runs if lab.model_files(r)}
    has_model = lambda r: bool(lab.model_files(r))   # noqa: E731
    assert with_model == set(lab.ledger.models_needed(2, has_model)), (with_model, lab.ledger.models_needed(2))
    assert {r.id for r in hand} <= with_model
    best_runs = {r.id for r in lab.ledger.runs_of(lab.ledger.best())}
    assert best_runs & with_model                      # the best candidate's model is kept
    assert len(with_model) < len(runs)
    for r in runs:
        d = lab.run_dir(r)
        assert (d / "notebook.ipynb").is_file() and (d / "result.json").is_file() and (d / "outcome.json").is_file()
        assert not (d / "result.model").exists() and not (d / "result.work" / "__pycache__").exists()
        assert not (d / "result.work" / "inductor-cache").exists() and not (d / "result.work" / "train.tokens.npy").exists()
        assert (d / "result.work" / "model.json").is_file() and (d / "result.harness" / "eval.json").is_file()
        assert (d / "result.harness" / "train.log").stat().st_size < LOG_MAX_BYTES
        assert _du(d) - sum(p.stat().st_size for p in lab.model_files(r)) < 1_000_000   # well under 10 MB a run
    assert lab.log.events("reclaimed")                 # what the loop removed is on record

    # `autolab gc --dry-run` says what it would free and frees nothing; then it frees it
    size = _du(lab.path / "runs")   # (the log grows: opening a lab records its meta)
    assert main(["gc", "--lab", str(lab.path), "--keep-models", "0", "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert dry["dry_run"] and dry["freed_bytes"] > 0 and _du(lab.path / "runs") == size
    assert {f["why"] for f in dry["freed"]} == {"a model file no longer needed"}
    assert {f["run_id"] for f in dry["freed"]} == {r.id for r in hand}
    assert json.loads((lab.path / "lab.json").read_text())["keep_models"] == 2   # a dry run saves nothing
    assert main(["gc", "--lab", str(lab.path), "--keep-models", "0"]) == 0
    text = capsys.readouterr().out
    assert f"freed {dry['freed_bytes'] / 1e6:.1f} MB in {len(dry['freed'])} files" in text, text
    assert f"run {next(iter(lab.ledger.models_needed(0, has_model)))}" in text
    left = {r.id for r in runs if lab.model_files(r)}
    assert left == set(lab.ledger.models_needed(0, has_model)) and left < with_model
    assert _du(lab.path / "runs") == size - dry["freed_bytes"]
    assert json.loads((lab.path / "lab.json").read_text())["keep_models"] == 0


CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "techtext" / "manifest.json"


@pytest.mark.slow
def test_a_nanochat_run_keeps_its_views_and_one_copy_of_its_model():
    """One real nanochat cpu-smoke run through the lab: the split evaluation's copy of the model
    is gone when the run ends, the run keeps one model.pt (the best's), and everything else it
    keeps (notebook, result, outcome, configs, logs) is a small fraction of the 10 MB a run may use."""
    if not CORPUS.exists() and not os.environ.get("AUTOLAB_DATA"):
        pytest.skip("no techtext corpus")
    # a short lab path: the split evaluation's socket lives in the run folder, and an AF_UNIX
    # path may not exceed 107 bytes (pytest's tmp_path is too deep for it)
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="al-"))
    try:
        _nanochat_footprint(short / "lab")
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _nanochat_footprint(path: Path) -> None:
    lab = Lab(path, task="nanochat", preset="cpu-smoke")
    (r,) = autolab.run(lab, seeds=1)
    assert r.state is State.COMPLETE, (r.error or {}).get("evalue")
    d = lab.run_dir(r)
    assert not any(p.name.endswith(".model") for p in d.iterdir())
    (model,) = lab.model_files(r)
    assert model == d / "result.work" / "model.pt" and lab.ledger.models_needed(0) == {r.id: "the best candidate"}
    for name in ("notebook.ipynb", "result.json", "outcome.json"):
        assert (d / name).is_file()
    assert (d / "result.harness" / "eval.json").is_file() and (d / "result.harness" / "train.log").is_file()
    besides_model = _du(lab.path) - model.stat().st_size
    assert besides_model < 1_000_000, besides_model   # measured: about 0.2 MB (log.db, objects, the run's files)


def test_a_run_names_its_candidate_and_ancestors_for_the_compile_cache(tmp_path, toy_task):
    """build_job puts the lab's key, the candidate and its ancestors (nearest first) in the
    run's environment; the key survives a move of the lab (machine caches are keyed by it)."""
    from autolab._run import compile_cache_job_env
    from autolab.harnesskit import COMPILE_CACHE_ENV, COMPILE_CACHE_FROM_ENV

    lab = Lab(tmp_path / "lab", task=str(toy_task))
    seed = lab.seed_candidate()
    _cand(lab, "c-a", State.PROMOTED, seed.id)
    b = _cand(lab, "c-b", State.READY, "c-a")
    env = compile_cache_job_env(lab, b)
    assert env == {COMPILE_CACHE_ENV: f"{lab.key}/c-b", COMPILE_CACHE_FROM_ENV: f"c-a,{seed.id}"}
    assert compile_cache_job_env(lab, seed)[COMPILE_CACHE_FROM_ENV] == ""
    key = lab.key
    lab.log.close()
    shutil.move(str(tmp_path / "lab"), str(tmp_path / "moved"))
    assert Lab(tmp_path / "moved").key == key


def _run_with_model(lab: Lab, rid: str, c: Candidate, purpose: str, metric: float, ended: str,
                    copy: bytes | None = None) -> Run:
    """A run record and the files its harness would leave: a model, and the working copy of the
    candidate's solution.py (its own content, or ``copy`` when the run changed it)."""
    work = lab.path / "runs" / rid / "result.work"
    work.mkdir(parents=True)
    (work / "model.pt").write_bytes(b"w" * 1000)
    (work / "solution.py").write_bytes(copy if copy is not None else lab.files(c)["solution.py"].encode())
    (lab.path / "runs" / rid / "result.json").write_text("{}")
    r = _run(lab, rid, c.id, purpose, metric, ended)
    lab.after_run(r)
    return r


def test_a_candidate_promoted_after_its_model_was_reclaimed_says_how_to_get_it_back(toy_lab, capsys):
    """keep_models 0: an undecided candidate's models go as its runs end (with the run's copy of
    its files); once promoted, its record, `autolab gc` and the report's summary say that its
    model was reclaimed and give the command that makes one; a re-run's model is then kept
    (the note goes), and the seed, no longer the best, loses its model."""
    from autolab import report

    lab = toy_lab
    lab.keep_models = 0
    seed = lab.seed_candidate()
    t = lambda k: f"2026-01-01T00:00:{k:02d}.000+00:00"   # noqa: E731
    for k, v in enumerate((2.0, 2.1)):
        _run_with_model(lab, f"r-seed{k}", seed, "confirm", v, t(k))
    c = lab.add_candidate({"solution.py": "X = 3.0\n"}, seed)
    _run_with_model(lab, "r-c-screen", c, "screen", 0.1, t(10), copy=b"X = 99  # the run rewrote its copy\n")
    for k, v in enumerate((0.2, 0.1)):
        _run_with_model(lab, f"r-c-conf{k}", c, "confirm", v, t(11 + k))
    has = lambda rid: bool(lab.model_files(lab.log.get("run", rid)))   # noqa: E731
    # the seed (the best while nothing is promoted) keeps its latest selection-free run's model and
    # that run's copy of its files; the undecided candidate's runs keep neither (a changed copy stays)
    assert [rid for rid in ("r-seed0", "r-seed1", "r-c-screen", "r-c-conf0", "r-c-conf1") if has(rid)] == ["r-seed1"]
    runs = lab.path / "runs"
    assert (runs / "r-seed1" / "result.work" / "solution.py").exists()
    assert not (runs / "r-seed0" / "result.work" / "solution.py").exists()
    assert not (runs / "r-c-conf1" / "result.work" / "solution.py").exists()
    assert (runs / "r-c-screen" / "result.work" / "solution.py").read_bytes().startswith(b"X = 99")
    assert (runs / "r-c-conf1" / "result.json").exists()
    assert {rid for e in lab.log.events("reclaimed") for rid in e["model_runs"]} == {"r-seed0", "r-c-screen",
                                                                                     "r-c-conf0", "r-c-conf1"}

    promoted = lab.promote(c, "better")
    assert lab.ledger.best().id == c.id and promoted.meta["reason"] == "better"
    note = lab.candidate(c.id).meta["model_reclaimed"]
    assert note["runs"] == ["r-c-screen", "r-c-conf0", "r-c-conf1"]
    assert note["rerun"] == f"autolab run {lab.task.name} --lab . --candidate {c.id} --seeds 1"
    cmd = f"autolab run {lab.task.name} --lab {lab.path} --candidate {c.id} --seeds 1"
    assert lab.reclaim(dry_run=True).missing == ((c.id, "the best candidate", cmd),)
    assert not has("r-seed1")              # the seed is no longer the best: its model went at the promotion
    assert main(["gc", "--lab", str(lab.path)]) == 0
    out = capsys.readouterr().out
    assert f"candidate {c.id} (the best candidate) has no model file left" in out and cmd in out, out
    html = report.summary_html(lab.log)
    assert "best model" in html and cmd in html and "r-c-conf1" in html

    # the command's run (a manual run on a fresh seed) keeps its model; the note goes, the report says nothing
    _run_with_model(lab, "r-c-again", c, "manual", 0.15, t(30))
    assert has("r-c-again") and (runs / "r-c-again" / "result.work" / "solution.py").exists()
    assert "model_reclaimed" not in lab.candidate(c.id).meta and lab.candidate(c.id).meta["reason"] == "better"
    assert lab.candidate(c.id).state is State.PROMOTED
    assert lab.reclaim(dry_run=True).missing == () and "best model" not in report.summary_html(lab.log)
    # a later, better-looking confirmation run with a model now stands for it (the latest selection-free one)
    _run_with_model(lab, "r-c-conf2", c, "confirm", 0.1, t(31))
    assert has("r-c-conf2") and not has("r-c-again")


def test_export_lab_with_models_carries_the_models_the_lab_keeps(toy_lab, tmp_path, capsys):
    """`autolab export-lab --models`: the archive holds the model files the space policy kept (the
    best's and the last runs'), never a split evaluation's copy; without it, no model file. The
    imported lab keeps the carried model where the original did."""
    import tarfile

    lab = toy_lab
    lab.keep_models = 1
    seed = lab.seed_candidate()
    t = lambda k: f"2026-01-01T00:00:{k:02d}.000+00:00"   # noqa: E731
    for k, v in enumerate((2.0, 2.1, 2.2)):
        _run_with_model(lab, f"r-seed{k}", seed, "confirm", v, t(k))
    assert [r.id for r in lab.log.runs_list() if lab.model_files(r)] == ["r-seed2"]   # the best's latest = the last
    (lab.path / "runs" / "r-seed2" / "result.model").mkdir()
    (lab.path / "runs" / "r-seed2" / "result.model" / "model.pt").write_bytes(b"copy")
    archives = {}
    for flag in ([], ["--models"]):
        out = tmp_path / f"lab{len(flag)}.tar.gz"
        assert main(["export-lab", "--lab", str(lab.path), "-o", str(out), "--json", *flag]) == 0
        info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        with tarfile.open(out) as tar:
            archives[bool(flag)] = {m for m in tar.getnames() if m.endswith(".pt")}
        assert info["model_files"] == len(archives[bool(flag)])
    assert archives == {False: set(), True: {"lab/runs/r-seed2/result.work/model.pt"}}
    new = tmp_path / "moved"
    assert main(["import-lab", str(tmp_path / "lab1.tar.gz"), "--lab", str(new)]) == 0
    moved = Lab(new)
    assert [r.id for r in moved.log.runs_list() if moved.model_files(r)] == ["r-seed2"]
    assert [k[0] for k in moved.reclaim(dry_run=True).kept] == ["r-seed2"]
