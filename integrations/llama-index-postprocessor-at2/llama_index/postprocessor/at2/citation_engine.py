"""AT2CitationQueryEngine: answer from retrieved nodes and cite them by measured attribution.

Unlike a prompt that asks the LLM to cite, the ``[n]`` markers here come from AT2 scores: the local
model reads the same nodes and the answer, and each answer sentence is marked with the nodes whose
attention drove it. With no ``llm`` the local model answers itself (zero extra passes); with any
LlamaIndex LLM, the local model attributes that answer in one forward pass (proxy attribution).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Union

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks import CallbackManager
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.indices.base import BaseIndex
from llama_index.core.llms.llm import LLM
from llama_index.core.node_parser import SentenceSplitter, TextSplitter
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.response_synthesizers import BaseSynthesizer, get_response_synthesizer
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from llama_index.core.settings import Settings

from at2_rag import (
    CITATION_POLICY,
    AT2Attributor,
    Attribution,
    Document,
    Granularity,
    KeepPolicy,
    LazyAttributor,
    TokenStream,
    check_encodable,
    check_refine_ablations,
    keep_policy,
    with_markers,
)

from .llm import AT2LLM
from .nodes import annotate, nodes_with_text, to_documents
from .postprocessor import AT2Postprocessor

EMPTY_RESPONSE = "Empty Response"
"""LlamaIndex's answer when there is no node, or the LLM said nothing; never attributed."""
DEFAULT_CITATION_CHUNK_OVERLAP = 20
"""Overlap of citation chunks in tokens, as LlamaIndex's CitationQueryEngine (at most a quarter of a chunk here)."""
METADATA_KEYS_FILLED_AT_END = ("answer", "citations", "cited_response", "attribution_method", "extra_forward_passes")
"""``response.metadata`` keys; a streaming response holds None in each until its stream is consumed."""


