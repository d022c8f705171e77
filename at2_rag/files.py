"""Crash-safe writes: a file or a cache folder appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_PROC_STATUS = "/proc/self/status"


def current_umask() -> int:
    """The process's umask, read without changing it.

    Linux reports it in ``/proc/self/status``; elsewhere it is set and restored with ``os.umask``
    (the only portable way to read it), which another thread creating a file in between would see.
    """
    try:
        with open(_PROC_STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; move it into place when the block ends.

    On success the finished file gets the permissions a plain ``open(path, "w")`` would give a new
    file (``0o666`` less the umask, not ``mkstemp``'s ``0o600``) and replaces ``path`` in one step
    (``os.replace``), so readers see the old file or the new one, never half of one. If the block
    raises, the temporary file is removed and ``path`` is left as it was. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


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
