"""The one exception type for bad user input (config, data, arguments).

The CLI turns it into exit code 2 with its message; everything else is exit code 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InputError(Exception):
    """Bad input that the user must fix. The message names the file, key, line or item."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or grew past `train.divergence_factor` times its start (exit code 1)."""


def unknown_name(kind: str, name: str, names: Iterable[str]) -> str:
    """`unknown encoder 'resnet1011'; did you mean resnet101, ...? (registered encoders: ...)`: what a
    config validator and a component registry say of a name that is not one of `names`."""
    names = sorted(names)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (registered {kind}s: {', '.join(names)})"
