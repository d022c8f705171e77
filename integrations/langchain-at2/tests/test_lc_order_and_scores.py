"""Order safety, ranks from metadata, calibrated relevance_score and one shared model, in LangChain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ValidationError

from at2_rag import AT2Attributor, KeepPolicy, Pruner
from langchain_at2 import AT2ChatModel, AT2DocumentCompressor
from langchain_at2.documents import score_ranks

QUESTION = "In which city was Marie Curie born?"
CURIE = "Marie Curie was born in Warsaw, Poland, in 1867."
OTHERS = [
    "The Amazon river flows through Brazil, Peru and Colombia into the Atlantic Ocean.",
    "The Eiffel Tower was completed in 1889.",
    "Mount Everest is the highest mountain on Earth.",
]


def placed(position: int, **metadata_of: Any) -> list[Document]:
    """The four documents with the Curie one at ``position``; ``metadata_of[key]`` maps text → value."""
    texts = list(OTHERS)
    texts.insert(position, CURIE)
    return [Document(page_content=t, id=f"doc-{i}", metadata={k: v[t] for k, v in metadata_of.items()})
            for i, t in enumerate(texts)]


RANKS = {CURIE: 0, **{t: 1 + i for i, t in enumerate(OTHERS)}}
"""The retriever ranked the Curie document first."""
SIMILARITIES = {CURIE: 0.81, OTHERS[0]: 0.22, OTHERS[1]: 0.35, OTHERS[2]: 0.18}


class MinRelevance(BaseDocumentCompressor):
    """A follower in the style of FlashrankRerank's ``score_threshold``: keeps ``relevance_score >= cutoff``."""

    cutoff: float

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        return [d for d in documents if d.metadata["relevance_score"] >= self.cutoff]


def test_ranks_come_from_distinct_scores_under_the_known_keys_only():
    docs = placed(2, relevance_score=SIMILARITIES)
    assert score_ranks(docs, ("relevance_score",)) == ([2, 1, 0, 3], "relevance_score")
    assert score_ranks(placed(2, similarity_score=SIMILARITIES), ("relevance_score", "similarity_score"))[1] == (
        "similarity_score")
    tied = placed(2, relevance_score={**SIMILARITIES, OTHERS[0]: 0.81})
    assert score_ranks(tied, ("relevance_score",)) == (None, None)  # a tie says nothing certain about order
    assert score_ranks(placed(2, score=SIMILARITIES), ("relevance_score", "similarity_score")) == (None, None)
    both = placed(2, retrieval_rank=RANKS, relevance_score=SIMILARITIES)
    assert score_ranks(both, ("relevance_score",)) == (None, None)  # retrieval_rank wins (the core reads it)
    missing = placed(2, relevance_score=SIMILARITIES)
    missing[0].metadata.pop("relevance_score")
    assert score_ranks(missing, ("relevance_score",)) == (None, None)


def test_a_relevance_threshold_needs_a_calibrated_mode():
    with pytest.raises(ValidationError, match="calibrated 0-1 relevance"):
        AT2DocumentCompressor(mode="draft", threshold=0.5)
    with pytest.raises(ValidationError, match="calibrated 0-1 relevance"):
        AT2DocumentCompressor(sentence_level=True, threshold=0.5)


@pytest.mark.slow
def test_the_relevant_document_is_kept_at_every_position_with_and_without_ranks(attributor):
    compressor = AT2DocumentCompressor(attributor=attributor)
    for position in range(4):
        for metadata, source in (({}, "none"), ({"retrieval_rank": RANKS}, "retrieval_rank"),
                                 ({"relevance_score": SIMILARITIES}, "relevance_score")):
            docs = placed(position, **metadata)
            (kept,) = compressor.compress_documents(docs, QUESTION)
            assert kept.page_content == CURIE and kept.id == f"doc-{position}", (position, source)
            assert kept.metadata["rank_source"] == source
            assert kept.metadata.get("retrieval_rank", 0) == 0  # the input metadata survives
            assert 0.5 < kept.metadata["relevance_score"] < 1.0
    # The example: ranks [3, 2, 1, 0] in metadata, Curie last.
    docs = placed(3, retrieval_rank={t: r for t, r in zip([*OTHERS, CURIE], [3, 2, 1, 0])})
    assert compressor.compress_documents(docs, QUESTION)[0].page_content == CURIE


@pytest.mark.slow
def test_relevance_score_composes_with_a_threshold_follower(attributor):
    docs = placed(1)
    scored = AT2DocumentCompressor(attributor=attributor, top_n=4).compress_documents(docs, QUESTION)
    chances = {d.id: d.metadata["relevance_score"] for d in scored}
    assert all(0.0 < p < 1.0 for p in chances.values()) and sum(chances.values()) == pytest.approx(1.0)
    core = Pruner(attributor).prune(QUESTION, [d.page_content for d in docs])
    assert [chances[f"doc-{i}"] for i in range(4)] == pytest.approx(core.relevance, abs=1e-6)
    for cutoff in (0.0, 0.5, 0.99):
        pipeline = DocumentCompressorPipeline(transformers=[
            AT2DocumentCompressor(attributor=attributor, top_n=4), MinRelevance(cutoff=cutoff)])
        out = pipeline.compress_documents(docs, QUESTION)
        assert [d.id for d in out] == [d.id for d in scored if d.metadata["relevance_score"] >= cutoff]
        # The compressor's own threshold is the same cut-off (min_keep=0: nothing is forced through).
        own = AT2DocumentCompressor(attributor=attributor, policy=KeepPolicy(threshold=cutoff, top_k=4, min_keep=0))
        assert [d.id for d in own.compress_documents(docs, QUESTION)] == [d.id for d in out]
    assert [d.id for d in pipeline.compress_documents(docs, QUESTION)] == []  # nothing is 99% sure here


def test_a_compressor_and_a_chat_model_load_one_model(monkeypatch, attributor):
    loads = []

    def load(*args: Any, **kwargs: Any) -> AT2Attributor:
        loads.append(kwargs)
        return AT2Attributor(attributor.model, attributor.tokenizer, kwargs.get("estimator", "default"),
                             overflow=kwargs.get("overflow", "error"))

    monkeypatch.setattr(AT2Attributor, "from_pretrained", staticmethod(load))
    compressor, other = AT2DocumentCompressor(), AT2DocumentCompressor(mode="query", overflow="drop_last")
    chat = AT2ChatModel(max_new_tokens=4)
    assert compressor.get_attributor().model is chat.get_attributor().model is other.get_attributor().model
    assert len(loads) == 1
    assert other.get_attributor().overflow == "drop_last" and compressor.get_attributor().overflow == "error"
