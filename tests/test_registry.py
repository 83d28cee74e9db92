"""The plug-in registry (autolab/registry.py): built-ins, entry points, unknown names, and the
``llm:<model>`` proposer through the same lookup from Python and from the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import autolab
from autolab import registry
from autolab._audit import run_checks
from autolab.cli import main
from autolab.executors import get_executor
from autolab._propose import PlaybookProposer, RandomProposer, get_proposer, register_proposer
from autolab.records import State

REPO = Path(__file__).resolve().parent.parent


def _py(code: str, *, path: list[Path] = (), cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with this worktree's autolab and ``path`` importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, path), str(REPO), str(REPO / "tests")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


# ---------------------------------------------------------------------------- built-ins

def test_builtins_of_every_kind():
    assert {"local", "ray"} <= set(registry.names("executor"))
    assert {"playbook", "random", "llm"} <= set(registry.names("proposer"))
    assert {"tasks", "data", "run", "loop", "log", "report", "stop", "demo", "redteam"} <= set(registry.names("command"))
    checks = set(registry.names("check"))
    assert {"protected_hashes", "diff_scope", "finite_metric", "budget", "sandbox", "probes", "forged_summary",
            "static_scan", "plausibility", "canary", "seed_only", "llm_review", "hidden_val"} <= checks
    assert registry.origin("executor", "local") == "autolab"
    ex = get_executor("local", cpu_slots=1)
    assert type(ex).__name__ == "LocalExecutor"
    assert isinstance(get_proposer("playbook", seed=1, log=None), PlaybookProposer)   # options it does not take are dropped
    assert isinstance(get_proposer(None), PlaybookProposer) and isinstance(get_proposer("random", seed=3), RandomProposer)


def test_builtins_are_imported_only_when_asked_for():
    """``ray`` is a lazy reference: looking up ``local`` (or listing the executors) imports nothing
    of the Ray executor, and nothing registers itself at import."""
    out = _py("""
        import sys
        from autolab import registry
        from autolab.executors import get_executor
        assert "ray" in registry.names("executor")
        get_executor("local", cpu_slots=1)
        assert "autolab.executors.ray" not in sys.modules, "ray imported without being asked for"
        import autolab.executors.ray
        print("ok", registry.origin("executor", "ray"))
    """)
    assert out.returncode == 0 and out.stdout.split() == ["ok", "autolab"], out.stderr


def test_python_registration_wins_and_can_be_undone():
    class Fake:
        def __init__(self, **kw):
            self.kw = kw

    registry.register("executor", "fake-ex", Fake)
    try:
        assert get_executor("fake-ex", a=1).kw == {"a": 1}
        assert registry.origin("executor", "fake-ex") == "registered in Python"
    finally:
        registry.unregister("executor", "fake-ex")
    assert "fake-ex" not in registry.names("executor")
    with pytest.raises(registry.RegistryError, match="kinds are executor, proposer, check, command"):
        registry.names("widget")
    with pytest.raises(registry.RegistryError, match="without ':'"):
        registry.register("proposer", "a:b", Fake)


# ---------------------------------------------------------------------------- unknown names

@pytest.mark.parametrize("kind, call, fix", [
    ("executor", lambda: get_executor("no-such-executor"), "--executor local"),
    ("proposer", lambda: get_proposer("no-such-proposer"), "--proposer llm:<litellm model>"),
    ("proposer", lambda: get_proposer("nosuch:model"), "--proposer playbook"),
])
def test_unknown_names_list_what_there_is_and_the_fix(kind, call, fix):
    with pytest.raises(autolab.errors.AutolabError) as e:
        call()
    msg = str(e.value)
    assert f"no {kind} named" in msg and "available: " in msg and fix in msg, msg
    assert f"'autolab.{kind}s' group" in msg
    for builtin in registry.names(kind):
        assert builtin in msg


def test_unknown_names_from_the_cli(capsys, tmp_path, toy_task):
    assert main(["loop", str(toy_task), "--proposer", "nosuch", "--lab", str(tmp_path / "lab")]) == 2
    err = capsys.readouterr().err
    assert "no proposer named 'nosuch'" in err and "playbook, random, llm" in err
    assert main(["run", str(toy_task), "--executor", "nosuch", "--lab", str(tmp_path / "lab")]) == 2
    err = capsys.readouterr().err
    assert "no executor named 'nosuch'" in err and "local, ray" in err


def test_an_unknown_check_in_task_toml_fails_closed(toy_lab):
    object.__setattr__(toy_lab.task, "audit", type(toy_lab.task.audit)(checks=("no_such_check",), names=("no_such_check",)))
    object.__setattr__(toy_lab.task, "probes", ("no_such_check",))
    checks = {c.name: c for c in run_checks(toy_lab, toy_lab.seed_candidate())}
    chk = checks["no_such_check"]
    assert not chk.passed and chk.severity == "reject"
    assert "task.toml [audit] checks names 'no_such_check'" in chk.detail and "plausibility" in chk.detail


# ---------------------------------------------------------------------------- entry points

PLUGIN = '''
"""A plug-in installed without a distribution: an entry_points.txt in a *.dist-info folder."""
from autolab.records import Check


class FakeExecutor:
    def __init__(self, **options):
        self.options = options


class FakeProposer:
    name = "fake"

    def __init__(self, arg="", **options):
        self.arg, self.options = arg, options

    def propose(self, lab, parent, **kw):
        return None


def proposer(arg="", **options):
    return FakeProposer(arg, **options)


def fake_check(ctx):
    return Check("fake_check", False, f"the plug-in saw {len(ctx.runs)} runs of {ctx.candidate.id}")


def setup(add):
    sp = add("hello", cmd_hello, "say hello from a plug-in")
    sp.add_argument("--name", default="world")


def cmd_hello(args):
    print(f"hello {args.name}")
    return 0
'''

ENTRY_POINTS = '''
[autolab.executors]
fake = fakeplug:FakeExecutor
local = fakeplug:FakeExecutor

[autolab.proposers]
fake = fakeplug:proposer

[autolab.checks]
fake_check = fakeplug:fake_check

[autolab.commands]
hello = fakeplug:setup
broken = fakeplug_missing:setup
'''


@pytest.fixture
def plugin_dir(tmp_path):
    d = tmp_path / "site"
    info = d / "fakeplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (d / "fakeplug.py").write_text(PLUGIN)
    return d


def test_entry_points_of_every_kind(plugin_dir, tmp_path, toy_task):
    toml = toy_task / "task.toml"
    toml.write_text(toml.read_text().replace("[audit]\nprobes = []", '[audit]\nchecks = ["fake_check"]'))
    out = _py(f"""
        import json, sys
        import autolab
        from autolab import registry
        from autolab._audit import run_checks
        from autolab.executors import get_executor
        from autolab._propose import get_proposer

        res = {{}}
        ex = get_executor("fake", address="x")
        res["executor"] = [type(ex).__name__, ex.options]
        res["local"] = type(get_executor("local", cpu_slots=1)).__name__      # a built-in is not replaced
        p = get_proposer("fake:some-arg", seed=3, log=None)
        res["proposer"] = [p.arg, sorted(p.options)]
        res["origin"] = registry.origin("proposer", "fake")
        lab = autolab.Lab({str(tmp_path / 'lab')!r}, task={str(toy_task)!r})
        checks = {{c.name: c for c in run_checks(lab, lab.seed_candidate())}}
        res["check"] = [checks["fake_check"].passed, checks["fake_check"].detail]
        try:
            registry.get("command", "broken")
        except registry.RegistryError as e:
            res["broken"] = str(e)
        print(json.dumps(res))
    """, path=[plugin_dir])
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["executor"] == ["FakeExecutor", {"address": "x"}]
    assert res["local"] == "LocalExecutor"
    assert res["proposer"] == ["some-arg", ["log", "seed"]]
    assert "entry point 'fakeplug:proposer' in group 'autolab.proposers'" in res["origin"] and "fakeplug" in res["origin"]
    assert res["check"][0] is False and "the plug-in saw 0 runs" in res["check"][1]
    assert "'broken'" in res["broken"] and "fakeplug_missing" in res["broken"] and "fix or remove the plug-in" in res["broken"]


def test_a_plugin_adds_a_cli_command(plugin_dir):
    out = _py("import sys; from autolab.cli import main; sys.exit(main(['hello', '--name', 'registry']))",
              path=[plugin_dir])
    assert out.returncode == 0 and out.stdout.strip() == "hello registry", out.stderr
    # the broken plug-in's command is left out with a warning; the others still work
    assert "command 'broken' left out" in out.stderr and "fakeplug_missing" in out.stderr
    out = _py("import sys; from autolab.cli import main; sys.exit(main(['--help']))", path=[plugin_dir])
    assert out.returncode == 0 and "say hello from a plug-in" in out.stdout and "redteam" in out.stdout


# ---------------------------------------------------------------------------- llm:<model> proposers

IDEA = json.dumps({"title": "Set X to 2.5", "hypothesis": "the optimum is near 2.5", "plan": "Set X to 2.5 in solution.py"})
EDIT = ("solution.py\n<<<<<<< SEARCH\nX = 1.0          # the parameter being tuned\n=======\n"
        "X = 2.5          # the parameter being tuned\n>>>>>>> REPLACE\n")


def test_colon_specs_pass_the_rest_to_the_factory():
    seen = []

    def factory(arg, **options):
        seen.append((arg, options))
        return PlaybookProposer()

    register_proposer("echo", factory)
    try:
        get_proposer("echo:a:b", seed=7)
    finally:
        registry.unregister("proposer", "echo")
    assert seen == [("a:b", {"seed": 7})]


def test_llm_proposer_through_the_registry_from_python(toy_lab):
    p = get_proposer("llm:openai/gpt-4o-mini", log=toy_lab.log, seed=1, mock_response=IDEA)
    assert type(p).__name__ == "LLMProposer" and p.name == "llm:openai/gpt-4o-mini"
    idea = autolab.propose(toy_lab, p)
    assert idea.state is State.PROPOSED and idea.title == "Set X to 2.5" and idea.source == "llm:openai/gpt-4o-mini"
    with pytest.raises(autolab.errors.AutolabError, match="names no model"):
        get_proposer("llm:", log=toy_lab.log)


def test_llm_proposer_through_the_registry_from_the_cli(capsys, tmp_path, toy_task, monkeypatch):
    """`autolab loop --proposer llm:<model>` resolves the proposer with get_proposer, the same
    lookup as Python: a factory registered as ``llm`` is what the command calls."""
    real = registry.get("proposer", "llm")
    calls = []

    def spy(spec="", **options):
        calls.append((spec, sorted(options)))
        return real(spec, mock_response=[IDEA, EDIT], **options)

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    register_proposer("llm", spy)
    try:
        code = main(["loop", str(toy_task), "--lab", str(tmp_path / "lab"), "--iterations", "1", "--proposer",
                     "llm:openai/scripted-model", "--api-base", "http://127.0.0.1:9/v1", "--max-llm-calls", "5",
                     "--proposer-seed", "0", "--json"])
    finally:
        register_proposer("llm", real)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["experiments"] == 1, out
    assert calls == [("openai/scripted-model", ["api_base", "log", "max_llm_calls", "seed"])]
    lab = autolab.Lab(tmp_path / "lab")
    (idea,) = lab.log.ideas_list()
    assert idea.source == "llm:openai/scripted-model" and idea.title == "Set X to 2.5"
    # the command's implementer shares the proposer's gateway: the edit came from the same LLM
    cands = [c for c in lab.log.candidates_list() if c.idea_id == idea.id]
    assert cands and "X = 2.5" in lab.files(cands[0])["solution.py"]
    assert len(lab.log.llm_calls()) == 2


# ---------------------------------------------------------------------------- the audit names no task

def test_the_audit_package_names_no_task():
    """Probe names, scan patterns and bounds of nanochat, kernels and speedrun live in their
    task.toml; autolab/_audit/ (the red team's docs aside) knows none of them."""
    hits = []
    for p in sorted((REPO / "autolab" / "audit").glob("*.py")):
        if p.name == "redteam.py":
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r"nanochat|kernels|speedrun", line):
                hits.append(f"{p.name}:{i}: {line.strip()}")
    assert not hits, hits
