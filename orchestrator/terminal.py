"""The rich consoles orch prints through: full width in a log as on a terminal.

Rich lays out for 80 columns when its output is not a terminal (CI logs, `orch status | tee`):
tables lose columns and lines wrap mid-sentence. Without a terminal these consoles are as wide
as a log line can be, so every column and every line arrives whole; COLUMNS, when set, still wins.
"""

from __future__ import annotations

import os

from rich.console import Console

LOG_WIDTH = 1000  # columns of a log: wider than any table or line orch prints


def console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that never cuts or wraps to 80 columns without a terminal."""
    shown = Console(stderr=stderr)
    if shown.is_terminal or "COLUMNS" in os.environ:
        return shown
    return Console(stderr=stderr, width=LOG_WIDTH)
