"""Rank fusion only with a known rank: any document order is safe, and the result says where the rank came from."""

from __future__ import annotations

import math

import pytest

from at2_rag import Document, InputError, KeepPolicy, Pruner, fused_scores
from at2_rag.ranking import known_ranks, standardized

QUESTION = "In which city was Marie Curie born?"
CURIE = "Marie Curie was born in Warsaw, Poland, in 1867."
OTHERS = [
    "The Amazon river flows through Brazil, Peru and Colombia into the Atlantic Ocean.",
    "The Eiffel Tower was completed in 1889.",
    "Mount Everest is the highest mountain on Earth.",
]


def placed(position: int) -> list[str]:
    """The four documents with the Curie one at ``position``."""
    texts = list(OTHERS)
    texts.insert(position, CURIE)
    return texts


def test_known_ranks_come_from_metadata_then_a_declared_order_else_none():
    docs = [Document(text=t) for t in ("a", "b", "c")]
    assert known_ranks(docs) == (None, "none")
    assert known_ranks(docs, "retriever") == ([0, 1, 2], "input order")
    ranked = [Document(text=t, metadata={"retrieval_rank": r}) for t, r in (("a", 2), ("b", 0), ("c", 1))]
    assert known_ranks(ranked, "retriever") == ([2, 0, 1], "metadata")  # metadata wins over a declared order
    partial = ranked[:2] + [Document(text="c")]
    assert known_ranks(partial) == (None, "none")  # every document needs one


def test_bad_input_order_is_one_line(attributor):
    with pytest.raises(InputError, match="input_order must be 'unknown' or 'retriever'"):
        Pruner(attributor, input_order="sorted")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="threshold_scale must be 'keep' or 'relevance'"):
        Pruner(attributor, threshold_scale="probability")  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_relevant_document_is_kept_at_every_position_with_and_without_ranks(attributor):
    for position in range(4):
        texts = placed(position)
        unranked = Pruner(attributor).prune(QUESTION, texts)
        assert unranked.kept == [position], (position, unranked.scores)
        assert unranked.rank_source == "none" and unranked.keep_scores == unranked.scores
        # The retriever ranked the Curie document first, the others after it in their order.
        ranks = [0 if t == CURIE else 1 + OTHERS.index(t) for t in texts]
        docs = [{"text": t, "metadata": {"retrieval_rank": r}} for t, r in zip(texts, ranks)]
        ranked = Pruner(attributor).prune(QUESTION, docs)
        assert ranked.kept == [position] and ranked.rank_source == "metadata"
        weight = attributor.query_estimator("default-support").rank_weight
        assert ranked.keep_scores == pytest.approx(fused_scores(ranked.scores, weight, ranks))
        assert ranked.scores == pytest.approx(unranked.scores, abs=1e-7)  # the rank changes the keep score only


@pytest.mark.slow
def test_a_declared_retriever_order_fuses_the_positions(attributor):
    texts = placed(3)
    declared = Pruner(attributor, input_order="retriever").prune(QUESTION, texts)
    assert declared.rank_source == "input order"
    weight = attributor.query_estimator("default-support").rank_weight
    assert declared.keep_scores == pytest.approx(
        [z - weight * math.log1p(i) for i, z in enumerate(standardized(declared.scores))])
    # A rank weight of 0 uses no rank at all, whatever is declared.
    alone = Pruner(attributor, input_order="retriever", rank_weight=0).prune(QUESTION, texts)
    assert alone.rank_source == "none" and alone.kept == [3]
    # Draft and query modes fuse nothing by default.
    assert Pruner(attributor, mode="query", input_order="retriever").prune(QUESTION, texts).rank_source == "none"


def test_threshold_scores_replace_the_scores_for_the_threshold_only():
    policy = KeepPolicy(threshold=0.5, top_k=3, min_keep=0)
    scores, chances = [3.0, 1.0, 2.0], [0.6, 0.1, 0.3]
    assert policy.select(scores) == [0, 2, 1]  # all at least 0.5 in score units
    assert policy.select(scores, threshold_scores=chances) == [0]
    assert KeepPolicy(threshold=0.25, min_keep=0).select(scores, threshold_scores=chances) == [0, 2]
    with pytest.raises(ValueError, match="one value per document"):
        policy.select(scores, threshold_scores=[0.5])
