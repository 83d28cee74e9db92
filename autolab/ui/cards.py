"""IdeaCard (edit an idea, save the edit as a new idea) and AuditView (a verdict)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import ipywidgets as W

from ..records import Idea, State, Verdict, new_id
from . import _html as H
from .widgetbase import StaticFallback, find_lab, remember_lab



def _status(msg: str, color: str = "#57606a") -> str:
    return f'<div style="{H.FONT} color:{color}; padding:2px 0;">{msg}</div>'


class IdeaCard(StaticFallback, W.VBox):
    """An editable idea. "Save as new idea" appends an edited copy to the lab's log
    (a new id, ``source="human"``, ``meta.edited_from`` = the original id).

    ``card.value`` is the idea to carry on with: the last one saved, else the original.
    """

    def __init__(self, idea: Idea, lab: Any = None, *, on_save: Callable[[Idea], None] | None = None):
        self.idea = idea
        self.lab = lab if lab is not None else find_lab(idea)
        remember_lab(self.lab)
        self.saved: list[Idea] = []
        self._on_save = on_save
        self.header = W.HTML(self._header_html(idea))
        self.title = W.Text(value=idea.title, description="Title", layout=W.Layout(width="100%"),
                            style={"description_width": "80px"})
        self.hypothesis = W.Textarea(value=idea.hypothesis, description="Hypothesis", layout=W.Layout(width="100%", height="4.5em"),
                                     style={"description_width": "80px"})
        self.plan = W.Textarea(value=idea.plan, description="Plan", layout=W.Layout(width="100%", height="6em"),
                               style={"description_width": "80px"})
        self.edit = W.Textarea(value=json.dumps(idea.edit, indent=1, sort_keys=True) if idea.edit else "",
                               description="Edit (JSON)", placeholder="structured edit (optional; playbook format)",
                               layout=W.Layout(width="100%", height="6em"), style={"description_width": "80px"})
        self.save_button = W.Button(description="Save as new idea", icon="save", button_style="primary",
                                    tooltip="append an edited copy of this idea to the research log",
                                    layout=W.Layout(width="auto", min_width="160px"))
        self.save_button.on_click(lambda _b: self._clicked())
        self.status = W.HTML(_status("" if self.lab is not None else
                                     "read-only: no lab found; use IdeaCard(idea, lab=lab) to save edits"))
        self.save_button.disabled = self.lab is None
        super().__init__([self.header, self.title, self.hypothesis, self.plan, self.edit,
                          W.HBox([self.save_button, self.status])],
                         layout=W.Layout(border="1px solid #d0d7de", padding="6px 10px", width="100%"))
        self.add_class("autolab-idea-card")

    @staticmethod
    def _header_html(i: Idea) -> str:
        return (f'<div style="{H.FONT}"><b>Idea</b> {H.code(i.id)} {H.badge(i.state)} &nbsp;'
                + H.kv([("source", H.esc(i.source)), ("thread", H.esc(i.thread)),
                        ("parent", H.code(H.short(i.parent_id, 14)) if i.parent_id else "—")]) + "</div>")

    def static_html(self) -> str:
        return H.idea_html(self.value)

    def plain_text(self) -> str:
        return str(self.value)

    @property
    def value(self) -> Idea:
        return self.saved[-1] if self.saved else self.idea

    def edited(self) -> Idea:
        """The idea as currently edited in the card (not yet saved): a new id, source human."""
        title = self.title.value.strip()
        if not title:
            raise ValueError("the title is empty; give the idea a one-line title")
        text = self.edit.value.strip()
        try:
            edit = json.loads(text) if text else None
        except json.JSONDecodeError as e:
            raise ValueError(f"the edit is not valid JSON ({e.msg} at line {e.lineno}); fix it or clear the box") from None
        if edit is not None and not isinstance(edit, dict):
            raise ValueError("the edit must be a JSON object ({...}) or empty")
        base = self.value
        return dataclasses.replace(
            base, id=new_id("idea"), title=title, hypothesis=self.hypothesis.value.strip(),
            plan=self.plan.value.strip(), edit=edit, source="human", state=State.PROPOSED,
            created_at=_now(), meta={**base.meta, "edited_from": base.id},
        )

    def save(self) -> Idea:
        """Append the edited idea to the lab's log and return it."""
        if self.lab is None:
            raise RuntimeError("this IdeaCard has no lab; create it with IdeaCard(idea, lab=lab)")
        new = self.edited()
        self.lab.log.append(new)
        self.saved.append(new)
        self.header.value = self._header_html(new)
        self.status.value = _status(f"saved as {H.code(new.id)} (source human); use <code>card.value</code>", "#1a7f37")
        if self._on_save:
            self._on_save(new)
        return new

    def _clicked(self) -> None:
        try:
            self.save()
        except Exception as e:  # shown in the card, never raised into the widget callback
            self.status.value = _status(f"not saved: {H.esc(e)}", "#cf222e")


def _now() -> str:
    from ..records import now

    return now()


class AuditView(StaticFallback, W.VBox):
    """A verdict: badge, candidate vs parent means, effect, p-value against α, checks."""

    def __init__(self, verdict: Verdict, lab: Any = None):
        self.verdict = verdict
        self.lab = lab if lab is not None else find_lab(verdict)
        alpha, unit = None, ""
        if self.lab is not None:
            try:
                alpha = self.lab.task.significance.alpha
                unit = self.lab.task.metric.unit
            except AttributeError:
                pass
        self.html = W.HTML(H.verdict_html(verdict, alpha=alpha, unit=unit))
        super().__init__([self.html], layout=W.Layout(width="100%"))
        self.add_class("autolab-audit-view")

    def static_html(self) -> str:
        return self.html.value

    def plain_text(self) -> str:
        return str(self.verdict)

    @property
    def state(self) -> State:
        return self.verdict.state
