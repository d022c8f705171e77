"""Shared fixtures: the real default model and bundled embeddings (loaded once), retrieved nodes, a FAISS index.

Nothing may leave this machine: hub downloads are switched off and any non-local connection
(a model hub, NLTK data, tiktoken files) fails the test that makes it.
"""

from __future__ import annotations

import os
import socket
from typing import Any, List

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One intra-op thread (here and in the notebook's kernel): a small model gains little from more, and on
# a busy 2-core machine several multi-threaded processes slow each other down about tenfold.
os.environ.setdefault("OMP_NUM_THREADS", "1")

_connect = socket.socket.connect


def _local_only(sock: socket.socket, address: Any) -> Any:
    host = address[0] if isinstance(address, tuple) else address
    if sock.family == getattr(socket, "AF_UNIX", None) or host in ("127.0.0.1", "::1", "localhost"):
        return _connect(sock, address)
    raise OSError(f"the tests must not use the network (tried to reach {address!r})")


socket.socket.connect = _local_only  # type: ignore[method-assign]
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from li_support import QUESTION, make_nodes  # noqa: E402
from llama_index.core.schema import NodeWithScore, QueryBundle  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_model_cache(monkeypatch):
    """Every test starts with an empty process-wide model cache, so loads are counted per test."""
    import weakref

    import at2_rag.lazy

    monkeypatch.setattr(at2_rag.lazy, "_SHARED", weakref.WeakValueDictionary())


@pytest.fixture
def nodes() -> List[NodeWithScore]:
    return make_nodes()


@pytest.fixture
def query() -> QueryBundle:
    return QueryBundle(QUESTION)


@pytest.fixture(scope="session")
def attributor():
    """The real default model (SmolLM2-135M-Instruct) with the shipped estimator, loaded once."""
    from at2_rag import AT2Attributor

    return AT2Attributor.from_pretrained("default")


@pytest.fixture(scope="session")
def embed_model():
    from llama_index.postprocessor.at2 import AT2BundledEmbedding

    return AT2BundledEmbedding()


@pytest.fixture(scope="session")
def index(embed_model):
    """A VectorStoreIndex over the facts, stored in FAISS, embedded by the bundled model."""
    import faiss
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.vector_stores.faiss import FaissVectorStore

    store = FaissVectorStore(faiss_index=faiss.IndexFlatIP(embed_model.dimension))
    return VectorStoreIndex(
        [n.node for n in make_nodes()],
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed_model,
    )
