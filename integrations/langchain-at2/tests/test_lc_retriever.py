"""AT2PruningRetriever: LangChain's standard retriever tests, compression wrappers and callbacks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline, EmbeddingsFilter
from langchain_core.callbacks import BaseCallbackHandler
from langchain_tests.integration_tests import RetrieversIntegrationTests
from lc_support import GOLD, QUESTION

from langchain_at2 import AT2DocumentCompressor, AT2PruningRetriever


class TestLcAT2PruningRetrieverStandard(RetrieversIntegrationTests):
    """The standard suite every LangChain retriever integration passes."""

    @pytest.fixture(autouse=True)
    def _parts(self, attributor, base_retriever) -> None:
        self._params = {
            "base_retriever": base_retriever,
            "compressor": AT2DocumentCompressor(attributor=attributor, mode="query"),
        }

    @property
    def retriever_constructor(self) -> type[AT2PruningRetriever]:
        return AT2PruningRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return self._params

    @property
    def retriever_query_example(self) -> str:
        return QUESTION


class Recorder(BaseCallbackHandler):
    """Records retriever runs and their parents."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, Any, Any]] = []

    def on_retriever_start(self, serialized, query, *, run_id, parent_run_id=None, **kwargs):
        self.starts.append((kwargs.get("name"), run_id, parent_run_id))


def test_pruning_retriever_keeps_gold_and_nests_the_base_retriever_run(attributor, base_retriever):
    retriever = AT2PruningRetriever(
        base_retriever=base_retriever,
        compressor=AT2DocumentCompressor(attributor=attributor, mode="query"),
        k=2,
    )
    recorder = Recorder()
    docs = retriever.invoke(QUESTION, config={"callbacks": [recorder]})
    assert len(docs) == 2 and docs[0].id == f"id-{GOLD}"
    assert docs[0].metadata["source"] == f"doc-{GOLD}.txt" and "attribution_score" in docs[0].metadata
    (outer_name, outer_id, outer_parent), (_, _, inner_parent) = recorder.starts
    assert outer_name == "AT2PruningRetriever" and outer_parent is None and inner_parent == outer_id
    assert asyncio.run(retriever.ainvoke(QUESTION, k=1)) == retriever.invoke(QUESTION, k=1) == docs[:1]


def test_inside_contextual_compression_retriever(attributor, base_retriever):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", top_k=1)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base_retriever)
    docs = retriever.invoke(QUESTION)
    assert [d.id for d in docs] == [f"id-{GOLD}"]
    assert docs[0].metadata["relevance_score"] > 0
    assert asyncio.run(retriever.ainvoke(QUESTION)) == docs


def test_inside_document_compressor_pipeline(attributor, embeddings, docs):
    pipeline = DocumentCompressorPipeline(
        transformers=[
            EmbeddingsFilter(embeddings=embeddings, k=3),
            AT2DocumentCompressor(attributor=attributor, mode="query", top_k=1),
        ]
    )
    out = pipeline.compress_documents(docs, QUESTION)  # (the embeddings filter drops ids)
    assert [d.page_content for d in out] == [docs[GOLD].page_content]
    assert out[0].metadata["rank"] == GOLD and "attribution_score" in out[0].metadata
    assert asyncio.run(pipeline.acompress_documents(docs, QUESTION)) == out
