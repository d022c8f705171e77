"""Order safety, ranks from node scores or metadata, node.score as a calibrated chance, one shared model."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytest
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.at2 import AT2LLM, AT2Postprocessor

from at2_rag import AT2Attributor, KeepPolicy, Pruner

QUESTION = QueryBundle("In which city was Marie Curie born?")
CURIE = "Marie Curie was born in Warsaw, Poland, in 1867."
OTHERS = [
    "The Amazon river flows through Brazil, Peru and Colombia into the Atlantic Ocean.",
    "The Eiffel Tower was completed in 1889.",
    "Mount Everest is the highest mountain on Earth.",
]
RANKS = {CURIE: 0, **{t: 1 + i for i, t in enumerate(OTHERS)}}
SIMILARITIES = {CURIE: 0.81, OTHERS[0]: 0.22, OTHERS[1]: 0.35, OTHERS[2]: 0.18}


def placed(position: int, scores: Optional[Dict[str, float]] = None, ranks: bool = False,
           equal: bool = False) -> List[NodeWithScore]:
    """The four nodes with the Curie one at ``position``, scored by ``scores``, all 0.5 (``equal``) or not at all."""
    texts = list(OTHERS)
    texts.insert(position, CURIE)
    return [NodeWithScore(node=TextNode(id_=f"n{i}", text=t, metadata={"retrieval_rank": RANKS[t]} if ranks else {}),
                          score=0.5 if equal else None if scores is None else scores[t])
            for i, t in enumerate(texts)]


def test_a_relevance_threshold_needs_a_calibrated_mode():
    with pytest.raises(ValueError, match="calibrated 0-1 relevance"):
        AT2Postprocessor(mode="draft", threshold=0.5)
    with pytest.raises(ValueError, match="calibrated 0-1 relevance"):
        AT2Postprocessor(sentence_level=True, threshold=0.5)


@pytest.mark.slow
def test_the_relevant_node_is_kept_at_every_position_with_and_without_ranks(attributor):
    pp = AT2Postprocessor(attributor=attributor)
    for position in range(4):
        for kwargs, source in (({}, "none"), ({"equal": True}, "none"), ({"ranks": True}, "retrieval_rank"),
                               ({"scores": SIMILARITIES}, "retrieval_score")):
            (kept,) = pp.postprocess_nodes(placed(position, **kwargs), QUESTION)
            assert kept.node.get_content() == CURIE and kept.node_id == f"n{position}", (position, source)
            assert kept.node.metadata["rank_source"] == source
            assert 0.5 < kept.score < 1.0


@pytest.mark.slow
def test_similarity_postprocessor_after_at2_is_a_probability_cut_off(attributor):
    nodes = placed(2, SIMILARITIES)
    scored = AT2Postprocessor(attributor=attributor, top_n=4).postprocess_nodes(nodes, QUESTION)
    assert all(0.0 < n.score < 1.0 for n in scored) and sum(n.score for n in scored) == pytest.approx(1.0)
    core = Pruner(attributor).prune(QUESTION.query_str, [{"text": n.node.get_content(), "metadata": {
        "retrieval_rank": r}} for n, r in zip(nodes, [2, 1, 0, 3])])  # the ranks of the nodes' scores
    assert [n.score for n in sorted(scored, key=lambda n: n.node_id)] == pytest.approx(core.relevance, abs=1e-6)
    # The kept node always passes a cut-off of 0: its score is a chance, never negative.
    (best,) = AT2Postprocessor(attributor=attributor).postprocess_nodes(nodes, QUESTION)
    assert SimilarityPostprocessor(similarity_cutoff=0.0).postprocess_nodes([best], QUESTION) == [best]
    for cutoff in (0.0, 0.5, 0.99):
        after = SimilarityPostprocessor(similarity_cutoff=cutoff).postprocess_nodes(scored, QUESTION)
        assert [n.node_id for n in after] == [n.node_id for n in scored if n.score >= cutoff]
        own = AT2Postprocessor(attributor=attributor, policy=KeepPolicy(threshold=cutoff, top_k=4, min_keep=0))
        assert [n.node_id for n in own.postprocess_nodes(nodes, QUESTION)] == [n.node_id for n in after]
    half = SimilarityPostprocessor(similarity_cutoff=0.5).postprocess_nodes(scored, QUESTION)
    assert [n.node.get_content() for n in half] == [CURIE]


def test_postprocessors_and_the_llm_load_one_model(monkeypatch, attributor):
    loads: List[Dict[str, Any]] = []

    def load(*args: Any, **kwargs: Any) -> AT2Attributor:
        loads.append(kwargs)
        return AT2Attributor(attributor.model, attributor.tokenizer, kwargs.get("estimator", "default"))

    monkeypatch.setattr(AT2Attributor, "from_pretrained", staticmethod(load))
    first, second = AT2Postprocessor(), AT2Postprocessor(mode="query", overflow="drop_last")
    llm = AT2LLM(max_new_tokens=4)
    models = {id(a.model) for a in (first.attributor_loader.get(), second.attributor_loader.get(),
                                    llm.attributor_loader.get())}
    assert len(loads) == 1 and len(models) == 1
    assert second.attributor_loader.get().overflow == "drop_last"
