"""``AT2PruningRetriever``: any retriever followed by AT2 pruning, as one retriever."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever, RetrieverLike
from pydantic import ConfigDict, Field
from typing_extensions import override

from .compressor import AT2DocumentCompressor


class AT2PruningRetriever(BaseRetriever):
    """Retrieves with ``base_retriever``, then keeps the documents the local model actually used.

    Let the base retriever fetch generously (e.g. 8-10 chunks); AT2 keeps the best ``k``.

    Example:
        .. code-block:: python

            from langchain_at2 import AT2PruningRetriever

            retriever = AT2PruningRetriever(base_retriever=store.as_retriever(search_kwargs={"k": 8}), k=3)
            docs = retriever.invoke("Who wrote Hamlet?")        # or .invoke(query, k=2)
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base_retriever: RetrieverLike
    """The retriever whose results are pruned."""
    compressor: AT2DocumentCompressor = Field(default_factory=AT2DocumentCompressor)
    """Scores and keeps documents (mode, keep policy, local model)."""
    k: int | None = Field(default=None, ge=1)
    """Return at most this many documents (replaces the compressor's ``top_k``; None keeps it)."""

    @override
    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        docs = self.base_retriever.invoke(query, config={"callbacks": run_manager.get_child()}, **kwargs)
        kept = self.compressor.compress_documents(
            docs, query, callbacks=run_manager.get_child(), k=k if k is not None else self.k
        )
        return list(kept)

    @override
    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        docs = await self.base_retriever.ainvoke(
            query, config={"callbacks": run_manager.get_child()}, **kwargs
        )
        kept = await self.compressor.acompress_documents(
            docs, query, callbacks=run_manager.get_child(), k=k if k is not None else self.k
        )
        return list(kept)
