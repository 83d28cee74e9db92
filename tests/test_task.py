import pytest

from autolab.errors import TaskError
from autolab.task import discover_tasks, load_task


def _write(tmp_path, text):
    from toytask import make_toy_task

    d = make_toy_task(tmp_path)
    (d / "task.toml").write_text(text)
    return d


def test_toy_task_loads(toy_task):
    t = load_task(toy_task)
    assert t.metric.name == "loss" and t.metric.direction == "minimize"
    assert t.preset().name == "quick" and t.preset().settings["noise"] == 0.05
    assert t.is_editable("solution.py") and not t.is_editable("benchmark.ipynb")
    assert set(t.protected_hashes()) == {"benchmark.ipynb", "task.toml", "playbook.toml"}
    assert "solution.py" in t.seed_files()


@pytest.mark.parametrize("mutate, key, fix", [
    (lambda s: s.replace('direction = "minimize"', 'direction = "down"'), "metric.direction", "minimize"),
    (lambda s: s.replace('name = "loss"', 'nam = "loss"'), "metric.name", "add [metric]"),
    (lambda s: s.replace("budget_s = 5", 'budget_s = "five"'), "presets.quick.budget_s", "float"),
    (lambda s: s.replace('alpha = 0.05', 'alpha = 2.0'), "significance.alpha", "between 0 and 0.5"),
    (lambda s: s.replace('min_seeds = 2', 'min_seeds = 1'), "significance.min_seeds", "never rests on one seed"),
    (lambda s: s.replace('seed = "seed"', 'seed = "nowhere"'), "files.seed", "seed solution"),
    (lambda s: s.replace('test = "welch"', 'test = "vibes"'), "significance.test", "welch"),
    (lambda s: s.replace('timeout_s = 60', 'timeout_s = 1'), "presets.quick.timeout_s", "raise timeout_s"),
    (lambda s: s.replace("budget_s = 5", "budget_s = nan"), "presets.quick.budget_s", "finite number"),
    (lambda s: s.replace("budget_s = 5", "budget_s = 5\nthreads = \"two\""), "presets.quick.threads", "to an int"),
    (lambda s: s.replace("budget_s = 5", "budget_s = 5\ngpus = -1"), "presets.quick.gpus", ">= 0"),
    (lambda s: 'audit = "all"\n' + s.replace("[audit]\nprobes = []", ""), "audit", "write it as [audit]"),
    (lambda s: "seeds = 3\n" + s.replace("[seeds]\nscreening = 1\nconfirmation = 3\nfinal = 3", ""), "seeds", "write it as [seeds]"),
    (lambda s: s.replace('alpha = 0.05', 'alpha = 0.05\ntime_alpha = 7'), "significance.time_alpha", "between 0 and 0.5"),
])
def test_validation_errors_name_file_key_and_fix(tmp_path, mutate, key, fix):
    from toytask import TASK_TOML

    d = _write(tmp_path, mutate(TASK_TOML.format(name="toy", noise=0.05)))
    with pytest.raises(TaskError) as e:
        load_task(d)
    msg = str(e.value)
    assert str(d / "task.toml") in msg and f"'{key}'" in msg and fix in msg


def test_bad_toml_syntax(tmp_path):
    d = _write(tmp_path, "name = [unclosed")
    with pytest.raises(TaskError, match="not valid TOML"):
        load_task(d)
    (d / "task.toml").write_bytes(b'name = "\xff"\n')
    with pytest.raises(TaskError, match="not UTF-8"):
        load_task(d)


def test_unknown_task_lists_known(monkeypatch, tmp_path, toy_task):
    monkeypatch.setenv("AUTOLAB_BENCHMARKS", str(toy_task.parent))
    assert "toy" in discover_tasks()
    assert load_task("toy").name == "toy"
    with pytest.raises(TaskError, match="known tasks: .*toy"):
        load_task("nope")


# ---------------------------------------------------------------------------- [audit] declarations

PROBE = '[audit]\nchecks = ["hidden_val"]\n\n[audit.probes.toy]\ndescription = "the toy probe"\nseverity = "warn"\n'


def _audit(text):
    from toytask import TASK_TOML

    return TASK_TOML.format(name="toy", noise=0.05).replace("[audit]\nprobes = []\n", text)


