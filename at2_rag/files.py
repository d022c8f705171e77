"""Crash-safe writes: a cache folder appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_folder(folder: Path, complete: str) -> Iterator[Path]:
    """Yield a temporary sibling of ``folder`` to fill; rename it into place when the block ends.

    ``complete`` names a file that only a finished folder holds: if another process finished
    ``folder`` first, its copy is kept. A crash leaves no half folder that is later read as valid.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
    try:
        yield tmp
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / complete).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
