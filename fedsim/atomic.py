"""Atomic file writes: a run's files are whole or absent, never half-written.

Each write goes to ``<name>.tmp`` next to the target, then ``os.replace`` swaps it in (an
atomic rename on POSIX). When the write fails (a full disk, a read-only directory), the
temporary file is removed and the previous version of the target stays as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_with(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to produce the file at a temporary path, then move it onto ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text))
