"""AT2CitationQueryEngine: markers placed by attribution, annotated sources, pruning, async, local model."""

from __future__ import annotations

import asyncio
import re

import pytest
from li_support import GOLD, QUESTION, FixedLLM, while_ticking
from llama_index.core.base.response.schema import AsyncStreamingResponse, StreamingResponse
from llama_index.core.query_engine import CitationQueryEngine
from llama_index.core.schema import QueryBundle
from llama_index.postprocessor.at2 import (
    ATTRIBUTION_SCORE_KEY,
    METADATA_KEYS,
    RETRIEVAL_SCORE_KEY,
    AT2CitationQueryEngine,
    AT2Postprocessor,
)
from llama_index.postprocessor.at2.citation_engine import EMPTY_RESPONSE, METADATA_KEYS_FILLED_AT_END

METADATA_FILLED_AT_END = METADATA_KEYS_FILLED_AT_END

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
    pruner = AT2Postprocessor(attributor=attributor, mode="query", top_n=1)
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
    assert re.sub(r"\[\d\]", "", response.response) == answer
    cited = [s["document_id"] for c in response.metadata["citations"] for s in c["sources"]]
    # Citations go clause by clause: "The Eiffel Tower was completed in 1889," cites its fact, and the
    # answer's unfinished "while Mount Everest" clause may cite that one.
    assert GOLD in cited and set(cited) <= {GOLD, "everest"}, cited


def test_refine_ablations_sharpen_citations_in_every_path(attributor, index, api_run):
    """AT2 + 4: five more passes per answer (the 4 top sources left out, the unablated answer), the same
    through query, aquery and a stream; the scores change, the facts are still cited where they are."""
    _, plain, _ = api_run
    engine = AT2CitationQueryEngine.from_args(index, llm=FixedLLM(answer=ANSWER), attributor=attributor,
                                              similarity_top_k=4, refine_ablations=4)
    response = engine.query(QUESTION)
    assert response.metadata["attribution_method"] == plain.metadata["attribution_method"] + "+4"
    assert response.metadata["extra_forward_passes"] == plain.metadata["extra_forward_passes"] + 5
    assert [n.score for n in response.source_nodes] != [n.score for n in plain.source_nodes]
    first, second = response.metadata["citations"]
    assert first["sources"][0]["document_id"] == GOLD and second["sources"][0]["document_id"] == "tokyo"
    assert asyncio.run(engine.aquery(QUESTION)).metadata == response.metadata
    local = AT2CitationQueryEngine.from_args(index, attributor=attributor, similarity_top_k=2, max_new_tokens=16,
                                             streaming=True, refine_ablations=2)
    streamed = local.query(QUESTION)
    consume(streamed)
    assert streamed.metadata["extra_forward_passes"] == 3 and streamed.metadata["attribution_method"].endswith("+2")
    for bad in (1, -1, 2.5):
        with pytest.raises(ValueError, match="refine_ablations"):
            AT2CitationQueryEngine.from_args(index, attributor=attributor, refine_ablations=bad)


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


# -- streaming --------------------------------------------------------------------------------------
def consume(response) -> list:
    """The streamed pieces, after checking that nothing was filled in before the stream was read."""
    assert set(response.metadata) == set(METADATA_FILLED_AT_END)
    assert all(value is None for value in response.metadata.values())
    assert all(n.score is None for n in response.source_nodes)
    if isinstance(response, AsyncStreamingResponse):
        async def read():
            return [piece async for piece in response.async_response_gen()]

        return asyncio.run(read())
    return list(response.response_gen)


def test_streaming_local_model_streams_then_fills_the_citations(attributor, index):
    kwargs = {"attributor": attributor, "similarity_top_k": 2, "max_new_tokens": 16}
    plain = AT2CitationQueryEngine.from_args(index, **kwargs).query(QUESTION)
    response = AT2CitationQueryEngine.from_args(index, streaming=True, **kwargs).query(QUESTION)
    assert isinstance(response, StreamingResponse)
    order = [n.node_id for n in response.source_nodes]
    pieces = consume(response)
    assert len(pieces) >= 5  # token by token
    assert "".join(pieces) == response.metadata["answer"] == plain.metadata["answer"]
    assert response.metadata == plain.metadata and response.metadata["cited_response"] == plain.response
    assert [n.node_id for n in response.source_nodes] == order  # [n] already pointed at source_nodes[n-1]
    assert [(n.node_id, n.score) for n in response.source_nodes] == [(n.node_id, n.score) for n in plain.source_nodes]
    assert response.get_response().response == plain.metadata["answer"]  # LlamaIndex's own accessor


