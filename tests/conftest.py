"""Shared fixtures: the real default model and tokenizer, loaded once; offline, one thread."""

from __future__ import annotations

import os

import pytest
import torch

# Never reach a model hub from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One thread per process: on a shared 2-core machine, two torch threads fighting other load are
# many times slower than one. Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct) and tokenizer, loaded once."""
    from at2_rag import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def tokenizer(default_model):
    return default_model[1]


@pytest.fixture(scope="session")
def attributor(default_model):
    from at2_rag import AT2Attributor

    model, tok = default_model
    return AT2Attributor(model, tok)  # the shipped default estimator


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A fresh ``AT2_RAG_CACHE`` in tmp that shares the already converted default model (indexes and
    anything else a test writes go to tmp)."""
    from at2_rag.models import cache_dir

    cache = tmp_path / "cache"
    cache.mkdir()
    if (cache_dir() / "models").is_dir():
        (cache / "models").symlink_to(cache_dir() / "models")
    monkeypatch.setenv("AT2_RAG_CACHE", str(cache))
    return cache
