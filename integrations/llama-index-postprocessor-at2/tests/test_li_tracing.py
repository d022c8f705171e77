"""Tracing: AT2Postprocessor emits LlamaIndex's rerank instrumentation events and RERANKING callback events."""

from __future__ import annotations

import asyncio
from typing import Any, List

import pytest
from li_support import QUESTION, FixedLLM
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.postprocessor.at2 import AT2Postprocessor

from at2_rag import KeepPolicy


class Recorder(BaseEventHandler):
    """Keeps every instrumentation event it is sent."""

    events: List[BaseEvent] = []

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)

    def reranks(self) -> List[BaseEvent]:
        return [e for e in self.events if isinstance(e, (ReRankStartEvent, ReRankEndEvent))]


@pytest.fixture
def recorder():
    """A recorder on the root dispatcher (every dispatcher's events reach it), removed afterwards."""
    root = get_dispatcher()
    handler, spans = Recorder(events=[]), SimpleSpanHandler()
    root.add_event_handler(handler)
    root.add_span_handler(spans)
    yield handler, spans
    root.event_handlers.remove(handler)
    root.span_handlers.remove(spans)


@pytest.mark.parametrize("run", ["sync", "async"])
def test_rerank_start_and_end_events_reach_the_root_dispatcher(recorder, attributor, nodes, query, run):
    handler, spans = recorder
    pp = AT2Postprocessor(attributor=attributor, mode="query", top_n=2)
    out = pp.postprocess_nodes(nodes, query) if run == "sync" else asyncio.run(pp.apostprocess_nodes(nodes, query))
    start, end = handler.reranks()
    assert isinstance(start, ReRankStartEvent) and isinstance(end, ReRankEndEvent)
    assert start.query.query_str == QUESTION and start.top_n == 2
    assert [n.node_id for n in start.nodes] == [n.node_id for n in nodes]
    assert "SmolLM2-135M-Instruct" in start.model_name
    assert [n.node_id for n in end.nodes] == [n.node_id for n in out] and len(out) == 2
    # Both events belong to the postprocessor's span, as with LlamaIndex's own rerankers.
    assert start.span_id == end.span_id and start.span_id.startswith("AT2Postprocessor._")
    assert any(s.id_ == start.span_id for s in spans.completed_spans)


def test_events_without_nodes_and_without_a_limit(recorder, query):
    handler, _ = recorder
    assert AT2Postprocessor().postprocess_nodes([], query) == []
    assert AT2Postprocessor(policy=KeepPolicy(relative=0.5)).postprocess_nodes([], query) == []
    default_start, default_end, unlimited_start, _ = handler.reranks()
    assert default_start.nodes == [] and default_end.nodes == [] and default_start.top_n == 1  # the default
    assert unlimited_start.top_n == 0  # no limit: every node it got (none)
    assert default_start.model_name == "default"  # nothing loaded: the model field names it


def test_reranking_callback_event_carries_the_rerankers_payload(attributor, nodes, query):
    debug = LlamaDebugHandler()
    pp = AT2Postprocessor(attributor=attributor, mode="query", top_n=2, callback_manager=CallbackManager([debug]))
    out = pp.postprocess_nodes(nodes, query)
    ((start, end),) = debug.get_event_pairs(CBEventType.RERANKING)
    assert start.payload[EventPayload.TOP_K] == 2 and start.payload[EventPayload.QUERY_STR] == QUESTION
    assert "SmolLM2-135M-Instruct" in start.payload[EventPayload.MODEL_NAME]
    assert [n.node_id for n in start.payload[EventPayload.NODES]] == [n.node_id for n in nodes]
    assert [n.node_id for n in end.payload[EventPayload.NODES]] == [n.node_id for n in out]


def test_query_engine_passes_its_callback_manager_to_the_postprocessor(attributor, index):
    debug = LlamaDebugHandler()
    pp = AT2Postprocessor(attributor=attributor, mode="query", top_n=1)
    engine = RetrieverQueryEngine.from_args(index.as_retriever(similarity_top_k=4), llm=FixedLLM(answer="1889."),
                                            node_postprocessors=[pp], callback_manager=CallbackManager([debug]))
    response = engine.query(QUESTION)
    ((start, end),) = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(start.payload[EventPayload.NODES]) == 4
    assert [n.node_id for n in end.payload[EventPayload.NODES]] == [n.node_id for n in response.source_nodes]