class AT2CitationQueryEngine(BaseQueryEngine):
    """Retrieve, optionally prune with AT2, answer, and cite each answer sentence by attribution.

    Args:
        retriever: where the nodes come from.
        llm: the LLM that answers; None (default) lets the local model answer.
        attributor: the local model; None uses ``pruner``'s, else an :class:`AT2LLM` ``llm``'s, else
            loads the default on first use.
        pruner: an :class:`AT2Postprocessor` run after retrieval; the answer is then (re)generated
            from the kept nodes only.
        node_postprocessors: other postprocessors, run before the pruner.
        response_synthesizer: how ``llm`` is prompted (default: compact mode, LlamaIndex's QA prompt).
        granularity: citation sources, ``"sentence"`` (default) or ``"document"``.
        max_sources, relative: at most this many sources per answer sentence, each scoring at least
            ``relative`` x the sentence's best (see :func:`at2_rag.cite`); checked at construction.
        max_new_tokens: answer length when the local model answers (None: the attributor's default).
        refine_ablations: sharpen the citations with this many ablated passes of the local model
            (AT2 + N: the N top-scored sources left out one at a time; N + 1 more passes per answer,
            run before the response, or a stream's end, is complete); 0 (default): AT2 alone.
        metadata_mode: how a node is rendered for the local model (NONE: its text alone).
        streaming: ``query`` returns a ``StreamingResponse`` (``aquery``: an ``AsyncStreamingResponse``)
            whose text streams as it is generated; citations are filled in once the stream is consumed.
        citation_chunk_size, citation_chunk_overlap, text_splitter: split each retrieved node into
            chunks before answering and citing, as LlamaIndex's ``CitationQueryEngine`` does (a
            ``SentenceSplitter`` of ``citation_chunk_size`` tokens); None (default): cite whole nodes.

    Bad settings raise ``ValueError`` at construction (never a bool for a count), as the other
    components' pydantic fields do; a query with a lone surrogate raises ``at2_rag.InputError``
    before retrieval.

    The response's ``source_nodes`` keep their order, so marker ``[n]`` is ``source_nodes[n-1]``;
    each is an annotated copy scored by its attribution to the whole answer. ``response.metadata``
    holds ``answer`` (without markers), ``cited_response`` (with them), ``citations`` (per sentence,
    from :meth:`at2_rag.Citation.to_dict`; ``document`` i is ``source_nodes[i]``),
    ``attribution_method`` and ``extra_forward_passes``.
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
        refine_ablations: int = 0,
        metadata_mode: MetadataMode = MetadataMode.NONE,
        streaming: bool = False,
        citation_chunk_size: Optional[int] = None,
        citation_chunk_overlap: Optional[int] = None,
        text_splitter: Optional[TextSplitter] = None,
        callback_manager: Optional[CallbackManager] = None,
    ) -> None:
        self._refine_ablations = check_refine_ablations(refine_ablations, "refine_ablations", allow_zero=True)
        self._citation_policy = _citation_policy(max_sources, relative)
        self._max_new_tokens = _check_count(max_new_tokens, "max_new_tokens", "tokens to generate")
        self._splitter = _splitter(citation_chunk_size, citation_chunk_overlap, text_splitter)
        callback_manager = callback_manager or Settings.callback_manager
        if response_synthesizer is None and llm is not None:
            response_synthesizer = get_response_synthesizer(
                llm=llm, callback_manager=callback_manager, streaming=streaming
            )
        if attributor is not None:
            self._loader = LazyAttributor(attributor)
        elif pruner is not None:
            self._loader = pruner.attributor_loader
        elif isinstance(llm, AT2LLM):
            self._loader = llm.attributor_loader
        else:
            self._loader = LazyAttributor()
        self._retriever = retriever
        self._synthesizer = response_synthesizer
        self._postprocessors = [*(node_postprocessors or []), *([pruner] if pruner else [])]
        self._granularity = granularity
        self._metadata_mode = metadata_mode
        self._streaming = streaming
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
        """The retriever the nodes come from."""
        return self._retriever

    @property
    def uses_local_model(self) -> bool:
        """Whether the local model writes the answer (no ``llm`` or synthesizer was given)."""
        return self._synthesizer is None

    @property
    def streaming(self) -> bool:
        """Whether queries return streaming responses."""
        return self._streaming

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

    def citation_nodes(self, nodes: List[NodeWithScore]) -> List[NodeWithScore]:
        """The nodes split into citation chunks ``"<node id>#k"`` (with ``citation_chunk_size``), else as they are."""
        # A node that fits one chunk is kept as it is; chunks keep the node's metadata and score, and
        # drop its character offsets (they described the whole node).
        if self._splitter is None:
            return nodes
        out = []
        for node in nodes:
            chunks = self._splitter.split_text(node.node.get_content(metadata_mode=MetadataMode.NONE))
            if len(chunks) <= 1:
                out.append(node)
                continue
            for k, chunk in enumerate(chunks, 1):
                update = {"id_": f"{node.node.node_id}#{k}", "start_char_idx": None, "end_char_idx": None}
                copy = node.node.model_copy(deep=True, update=update)
                copy.set_content(chunk)
                out.append(NodeWithScore(node=copy, score=node.score))
        return out

    # -- querying -------------------------------------------------------------------------------
    def _event(self, kind: CBEventType, query_bundle: QueryBundle) -> Any:
        """A callback event for this query, as LlamaIndex's own query engines emit."""
        return self.callback_manager.event(kind, payload={EventPayload.QUERY_STR: query_bundle.query_str})

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        check_encodable(query_bundle.query_str, "the query")  # before the retriever's tokenizer sees it
        with self._event(CBEventType.QUERY, query_bundle) as query_event:
            with self._event(CBEventType.RETRIEVE, query_bundle) as retrieve_event:
                nodes = self.citation_nodes(self.retrieve(query_bundle))
                retrieve_event.on_end(payload={EventPayload.NODES: nodes})
            if self._streaming:
                response: RESPONSE_TYPE = self._stream(query_bundle, nodes)
            else:
                response = self._answer(query_bundle, nodes)
            query_event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        check_encodable(query_bundle.query_str, "the query")  # before the retriever's tokenizer sees it
        with self._event(CBEventType.QUERY, query_bundle) as query_event:
            with self._event(CBEventType.RETRIEVE, query_bundle) as retrieve_event:
                nodes = self.citation_nodes(await self.aretrieve(query_bundle))
                retrieve_event.on_end(payload={EventPayload.NODES: nodes})
            if self._streaming:
                response: RESPONSE_TYPE = await self._astream(query_bundle, nodes)
            else:
                response = await self._aanswer(query_bundle, nodes)
            query_event.on_end(payload={EventPayload.RESPONSE: response})
        return response

    def _documents(self, nodes: List[NodeWithScore]) -> List[Document]:
        return to_documents(nodes, self._metadata_mode)

    def _generate(self, att: AT2Attributor, question: str, docs: List[Document], **kwargs: Any) -> Attribution:
        """The local model's answer, attributed while it generates (and refined, when asked)."""
        return att.refined(att.generate(
            question, docs, granularity=self._granularity, max_new_tokens=self._max_new_tokens,
            keep_features=True, **kwargs
        ), self._refine_ablations)

    def _answer(self, query_bundle: QueryBundle, nodes: List[NodeWithScore]) -> Response:
        if not nodes:
            return self._cited(nodes, EMPTY_RESPONSE, None)
        question, docs = query_bundle.query_str, self._documents(nodes)
        att = self._loader.get()
        if self.uses_local_model:
            generated = self._generate(att, question, docs)
            return self._cited(nodes, generated.answer, generated)
        answer = _text(self._synthesizer.synthesize(query=query_bundle, nodes=nodes))
        return self._cited(nodes, answer, self._attribute(att, question, docs, answer))

    async def _aanswer(self, query_bundle: QueryBundle, nodes: List[NodeWithScore]) -> Response:
        if not nodes:
            return self._cited(nodes, EMPTY_RESPONSE, None)
        question, docs = query_bundle.query_str, self._documents(nodes)
        att = await self._loader.aget()
        if self.uses_local_model:
            generated = await asyncio.to_thread(self._generate, att, question, docs)
            return self._cited(nodes, generated.answer, generated)
        answer = await _atext(await self._synthesizer.asynthesize(query=query_bundle, nodes=nodes))
        return self._cited(nodes, answer, await self._aattribute(att, question, docs, answer))

    def _attribute(self, att: AT2Attributor, question: str, docs: List[Document], answer: str) -> Optional[Attribution]:
        """The local model's attribution of an answer written elsewhere (None for an empty answer)."""
        if answer.strip() in ("", EMPTY_RESPONSE):
            return None
        attribution = att.attribute(question, docs, answer, granularity=self._granularity, keep_features=True)
        return att.refined(attribution, self._refine_ablations)

    async def _aattribute(
        self, att: AT2Attributor, question: str, docs: List[Document], answer: str
    ) -> Optional[Attribution]:
        """:meth:`_attribute` in a worker thread, so the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self._attribute, att, question, docs, answer)

    # -- streaming ------------------------------------------------------------------------------
    def _stream(self, query_bundle: QueryBundle, nodes: List[NodeWithScore]) -> StreamingResponse:
        """A response whose text streams as it is generated; sources and metadata are filled at its end."""
        response = StreamingResponse(None, [annotate(n, None) for n in nodes],  # type: ignore[arg-type]
                                     dict.fromkeys(METADATA_KEYS_FILLED_AT_END))
        finish = self._finisher(nodes, response)
        if not nodes:
            response.response_gen = _once(EMPTY_RESPONSE, lambda: finish(EMPTY_RESPONSE, None))
            return response
        question, docs = query_bundle.query_str, self._documents(nodes)
        att = self._loader.get()
        if self.uses_local_model:
            stream = TokenStream(att, lambda generate_kwargs: self._generate(att, question, docs, **generate_kwargs))

            def local() -> Iterator[str]:
                yield from stream.pieces()
                assert stream.result is not None
                finish(stream.result.answer, stream.result)

            response.response_gen = local()
            return response
        synthesized = self._synthesizer.synthesize(query=query_bundle, nodes=nodes)

        def proxy() -> Iterator[str]:
            answer = ""
            for piece in _pieces(synthesized):
                answer += piece
                yield piece
            finish(answer, self._attribute(att, question, docs, answer))

        response.response_gen = proxy()
        return response

    async def _astream(self, query_bundle: QueryBundle, nodes: List[NodeWithScore]) -> AsyncStreamingResponse:
        """:meth:`_stream` for ``aquery``: the model runs in a worker thread, the event loop keeps running."""
        response = AsyncStreamingResponse(None, [annotate(n, None) for n in nodes],  # type: ignore[arg-type]
                                          dict.fromkeys(METADATA_KEYS_FILLED_AT_END))
        finish = self._finisher(nodes, response)
        if not nodes:
            response.response_gen = _aonce(EMPTY_RESPONSE, lambda: finish(EMPTY_RESPONSE, None))
            return response
        question, docs = query_bundle.query_str, self._documents(nodes)
        att = await self._loader.aget()
        if self.uses_local_model:
            stream = TokenStream(att, lambda generate_kwargs: self._generate(att, question, docs, **generate_kwargs))

            async def local() -> AsyncIterator[str]:
                async for piece in stream.apieces():
                    yield piece
                assert stream.result is not None
                finish(stream.result.answer, stream.result)

            response.response_gen = local()
            return response
        synthesized = await self._synthesizer.asynthesize(query=query_bundle, nodes=nodes)

        async def proxy() -> AsyncIterator[str]:
            answer = ""
            async for piece in _apieces(synthesized):
                answer += piece
                yield piece
            finish(answer, await self._aattribute(att, question, docs, answer))

        response.response_gen = proxy()
        return response

    def _finisher(
        self, nodes: List[NodeWithScore], response: Union[StreamingResponse, AsyncStreamingResponse]
    ) -> Callable[[str, Optional[Attribution]], None]:
        """The end of a stream: fill ``source_nodes``, ``metadata`` and ``response_txt`` in place."""

        def finish(answer: str, attribution: Optional[Attribution]) -> None:
            cited = self._cited(nodes, answer, attribution)
            response.source_nodes[:] = cited.source_nodes
            assert response.metadata is not None
            response.metadata.update(cited.metadata or {})
            response.response_txt = answer

        return finish

    def _cited(self, nodes: List[NodeWithScore], answer: str, attribution: Optional[Attribution]) -> Response:
        """The response: answer with attribution markers, annotated source nodes, citations."""
        if attribution is None:
            sources = [annotate(n, None) for n in nodes]
            return Response(answer, sources, _metadata(answer, answer, [], None))
        # Clause by clause from the per-token scores (the attribution kept them for this), then dropped.
        attribution, citations = self._loader.get().cited(attribution, self._citation_policy)
        scores, n_scored = attribution.document_scores().tolist(), len(attribution.prompt.documents)
        sources = [annotate(n, scores[i] if i < n_scored else None) for i, n in enumerate(nodes)]
        cited = with_markers(answer, citations)
        return Response(cited, sources, _metadata(answer, cited, [c.to_dict() for c in citations], attribution))


def _splitter(chunk_size: Optional[int], chunk_overlap: Optional[int], splitter: Optional[TextSplitter]) -> Optional[TextSplitter]:
    """The citation splitter: ``splitter``, else a SentenceSplitter of ``chunk_size`` tokens, else None."""
    if splitter is not None:
        return splitter
    if chunk_size is None:
        if chunk_overlap is not None:
            raise ValueError("citation_chunk_overlap needs citation_chunk_size")
        return None
    _check_count(chunk_size, "citation_chunk_size", "tokens per chunk")
    if chunk_overlap is None:
        chunk_overlap = min(DEFAULT_CITATION_CHUNK_OVERLAP, chunk_size // 4)
    _check_count(chunk_overlap, "citation_chunk_overlap", "tokens shared by neighbouring chunks", least=0)
    return SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)


def _check_count(value: Optional[int], name: str, unit: str, least: int = 1) -> Optional[int]:
    """``value`` when None or an int >= ``least`` (a bool is no count), else ValueError naming ``name``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        kind = "a positive int" if least == 1 else f"an int >= {least}"
        raise ValueError(f"{name} must be {kind} ({unit}) or None, got {value!r}")
    return value


