"""Shared fixtures: the real default attributor (loaded once), short documents, a FAISS retriever."""

from __future__ import annotations

import os

import pytest

# Never reach a model hub from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lc_support import make_docs  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_model_cache(monkeypatch):
    """Every test starts with an empty process-wide model cache, so loads are counted per test."""
    import weakref

    import at2_rag.lazy

    monkeypatch.setattr(at2_rag.lazy, "_SHARED", weakref.WeakValueDictionary())


@pytest.fixture
def docs():
    return make_docs()


@pytest.fixture(scope="session")
def attributor():
    """The real default model with the shipped estimator, loaded once per session."""
    from at2_rag import AT2Attributor

    return AT2Attributor.from_pretrained("default")


@pytest.fixture(scope="session")
def embeddings():
    from langchain_at2 import AT2BundledEmbeddings

    return AT2BundledEmbeddings()


@pytest.fixture(scope="session")
def vector_store(embeddings):
    """A FAISS store over the test documents, built with the bundled embeddings."""
    from langchain_community.vectorstores import FAISS

    return FAISS.from_documents(make_docs(), embeddings)


@pytest.fixture
def base_retriever(vector_store):
    """Returns all four documents, nearest first."""
    return vector_store.as_retriever(search_kwargs={"k": 4})
