"""Cross-task knowledge: promoted changes kept as Insights in a store shared across labs.

Default location ``~/.autolab/knowledge.db`` (``$AUTOLAB_HOME`` moves it). New work on
any task retrieves relevant insights: the LLM proposer puts them in its prompt, and the
playbook proposer uses them as priors for the edits that worked before.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .log import ResearchLog
from .records import Insight, State


def autolab_home() -> Path:
    return Path(os.environ.get("AUTOLAB_HOME") or Path.home() / ".autolab")


class KnowledgeStore:
    """A research log that holds only insights, shared by every lab of this user."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else autolab_home() / "knowledge.db"
        self.log = ResearchLog(self.path)

    def add(self, insight: Insight) -> Insight:
        existing = self.log.get("insight", insight.id)
        if existing is None:
            self.log.append(insight)
        return insight

    def all(self) -> list[Insight]:
        return [i for i in self.log.insights_list() if i.state is State.COMPLETE]  # type: ignore[misc]

    def relevant(self, task: str, query: str = "", limit: int = 8) -> list[Insight]:
        """Insights ranked for a task: same task first, then by word overlap with the query
        and by effect (positive effects only)."""
        words = set(re.findall(r"[a-z]{3,}", query.lower()))

        def score(i: Insight) -> tuple:
            overlap = len(words & set(re.findall(r"[a-z]{3,}", (i.technique + " " + " ".join(i.tags)).lower())))
            return (i.task == task, overlap, i.effect or 0.0)

        good = [i for i in self.all() if (i.effect or 0) > 0]
        return sorted(good, key=score, reverse=True)[:limit]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{**{k: v for k, v in i.to_dict().items() if k not in ("diff", "meta")},
                              "edit": json.dumps(i.meta.get("edit"))} for i in self.all()])
