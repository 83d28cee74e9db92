"""Notebook widgets for steering autolab cell by cell (ipywidgets 8).

``IdeaCard`` (edit an idea, save it as a new one), ``DiffView`` (a candidate against its
parent, side by side), ``RunMonitor`` (live loss curve and progress), ``AuditView`` (a
verdict), ``Leaderboard`` and ``Dashboard`` (threads, runs in flight, Promote / Reject /
Stop).

Importing this package inside an IPython kernel registers display formatters for the
record types, so an ``Idea``, ``Candidate``, ``Run``, ``Verdict`` or ``Insight`` shows as
a widget or HTML in a notebook; in a terminal a record stays its plain text. Importing
does nothing else: no event loop, no signal handlers, no logging configuration.
"""

from __future__ import annotations

from .board import Dashboard, Leaderboard
from .cards import AuditView, IdeaCard
from .diff import DiffView
from .display import find_lab, register_formatters, unregister_formatters
from .monitor import RunMonitor

register_formatters()

__all__ = ["IdeaCard", "DiffView", "RunMonitor", "AuditView", "Leaderboard", "Dashboard",
           "register_formatters", "unregister_formatters", "find_lab"]
