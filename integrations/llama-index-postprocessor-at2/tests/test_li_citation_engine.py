"""AT2CitationQueryEngine: markers placed by attribution, annotated sources, pruning, async, local model."""

from __future__ import annotations

import asyncio

import pytest
from li_support import GOLD, QUESTION, FixedLLM
from llama_index.core.schema import QueryBundle
from llama_index.postprocessor.at2 import (
    ATTRIBUTION_SCORE_KEY,
    METADATA_KEYS,
    RETRIEVAL_SCORE_KEY,
    AT2CitationQueryEngine,
    AT2Postprocessor,
)
from llama_index.postprocessor.at2.citation_engine import EMPTY_RESPONSE

ANSWER = "The Eiffel Tower was completed in 1889. Tokyo is the capital of Japan."


def label(response, node_id: str) -> str:
    """The marker that points at ``node_id``: its position in ``source_nodes``, from 1."""
    return f"[{[n.node_id for n in response.source_nodes].index(node_id) + 1}]"


@pytest.fixture(scope="module")
def api_run(attributor, index):
    """One query through an API-model stand-in over all four facts, sync and async."""
    llm = FixedLLM(answer=ANSWER)
    engine = AT2CitationQueryEngine.from_args(index, llm=llm, attributor=attributor, similarity_top_k=4)
    return llm, engine.query(QUESTION), asyncio.run(engine.aquery(QUESTION))


def test_markers_point_at_the_node_holding_each_fact(api_run):
    _, response, _ = api_run
    eiffel, tokyo = label(response, GOLD), label(response, "tokyo")
    assert response.response == f"The Eiffel Tower was completed in 1889.{eiffel} Tokyo is the capital of Japan.{tokyo}"
    first, second = response.metadata["citations"]
    assert first["text"] == "The Eiffel Tower was completed in 1889."
    assert first["sources"][0]["document_id"] == GOLD
    assert first["sources"][0]["text"].strip() == "It was completed in 1889."  # sentence-level source
    assert second["sources"][0]["document_id"] == "tokyo"
    assert response.metadata["answer"] == ANSWER
    assert response.metadata["extra_forward_passes"] == 1  # proxy attribution: one teacher-forced pass


def test_source_nodes_carry_scores_but_the_llm_never_sees_them(api_run):
    llm, response, _ = api_run
    assert len(response.source_nodes) == 4
    for n in response.source_nodes:
        assert n.node.metadata[ATTRIBUTION_SCORE_KEY] == n.score
        assert -1.0 <= n.node.metadata[RETRIEVAL_SCORE_KEY] <= 1.0  # cosine similarity from FAISS
    by_id = {n.node_id: n.score for n in response.source_nodes}
    assert by_id[GOLD] > by_id["banana"] and by_id["tokyo"] > by_id["banana"]
    (prompt,) = llm.prompts[:1]
    assert "It was completed in 1889." in prompt and "title: Eiffel Tower" in prompt
    assert not any(key in prompt for key in METADATA_KEYS) and "[1]" not in prompt


def test_async_equals_sync(api_run):
    _, response, async_response = api_run
    assert async_response.response == response.response
    assert async_response.metadata == response.metadata
    assert [(n.node_id, n.score) for n in async_response.source_nodes] == [
        (n.node_id, n.score) for n in response.source_nodes
    ]


def test_pruning_regenerates_from_the_kept_nodes_only(attributor, index):
    llm = FixedLLM(answer="The Eiffel Tower was completed in 1889.")
    pruner = AT2Postprocessor(attributor=attributor, mode="query", top_k=1)
    engine = AT2CitationQueryEngine.from_args(index, llm=llm, pruner=pruner, similarity_top_k=4)
    response = engine.query(QUESTION)
    assert [n.node_id for n in response.source_nodes] == [GOLD]
    assert response.response == "The Eiffel Tower was completed in 1889.[1]"
    (prompt,) = llm.prompts
    assert "Paris" in prompt and "Tokyo" not in prompt and "Bananas" not in prompt
    assert response.source_nodes[0].node.metadata[RETRIEVAL_SCORE_KEY] > 0.5  # the retriever's, not the pruner's


def test_local_model_answers_and_cites_with_no_extra_pass(attributor, index):
    engine = AT2CitationQueryEngine.from_args(index, attributor=attributor, similarity_top_k=2, max_new_tokens=16)
    assert engine.uses_local_model
    response = engine.query(QUESTION)
    answer = response.metadata["answer"]
    assert answer and response.metadata["extra_forward_passes"] == 0
    assert response.response.replace(label(response, GOLD), "") == answer
    cited = {s["document_id"] for c in response.metadata["citations"] for s in c["sources"]}
    assert cited == {GOLD}


def test_empty_answer_and_no_nodes_give_uncited_responses(attributor, index):
    llm = FixedLLM(answer="")
    response = AT2CitationQueryEngine.from_args(index, llm=llm, attributor=attributor).query(QUESTION)
    assert response.response == EMPTY_RESPONSE and response.metadata["citations"] == []  # LlamaIndex's word
    assert all(n.score is None for n in response.source_nodes)

    class Nothing:
        def retrieve(self, query_bundle):
            return []

    engine = AT2CitationQueryEngine(Nothing(), attributor=attributor)  # type: ignore[arg-type]
    response = engine.query(QueryBundle(QUESTION))
    assert response.response == EMPTY_RESPONSE and response.source_nodes == []
