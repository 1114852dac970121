"""Folders written whole or not at all: prepared datasets, checkpoints, exports."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def staged_folder(out: Path, *, replace: bool = False) -> Iterator[Path]:
    """A hidden folder next to OUT that becomes OUT when the block succeeds and vanishes otherwise.

    Readers see the old OUT or the new one, never half of either: the rename is atomic because the
    staging folder lives on OUT's filesystem. Without `replace`, OUT must be absent or an empty
    folder (see `is_absent_or_empty`); with it, an existing OUT is moved aside, then removed.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's 0o700 would hide the folder from other users
        yield staging
        retired = None
        if replace and out.exists():
            retired = out.with_name(f".{out.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(out, retired)
        os.replace(staging, out)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def is_absent_or_empty(out: Path) -> bool:
    return not out.exists() or (out.is_dir() and not any(out.iterdir()))
