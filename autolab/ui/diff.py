"""DiffView: a candidate against its parent, side by side (wrapped) or unified, syntax-coloured,
the changed words of each changed line marked."""

from __future__ import annotations

from typing import Any, Mapping

import ipywidgets as W

from ..records import Candidate
from . import _html as H
from .diffhtml import MODES, code_html, side_by_side, side_by_side_from_unified
from .widgetbase import StaticFallback, find_lab, remember_lab


class DiffView(StaticFallback, W.VBox):
    """``DiffView(candidate, lab)`` shows the candidate's files against its parent's.

    With a lab the whole files are compared (``context`` lines around each change; the
    "Show whole files" toggle shows everything); without one, the candidate's stored
    unified diff is drawn. ``DiffView(old={...}, new={...})`` compares two file maps.
    ``mode`` is "split" (side by side; long lines wrap inside their half, so both sides stay
    in view at any width) or "unified"; the "Side by side / Unified" buttons switch it.
    """

    def __init__(self, candidate: Candidate | None = None, lab: Any = None, *, old: Mapping[str, str] | None = None,
                 new: Mapping[str, str] | None = None, context: int = 3, max_height: str = "32em", title: str | None = None,
                 mode: str = "split"):
        if mode not in MODES:
            raise ValueError(f"DiffView mode {mode!r} is not one of {', '.join(MODES)}")
        self.candidate = candidate
        self.lab = lab if lab is not None else (find_lab(candidate) if candidate is not None else None)
        remember_lab(self.lab)
        self.context = context
        self.max_height = max_height
        self.mode = mode
        self._old, self._new = (dict(old) if old is not None else None), (dict(new) if new is not None else None)
        if self._old is None and candidate is not None and self.lab is not None:
            try:
                self._new = self.lab.files(candidate)
                self._old = self.lab.files(candidate.parent_id) if candidate.parent_id else {}
            except Exception:   # objects missing: fall back to the stored diff
                self._old = self._new = None
        if title is None and candidate is not None:
            parent = H.code(H.short(candidate.parent_id, 14)) if candidate.parent_id else "(nothing: a seed)"
            title = (f"{H.code(candidate.id)} {H.badge(candidate.state)} vs parent {parent}" if candidate.parent_id else
                     f"{H.code(candidate.id)} {H.badge(candidate.state)} the seed solution (no parent)")
        self.header = W.HTML(f'<div style="{H.FONT}">{title or ""}</div>')
        self.html = W.HTML(self.to_html())
        children: list[W.Widget] = [self.header]
        self.whole = None
        self.layout_buttons = None
        if not self._is_seed():
            self.layout_buttons = W.ToggleButtons(options=[("Side by side", "split"), ("Unified", "unified")],
                                                  value=mode, style={"button_width": "auto"})
            self.layout_buttons.observe(lambda ch: self._redraw(), names="value")
            controls: list[W.Widget] = [self.layout_buttons]
            if self._old is not None:
                self.whole = W.Checkbox(value=False, description="Show whole files", indent=False)
                self.whole.observe(lambda ch: self._redraw(), names="value")
                controls.append(self.whole)
            children.append(W.HBox(controls, layout=W.Layout(align_items="center")))
        children.append(self.html)
        super().__init__(children, layout=W.Layout(width="100%"))
        self.add_class("autolab-diff-view")

    def _is_seed(self) -> bool:
        return self.candidate is not None and self.candidate.parent_id is None

    def to_html(self, *, whole: bool = False, mode: str | None = None) -> str:
        """The diff as self-contained HTML (inline colours)."""
        mode = mode or self.mode
        if self._old is not None and self._new is not None:
            if not self._old and self._is_seed():
                return code_html(self._new, max_height=self.max_height)   # a seed: its files, collapsed when long
            return side_by_side(self._old, self._new, context=-1 if whole else self.context,
                                max_height=None if whole else self.max_height, mode=mode)
        if self.candidate is not None:
            return side_by_side_from_unified(self.candidate.diff, max_height=self.max_height, mode=mode)
        return side_by_side({}, {})

    def static_html(self) -> str:
        return self.header.value + self.html.value

    def plain_text(self) -> str:
        if self.candidate is not None:
            return str(self.candidate) + ("\n" + self.candidate.diff if self.candidate.diff else "")
        return "<DiffView>"

    def _redraw(self) -> None:
        if self.layout_buttons is not None:
            self.mode = self.layout_buttons.value
        self.html.value = self.to_html(whole=bool(self.whole is not None and self.whole.value))
