"""The one exception type for bad user input (config, data, arguments).

The CLI turns it into exit code 2 with its message; everything else is exit code 1.
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable
from typing import Optional


class InputError(Exception):
    """Bad input that the user must fix. The message names the file, key, line or item."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or grew past `train.divergence_factor` times its start (exit code 1)."""


class DiskFull(Exception):
    """A write failed for want of space: `disk full: PATH`, in the one line a user and an MLflow reason see."""

    def __init__(self, path: str):
        super().__init__(path)  # the path alone: Ray rebuilds a trial's exception from its args
        self.path = path

    def __str__(self) -> str:
        return f"disk full: {self.path}"


def disk_full(error: Optional[BaseException]) -> Optional[str]:
    """The path a write failed on for want of space, '' where it is not known; None for another error.

    Space runs out as ENOSPC (EDQUOT on a quota) from the OS, or as SQLite's "database or disk is full"
    inside SQLAlchemy's and MLflow's exceptions: the causes are followed."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFull):
            return error.path
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(error.filename or "")
        if "database or disk is full" in str(error) or "No space left on device" in str(error):
            return ""
        error = error.__cause__ or error.__context__
    return None


def unknown_name(kind: str, name: str, names: Iterable[str]) -> str:
    """`unknown encoder 'resnet1011'; did you mean resnet101, ...? (registered encoders: ...)`: what a
    config validator and a component registry say of a name that is not one of `names`."""
    names = sorted(names)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (registered {kind}s: {', '.join(names)})"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), at most 300 characters."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0].strip()[:300] if lines else type(error).__name__


def _reason(error: BaseException) -> str:
    """What is wrong with a file, in words a user can act on."""
    import pickle

    if isinstance(error, pickle.UnpicklingError):
        return "a pickle holding more than tensors and plain values; refused (orch never unpickles code)"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "a folder, not a file"
    if isinstance(error, PermissionError):
        return "permission denied"
    if type(error).__name__ == "ConstructorError":  # a YAML tag safe_load cannot construct
        return f"a YAML tag orch does not construct ({first_line(error)})"
    if type(error).__name__ == "SafetensorError":
        return f"not a whole safetensors file ({first_line(error)})"
    if isinstance(error, RuntimeError) and "zip archive" in str(error):
        return "not a whole PyTorch file (truncated or corrupt)"
    if isinstance(error, UnicodeDecodeError):
        return "not text (binary or wrong encoding)"
    if isinstance(error, ValueError) and type(error).__name__ == "JSONDecodeError":
        return f"not valid JSON ({first_line(error)})"
    return first_line(error)


def file_errors():
    """The exceptions reading a file can raise when the file (not orch) is wrong."""
    import pickle

    import yaml

    kinds: tuple = (OSError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError, yaml.YAMLError)
    try:
        from safetensors import SafetensorError

        kinds += (SafetensorError,)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    return kinds


class reading:
    """`with reading(path, remedy): ...`: every way `path` can be bad becomes one InputError,
    `<path>: <what is wrong> (<remedy>)`. An InputError raised inside passes unchanged.

    The one place that turns a bad file into the one-line answer the CLI prints with exit code 2
    (orchestrator/cli.py): loaders wrap their reads in it instead of catching errors one by one.
    A RuntimeError counts only when torch says the file is not a whole archive."""

    def __init__(self, path, remedy: str = ""):
        self.path, self.remedy = path, remedy

    def __enter__(self):
        import warnings

        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()  # torch's notes on a pickle it refuses are not for the user
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return self

    def __exit__(self, kind, error, traceback):
        self._warnings.__exit__(None, None, None)
        if error is None or isinstance(error, InputError):
            return False
        is_file_error = isinstance(error, file_errors()) or \
            (isinstance(error, RuntimeError) and "zip archive" in str(error))
        if not is_file_error:
            return False
        remedy = f" ({self.remedy})" if self.remedy else ""
        raise InputError(f"{self.path}: {_reason(error)}{remedy}") from None
