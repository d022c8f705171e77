"""``AT2DocumentCompressor``: keep the retrieved documents (and sentences) the model actually used."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal, Self

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import Field, model_validator
from typing_extensions import override

import at2_rag
from at2_rag import DEFAULT_POLICY, AT2Attributor, KeepPolicy, Pruner, PruneResult

from .documents import SPANS_KEY, check_question, non_empty, scored_copy, to_at2
from .local_model import LocalModelFields


class AT2DocumentCompressor(LocalModelFields, BaseDocumentCompressor):
    """Scores documents with AT2 attribution on a local model and keeps the ones that drove it.

    Returns new documents, best first, with ``metadata["attribution_score"]`` (and the same value
    as ``metadata["relevance_score"]``); all other metadata is kept and the inputs are not changed.
    Documents with empty ``page_content`` are skipped with a ``UserWarning``; an empty list gives
    ``[]`` without loading the model; an empty query raises ``at2_rag.InputError``; a context
    beyond the model's window raises ``at2_rag.ContextTooLongError`` (see ``overflow``).

    Example:
        .. code-block:: python

            from langchain_at2 import AT2DocumentCompressor

            compressor = AT2DocumentCompressor()   # support mode, keeps the best document
            kept = compressor.compress_documents(docs, "Who wrote Hamlet?")
    """

    mode: Literal["support", "draft", "query"] = "support"
    """``"support"``: one prefill pass over the question, scored by the estimator of which documents
    make the model answer correctly, fused with the retriever's rank (best on answers; see
    ``at2_rag.pruning``). ``"draft"``: the local model drafts an answer and its attention while
    drafting is scored (faithful to what the draft used). ``"query"``: one prefill pass scored by the
    estimator of the model's own answers."""
    top_k: int | None = Field(default=DEFAULT_POLICY.top_k, ge=1)
    """Keep at most this many documents."""
    threshold: float | None = None
    """Keep only documents scoring at least this."""
    relative: float | None = None
    """Keep only documents scoring at least this fraction (0-1) of the best score."""
    token_budget: int | None = Field(default=None, ge=0)
    """Keep documents, best first, while their prompt tokens stay within this budget."""
    min_keep: int = Field(default=1, ge=0)
    """Always keep at least this many of the best documents."""
    sentence_level: bool = False
    """Also drop the unused sentences inside kept documents (scores sentences instead of documents)."""
    sentence_policy: KeepPolicy = Field(default_factory=lambda: KeepPolicy(relative=0.5))
    """Which sentences of a kept document to keep (default: those with at least half the weight of
    the document's strongest sentence)."""
    query_estimator: str | None = "default"
    """Estimator for the support and query modes: ``"default"`` (the mode's shipped one), a path, or
    None (uniform)."""
    rank_weight: float | None = Field(default=None, ge=0)
    """Weight of the retriever's rank (the documents' order, best first) in the keep score; None: the
    mode's default (fitted with the support estimator; 0 in the other modes). Set 0 when the order
    of the documents says nothing about relevance."""

    @model_validator(mode="after")
    def _check_policy(self) -> Self:
        self.policy()  # the core validates the combination
        return self

    def policy(self, k: int | None = None) -> KeepPolicy:
        """The core keep policy these fields describe (``k`` replaces ``top_k``)."""
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k must be a positive int, got {k!r}")
        return KeepPolicy(
            top_k=self.top_k if k is None else k,
            threshold=self.threshold,
            relative=self.relative,
            token_budget=self.token_budget,
            min_keep=self.min_keep,
        )

    @override
    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
        *,
        k: int | None = None,
    ) -> Sequence[Document]:
        """Score ``documents`` for ``query`` and return the kept ones, best first (at most ``k``)."""
        policy, indices, docs = self._prepare(documents, query, k)
        if not docs:
            return []
        result = self._pruner(self.get_attributor(), policy).prune(query, docs)
        return self._build(documents, indices, result)

    @override
    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
        *,
        k: int | None = None,
    ) -> Sequence[Document]:
        """:meth:`compress_documents` with the model work in a worker thread (the loop keeps running)."""
        policy, indices, docs = self._prepare(documents, query, k)
        if not docs:
            return []
        att = await asyncio.to_thread(self.get_attributor)
        result = await self._pruner(att, policy).aprune(query, docs)
        return self._build(documents, indices, result)

    # -- internals ----------------------------------------------------------------------------------
    def _prepare(
        self, documents: Sequence[Document], query: str, k: int | None
    ) -> tuple[KeepPolicy, list[int], list[at2_rag.Document]]:
        """The policy, and the positions and at2-rag views of the documents to score (none: nothing to do)."""
        policy = self.policy(k)
        if not documents:
            return policy, [], []
        check_question(query)
        indices = non_empty(documents, type(self).__name__)
        return policy, indices, [to_at2(documents[i], self.title_key) for i in indices]

    def _pruner(self, att: AT2Attributor, policy: KeepPolicy) -> Pruner:
        return Pruner(
            att,
            mode=self.mode,
            policy=policy,
            query_estimator=self.query_estimator,
            max_new_tokens=self.max_new_tokens,
            sentence_policy=self.sentence_policy if self.sentence_level else None,
            rank_weight=self.rank_weight,
        )

    @staticmethod
    def _build(documents: Sequence[Document], indices: list[int], result: PruneResult) -> list[Document]:
        out = []
        keep_scores = result.keep_scores
        for i in result.kept:
            doc, score, relevance = documents[indices[i]], float(result.scores[i]), float(keep_scores[i])
            if result.sentence_spans is None:
                out.append(scored_copy(doc, score, relevance=relevance))
                continue
            spans = [list(span) for span in result.sentence_spans[i]]
            out.append(scored_copy(doc, score, result.kept_text(i), relevance=relevance, **{SPANS_KEY: spans}))
        return out
