import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The longest modules first (their tests keep their order). `make test` runs on pytest-xdist
# workers that take one module at a time in this order (--dist loadfile --no-loadscope-reorder):
# started first, the red team's sample (about a quarter of the suite's time) ends beside the
# others instead of alone at the end. Order: each module's total in a whole-suite `--durations=0`
# run on 2 workers (2026-12-07); a module not listed comes after these, in collection order.
LONGEST_FIRST = (
    "test_redteam.py", "ui/test_notebooks.py", "test_search.py", "benchmarks/test_nanochat_harness.py",
    "test_llm_resume.py", "ui/test_browser.py", "benchmarks/test_nanochat_cpu_clock.py", "seeds/test_nanochat_seed.py",
    "test_lab_space.py", "test_campaign.py", "benchmarks/test_kernels_guards.py", "test_cli.py", "test_run.py",
    "executors/test_ray.py", "benchmarks/test_speedrun_cpu_clock.py", "benchmarks/test_kernels_seeds.py",
    "test_sandbox.py", "benchmarks/test_kernels_task.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    tests = REPO / "tests"

    def key(item) -> int:
        try:
            return rank.get(Path(str(item.fspath)).relative_to(tests).as_posix(), len(rank))
        except ValueError:
            return len(rank)

    items.sort(key=key)   # stable: the rest keep their order


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory):
    """Keep tests away from the user's ~/.autolab; share the data cache across tests."""
    home = tmp_path_factory.mktemp("autolab-home")
    old = {k: os.environ.get(k) for k in ("AUTOLAB_HOME", "AUTOLAB_CACHE")}
    os.environ["AUTOLAB_HOME"] = str(home)
    os.environ.setdefault("AUTOLAB_CACHE", str(REPO / ".cache" / "autolab"))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def toy_task(tmp_path):
    from toytask import make_toy_task

    return make_toy_task(tmp_path / "tasks")


@pytest.fixture
def toy_lab(tmp_path, toy_task):
    import autolab

    return autolab.Lab(tmp_path / "lab", task=str(toy_task))
