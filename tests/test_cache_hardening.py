"""Caches under stress: temporaries left by killed processes are cleaned, finished folders are
readable by others, and an unwritable cache warns once and carries on in memory."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from at2_rag import Document
from at2_rag.app import retrieval
from at2_rag.app.retrieval import VectorIndex, cached_index
from at2_rag.files import STALE_AFTER_S, atomic_folder, atomic_path

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture()
def umask():
    """``os.umask`` for one test; the process's umask is restored afterwards."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


def _killed_inside(code: str) -> None:
    """Run ``code`` (inside an atomic block) in a child process that dies there, as a killed one would."""
    script = f"import os\nfrom pathlib import Path\nfrom at2_rag.files import atomic_folder, atomic_path\n{code}"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr


def _age(path: Path, seconds: float) -> Path:
    old = time.time() - seconds
    os.utime(path, (old, old))
    return path


# -- temporaries left by killed processes ---------------------------------------------------------
def test_folder_left_by_a_killed_process_is_removed_on_next_use(tmp_path):
    target = tmp_path / "model"
    _killed_inside(
        f"with atomic_folder(Path({str(target)!r}), 'done') as tmp:\n"
        "    (tmp / 'weights.bin').write_bytes(b'x' * 1000)\n"
        "    os._exit(9)\n"
    )
    left = [p for p in tmp_path.iterdir() if p.name.startswith("model.tmp")]
    assert len(left) == 1 and (left[0] / "weights.bin").is_file(), "the child should have left its folder"
    with atomic_folder(target, "done") as tmp:
        (tmp / "done").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "the dead process's folder is removed"


def test_folder_of_a_live_process_is_kept(tmp_path):
    target = tmp_path / "model"
    with atomic_folder(target, "done") as outer:  # this (live) process is still filling it
        _age(outer, 10 * STALE_AFTER_S)  # however old it looks
        with atomic_folder(target, "done") as inner:
            assert outer.is_dir(), "a live process's temporary folder must never be removed"
            (inner / "done").write_text("inner")
        assert outer.is_dir()
        (outer / "done").write_text("outer")
    assert (target / "done").read_text() == "inner"  # the first to finish wins
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_unverifiable_folders_are_removed_only_when_old(tmp_path):
    """Another host's (or a pre-pid-naming) temporary folder cannot be checked: removed after
    ``STALE_AFTER_S``, kept before; unrelated siblings are never touched, however old."""
    old, fresh = STALE_AFTER_S + 60, 60
    cases = [  # (name, age in seconds, removed)
        ("model.tmp-0000beef-123-abcdefgh", old, True),  # another host's, old
        ("model.tmpabcd_123", old, True),  # a legacy mkdtemp name, old
        ("model.tmp-0000beef-125-zzzzzzzz", fresh, False),  # another host's, fresh
        ("model.tmpzzzz_999", fresh, False),  # legacy, fresh
        ("model.tmp-0000beef-124-abcdefgh-x", old, False),  # not a name atomic_folder makes
        ("model-other.tmpabcd_123", old, False),  # another folder's temporary
        ("model.tmp", old, False),
    ]
    for name, age, _ in cases:
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
        _age(tmp_path / name, age)
    with atomic_folder(tmp_path / "model", "done") as tmp:
        (tmp / "done").write_text("ok")
    kept = {p.name for p in tmp_path.iterdir()}
    assert kept == {"model"} | {name for name, _, removed in cases if not removed}


def test_file_left_by_a_killed_process_is_removed_on_next_write(tmp_path):
    target = tmp_path / "out.json"
    _killed_inside(
        f"with atomic_path(Path({str(target)!r})) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    os._exit(9)\n"
    )
    assert len(list(tmp_path.iterdir())) == 1, "the child should have left its temporary file"
    mine = tmp_path / "out.json.backup.tmp"  # a user's file: never removed, however old
    mine.write_text("mine")
    _age(mine, 2 * STALE_AFTER_S)
    with atomic_path(target) as tmp:
        with atomic_path(target) as inner:  # this live process's own temporary file is kept
            assert tmp.exists()
            inner.write_text("inner")
        tmp.write_text("whole")
    assert target.read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.json.backup.tmp"]
    assert mine.read_text() == "mine"


