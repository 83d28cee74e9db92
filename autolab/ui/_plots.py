"""Matplotlib figures rendered to PNG bytes with the Agg canvas (no pyplot, no global
backend state), so they can be drawn from a background thread and embedded anywhere."""

from __future__ import annotations

import io
from typing import Iterable, Sequence

PALETTE = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83", "#e16f24", "#57606a"]


def new_figure(w: float = 6.4, h: float = 3.0, dpi: int = 96):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, *, dpi: int | None = None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, bbox_inches="tight")
    return buf.getvalue()


def curves_png(series: Sequence[tuple[str, Iterable[float], Iterable[float]]], *, xlabel: str = "seconds",
               ylabel: str = "train loss", budget_s: float | None = None, title: str = "",
               w: float = 6.4, h: float = 2.8) -> bytes:
    """PNG of loss curves: ``series`` is [(label, xs, ys), ...]."""
    fig = new_figure(w, h)
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for k, (label, xs, ys) in enumerate(series):
        xs, ys = list(xs), list(ys)
        if xs:
            ax.plot(xs, ys, color=PALETTE[k % len(PALETTE)], lw=1.4, label=label)
            drawn += 1
    if budget_s:
        ax.axvline(budget_s, color="#6e7781", ls="--", lw=0.8)
        ax.set_xlim(left=0, right=max(budget_s * 1.05, ax.get_xlim()[1]))
    if not drawn:
        ax.text(0.5, 0.5, "waiting for the first loss point…", ha="center", va="center", color="#6e7781",
                transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if drawn > 1 or (drawn == 1 and series and series[0][0]):
        ax.legend(fontsize=8, loc="upper right")
    return png_bytes(fig)
