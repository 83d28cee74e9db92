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
