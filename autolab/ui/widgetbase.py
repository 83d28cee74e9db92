"""What the widgets share: the labs they were given (so records shown later can find theirs)
and the static copy a saved notebook shows where no widget manager runs."""

from __future__ import annotations

import weakref
from typing import Any

from ..records import _Record

_known_labs: "weakref.WeakSet[Any]" = weakref.WeakSet()


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