def _citation_policy(max_sources: int, relative: float) -> KeepPolicy:
    """The citation policy of ``max_sources`` and ``relative``, checked as AT2CitedAnswer checks them (ValueError)."""
    if isinstance(max_sources, bool) or not isinstance(max_sources, int) or max_sources < 1:
        raise ValueError(f"max_sources must be a positive int (sources cited per sentence), got {max_sources!r}")
    if isinstance(relative, bool) or not isinstance(relative, (int, float)):
        raise ValueError(f"relative must be a number in [0, 1] (a fraction of the best score), got {relative!r}")
    return keep_policy(top_n=max_sources, relative=relative, min_keep=0, default=CITATION_POLICY)


def _text(response: RESPONSE_TYPE) -> str:
    """The full answer text of a synthesizer's response (a stream is read to its end)."""
    if isinstance(response, StreamingResponse):
        return "".join(_pieces(response))
    if not isinstance(response, Response):
        raise TypeError(
            f"the response synthesizer returned a {type(response).__name__}; AT2 attributes text "
            "answers, so use a synthesizer without output_cls"
        )
    return response.response or ""


async def _atext(response: RESPONSE_TYPE) -> str:
    """:func:`_text` for async synthesizers (an async stream is read to its end)."""
    if isinstance(response, AsyncStreamingResponse):
        return "".join([piece async for piece in _apieces(response)])
    return _text(response)


