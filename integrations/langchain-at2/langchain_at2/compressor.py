"""``AT2DocumentCompressor``: keep the retrieved documents (and sentences) the model actually used."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal, Self

from langchain_core._api import warn_deprecated
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables import RunnableLambda
from pydantic import ConfigDict, Field, PrivateAttr, StrictFloat, model_validator
from typing_extensions import override

from at2_rag import SENTENCE_POLICY, AT2Attributor, KeepPolicy, Pruner, PruneResult, keep_policy

from .documents import (
    RANK_SOURCE_KEY,
    RETRIEVAL_SCORE_KEYS,
    SPANS_KEY,
    Count,
    check_question,
    non_empty,
    plain_copy,
    score_ranks,
    scored_copy,
    to_at2,
)
from .local_model import LocalModelFields

PRUNE_RUN_NAME = "at2_prune"
"""Name of the child run (callbacks, tracing, ``astream_events``) in which documents are scored."""


def top_n_or_k(top_n: int | None, k: int | None, owner: str, stacklevel: int = 4) -> int | None:
    """The limit from ``top_n``, or from the deprecated alias ``k`` (with a deprecation warning)."""
    if k is None:
        return top_n
    warn_deprecated(
        since="0.1.0",
        message=f"The parameter `k` of {owner} is deprecated since langchain-at2 0.1.0: use `top_n` (the same limit).",
        stacklevel=stacklevel,
    )
    if top_n is not None and top_n != k:
        raise ValueError(f"top_n={top_n!r} and k={k!r} name the same limit; pass top_n only")
    return k


class AT2DocumentCompressor(LocalModelFields, BaseDocumentCompressor):
    """Scores documents with AT2 attribution on a local model and keeps the ones that drove it.

    Keep policy: ``policy`` (a whole ``at2_rag.KeepPolicy``), or the shorthands ``top_n`` (alias
    ``top_k``), ``threshold``, ``relative``, ``token_budget`` and ``min_keep`` applied to the default
    (keep the single best document); both are turned into the policy by ``at2_rag.keep_policy``, so
    bad values fail at construction; ``threshold`` is a 0-1 chance, compared with ``relevance_score``.
    Returns new documents, best first, with ``metadata["attribution_score"]`` (raw AT2 score),
    ``["keep_score"]`` (the raw score they were ranked by), ``["relevance_score"]`` (the calibrated 0-1
    chance that the document is the one that answers) and ``["rank_source"]`` (where the retriever
    rank came from); all other metadata is kept and the inputs are not changed.

    The retriever's rank joins the keep score only when it is known: every document's
    ``retrieval_rank`` metadata, else distinct scores under ``retrieval_score_keys`` (e.g. a
    reranker's ``relevance_score``), else the input order when ``input_order="retriever"``. Otherwise
    the documents are scored by AT2 alone, so any order (sorted by date, merged lists) is safe. The scoring runs in a child run named
    ``"at2_prune"``. Documents with empty ``page_content`` are skipped with a ``UserWarning``; an
    empty list gives ``[]`` without loading the model; an empty query raises
    ``at2_rag.InputError``; a context beyond the model's window raises
    ``at2_rag.ContextTooLongError`` (see ``overflow``).

    Example:
        .. code-block:: python

            from langchain_at2 import AT2DocumentCompressor

            compressor = AT2DocumentCompressor(top_n=2)   # support mode
            kept = compressor.compress_documents(docs, "Who wrote Hamlet?")
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    mode: Literal["support", "draft", "query"] = "support"
    """``"support"``: one prefill pass over the question, scored by the estimator of which documents
    make the model answer correctly, fused with the retriever's rank when one is known (best on
    answers; see ``at2_rag.pruning``). ``"draft"``: the local model drafts an answer and its attention while
    drafting is scored (faithful to what the draft used). ``"query"``: one prefill pass scored by the
    estimator of the model's own answers."""
    policy: KeepPolicy | None = None
    """The whole keep policy (then leave the shorthands below unset); None: built from them."""
    top_n: Count | None = None
    """Keep at most this many documents (None: the default policy's 1)."""
    top_k: Count | None = None
    """Alias of ``top_n`` (the keep policy's name for it)."""
    threshold: StrictFloat | None = None
    """Keep only documents whose ``relevance_score`` (calibrated 0-1 chance) is at least this."""
    relative: StrictFloat | None = None
    """Keep only documents scoring at least this fraction (0-1) of the best score."""
    token_budget: Count | None = None
    """Keep documents, best first, while their prompt tokens stay within this budget."""
    min_keep: Count | None = None
    """Always keep at least this many of the best documents (None: 1)."""
    sentence_policy: KeepPolicy | None = None
    """Also drop the unused sentences inside kept documents, keeping those this policy selects among
    each document's own sentences (None: whole documents, unless ``sentence_level``)."""
    sentence_level: bool = False
    """Shorthand: ``True`` without a ``sentence_policy`` uses ``at2_rag.SENTENCE_POLICY`` (each
    document's two best sentences)."""
    query_estimator: str | None = "default"
    """Estimator for the support and query modes: ``"default"`` (the mode's shipped one), a path, or
    None (uniform)."""
    rank_weight: StrictFloat | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)  # the core's rule
    """Weight of the retriever's rank in the keep score, when a rank is known; None: the mode's default
    (fitted with the support estimator; 0 in the other modes)."""
    input_order: Literal["unknown", "retriever"] = "unknown"
    """``"retriever"``: the documents come in the retriever's order, best first, so their positions
    are ranks when no metadata gives one. The default ``"unknown"`` trusts no order: LangChain
    retrievers do not promise one (``MultiQueryRetriever`` returns a union, ``EnsembleRetriever`` a
    fusion), so neither ``ContextualCompressionRetriever`` nor ``AT2PruningRetriever`` assumes it."""
    retrieval_score_keys: tuple[str, ...] = RETRIEVAL_SCORE_KEYS
    """Metadata keys read, in order, as retriever scores (higher is better) to rank the documents when
    they carry no ``retrieval_rank``; the scores must be finite and distinct."""

    _warned_unprunable: bool = PrivateAttr(default=False)
    _warned_uncalibrated: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _check_policies(self) -> Self:
        self.resolved_policy()  # at2_rag.keep_policy validates the values and their combination
        self.resolved_sentence_policy()
        if self.resolved_policy().threshold is not None and (
                self.mode == "draft" or self.resolved_sentence_policy() is not None):
            raise ValueError(
                "threshold is a calibrated 0-1 relevance, which draft mode and sentence-level pruning do not "
                "have; use top_n, token_budget or relative")
        return self

    def resolved_policy(self, top_n: int | None = None) -> KeepPolicy:
        """The keep policy in force (``top_n`` replaces its limit for one call)."""
        policy = keep_policy(
            self.policy,
            top_n=self.top_n,
            top_k=self.top_k,
            threshold=self.threshold,
            relative=self.relative,
            token_budget=self.token_budget,
            min_keep=self.min_keep,
        )
        return policy if top_n is None else keep_policy(top_n=top_n, default=policy)

    def resolved_sentence_policy(self) -> KeepPolicy | None:
        """The policy for sentences inside kept documents (None: whole documents are kept)."""
        if self.sentence_policy is None:
            return SENTENCE_POLICY if self.sentence_level else None
        if "sentence_level" in self.model_fields_set and not self.sentence_level:
            raise ValueError("sentence_level=False contradicts sentence_policy (which turns sentence pruning on)")
        policy = keep_policy(self.sentence_policy)
        if policy.min_keep < 1:
            raise ValueError("sentence_policy.min_keep must be at least 1: a kept document would be left empty")
        return policy

    @override
    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
        *,
        top_n: int | None = None,
        k: int | None = None,
    ) -> Sequence[Document]:
        """Score ``documents`` for ``query`` and return the kept ones, best first (``top_n``: at most this many)."""
        step = self._step(documents, query, top_n_or_k(top_n, k, f"{type(self).__name__}.compress_documents"))
        if isinstance(step, list):
            return step
        return step.invoke({"query": query, "documents": list(documents)}, {"callbacks": callbacks})

    @override
    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
        *,
        top_n: int | None = None,
        k: int | None = None,
    ) -> Sequence[Document]:
        """:meth:`compress_documents` with the model work in a worker thread (the loop keeps running)."""
        step = self._step(documents, query, top_n_or_k(top_n, k, f"{type(self).__name__}.compress_documents"))
        if isinstance(step, list):
            return step
        return await step.ainvoke({"query": query, "documents": list(documents)}, {"callbacks": callbacks})

    # -- internals ----------------------------------------------------------------------------------
    def _step(
        self, documents: Sequence[Document], query: str, top_n: int | None
    ) -> RunnableLambda | list[Document]:
        """The scoring run for these documents, or the result itself when there is nothing to score."""
        policy = self.resolved_policy(top_n)
        if not documents:
            return []
        check_question(query)
        indices = non_empty(documents, type(self).__name__)
        if not indices:
            return []
        if self.mode == "draft" and self._nothing_to_prune(policy, len(indices)):
            self._warn_nothing_to_prune(policy, len(indices))
            return [plain_copy(documents[i]) for i in indices]
        return RunnableLambda(partial(self._prune, indices=indices, policy=policy), name=PRUNE_RUN_NAME)

    def _prune(self, inputs: dict[str, Any], *, indices: list[int], policy: KeepPolicy) -> list[Document]:
        documents, query = inputs["documents"], inputs["query"]
        scored = [documents[i] for i in indices]
        ranks, score_key = score_ranks(scored, self.retrieval_score_keys)
        docs = [to_at2(d, self.title_key, None if ranks is None else ranks[j]) for j, d in enumerate(scored)]
        result = self._pruner(self.get_attributor(), policy).prune(query, docs)
        source = {"metadata": score_key or "retrieval_rank"}.get(result.rank_source, result.rank_source)
        if not result.relevance_calibrated:
            self._warn_uncalibrated()
        return self._build(documents, indices, result, source)

    def _nothing_to_prune(self, policy: KeepPolicy, n: int) -> bool:
        """Whether the policy keeps every one of ``n`` documents whatever their scores."""
        whole = self.resolved_sentence_policy() is None
        cut_offs = (policy.threshold, policy.relative, policy.token_budget)
        return whole and all(c is None for c in cut_offs) and (policy.top_k is None or n <= policy.top_k)

    def _warn_nothing_to_prune(self, policy: KeepPolicy, n: int) -> None:
        if self._warned_unprunable:
            return
        self._warned_unprunable = True
        warnings.warn(
            f"{type(self).__name__}(mode='draft') got {n} document(s) and keeps up to {policy.top_k or 'all'}: "
            "nothing can be pruned, so the draft is skipped and the documents are returned unscored, in their "
            "order. Retrieve more documents than you keep (e.g. as_retriever(search_kwargs={'k': 10})). "
            "(Shown once per compressor.)",
            UserWarning,
            stacklevel=5,
        )

    def _warn_uncalibrated(self) -> None:
        if self._warned_uncalibrated:
            return
        self._warned_uncalibrated = True
        warnings.warn(
            f"{type(self).__name__}(mode={self.mode!r}): relevance_score is not calibrated with these settings "
            "(calibrated: whole documents in support or query mode, with the shipped estimator and rank "
            "weight), so it is the keep score min-max scaled within each call. (Shown once per compressor.)",
            UserWarning,
            stacklevel=6,
        )

    def _pruner(self, att: AT2Attributor, policy: KeepPolicy) -> Pruner:
        return Pruner(
            att,
            mode=self.mode,
            policy=policy,
            query_estimator=self.query_estimator,
            max_new_tokens=self.max_new_tokens,
            sentence_policy=self.resolved_sentence_policy(),
            rank_weight=self.rank_weight,
            input_order=self.input_order,
            threshold_scale="relevance",
        )

    @staticmethod
    def _build(documents: Sequence[Document], indices: list[int], result: PruneResult, source: str) -> list[Document]:
        keep_scores = result.keep_scores
        relevance = result.relevance_scores
        out = []
        for i in result.kept:
            doc = documents[indices[i]]
            scores = (float(result.scores[i]), float(keep_scores[i]), float(relevance[i]))
            extra: dict[str, Any] = {RANK_SOURCE_KEY: source}
            if result.sentence_spans is None:
                out.append(scored_copy(doc, *scores, **extra))
                continue
            extra[SPANS_KEY] = [list(span) for span in result.sentence_spans[i]]
            out.append(scored_copy(doc, *scores, result.kept_text(i), **extra))
        return out
