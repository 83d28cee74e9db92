"""IPython display integration: records show as widgets in a notebook kernel and as
their plain text elsewhere. Registered by importing ``autolab.ui``; records.py knows
nothing of it."""

from __future__ import annotations

from typing import Any

from ..records import RECORD_TYPES, Candidate, Idea, Verdict, _Record
from .widgetbase import StaticFallback, _ipython, find_lab, in_kernel, remember_lab  # noqa: F401  (re-exported)

_registered: set[int] = set()


def _widget_for(record: _Record):
    """The widget that shows a record in a notebook (None: use HTML)."""
    if isinstance(record, Idea):
        from .cards import IdeaCard

        return IdeaCard(record)
    if isinstance(record, Verdict):
        from .cards import AuditView

        return AuditView(record)
    if isinstance(record, Candidate):
        from .diff import DiffView

        return DiffView(record)
    return None


def mimebundle(record: _Record) -> dict[str, Any]:
    """A record's display data: a widget view when in a kernel, HTML, and its plain text."""
    from ._html import record_html

    data: dict[str, Any] = {"text/plain": str(record), "text/html": record_html(record)}
    if in_kernel():
        try:
            w = _widget_for(record)
        except Exception:
            w = None
        if w is not None:
            bundle = w._repr_mimebundle_()
            if isinstance(bundle, tuple):
                bundle = bundle[0]
            data.update(bundle or {})
            data["text/plain"] = str(record)
    return data


def _plain(obj: Any, p: Any, cycle: bool) -> None:
    p.text(str(obj))


def register_formatters(ip=None) -> bool:
    """Register display formatters for the record types in the running IPython (if any).

    In a kernel a record displays as a widget (Idea → IdeaCard, Candidate → DiffView,
    Verdict → AuditView) or HTML (Run, Insight); everywhere its text/plain is ``str(record)``.
    Returns False when not running under IPython.
    """
    ip = ip if ip is not None else _ipython()
    if ip is None:
        return False
    plain = ip.display_formatter.formatters["text/plain"]
    for cls in RECORD_TYPES.values():
        plain.for_type(cls, _plain)
    if in_kernel(ip):
        mb = ip.display_formatter.mimebundle_formatter
        for cls in RECORD_TYPES.values():
            mb.for_type(cls, mimebundle)
    _registered.add(id(ip))
    return True


def unregister_formatters(ip=None) -> None:
    ip = ip if ip is not None else _ipython()
    if ip is None:
        return
    for cls in RECORD_TYPES.values():
        ip.display_formatter.formatters["text/plain"].pop(cls, None)
        ip.display_formatter.mimebundle_formatter.pop(cls, None)
    _registered.discard(id(ip))


__all__ = ["register_formatters", "unregister_formatters", "find_lab", "remember_lab", "mimebundle"]