# -- permissions of a finished folder ----------------------------------------------------------------
@pytest.mark.parametrize("mask, mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)], ids=["022", "077", "002"])
def test_finished_folder_follows_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    with atomic_folder(tmp_path / "cache", "done") as tmp:
        (tmp / "done").write_text("x")
        os.chmod(tmp / "done", 0o600)  # what the caller gave a file inside is kept
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "cache" / "done").stat().st_mode) == 0o600


# -- an unwritable cache: retrieval -----------------------------------------------------------------
class _HashEmbedder:
    """Deterministic unit vectors from the text's hash: no model needed."""

    def encode(self, texts):
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(8) for t in texts]
        vecs = np.array(rows, dtype=np.float32)
        return torch.from_numpy(vecs / np.linalg.norm(vecs, axis=1, keepdims=True))


def _read_only(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    return path


@pytest.fixture()
def unwritable(tmp_path, monkeypatch, request):
    """A cache folder that cannot be written, made so in the way the test's parameter names."""
    how = request.param
    if how == "read-only folder":
        if ROOT:
            pytest.skip("root ignores file permissions")
        folder = _read_only(tmp_path / "ro") / "cache"
        yield folder
        (tmp_path / "ro").chmod(0o755)
        return
    if how == "below a file":  # fails for root too: a file cannot hold a folder
        (tmp_path / "file").write_text("not a folder")
        yield tmp_path / "file" / "cache"
        return
    assert how == "writes refused"  # permissions simulated, for root

    @contextlib.contextmanager
    def refuse(folder, complete):
        raise PermissionError(13, "Permission denied", str(folder))
        yield  # pragma: no cover

    monkeypatch.setattr(retrieval, "atomic_folder", refuse)
    from at2_rag import models

    monkeypatch.setattr(models, "atomic_folder", refuse)
    yield tmp_path / "cache"


UNWRITABLE = ["read-only folder", "below a file", "writes refused"]


def _cache_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "AT2_RAG_CACHE" in str(w.message)]


@pytest.mark.parametrize("unwritable", UNWRITABLE, indirect=True)
def test_unwritable_index_cache_warns_once_and_returns_the_index(unwritable, monkeypatch):
    monkeypatch.setenv("AT2_RAG_CACHE", str(unwritable))
    docs = [Document(text="alpha"), Document(text="beta"), Document(text="gamma")]
    emb = _HashEmbedder()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        index = cached_index(docs, None, emb)
    assert isinstance(index, VectorIndex) and len(index.documents) == 3
    assert index.search("alpha", 1)[0][0].text == "alpha"
    messages = _cache_warnings(record)
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert str(unwritable) in messages[0]


def test_index_cache_write_failure_other_than_oserror_still_raises(tmp_path, monkeypatch):
    """Only an unwritable cache is forgiven: a bug while saving is not hidden behind a warning."""
    monkeypatch.setattr(VectorIndex, "save", lambda self, folder: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        cached_index([Document(text="alpha")], tmp_path, _HashEmbedder())


# -- an unwritable cache: the default model --------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("unwritable", UNWRITABLE, indirect=True)
def test_unwritable_model_cache_warns_once_and_loads_in_memory(unwritable, monkeypatch, default_model, request):
    from transformers import AutoModelForCausalLM

    from at2_rag import ModelIdentity, load_model, models
    from at2_rag.capture import ATTENTION_NAME

    reference = default_model[0]  # loaded (and cached) before the cache is pointed elsewhere
    monkeypatch.setenv("AT2_RAG_CACHE", str(unwritable))
    loads = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(kwargs.get("gguf_file"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model, tok = load_model("default")
    messages = _cache_warnings(record)
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert str(unwritable) in messages[0]
    assert model.config._attn_implementation == ATTENTION_NAME
    assert model.dtype == torch.float32 and not model.training
    assert ModelIdentity.of(model).name == models.DEFAULT_NAME
    assert ModelIdentity.of(model) == ModelIdentity.of(reference)
    a = model.model.layers[5].self_attn.q_proj.weight
    assert torch.equal(a, reference.model.layers[5].self_attn.q_proj.weight)
    assert tok("hello")["input_ids"] == default_model[1]("hello")["input_ids"]
    # Found unwritable before dequantising, nothing is dequantised in vain; only a write failing
    # midway (simulated by "writes refused") costs a second dequantisation.
    refused = request.node.callspec.params["unwritable"] == "writes refused"
    assert len(loads) == (2 if refused else 1), loads
    # Reading the identity writes nothing and needs no warning.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert models.model_identity("default") == ModelIdentity.of(reference)
    assert not _cache_warnings(record)
