"""``AT2PruningRetriever``: any retriever followed by AT2 pruning, as one retriever."""

from __future__ import annotations

from typing import Any, Self

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever, RetrieverLike
from pydantic import ConfigDict, Field, model_validator
from typing_extensions import override

from at2_rag import check_encodable

from .compressor import AT2DocumentCompressor, top_n_or_k
from .documents import Count

COMPRESSOR_SETTINGS = frozenset(AT2DocumentCompressor.model_fields) - {"top_n"} | {"attributor"}
"""Arguments of the retriever that configure the compressor it builds when none is given."""


class AT2PruningRetriever(BaseRetriever):
    """Retrieves with ``base_retriever``, then keeps the documents the local model actually used.

    Let the base retriever fetch generously (e.g. 8-10 chunks); AT2 keeps the best ``top_n``. Pass
    a ``compressor``, or the compressor's settings directly (``mode``, ``policy``, ``threshold``,
    ``sentence_level``, ``attributor``, ... : see :class:`AT2DocumentCompressor`).

    Example:
        .. code-block:: python

            from langchain_at2 import AT2PruningRetriever

            retriever = AT2PruningRetriever(
                base_retriever=store.as_retriever(search_kwargs={"k": 8}), attributor=att, top_n=3
            )
            docs = retriever.invoke("Who wrote Hamlet?")        # or .invoke(query, top_n=2)
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    base_retriever: RetrieverLike
    """The retriever whose results are pruned."""
    compressor: AT2DocumentCompressor = Field(default_factory=AT2DocumentCompressor)
    """Scores and keeps documents (mode, keep policy, local model)."""
    top_n: Count | None = None
    """Return at most this many documents (replaces the compressor's limit; None keeps it)."""
    k: Count | None = None
    """Deprecated alias of ``top_n``."""

    @model_validator(mode="before")
    @classmethod
    def _build_compressor(cls, data: Any) -> Any:
        """Builds the compressor from its settings given to the retriever (never alongside one)."""
        if not isinstance(data, dict) or not (settings := COMPRESSOR_SETTINGS & set(data)):
            return data
        if data.get("compressor") is not None:
            raise ValueError(f"pass either compressor= or its settings {sorted(settings)}, not both")
        rest = {key: value for key, value in data.items() if key not in settings}
        return {**rest, "compressor": AT2DocumentCompressor(**{key: data[key] for key in settings})}

    @model_validator(mode="after")
    def _check_top_n(self) -> Self:
        top_n_or_k(self.top_n, self.k, type(self).__name__, stacklevel=6)
        self.compressor.resolved_policy(self._top_n())  # the core validates the limit
        return self

    def _top_n(self, top_n: int | None = None, k: int | None = None) -> int | None:
        """This call's limit: the call's ``top_n`` (or deprecated ``k``), else the retriever's."""
        limit = top_n_or_k(top_n, k, f"{type(self).__name__}.invoke", stacklevel=7)
        if limit is not None:
            return limit
        return self.top_n if self.top_n is not None else self.k

    def _checked(self, query: str, top_n: int | None, k: int | None) -> int | None:
        """This call's limit, after checking it and the query: bad input fails before the base retriever runs."""
        limit = self._top_n(top_n, k)
        self.compressor.resolved_policy(limit)  # the core validates the limit
        check_encodable(query, "the query")  # a lone surrogate would reach the base retriever's tokenizer
        return limit

    @override
    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        top_n: int | None = None,
        k: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        limit = self._checked(query, top_n, k)
        docs = self.base_retriever.invoke(query, config={"callbacks": run_manager.get_child()}, **kwargs)
        return list(self.compressor.compress_documents(docs, query, callbacks=run_manager.get_child(), top_n=limit))

    @override
    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        top_n: int | None = None,
        k: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        limit = self._checked(query, top_n, k)
        docs = await self.base_retriever.ainvoke(query, config={"callbacks": run_manager.get_child()}, **kwargs)
        kept = await self.compressor.acompress_documents(docs, query, callbacks=run_manager.get_child(), top_n=limit)
        return list(kept)
