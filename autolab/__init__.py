"""autolab: a Jupyter-first toolkit that automates the research loop —
propose → implement → run → audit — on well-defined optimization targets.

    import autolab
    lab = autolab.Lab("labs/demo", task="nanochat", preset="cpu-tiny")
    idea = autolab.propose(lab)
    cand = autolab.implement(lab, idea)
    runs = autolab.run(lab, cand, seeds=2)
    verdict = autolab.audit(lab, cand)
    handle = autolab.start_loop(lab, iterations=8)   # the loop beside the notebook; handle.stop(), await handle
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Lab": ("autolab.lab", "Lab"),
    "ResearchLog": ("autolab.log", "ResearchLog"),
    "Ledger": ("autolab.ledger", "Ledger"),
    "load_task": ("autolab.task", "load_task"),
    "discover_tasks": ("autolab.task", "discover_tasks"),
    "propose": ("autolab._propose", "propose"),
    "implement": ("autolab._implement", "implement"),
    "implement_files": ("autolab._implement", "implement_files"),
    "run": ("autolab._run", "run"),
    "audit": ("autolab._audit", "audit"),
    "loop": ("autolab._loop", "loop"),
    "final_comparison": ("autolab._loop", "final_comparison"),
    "start_loop": ("autolab.background", "start_loop"),
    "LoopHandle": ("autolab.background", "LoopHandle"),
    "interactive_frontend": ("autolab.background", "interactive_frontend"),
    "LoopControl": ("autolab._loop", "LoopControl"),
    "PlaybookProposer": ("autolab._propose", "PlaybookProposer"),
    "RandomProposer": ("autolab._propose", "RandomProposer"),
    "HumanProposer": ("autolab._propose", "HumanProposer"),
    "Idea": ("autolab.records", "Idea"),
    "Candidate": ("autolab.records", "Candidate"),
    "Run": ("autolab.records", "Run"),
    "Verdict": ("autolab.records", "Verdict"),
    "Insight": ("autolab.records", "Insight"),
    "State": ("autolab.records", "State"),
    "Purpose": ("autolab.records", "Purpose"),
    "AutolabError": ("autolab.errors", "AutolabError"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    # Lazy so that `import autolab` stays fast (no pandas, torch or litellm at import).
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autolab' has no attribute {name!r}")


def __dir__():
    return __all__
