"""Atomic file writes: whole or not at all, old file kept on failure, permissions from the umask."""

from __future__ import annotations

import os
import stat

import pytest

from at2_rag import files
from at2_rag.files import atomic_path, atomic_write_text, current_umask


@pytest.fixture()
def umask():
    """``os.umask`` for one test; the process's umask is restored afterwards."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


def test_file_appears_whole_and_no_temporary_file_is_left(tmp_path):
    target = tmp_path / "sub" / "out.txt"  # the parent is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("first part\n")
        assert not target.exists()  # nothing at the target until the block ends
        with open(tmp, "a") as fh:
            fh.write("second part\n")
    assert target.read_text() == "first part\nsecond part\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]
    assert atomic_write_text(tmp_path / "t.json", '{"a": 1}') == tmp_path / "t.json"
    assert (tmp_path / "t.json").read_text() == '{"a": 1}'


def test_failure_leaves_no_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):  # an interrupt cleans up too
        with atomic_path(target) as tmp:
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_old_file_survives_a_failed_write(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old contents")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("new but unfinished")
            raise ValueError
    assert target.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    atomic_write_text(target, "new contents")  # and a successful write replaces it
    assert target.read_text() == "new contents"


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_permissions_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask
    path = atomic_write_text(tmp_path / "out.txt", "x")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    with atomic_path(tmp_path / "other.bin") as tmp:
        tmp.write_bytes(b"y")
    assert stat.S_IMODE((tmp_path / "other.bin").stat().st_mode) == mode
    # The same as a file created the ordinary way.
    plain = tmp_path / "plain.txt"
    plain.write_text("z")
    assert stat.S_IMODE(plain.stat().st_mode) == mode


def test_umask_without_proc_falls_back_and_restores_it(tmp_path, umask, monkeypatch):
    umask(0o027)
    monkeypatch.setattr(files, "_PROC_STATUS", str(tmp_path / "missing"))
    assert current_umask() == 0o027
    assert current_umask() == 0o027  # reading it did not change it
