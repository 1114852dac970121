"""The rich consoles orch prints through: full width in a log as on a terminal.

Rich lays out for 80 columns when its output is not a terminal (CI logs, `orch status | tee`):
tables lose columns and lines wrap mid-sentence. Without a terminal these consoles are as wide
as a log line can be, so every column and every line arrives whole; COLUMNS, when set, still wins.
"""

from __future__ import annotations

import os
from typing import Optional

from rich.console import Console

LOG_WIDTH = 1000  # columns of a log: wider than any table or line orch prints


def console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that never cuts or wraps to 80 columns without a terminal."""
    shown = Console(stderr=stderr)
    if shown.is_terminal or "COLUMNS" in os.environ:
        return shown
    return Console(stderr=stderr, width=LOG_WIDTH)


def duration(seconds: Optional[float]) -> str:
    """42s, 3m05s, 1h02m; '-' when not known yet."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
