import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


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