def test_streaming_with_an_llm_attributes_the_streamed_answer(attributor, index, api_run):
    _, plain, _ = api_run
    llm = FixedLLM(answer=ANSWER)
    engine = AT2CitationQueryEngine.from_args(index, llm=llm, attributor=attributor, similarity_top_k=4, streaming=True)
    response = engine.query(QUESTION)
    pieces = consume(response)
    assert pieces == ["The ", "Eiffel ", "Tower ", "was ", "completed ", "in ", "1889. ", "Tokyo ", "is ", "the ",
                      "capital ", "of ", "Japan."]  # the LLM's stream, passed on as it came
    assert response.metadata == plain.metadata and response.metadata["cited_response"] == plain.response
    assert [(n.node_id, n.score) for n in response.source_nodes] == [(n.node_id, n.score) for n in plain.source_nodes]

    async_response = asyncio.run(engine.aquery(QUESTION))
    assert isinstance(async_response, AsyncStreamingResponse)
    assert "".join(consume(async_response)) == ANSWER and async_response.metadata == plain.metadata


def test_async_streaming_local_model_keeps_the_loop_running(attributor, index):
    engine = AT2CitationQueryEngine.from_args(index, attributor=attributor, similarity_top_k=2, max_new_tokens=16,
                                              streaming=True)

    async def work():
        response = await engine.aquery(QUESTION)
        return [piece async for piece in response.async_response_gen()], response

    (pieces, response), ticks = asyncio.run(while_ticking(work))
    assert ticks > 2 and len(pieces) >= 5
    assert "".join(pieces) == response.metadata["answer"] and response.metadata["citations"]


def test_streaming_without_nodes_gives_an_uncited_empty_response(attributor):
    class Nothing:
        def retrieve(self, query_bundle):
            return []

    engine = AT2CitationQueryEngine(Nothing(), attributor=attributor, streaming=True)  # type: ignore[arg-type]
    response = engine.query(QueryBundle(QUESTION))
    assert consume(response) == [EMPTY_RESPONSE]
    assert response.metadata["citations"] == [] and response.metadata["cited_response"] == EMPTY_RESPONSE


# -- citation chunks --------------------------------------------------------------------------------
def test_citation_chunks_are_the_builtin_engines_chunks(attributor, index):
    chunking = {"citation_chunk_size": 8, "citation_chunk_overlap": 0}
    engine = AT2CitationQueryEngine.from_args(index, llm=FixedLLM(answer="It was completed in 1889."),
                                              attributor=attributor, similarity_top_k=4, **chunking)
    builtin = CitationQueryEngine.from_args(index, llm=FixedLLM(answer="x"), similarity_top_k=4, **chunking)
    expected = [re.sub(r"^Source \d+:\n", "", n.node.get_content()).rstrip("\n")
                for n in builtin.query(QUESTION).source_nodes]

    response = engine.query(QUESTION)
    assert [n.node.get_content() for n in response.source_nodes] == expected
    assert len(expected) > 4  # the four facts were split
    ids = [n.node_id for n in response.source_nodes]
    gold = ids.index(next(i for i, n in zip(ids, response.source_nodes) if "1889" in n.node.get_content()))
    assert ids[gold].startswith(f"{GOLD}#")
    assert response.source_nodes[gold].node.metadata["title"] == "Eiffel Tower"  # the node's metadata kept
    assert response.source_nodes[gold].node.start_char_idx is None
    assert response.metadata["citations"][0]["sources"][0]["document_id"] == ids[gold]
    assert response.response == f"It was completed in 1889.[{gold + 1}]"


def test_citation_chunk_settings(attributor, index, nodes):
    whole = AT2CitationQueryEngine.from_args(index, attributor=attributor)
    assert whole.citation_nodes(nodes) == nodes  # default: whole nodes
    big = AT2CitationQueryEngine.from_args(index, attributor=attributor, citation_chunk_size=512)
    assert big.citation_nodes(nodes) == nodes  # a node that fits one chunk is kept as it is
    with pytest.raises(ValueError, match="citation_chunk_size must be a positive int"):
        AT2CitationQueryEngine.from_args(index, attributor=attributor, citation_chunk_size=0)
    with pytest.raises(ValueError, match="needs citation_chunk_size"):
        AT2CitationQueryEngine.from_args(index, attributor=attributor, citation_chunk_overlap=5)


CURIE_NOTE = ("Marie Curie was a physicist and chemist who conducted pioneering research on radioactivity. She was "
              "born in Warsaw in 1867. She later moved to Paris to study at the University of Paris.")
EIFFEL_NOTE = "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889 for the World's Fair."
TWO_CLAIMS = "Marie Curie was born in Warsaw, Poland, but moved to Paris to study at the University of Paris."


def test_a_two_claim_sentence_cites_the_source_of_each_claim(attributor, embed_model):
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    notes = VectorStoreIndex([TextNode(id_="curie", text=CURIE_NOTE), TextNode(id_="eiffel", text=EIFFEL_NOTE)],
                             embed_model=embed_model)
    engine = AT2CitationQueryEngine.from_args(notes, llm=FixedLLM(answer=TWO_CLAIMS), attributor=attributor,
                                              similarity_top_k=2)
    response = engine.query("Where was Marie Curie born and where did she study?")
    (citation,) = response.metadata["citations"]
    cited = [s["text"].strip() for s in citation["sources"]]
    assert "She was born in Warsaw in 1867." in cited and "She later moved to Paris to study at the University of Paris." in cited
