"""IPython display integration: records show as widgets in a notebook kernel and as
their plain text elsewhere. Registered by importing ``autolab.ui``; records.py knows
nothing of it."""

from __future__ import annotations

import weakref
from typing import Any

from ..records import RECORD_TYPES, Candidate, Idea, Verdict, _Record

_known_labs: "weakref.WeakSet[Any]" = weakref.WeakSet()
_registered: set[int] = set()


def remember_lab(lab: Any) -> None:
    """Remember a lab a widget was given, so records displayed later can find it."""
    if lab is not None:
        try:
            _known_labs.add(lab)
        except TypeError:
            pass


def _ipython():
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return None
    return get_ipython()


def in_kernel(ip=None) -> bool:
    ip = ip if ip is not None else _ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def find_lab(record: _Record) -> Any:
    """The lab whose log holds ``record``: labs given to widgets first, then any Lab in
    the notebook's namespace. None when there is no such lab."""
    from ..lab import Lab

    candidates = list(_known_labs)
    ip = _ipython()
    if ip is not None:
        candidates += [v for v in list(ip.user_ns.values()) if isinstance(v, Lab)]
    same_task = None
    seen: set[int] = set()
    for lab in candidates:
        if id(lab) in seen:
            continue
        seen.add(id(lab))
        try:
            if lab.log.get(record.kind, record.id) is not None:
                return lab
            if same_task is None and lab.task.name == getattr(record, "task", None):
                same_task = lab
        except Exception:
            continue
    return same_task


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


class StaticFallback:
    """Mixin for widgets: next to the live view, the display data carries a static HTML
    copy (what the widget showed when displayed) and a one-line text, so a saved notebook
    still reads where no widget manager runs (nbconvert, GitHub, a terminal)."""

    def static_html(self) -> str | None:
        return None

    def plain_text(self) -> str:
        return f"<{type(self).__name__}>"

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs)  # type: ignore[misc]
        if isinstance(data, tuple):
            data = data[0]
        if not isinstance(data, dict):
            return data
        try:
            html = self.static_html()
        except Exception:
            html = None
        if html:
            data["text/html"] = html
        data["text/plain"] = self.plain_text()
        return data
