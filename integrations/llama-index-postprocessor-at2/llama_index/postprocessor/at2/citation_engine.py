"""AT2CitationQueryEngine: answer from retrieved nodes and cite them by measured attribution.

Unlike a prompt that asks the LLM to cite, the ``[n]`` markers here come from AT2 scores: the local
model reads the same nodes and the answer, and each answer sentence is marked with the nodes whose
attention drove it. With no ``llm`` the local model answers itself (zero extra passes); with any
LlamaIndex LLM, the local model attributes that answer in one forward pass (proxy attribution).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import RESPONSE_TYPE, Response
from llama_index.core.callbacks import CallbackManager
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.indices.base import BaseIndex
from llama_index.core.llms.llm import LLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.response_synthesizers import BaseSynthesizer, get_response_synthesizer
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from llama_index.core.settings import Settings

from at2_rag import AT2Attributor, Attribution, Granularity, KeepPolicy, LazyAttributor, cite, with_markers

from .nodes import annotate, nodes_with_text, to_documents
from .postprocessor import AT2Postprocessor

EMPTY_RESPONSE = "Empty Response"
"""LlamaIndex's answer when there is no node, or the LLM said nothing; never attributed."""


class AT2CitationQueryEngine(BaseQueryEngine):
    """Retrieve, optionally prune with AT2, answer, and cite each answer sentence by attribution.

    Args:
        retriever: where the nodes come from.
        llm: the LLM that answers; None (default) lets the local model answer.
        attributor: the local model; None uses ``pruner``'s, or loads the default on first use.
        pruner: an :class:`AT2Postprocessor` run after retrieval; the answer is then (re)generated
            from the kept nodes only.
        node_postprocessors: other postprocessors, run before the pruner.
        response_synthesizer: how ``llm`` is prompted (default: compact mode, LlamaIndex's QA prompt).
        granularity: citation sources, ``"sentence"`` (default) or ``"document"``.
        max_sources, relative: at most this many sources per answer sentence, each scoring at least
            ``relative`` x the sentence's best (see :func:`at2_rag.cite`).
        max_new_tokens: answer length when the local model answers.
        metadata_mode: how a node is rendered for the local model (NONE: its text alone).

    The response's ``source_nodes`` keep their order, so marker ``[n]`` is ``source_nodes[n-1]``;
    each is an annotated copy scored by its attribution to the whole answer. ``response.metadata``
    holds ``answer`` (without markers), ``citations`` (per sentence, from
    :meth:`at2_rag.Citation.to_dict`; ``document`` i is ``source_nodes[i]``), ``attribution_method``
    and ``extra_forward_passes``.
    """

    def __init__(
        self,
        retriever: BaseRetriever,
        llm: Optional[LLM] = None,
        *,
        attributor: Optional[AT2Attributor] = None,
        pruner: Optional[AT2Postprocessor] = None,
        node_postprocessors: Optional[List[BaseNodePostprocessor]] = None,
        response_synthesizer: Optional[BaseSynthesizer] = None,
        granularity: Granularity = "sentence",
        max_sources: int = 3,
        relative: float = 0.5,
        max_new_tokens: Optional[int] = None,
        metadata_mode: MetadataMode = MetadataMode.NONE,
        callback_manager: Optional[CallbackManager] = None,
    ) -> None:
        callback_manager = callback_manager or Settings.callback_manager
        if response_synthesizer is None and llm is not None:
            response_synthesizer = get_response_synthesizer(llm=llm, callback_manager=callback_manager)
        if attributor is not None:
            self._loader = LazyAttributor(attributor)
        else:
            self._loader = pruner.attributor_loader if pruner is not None else LazyAttributor()
        self._retriever = retriever
        self._synthesizer = response_synthesizer
        self._postprocessors = [*(node_postprocessors or []), *([pruner] if pruner else [])]
        self._granularity = granularity
        self._max_sources = max_sources
        self._relative = relative
        self._max_new_tokens = max_new_tokens
        self._metadata_mode = metadata_mode
        super().__init__(callback_manager=callback_manager)

    @classmethod
    def from_args(
        cls, index: BaseIndex, llm: Optional[LLM] = None, similarity_top_k: Optional[int] = None, **kwargs: Any
    ) -> "AT2CitationQueryEngine":
        """An engine over ``index``'s retriever; ``kwargs`` go to the constructor."""
        retriever_kwargs = {} if similarity_top_k is None else {"similarity_top_k": similarity_top_k}
        return cls(index.as_retriever(**retriever_kwargs), llm, **kwargs)

    @property
    def retriever(self) -> BaseRetriever:
        return self._retriever

    @property
    def uses_local_model(self) -> bool:
        """Whether the local model writes the answer (no ``llm`` or synthesizer was given)."""
        return self._synthesizer is None

    def _get_prompt_modules(self) -> PromptMixinType:
        return {} if self._synthesizer is None else {"response_synthesizer": self._synthesizer}

    # -- retrieval ------------------------------------------------------------------------------
    def retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        """Retrieved nodes after the postprocessors and the pruner; nodes without text left out."""
        nodes = self._retriever.retrieve(query_bundle)
        for pp in self._postprocessors:
            nodes = pp.postprocess_nodes(nodes, query_bundle=query_bundle)
        return nodes_with_text(nodes, self._metadata_mode)

    async def aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        """:meth:`retrieve`, without blocking the event loop."""
        nodes = await self._retriever.aretrieve(query_bundle)
        for pp in self._postprocessors:
            nodes = await pp.apostprocess_nodes(nodes, query_bundle=query_bundle)
        return nodes_with_text(nodes, self._metadata_mode)

    # -- querying -------------------------------------------------------------------------------
    def _event(self, kind: CBEventType, query_bundle: QueryBundle) -> Any:
        """A callback event for this query, as LlamaIndex's own query engines emit."""
        return self.callback_manager.event(kind, payload={EventPayload.QUERY_STR: query_bundle.query_str})

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        with self._event(CBEventType.QUERY, query_bundle) as query_event:
            with self._event(CBEventType.RETRIEVE, query_bundle) as retrieve_event:
                nodes = self.retrieve(query_bundle)
                retrieve_event.on_end(payload={EventPayload.NODES: nodes})
            response = self._answer(query_bundle, nodes)
            query_event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        with self._event(CBEventType.QUERY, query_bundle) as query_event:
            with self._event(CBEventType.RETRIEVE, query_bundle) as retrieve_event:
                nodes = await self.aretrieve(query_bundle)
                retrieve_event.on_end(payload={EventPayload.NODES: nodes})
            response = await self._aanswer(query_bundle, nodes)
            query_event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    def _answer(self, query_bundle: QueryBundle, nodes: List[NodeWithScore]) -> Response:
        if not nodes:
            return self._cited(nodes, EMPTY_RESPONSE, None)
        question, docs = query_bundle.query_str, to_documents(nodes, self._metadata_mode)
        att = self._loader.get()
        if self.uses_local_model:
            generated = att.generate(
                question, docs, granularity=self._granularity, max_new_tokens=self._max_new_tokens
            )
            return self._cited(nodes, generated.answer, generated)
        answer = _text(self._synthesizer.synthesize(query=query_bundle, nodes=nodes))
        if answer.strip() in ("", EMPTY_RESPONSE):
            return self._cited(nodes, answer, None)
        return self._cited(nodes, answer, att.attribute(question, docs, answer, granularity=self._granularity))

    async def _aanswer(self, query_bundle: QueryBundle, nodes: List[NodeWithScore]) -> Response:
        if not nodes:
            return self._cited(nodes, EMPTY_RESPONSE, None)
        question, docs = query_bundle.query_str, to_documents(nodes, self._metadata_mode)
        att = await self._loader.aget()
        if self.uses_local_model:
            generated = await att.agenerate(
                question, docs, granularity=self._granularity, max_new_tokens=self._max_new_tokens
            )
            return self._cited(nodes, generated.answer, generated)
        answer = _text(await self._synthesizer.asynthesize(query=query_bundle, nodes=nodes))
        if answer.strip() in ("", EMPTY_RESPONSE):
            return self._cited(nodes, answer, None)
        attribution = await att.aattribute(question, docs, answer, granularity=self._granularity)
        return self._cited(nodes, answer, attribution)

    def _cited(self, nodes: List[NodeWithScore], answer: str, attribution: Optional[Attribution]) -> Response:
        """The response: answer with attribution markers, annotated source nodes, citations."""
        if attribution is None:
            sources = [annotate(n, None) for n in nodes]
            return Response(answer, sources, _metadata(answer, [], None))
        citations = cite(attribution, KeepPolicy(top_k=self._max_sources, relative=self._relative, min_keep=0))
        scores, n_scored = attribution.document_scores().tolist(), len(attribution.prompt.documents)
        sources = [annotate(n, scores[i] if i < n_scored else None) for i, n in enumerate(nodes)]
        metadata = _metadata(answer, [c.to_dict() for c in citations], attribution)
        return Response(with_markers(answer, citations), sources, metadata)


def _text(response: RESPONSE_TYPE) -> str:
    """The full answer text of a synthesizer's response (streaming cannot be attributed)."""
    if not isinstance(response, Response):
        raise TypeError(
            f"the response synthesizer returned a {type(response).__name__}; AT2 attributes whole "
            "answers, so use a non-streaming synthesizer without output_cls"
        )
    return response.response or ""


def _metadata(answer: str, citations: List[Dict[str, Any]], attribution: Optional[Attribution]) -> Dict[str, Any]:
    return {
        "answer": answer,
        "citations": citations,
        "attribution_method": None if attribution is None else attribution.method,
        "extra_forward_passes": 0 if attribution is None else attribution.extra_forward_passes,
    }
