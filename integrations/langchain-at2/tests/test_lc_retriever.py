"""AT2PruningRetriever: LangChain's standard retriever tests, compression wrappers and callbacks."""

from __future__ import annotations

import asyncio
import re
import warnings
from typing import Any

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline, EmbeddingsFilter
from langchain_core._api import LangChainDeprecationWarning
from langchain_core.callbacks import BaseCallbackHandler
from langchain_tests.integration_tests import RetrieversIntegrationTests
from lc_support import GOLD, QUESTION, TEXTS
from pydantic import ValidationError

from at2_rag import SENTENCE_POLICY, KeepPolicy, keep_policy
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

    @property
    def num_results_arg_name(self) -> str:
        return "top_n"  # the rerankers' name (FlashrankRerank, CohereRerank); `k` is a deprecated alias


class Recorder(BaseCallbackHandler):
    """Records retriever and chain runs, and their parents."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, Any, Any]] = []

    def on_retriever_start(self, serialized, query, *, run_id, parent_run_id=None, **kwargs):
        self.starts.append((kwargs.get("name"), run_id, parent_run_id))

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs):
        self.starts.append((kwargs.get("name"), run_id, parent_run_id))


def test_pruning_retriever_keeps_gold_and_nests_the_base_retriever_and_at2_runs(attributor, base_retriever):
    retriever = AT2PruningRetriever(
        base_retriever=base_retriever,
        compressor=AT2DocumentCompressor(attributor=attributor, mode="query"),
        top_n=2,
    )
    recorder = Recorder()
    docs = retriever.invoke(QUESTION, config={"callbacks": [recorder]})
    assert len(docs) == 2 and docs[0].id == f"id-{GOLD}"
    assert docs[0].metadata["source"] == f"doc-{GOLD}.txt" and "attribution_score" in docs[0].metadata
    (outer_name, outer_id, outer_parent), (_, _, inner_parent), (prune, _, prune_parent) = recorder.starts
    assert outer_name == "AT2PruningRetriever" and outer_parent is None and inner_parent == outer_id
    assert prune == "at2_prune" and prune_parent == outer_id
    assert asyncio.run(retriever.ainvoke(QUESTION, top_n=1)) == retriever.invoke(QUESTION, top_n=1) == docs[:1]


def test_k_is_a_deprecated_alias_of_top_n(attributor, base_retriever):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query")
    with pytest.warns(LangChainDeprecationWarning, match="use `top_n`"):
        old = AT2PruningRetriever(base_retriever=base_retriever, compressor=compressor, k=2)
    new = AT2PruningRetriever(base_retriever=base_retriever, compressor=compressor, top_n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the field was warned about once, at construction
        assert old.invoke(QUESTION) == new.invoke(QUESTION) and len(new.invoke(QUESTION)) == 2
    with pytest.warns(LangChainDeprecationWarning, match="invoke"):
        assert new.invoke(QUESTION, k=1) == new.invoke(QUESTION, top_n=1)
    with pytest.warns(LangChainDeprecationWarning), pytest.raises(ValidationError, match="same limit"):
        AT2PruningRetriever(base_retriever=base_retriever, compressor=compressor, top_n=1, k=2)


def test_top_n_zero_is_rejected_with_the_core_message(base_retriever):
    with pytest.raises(ValueError) as core:
        keep_policy(top_n=0)
    message = re.escape(str(core.value))
    with pytest.raises(ValidationError, match=message):
        AT2PruningRetriever(base_retriever=base_retriever, top_n=0)
    with pytest.raises(ValidationError, match=message):
        AT2DocumentCompressor(top_n=0)
    retriever = AT2PruningRetriever(base_retriever=base_retriever)
    with pytest.raises(ValueError, match=message):
        retriever.invoke(QUESTION, top_n=0)
    assert not retriever.compressor.attributor_loaded


def test_compressor_settings_can_be_given_to_the_retriever(attributor, base_retriever):
    retriever = AT2PruningRetriever(
        base_retriever=base_retriever, attributor=attributor, mode="query", top_n=1, sentence_level=True, dtype="float32"
    )
    compressor = retriever.compressor
    assert compressor.mode == "query" and compressor.dtype == "float32" and compressor.get_attributor() is attributor
    assert compressor.resolved_sentence_policy() == SENTENCE_POLICY
    (doc,) = retriever.invoke(QUESTION)
    assert doc.id == f"id-{GOLD}" and doc.metadata["attribution_spans"]  # sentence-level pruning is on
    assert all(TEXTS[GOLD][start:end] in doc.page_content for start, end in doc.metadata["attribution_spans"])
    policy = KeepPolicy(top_k=2)
    assert AT2PruningRetriever(base_retriever=base_retriever, policy=policy).compressor.resolved_policy() is policy
    with pytest.raises(ValidationError, match="not both"):
        AT2PruningRetriever(base_retriever=base_retriever, compressor=compressor, mode="draft")
    for bad in ({"top_x": 1}, {"mode": "other"}, {"relative": 2.0}):
        with pytest.raises(ValidationError):
            AT2PruningRetriever(base_retriever=base_retriever, **bad)


def test_inside_contextual_compression_retriever(attributor, base_retriever):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", top_n=1)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base_retriever)
    recorder = Recorder()
    docs = retriever.invoke(QUESTION, config={"callbacks": [recorder]})
    assert [d.id for d in docs] == [f"id-{GOLD}"]
    assert 0.5 < docs[0].metadata["relevance_score"] <= 1.0 and docs[0].metadata["keep_score"] > 0
    assert docs[0].metadata["rank_source"] == "none"  # a vector store retriever puts no score in metadata
    assert asyncio.run(retriever.ainvoke(QUESTION)) == docs
    (outer, outer_id, _), *_, (prune, _, prune_parent) = recorder.starts
    assert outer == "ContextualCompressionRetriever" and prune == "at2_prune" and prune_parent == outer_id


def test_inside_document_compressor_pipeline(attributor, embeddings, docs):
    pipeline = DocumentCompressorPipeline(
        transformers=[
            EmbeddingsFilter(embeddings=embeddings, k=3),
            AT2DocumentCompressor(attributor=attributor, mode="query", top_k=1),  # top_k: alias of top_n
        ]
    )
    out = pipeline.compress_documents(docs, QUESTION)  # (the embeddings filter drops ids)
    assert [d.page_content for d in out] == [docs[GOLD].page_content]
    assert out[0].metadata["rank"] == GOLD and "attribution_score" in out[0].metadata
    assert asyncio.run(pipeline.acompress_documents(docs, QUESTION)) == out