def test_audit_declarations_load(tmp_path):
    scan = "\n[[audit.scan]]\npattern = '''\\bTOY\\b'''\nwhat = \"names the toy\"\n"
    plaus = "\n[audit.plausibility]\nfloor = 0.5\npresets = { quick = 0.25 }\n"
    t = load_task(_write(tmp_path, _audit(PROBE + scan + plaus)))
    assert t.probes == ("hidden_val", "toy") and t.audit.checks == ("hidden_val",)
    assert t.audit.probe("toy").description == "the toy probe" and t.audit.probe("toy").severity == "warn"
    assert t.audit.scan[0].pattern == r"\bTOY\b" and t.audit.scan[0].severity == "reject"
    p = t.audit.plausibility
    assert p.kind == "floor" and p.bound_for("quick") == 0.25 and p.bound_for("other") == 0.5
    assert p.implausible(0.2, "quick") and not p.implausible(0.3, "quick") and p.implausible(0.3, "other")


def test_the_benchmark_tasks_declare_their_probes_scan_and_bounds():
    """Every probe name the harnesses write is declared, with a description, in its task.toml."""
    want = {"nanochat": {"causality", "logits", "harness_intact"},
            "kernels": {"correctness", "hidden_shapes", "output_caching", "output_type", "threads", "timer_integrity",
                        "streams", "reference_ops", "input_mutation", "sol_bound"},
            "speedrun": {"reset_verified", "init_untrained", "val_tokens", "target_unchanged", "loss_recheck",
                         "wall_consistent", "train_data_in_clock", "clock_intact", "hidden_gap", "causality", "logits",
                         "harness_intact"}}
    for name, probes in want.items():
        t = load_task(name)
        assert {p.name for p in t.audit.probes} == probes, name
        assert all(p.description and p.severity == "reject" for p in t.audit.probes)
        bound = t.audit.plausibility
        assert bound is not None and bound.kind == ("ceiling" if t.metric.direction == "maximize" else "floor")
    assert "hidden_val" in load_task("nanochat").probes
    nano = load_task("nanochat").audit.plausibility
    assert nano.bound_for("cpu-smoke") < 3.1 / 2 + 0.01 and nano.bound_for("h100-5min") < 0.94   # far below the seed
    assert load_task("kernels").audit.plausibility.bound_for("h100") > 0.43                     # above the best known
    assert {p.what for p in load_task("speedrun").audit.scan} >= {"refers to a validation split"}


@pytest.mark.parametrize("text, key, fix", [
    ('[audit]\nprobes = [1, 2]\n', "audit.probes", "[audit.probes.<name>]"),
    ('[audit.probes]\ntoy = "the toy probe"\n', "audit.probes.toy", "description"),
    ('[audit.probes.toy]\nseverity = "reject"\n', "audit.probes.toy.description", 'add description'),
    ('[audit.probes.toy]\ndescription = "d"\nseverity = "fatal"\n', "audit.probes.toy.severity", '"reject" or "warn"'),
    ('[audit.probes.toy]\ndescription = "d"\ndescripton = "typo"\n', "audit.probes.toy.descripton", "use only description"),
    ('[audit]\nchecks = ["toy"]\n[audit.probes.toy]\ndescription = "d"\n', "audit.probes.toy", "keep one of them"),
    ('[audit]\nchecks = "hidden_val"\n', "audit.checks", "list"),
    ('[[audit.scan]]\npattern = "(unclosed"\nwhat = "w"\n', "audit.scan[0].pattern", "regular expression"),
    ('[[audit.scan]]\npattern = "x"\n', "audit.scan[0].what", "what a match means"),
    ('[[audit.scan]]\npattern = "x"\nwhat = "w"\nseverity = "meh"\n', "audit.scan[0].severity", '"warn"'),
    ('[audit.plausibility]\nceiling = 3.0\n', "audit.plausibility.ceiling", "floor = <value>"),
    ('[audit.plausibility]\nfloor = "low"\n', "audit.plausibility.floor", "float"),
    ('[audit.plausibility]\nfloor = 1.0\npresets = { slow = 0.5 }\n', "audit.plausibility.presets.slow", "quick"),
    ('[audit.plausibility]\nfloor = 1.0\nbound = 2\n', "audit.plausibility.bound", "use floor"),
    ('[audit.plausibility]\n', "audit.plausibility", "add floor"),
])
def test_malformed_audit_declarations_name_file_key_and_fix(tmp_path, text, key, fix):
    d = _write(tmp_path, _audit(text))
    with pytest.raises(TaskError) as e:
        load_task(d)
    msg = str(e.value)
    assert str(d / "task.toml") in msg and f"'{key}'" in msg and fix in msg, msg
