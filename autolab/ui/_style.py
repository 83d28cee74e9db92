"""The fonts and the escaping every HTML view of autolab.ui shares."""

from __future__ import annotations

import html
from typing import Any

FONT = "font-family: -apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif; font-size: 13px;"
MONO = "font-family: SFMono-Regular, Menlo, Consolas, 'Liberation Mono', monospace; font-size: 12px;"


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)
