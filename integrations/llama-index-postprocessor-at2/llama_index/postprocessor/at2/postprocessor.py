"""AT2Postprocessor: keep the retrieved nodes that drive the answer, scored by AT2 attribution."""

from __future__ import annotations

from typing import Any, List, Literal, Optional, Tuple

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from at2_rag import DEFAULT_POLICY, AT2Attributor, Document, KeepPolicy, LazyAttributor, Pruner, PruneResult

from .nodes import annotate, nodes_with_text, to_documents


class AT2Postprocessor(BaseNodePostprocessor):
    """Score retrieved nodes with AT2 on a local model and keep the useful ones, best first.

    Returned nodes are annotated copies: ``score`` is the attribution score, the metadata holds
    ``retrieval_score`` (the score the node arrived with) and ``attribution_score`` (and, with
    ``sentence_level``, ``attribution_spans``), and every added key is excluded from LLM and
    embedding text. The caller's nodes are never modified.

    Pass ``attributor=`` to share a loaded :class:`~at2_rag.AT2Attributor`; otherwise one is
    loaded from ``model``/``estimator``/``device``/``dtype``/``overflow`` on the first non-empty
    call (those fields are then fixed).
    """

    mode: Literal["support", "draft", "query"] = Field(
        default="support",
        description="'support': one prefill pass scored by the estimator of which nodes make the model "
        "answer correctly, fused with the retriever's rank (best for answers); 'draft': the local model "
        "drafts an answer and its attention while drafting is scored (faithful to what the draft used); "
        "'query': one prefill pass scored by the estimator of the model's own answers.",
    )
    top_k: Optional[int] = Field(default=DEFAULT_POLICY.top_k, description="Keep at most this many nodes.")
    threshold: Optional[float] = Field(
        default=None, description="Keep only nodes scoring at least this (estimator units)."
    )
    relative: Optional[float] = Field(
        default=None, description="Keep only nodes scoring at least this fraction (0-1) of the best."
    )
    token_budget: Optional[int] = Field(
        default=None, description="Keep nodes, best first, while their prompt tokens fit this budget."
    )
    min_keep: int = Field(default=1, description="Always keep at least this many of the best nodes.")
    max_new_tokens: Optional[int] = Field(
        default=None, description="Draft length in draft mode (None: the attributor's default)."
    )
    query_estimator: Optional[str] = Field(
        default="default",
        description="Estimator for the support and query modes ('default': the mode's shipped one; "
        "None: uniform weights).",
    )
    rank_weight: Optional[float] = Field(
        default=None,
        ge=0.0,
        description="Weight of the retriever's rank (the nodes' order, best first) in the keep score; "
        "None: the mode's default (fitted with the support estimator; 0 in the other modes). Set 0 "
        "when the nodes' order says nothing about relevance.",
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.NONE,
        description="How a node is rendered for scoring (NONE: its text alone).",
    )
    sentence_level: bool = Field(
        default=False,
        description="Also drop unused sentences inside kept nodes: the returned copies hold only the "
        "kept sentences (needs metadata_mode NONE, so the scored text is the node's text).",
    )
    sentence_relative: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="With sentence_level: keep a node's sentences scoring at least this fraction (0-1) "
        "of its strongest sentence.",
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

    def __init__(self, attributor: Optional[AT2Attributor] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy  # noqa: B018 -- validate the keep policies now, not on the first query
        self._check_sentence_level()
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

    @property
    def policy(self) -> KeepPolicy:
        """The core keep policy these fields describe (raises ValueError on invalid values)."""
        return KeepPolicy(
            top_k=self.top_k,
            threshold=self.threshold,
            relative=self.relative,
            token_budget=self.token_budget,
            min_keep=self.min_keep,
        )

    def _check_sentence_level(self) -> None:
        if self.sentence_level and self.metadata_mode != MetadataMode.NONE:
            raise ValueError(
                "sentence_level=True rewrites the node text, so the scored text must be the node's "
                "text: use metadata_mode=MetadataMode.NONE (the default)"
            )

    @property
    def sentence_policy(self) -> Optional[KeepPolicy]:
        """The keep policy for sentences inside kept nodes (None without ``sentence_level``)."""
        return KeepPolicy(relative=self.sentence_relative) if self.sentence_level else None

    @property
    def attributor_loader(self) -> LazyAttributor:
        """The local model, loaded on first use (shared with a citation query engine)."""
        return self._loader

    def pruner(self, attributor: AT2Attributor) -> Pruner:
        """The core pruner for these settings (checked again: fields may have been set since)."""
        self._check_sentence_level()
        return Pruner(
            attributor,
            mode=self.mode,
            policy=self.policy,
            query_estimator=self.query_estimator,
            max_new_tokens=self.max_new_tokens,
            sentence_policy=self.sentence_policy,
            rank_weight=self.rank_weight,
        )

    def _postprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        question, scored = self._prepare(nodes, query_bundle)
        if not scored:
            return []
        return _kept(scored, self.pruner(self._loader.get()).prune(question, self._documents(scored)))

    async def _apostprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        """Score and prune in a worker thread (loading the model there too on first use)."""
        question, scored = self._prepare(nodes, query_bundle)
        if not scored:
            return []
        pruner = self.pruner(await self._loader.aget())
        return _kept(scored, await pruner.aprune(question, self._documents(scored)))

    def _documents(self, nodes: List[NodeWithScore]) -> List[Document]:
        return to_documents(nodes, self.metadata_mode)

    def _prepare(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle]
    ) -> Tuple[str, List[NodeWithScore]]:
        if query_bundle is None:
            raise ValueError(
                "AT2Postprocessor scores nodes against the query: pass query_bundle= or query_str="
            )
        return query_bundle.query_str, nodes_with_text(nodes, self.metadata_mode)


def _kept(nodes: List[NodeWithScore], result: PruneResult) -> List[NodeWithScore]:
    """Annotated copies of the kept nodes, highest keep score first (holding only their kept
    sentences with sentence-level pruning); ``node.score`` is the keep score."""
    out = []
    keep_scores = result.keep_scores
    for i in result.kept:
        spans = None if result.sentence_spans is None else result.sentence_spans[i]
        out.append(annotate(nodes[i], result.scores[i], text=None if spans is None else result.kept_text(i),
                            spans=spans, rank_score=keep_scores[i]))
    return out
