"""AT2Postprocessor: keep the retrieved nodes that drive the answer, scored by AT2 attribution."""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Literal, Optional, Tuple

import llama_index.core.instrumentation as instrument
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, StrictFloat
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from at2_rag import (
    SENTENCE_POLICY,
    AT2Attributor,
    Document,
    KeepPolicy,
    LazyAttributor,
    ModelIdentity,
    Pruner,
    PruneResult,
    check_encodable,
    keep_policy,
)

from .arguments import check_arguments
from .nodes import Count, annotate, nodes_with_text, rank_label, to_documents

dispatcher = instrument.get_dispatcher(__name__)


class AT2Postprocessor(BaseNodePostprocessor):
    """Score retrieved nodes with AT2 on a local model and keep the useful ones, best first.

    Keep policy: ``policy`` (a whole :class:`~at2_rag.KeepPolicy`), or the shorthands ``top_n``
    (alias ``top_k``), ``threshold``, ``relative``, ``token_budget`` and ``min_keep`` applied to the
    default (keep the single best node); either way :func:`at2_rag.keep_policy` builds it, so bad
    values fail at construction. ``sentence_policy`` (or ``sentence_level=True``) also drops the
    unused sentences inside kept nodes. Unknown arguments raise ``TypeError``.

    Returned nodes are annotated copies: ``score`` is the calibrated 0-1 chance that the node is the one
    that answers (``at2_rag.PruneResult.relevance``), so ``SimilarityPostprocessor`` and other cutoffs
    after this one work as on any reranker's scores, and ``threshold`` compares it. The metadata holds
    ``retrieval_score`` (the score the node arrived with), ``attribution_score`` (raw AT2),
    ``keep_score`` (what the nodes were ranked by), ``rank_source`` (where the retriever rank came
    from) and, with sentence-level pruning, ``attribution_spans``; every added key is excluded from
    LLM and embedding text. Where no calibration fits (draft mode, sentence-level pruning, an own
    estimator or rank weight) ``score`` is the keep score min-max scaled within the call, with a warning
    once per postprocessor.

    The retriever's rank joins the keep score only when it is known: ``retrieval_rank`` metadata on
    every node, else the nodes' retriever scores when all are present and distinct (LlamaIndex
    retrievers score every node, so this is the usual case, in any node order), else the input order
    when ``input_order="retriever"``. Otherwise the nodes are scored by AT2 alone. The caller's nodes are never modified. Each call emits LlamaIndex's
    ``ReRankStartEvent``/``ReRankEndEvent`` (in a span) and a ``RERANKING`` callback event.

    Pass ``attributor=`` to share a loaded :class:`~at2_rag.AT2Attributor`; otherwise one is
    loaded from ``model``/``estimator``/``device``/``dtype``/``overflow`` on the first call with
    nodes to score (those fields are then fixed).
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["support", "draft", "query"] = Field(
        default="support",
        description="'support': one prefill pass scored by the estimator of which nodes make the model "
        "answer correctly, fused with the retriever's rank when known (best for answers); 'draft': the local model "
        "drafts an answer and its attention while drafting is scored (faithful to what the draft used); "
        "'query': one prefill pass scored by the estimator of the model's own answers.",
    )
    policy: Optional[KeepPolicy] = Field(
        default=None, description="The whole keep policy (leave the shorthands unset); None: built from them."
    )
    top_n: Optional[Count] = Field(default=None, description="Keep at most this many nodes (None: 1, the default).")
    top_k: Optional[Count] = Field(default=None, description="Alias of top_n (the keep policy's name for it).")
    threshold: Optional[StrictFloat] = Field(
        default=None, description="Keep only nodes whose calibrated relevance (node.score, 0-1) is at least this."
    )
    relative: Optional[StrictFloat] = Field(
        default=None, description="Keep only nodes scoring at least this fraction (0-1) of the best."
    )
    token_budget: Optional[Count] = Field(
        default=None, description="Keep nodes, best first, while their prompt tokens fit this budget."
    )
    min_keep: Optional[Count] = Field(
        default=None, description="Always keep at least this many of the best nodes (None: 1)."
    )
    sentence_policy: Optional[KeepPolicy] = Field(
        default=None,
        description="Also drop unused sentences inside kept nodes, keeping those this policy selects among "
        "each node's own sentences (None: whole nodes, unless sentence_level). Needs metadata_mode NONE.",
    )
    sentence_level: bool = Field(
        default=False,
        description="Shorthand: True without a sentence_policy uses at2_rag.SENTENCE_POLICY (each node's two "
        "best sentences); set to True when a sentence_policy is given.",
    )
    max_new_tokens: Optional[Count] = Field(
        default=None, gt=0, description="Draft length in draft mode (None: the attributor's default)."
    )
    query_estimator: Optional[str] = Field(
        default="default",
        description="Estimator for the support and query modes ('default': the mode's shipped one; "
        "None: uniform weights).",
    )
    rank_weight: Optional[StrictFloat] = Field(
        default=None,
        ge=0.0,
        le=1e6,  # the core's rank-weight rule (at2_rag.Pruner), checked at construction
        allow_inf_nan=False,
        description="Weight of the retriever's rank in the keep score, when a rank is known; None: the "
        "mode's default (fitted with the support estimator; 0 in the other modes).",
    )
    input_order: Literal["unknown", "retriever"] = Field(
        default="unknown",
        description="'retriever': the nodes come best first, so their positions are ranks when neither "
        "retrieval_rank metadata nor distinct retriever scores give one; 'unknown' trusts no order.",
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.NONE,
        description="How a node is rendered for scoring (NONE: its text alone).",
    )
    model: str = Field(default="default", frozen=True, description="Local model to load when none is given.")
    estimator: Optional[str] = Field(
        default="default", frozen=True, description="Answer estimator to load with the model."
    )
    device: Optional[str] = Field(default=None, frozen=True, description="Device for the model (None: CPU).")
    dtype: Optional[str] = Field(default=None, frozen=True, description="Model dtype (None: float32).")
    overflow: Literal["error", "drop_last"] = Field(
        default="error",
        frozen=True,
        description="Over-long context: raise ContextTooLongError, or drop the last nodes (never kept).",
    )

    _loader: LazyAttributor = PrivateAttr()
    _warned_unprunable: bool = PrivateAttr(default=False)
    _warned_uncalibrated: bool = PrivateAttr(default=False)

    def __init__(
        self, attributor: Optional[AT2Attributor] = None, *, sentence_relative: Optional[float] = None, **kwargs: Any
    ) -> None:
        check_arguments(type(self), kwargs, ["attributor", "sentence_relative"])
        if sentence_relative is not None:
            kwargs["sentence_policy"] = _from_sentence_relative(sentence_relative, kwargs)
        if kwargs.get("sentence_policy") is not None:
            kwargs.setdefault("sentence_level", True)  # the field then says whether sentence pruning is on
        super().__init__(**kwargs)
        self.resolved_policy()  # validate the keep policies now, not on the first query
        self.resolved_sentence_policy()
        if self.resolved_policy().threshold is not None and (self.mode == "draft" or self.resolved_sentence_policy()):
            raise ValueError(
                "threshold is a calibrated 0-1 relevance, which draft mode and sentence-level pruning do not "
                "have; use top_n, token_budget or relative")
        self._loader = LazyAttributor(
            attributor,
            model=self.model,
            estimator=self.estimator,
            device=self.device,
            dtype=self.dtype,
            overflow=self.overflow,
        )

    @classmethod
    def class_name(cls) -> str:
        return "AT2Postprocessor"

    def resolved_policy(self) -> KeepPolicy:
        """The keep policy in force, from ``policy`` or the shorthands (ValueError on invalid values)."""
        return keep_policy(
            self.policy,
            top_n=self.top_n,
            top_k=self.top_k,
            threshold=self.threshold,
            relative=self.relative,
            token_budget=self.token_budget,
            min_keep=self.min_keep,
        )

    def resolved_sentence_policy(self) -> Optional[KeepPolicy]:
        """The policy for sentences inside kept nodes (None: whole nodes are kept)."""
        if self.sentence_policy is None and not self.sentence_level:
            return None
        if self.metadata_mode != MetadataMode.NONE:
            raise ValueError(
                "sentence-level pruning rewrites the node text, so the scored text must be the node's "
                "text: use metadata_mode=MetadataMode.NONE (the default)"
            )
        if self.sentence_policy is None:
            return SENTENCE_POLICY
        if "sentence_level" in self.model_fields_set and not self.sentence_level:
            raise ValueError("sentence_level=False contradicts sentence_policy (which turns sentence pruning on)")
        policy = keep_policy(self.sentence_policy)
        if policy.min_keep < 1:
            raise ValueError("sentence_policy.min_keep must be at least 1: a kept node would be left empty")
        return policy

    @property
    def attributor_loader(self) -> LazyAttributor:
        """The local model, loaded on first use (shared with a citation query engine)."""
        return self._loader

    def pruner(self, attributor: AT2Attributor, policy: Optional[KeepPolicy] = None) -> Pruner:
        """The core pruner for these settings (checked again: fields may have been set since)."""
        return Pruner(
            attributor,
            mode=self.mode,
            policy=policy or self.resolved_policy(),
            query_estimator=self.query_estimator,
            max_new_tokens=self.max_new_tokens,
            sentence_policy=self.resolved_sentence_policy(),
            rank_weight=self.rank_weight,
            input_order=self.input_order,
            threshold_scale="relevance",
        )

    # -- postprocessing ---------------------------------------------------------------------------
    @dispatcher.span
    def _postprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        policy = self._start(nodes, query_bundle)
        question, scored, docs = self._prepare(nodes, query_bundle)
        out: List[NodeWithScore] = []
        if scored:
            with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(scored, question, policy)) as event:
                out = self._unscored(scored, policy)
                if out is None:
                    result = self.pruner(self._loader.get(), policy).prune(question, docs)
                    out = self._kept(scored, result)
                event.on_end(payload={EventPayload.NODES: out})
        dispatcher.event(ReRankEndEvent(nodes=out))
        return out

    @dispatcher.span
    async def _apostprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        """Score and prune in a worker thread (loading the model there too on first use)."""
        policy = self._start(nodes, query_bundle)
        question, scored, docs = self._prepare(nodes, query_bundle)
        out: List[NodeWithScore] = []
        if scored:
            with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(scored, question, policy)) as event:
                out = self._unscored(scored, policy)
                if out is None:
                    pruner = self.pruner(await self._loader.aget(), policy)
                    out = self._kept(scored, await pruner.aprune(question, docs))
                event.on_end(payload={EventPayload.NODES: out})
        dispatcher.event(ReRankEndEvent(nodes=out))
        return out

    # -- internals --------------------------------------------------------------------------------
    def _kept(self, nodes: List[NodeWithScore], result: PruneResult) -> List[NodeWithScore]:
        """Annotated copies of the kept nodes, highest keep score first (holding only their kept
        sentences with sentence-level pruning); ``node.score`` is the 0-1 relevance."""
        if not result.relevance_calibrated and not self._warned_uncalibrated:
            self._warned_uncalibrated = True
            warnings.warn(
                f"AT2Postprocessor(mode={self.mode!r}): node.score is not calibrated with these settings "
                "(calibrated: whole nodes in support or query mode, with the shipped estimator and rank weight), "
                "so it is the keep score min-max scaled within each call. (Shown once per postprocessor.)",
                UserWarning,
                stacklevel=6,
            )
        source = rank_label(nodes, result.rank_source)
        relevance, out = result.relevance_scores, []
        for i in result.kept:
            spans = None if result.sentence_spans is None else result.sentence_spans[i]
            out.append(annotate(nodes[i], result.scores[i], text=None if spans is None else result.kept_text(i),
                                spans=spans, rank_score=relevance[i], keep_score=result.keep_scores[i],
                                rank_source=source))
        return out

    def _model_name(self) -> str:
        """The local model's name: the loaded model's, else the ``model`` field."""
        if self._loader.loaded:
            return ModelIdentity.of(self._loader.get().model).name or self.model
        return self.model

    def _start(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle]) -> KeepPolicy:
        """The policy for this call, after the rerank start event (as LlamaIndex's rerankers emit it)."""
        policy = self.resolved_policy()
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=policy.top_k if policy.top_k is not None else len(nodes),
                model_name=self._model_name(),
            )
        )
        return policy

    def _payload(self, nodes: List[NodeWithScore], question: str, policy: KeepPolicy) -> Dict[str, Any]:
        """The ``RERANKING`` callback payload, with the keys LlamaIndex's rerankers send."""
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self._model_name(),
            EventPayload.QUERY_STR: question,
            EventPayload.TOP_K: policy.top_k,
        }

    def _prepare(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle]
    ) -> Tuple[str, List[NodeWithScore], List[Document]]:
        """The query, the nodes with text and their documents, checked before the model loads or runs."""
        if query_bundle is None:
            raise ValueError(
                "AT2Postprocessor scores nodes against the query: pass query_bundle= or query_str="
            )
        scored = nodes_with_text(nodes, self.metadata_mode)
        return check_encodable(query_bundle.query_str, "the query"), scored, to_documents(scored, self.metadata_mode)

    def _nothing_to_prune(self, policy: KeepPolicy, n: int) -> bool:
        """Whether ``policy`` keeps all ``n`` whole nodes, whatever their scores."""
        cut_offs = (policy.threshold, policy.relative, policy.token_budget)
        return (
            self.resolved_sentence_policy() is None
            and all(c is None for c in cut_offs)
            and (policy.top_k is None or n <= policy.top_k)
        )

    def _unscored(self, nodes: List[NodeWithScore], policy: KeepPolicy) -> Optional[List[NodeWithScore]]:
        """In draft mode, when nothing can be pruned: the nodes unscored, without drafting (else None)."""
        if self.mode != "draft" or not self._nothing_to_prune(policy, len(nodes)):
            return None
        if not self._warned_unprunable:
            self._warned_unprunable = True
            warnings.warn(
                f"AT2Postprocessor(mode='draft') got {len(nodes)} node(s) and keeps up to "
                f"{policy.top_k or 'all'}: nothing can be pruned, so the draft is skipped and the nodes "
                "are returned unscored, in their order. Retrieve more nodes than you keep (e.g. "
                "index.as_query_engine(similarity_top_k=10, ...)). (Shown once per postprocessor.)",
                UserWarning,
                stacklevel=5,  # the caller of postprocess_nodes
            )
        return [annotate(n, None, rank_score=n.score) for n in nodes]


def _from_sentence_relative(value: float, kwargs: Dict[str, Any]) -> Optional[KeepPolicy]:
    """What deprecated ``sentence_relative`` means: KeepPolicy(relative=value) with sentence_level, else None."""
    on = bool(kwargs.get("sentence_level"))
    warnings.warn(
        "AT2Postprocessor(sentence_relative=x) is deprecated: use sentence_policy=KeepPolicy(relative=x)"
        + ("" if on else " (without sentence_level=True it is ignored, as it always was)"),
        DeprecationWarning,
        stacklevel=3,  # the caller of AT2Postprocessor(...)
    )
    if kwargs.get("sentence_policy") is not None:
        raise ValueError("pass sentence_policy or the deprecated sentence_relative, not both")
    policy = keep_policy(relative=value, default=KeepPolicy(min_keep=1))  # validated even when ignored
    return policy if on else None