def _pieces(response: RESPONSE_TYPE) -> Iterator[str]:
    """The text of a synthesizer's response as it streams (a whole response is one piece)."""
    if isinstance(response, StreamingResponse):
        if response.response_txt is not None or response.response_gen is None:
            yield response.response_txt or ""
            return
        yield from response.response_gen
        return
    yield _text(response)


async def _apieces(response: RESPONSE_TYPE) -> AsyncIterator[str]:
    """:func:`_pieces` for async synthesizers."""
    if isinstance(response, AsyncStreamingResponse):
        async for piece in response.async_response_gen():
            yield piece
        return
    for piece in _pieces(response):
        yield piece


def _once(text: str, then: Callable[[], None]) -> Iterator[str]:
    """A stream of one piece, calling ``then`` at its end."""
    yield text
    then()


async def _aonce(text: str, then: Callable[[], None]) -> AsyncIterator[str]:
    """:func:`_once` as an async stream."""
    yield text
    then()


def _metadata(
    answer: str, cited: str, citations: List[Dict[str, Any]], attribution: Optional[Attribution]
) -> Dict[str, Any]:
    return {
        "answer": answer,
        "cited_response": cited,
        "citations": citations,
        "attribution_method": None if attribution is None else attribution.method,
        "extra_forward_passes": 0 if attribution is None else attribution.extra_forward_passes,
    }
