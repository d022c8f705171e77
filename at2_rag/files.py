"""Crash-safe writes: a file or a cache folder appears whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_PROC_STATUS = "/proc/self/status"
STALE_AFTER_S = 6 * 3600
"""Age after which a temporary whose creator cannot be checked (made on another host, in another pid
namespace or boot, or by an at2-rag that did not record its pid) is taken as abandoned. The slowest
writer, dequantising the default model or saving a large index, holds one for minutes, not hours,
and a live writer keeps touching it; six hours leaves a wide margin while still reclaiming the
hundreds of megabytes a killed process leaves behind."""
_RANDOM = r"[a-z0-9_]{8}"  # the random part tempfile.mkstemp / mkdtemp put in a name
_SURROGATE = re.compile("[\ud800-\udfff]")  # what Python decodes an undecodable byte of a name or argument to


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


def _owner_tag() -> str:
    """A short hash of what makes a pid meaningful: host name, boot and pid namespace.

    Only temporaries carrying this process's tag can be judged by whether their pid is alive; on
    another host, after a reboot or from another container sharing the folder, that pid means
    nothing here.
    """
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip())
    with contextlib.suppress(OSError, AttributeError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def _pid_alive(pid: int) -> bool | None:
    """Whether process ``pid`` exists on this host; None where that cannot be told safely."""
    if os.name == "nt" or pid <= 0:  # os.kill(pid, 0) terminates the process on Windows
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, owned by another user
        return True
    return True


def _is_stale(entry: os.DirEntry, match: re.Match[str], tag: str, now: float) -> bool:
    """Whether the temporary ``entry`` was abandoned: its creator (same host, boot and pid namespace)
    is dead, or, when that cannot be checked, it is older than :data:`STALE_AFTER_S`. A temporary of
    a live process on this host is never stale, however old (a recycled pid only delays cleaning)."""
    found = match.groupdict()
    alive = _pid_alive(int(found["pid"])) if found.get("tag") == tag else None
    if alive is not None:
        return not alive
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
    except OSError:
        return False


def _remove_stale(parent: Path, patterns: list[re.Pattern[str]], tag: str, *, folders: bool) -> None:
    """Remove ``parent``'s abandoned temporaries (names matching ``patterns``; see :func:`_is_stale`)
    left by killed processes, so a crash does not leave hundreds of megabytes behind forever."""
    now = time.time()
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        match = next((m for p in patterns if (m := p.fullmatch(entry.name))), None)
        is_kind = entry.is_dir(follow_symlinks=False) if folders else entry.is_file(follow_symlinks=False)
        if match is None or not is_kind or not _is_stale(entry, match, tag, now):
            continue
        if folders:
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _creator(tag: str) -> str:
    """What identifies a temporary's creator in its name: ``<tag>-<pid>-``."""
    return f"{tag}-{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; move it into place when the block ends.

    On success the finished file replaces ``path`` in one step (``os.replace``), so readers see the old
    file or the new one, never half of one. It keeps the permissions of the file it replaces (a 0600
    estimator stays private); a new file gets what a plain ``open(path, "w")`` would give it (``0o666``
    less the umask, not ``mkstemp``'s ``0o600``). A symbolic link at ``path`` is written through: its
    target is replaced and the link stays. Anything but a regular file at ``path`` (a device, a FIFO,
    a folder) is refused with :class:`FileExistsError`, never replaced. If the block raises, the
    temporary file is removed and ``path`` is left as it was. Parent folders are created.
    The temporary is named ``<name>.<tag>-<pid>-XXXXXXXX.tmp``, so ones left by killed processes
    are removed on a later write (see :func:`_is_stale`).
    """
    if os.path.islink(path):
        if not os.path.isfile(path):  # dangling, a loop, or pointing at something else: never followed
            raise FileExistsError(errno.EEXIST, "a symbolic link to no regular file, so it is not written through",
                                  str(path))
        path = Path(os.path.realpath(path))
    path = Path(path)
    if path.exists() and not path.is_file():  # renaming over a folder fails; over a device it would succeed
        raise FileExistsError(errno.EEXIST, "not a regular file, so it is not replaced", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(path.name) + rf"\.(?P<tag>[0-9a-f]{{8}})-(?P<pid>\d+)-{_RANDOM}\.tmp")
    tag = _owner_tag()
    _remove_stale(path.parent, [pattern], tag, folders=False)
    prefix = f"{path.name}.{_creator(tag)}"
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _kept_mode(path, 0o666 & ~current_umask()))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _kept_mode(path: Path, default: int) -> int:
    """The permission bits of the file at ``path`` (so a rewrite keeps them), or ``default`` when there is none."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except OSError:
        return default


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


@contextlib.contextmanager
def atomic_folder(folder: Path, complete: str) -> Iterator[Path]:
    """Yield a temporary sibling of ``folder`` to fill; rename it into place when the block ends.

    ``complete`` names a file that only a finished folder holds: if another process finished
    ``folder`` first, its copy is kept. A crash leaves no half folder that is later read as valid,
    and the temporary it leaves (``<name>.tmp-<tag>-<pid>-XXXXXXXX``) is removed by the next use
    once its creator is dead (see :func:`_is_stale`). The finished folder gets the permissions a
    plain ``mkdir`` would give (``0o777`` less the umask, not ``mkdtemp``'s ``0o700``), so a shared
    cache is readable by others; the files inside keep what the caller gave them.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    name = re.escape(folder.name)
    patterns = [
        re.compile(name + rf"\.tmp-(?P<tag>[0-9a-f]{{8}})-(?P<pid>\d+)-{_RANDOM}"),
        re.compile(name + rf"\.tmp{_RANDOM}"),  # left by at2-rag before pids were recorded
    ]
    tag = _owner_tag()
    _remove_stale(folder.parent, patterns, tag, folders=True)
    prefix = f"{folder.name}.tmp-{_creator(tag)}"
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=prefix))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / complete).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_error(folder: Path) -> OSError | None:
    """Why files cannot be created in ``folder`` (made if missing), or None when they can: checked
    before expensive work whose result would be thrown away if it could not be saved there."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc
    return None


def utf8_text(text: str) -> str:
    """``text`` with each lone surrogate written as ``\\xNN`` (the undecodable byte of a file name or
    argument it stands for) or ``\\uNNNN``: such text cannot be written as UTF-8 (a crash, or invalid
    bytes under a ``surrogateescape`` stream)."""
    return _SURROGATE.sub(_escaped_surrogate, text)


def _escaped_surrogate(match: re.Match[str]) -> str:
    """How :func:`utf8_text` writes one lone surrogate."""
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, and every string made
    UTF-8-writable (:func:`utf8_text`), in nested dicts, lists and tuples: JSON has no NaN or infinity,
    and ``json.dumps`` would otherwise write ``NaN`` or a lone surrogate, which strict parsers reject."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return utf8_text(value)
    if isinstance(value, dict):
        return {json_safe(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
