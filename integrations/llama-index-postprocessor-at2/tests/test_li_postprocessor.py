"""AT2Postprocessor on the real default model: scores, kept nodes, metadata hygiene, errors, async."""

from __future__ import annotations

import asyncio
import threading
import warnings

import pytest
from li_support import GOLD, QUESTION, FixedLLM, make_nodes
from llama_index.core.bridge.pydantic import ValidationError
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.at2 import (
    ATTRIBUTION_SCORE_KEY,
    METADATA_KEYS,
    RETRIEVAL_SCORE_KEY,
    SPANS_KEY,
    AT2Postprocessor,
)

from at2_rag import DEFAULT_POLICY, AT2Attributor, ContextTooLongError, InputError, KeepPolicy, Pruner


def texts(nodes):
    return [n.node.get_content() for n in nodes]


@pytest.mark.parametrize("mode", ["query", "draft"])
def test_scores_equal_the_core_pruner_and_keep_the_gold_node(attributor, nodes, query, mode):
    pp = AT2Postprocessor(attributor=attributor, mode=mode, top_n=2, max_new_tokens=8)
    out = pp.postprocess_nodes(nodes, query)
    core = Pruner(attributor, mode=mode, policy=KeepPolicy(top_k=2), max_new_tokens=8).prune(QUESTION, texts(nodes))

    assert [n.node_id for n in out] == [nodes[i].node_id for i in core.kept]
    assert out[0].node_id == GOLD
    for n in out:
        i = next(k for k, m in enumerate(nodes) if m.node_id == n.node_id)
        assert n.node.metadata[ATTRIBUTION_SCORE_KEY] == pytest.approx(core.scores[i], rel=1e-6, abs=1e-9)
        assert n.score == pytest.approx(core.relevance_scores[i], abs=1e-6)  # 0-1 (min-max in draft mode)
        assert n.node.metadata[RETRIEVAL_SCORE_KEY] == nodes[i].score  # the retriever's score survives
        assert n.node.get_content() == nodes[i].node.get_content()
    assert out[0].score >= out[1].score


@pytest.fixture(scope="module")
def scored(attributor):
    """Nodes (with an excluded key of their own), a snapshot of them, and all four scored in query mode."""
    nodes = make_nodes()
    nodes[0].node.metadata["internal"] = "secret"
    nodes[0].node.excluded_llm_metadata_keys = ["internal"]
    snapshot = [(n.score, dict(n.node.metadata), list(n.node.excluded_llm_metadata_keys)) for n in nodes]
    pp = AT2Postprocessor(attributor=attributor, mode="query", top_n=4)
    return pp, nodes, snapshot, pp.postprocess_nodes(nodes, QueryBundle(QUESTION))


def test_callers_nodes_are_not_modified(scored):
    _, nodes, snapshot, out = scored
    assert [(n.score, dict(n.node.metadata), list(n.node.excluded_llm_metadata_keys)) for n in nodes] == snapshot
    assert all(a.node is not b.node for a in out for b in nodes)


def test_added_keys_never_reach_llm_or_embedding_text(scored):
    _, _, _, out = scored
    assert len(out) == 4
    for n in out:
        for mode in (MetadataMode.LLM, MetadataMode.EMBED):
            rendered = n.node.get_content(metadata_mode=mode)
            assert n.node.metadata["title"] in rendered  # the caller's metadata is still shown
            assert not any(key in rendered for key in METADATA_KEYS)
        assert set(METADATA_KEYS) <= set(n.node.excluded_embed_metadata_keys)
    gold = next(n for n in out if n.node_id == GOLD)
    assert "secret" not in gold.node.get_content(MetadataMode.LLM)  # earlier exclusions are kept


def test_second_pass_keeps_the_original_retrieval_score(scored):
    pp, nodes, _, out = scored
    twice = pp.postprocess_nodes(out, QueryBundle(QUESTION))
    original = {n.node_id: n.score for n in nodes}
    assert {n.node_id: n.node.metadata[RETRIEVAL_SCORE_KEY] for n in twice} == original
    assert [(n.node_id, n.score) for n in twice] == [(n.node_id, n.score) for n in out]


def test_async_equals_sync_and_leaves_the_event_loop_free(scored):
    pp, nodes, _, out = scored

    async def score_while_ticking():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        result = await pp.apostprocess_nodes(nodes, QueryBundle(QUESTION))
        ticker.cancel()
        return result, ticks

    asynchronous, ticks = asyncio.run(score_while_ticking())
    assert ticks > 2  # the loop kept running while the model scored in a worker thread
    assert [(n.node_id, n.score, n.node.metadata) for n in asynchronous] == [
        (n.node_id, n.score, n.node.metadata) for n in out
    ]


def test_query_engine_prompt_holds_kept_nodes_without_scores(attributor, index):
    llm = FixedLLM(answer="It was completed in 1889.")
    pp = AT2Postprocessor(attributor=attributor, mode="query", top_n=1)
    engine = index.as_query_engine(llm=llm, node_postprocessors=[pp], similarity_top_k=4)
    response = engine.query(QUESTION)

    assert [n.node_id for n in response.source_nodes] == [GOLD]
    assert response.source_nodes[0].node.metadata[RETRIEVAL_SCORE_KEY] > 0.5  # cosine similarity
    (prompt,) = llm.prompts
    assert "It was completed in 1889." in prompt and "title: Eiffel Tower" in prompt
    assert "Bananas" not in prompt and "Tokyo" not in prompt  # pruned away
    assert not any(key in prompt for key in METADATA_KEYS)

    async_response = asyncio.run(engine.aquery(QUESTION))
    assert [(n.node_id, n.score) for n in async_response.source_nodes] == [
        (n.node_id, n.score) for n in response.source_nodes
    ]


def test_empty_node_list_returns_empty_without_loading_the_model(query):
    pp = AT2Postprocessor()
    assert pp.postprocess_nodes([], query) == []
    assert asyncio.run(pp.apostprocess_nodes([], query)) == []
    assert not pp.attributor_loader.loaded


def test_model_is_loaded_once_with_the_fields(monkeypatch, attributor, nodes, query):
    calls = []

    def fake_from_pretrained(**kwargs):
        calls.append(kwargs)
        return attributor

    monkeypatch.setattr(AT2Attributor, "from_pretrained", staticmethod(fake_from_pretrained))
    pp = AT2Postprocessor(mode="query", device="cpu", overflow="drop_last")
    threads = [threading.Thread(target=pp.postprocess_nodes, args=(nodes, query)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = {"model": "default", "estimator": "default", "device": "cpu", "dtype": None, "overflow": "drop_last"}
    assert calls == [expected]
    with pytest.raises(ValidationError, match="frozen"):
        pp.device = "cuda"  # the model is loaded from these fields once; changing them later would lie


def test_missing_query_bundle_is_a_clear_error(attributor, nodes):
    with pytest.raises(ValueError, match="query_bundle"):
        AT2Postprocessor(attributor=attributor).postprocess_nodes(nodes)


def test_empty_question_is_an_input_error(attributor, nodes):
    with pytest.raises(InputError, match="question"):
        AT2Postprocessor(attributor=attributor, mode="query").postprocess_nodes(nodes, QueryBundle("  "))


def test_nodes_without_text_are_left_out(attributor, nodes, query):
    empty = NodeWithScore(node=TextNode(id_="blank", text="  \n"), score=0.99)
    pp = AT2Postprocessor(mode="query")
    with pytest.warns(UserWarning, match="no text"):
        assert pp.postprocess_nodes([empty], query) == []
    assert not pp.attributor_loader.loaded  # nothing to score, so nothing was loaded
    pp = AT2Postprocessor(attributor=attributor, mode="query", top_n=5)
    with pytest.warns(UserWarning, match="blank"):
        out = pp.postprocess_nodes([empty, *nodes], query)
    assert "blank" not in [n.node_id for n in out] and len(out) == len(nodes)


def test_over_long_context_raises_or_drops_the_last_nodes(attributor, query):
    long_text = "rain and wind along the coast " * 1800  # one ~10k-token sentence, past the 8k window
    nodes = [*make_nodes()[:2], NodeWithScore(node=TextNode(id_="long", text=long_text), score=0.1)]
    with pytest.raises(ContextTooLongError, match="window"):
        AT2Postprocessor(attributor=attributor, mode="query").postprocess_nodes(nodes, query)

    dropping = AT2Attributor(attributor.model, attributor.tokenizer, overflow="drop_last")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = AT2Postprocessor(attributor=dropping, mode="query", top_n=3).postprocess_nodes(nodes, query)
    assert any("long" in str(w.message) for w in caught)
    assert [n.node_id for n in out][0] == GOLD and "long" not in [n.node_id for n in out]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"top_n": -1}, ValueError),
        ({"top_n": 0}, ValueError),
        ({"top_k": 0}, ValueError),
        ({"relative": 2.0}, ValueError),
        ({"mode": "fast"}, ValidationError),
        ({"max_new_tokens": 0}, ValidationError),
        ({"rank_weight": float("inf")}, ValidationError),
        ({"overflow": "truncate"}, ValidationError),
    ],
)
def test_invalid_settings_fail_at_construction(kwargs, error):
    with pytest.raises(error):
        AT2Postprocessor(**kwargs)


def test_serialises_settings_but_not_the_model(attributor):
    pp = AT2Postprocessor(attributor=attributor, mode="query", top_n=2, relative=0.5,
                          sentence_policy=KeepPolicy(relative=0.25))
    data = pp.to_dict()
    assert data["class_name"] == AT2Postprocessor.class_name() == "AT2Postprocessor"
    assert (data["mode"], data["top_n"], data["relative"]) == ("query", 2, 0.5)
    assert "attributor" not in data and "_loader" not in data
    again = AT2Postprocessor.from_dict(data)
    assert again.resolved_policy() == KeepPolicy(top_k=2, relative=0.5)
    assert again.resolved_sentence_policy() == KeepPolicy(relative=0.25)
    with_policy = AT2Postprocessor.from_dict(AT2Postprocessor(policy=KeepPolicy(top_k=3, min_keep=0)).to_dict())
    assert with_policy.policy == with_policy.resolved_policy() == KeepPolicy(top_k=3, min_keep=0)


def test_sentence_level_keeps_the_core_pruners_sentences(attributor, nodes, query):
    # Chunks with offsets in their source file, as a node parser leaves them.
    nodes = [NodeWithScore(node=n.node.model_copy(update={"start_char_idx": 100, "end_char_idx": 100 + len(n.node.text)}),
                           score=n.score) for n in nodes]
    pp = AT2Postprocessor(attributor=attributor, mode="query", top_n=2, sentence_policy=KeepPolicy(relative=0.5))
    snapshot = texts(nodes)
    out = pp.postprocess_nodes(nodes, query)
    core = Pruner(attributor, mode="query", policy=KeepPolicy(top_k=2),
                  sentence_policy=KeepPolicy(relative=0.5)).prune(QUESTION, snapshot)
    assert [n.node_id for n in out] == [nodes[i].node_id for i in core.kept]
    assert texts(nodes) == snapshot and nodes[0].node.start_char_idx == 100  # the caller's nodes are untouched
    for n, i in zip(out, core.kept):
        spans = n.node.metadata[SPANS_KEY]
        assert n.node.get_content() == core.kept_text(i)
        # The kept pieces are the original text at the recorded spans, in reading order.
        assert n.node.get_content() == "".join(snapshot[i][s:e] for s, e in spans).strip()
        assert spans == sorted(spans)
        assert n.node.metadata[ATTRIBUTION_SCORE_KEY] == pytest.approx(core.scores[i], rel=1e-6, abs=1e-9)
        assert SPANS_KEY not in n.node.get_content(metadata_mode=MetadataMode.LLM)
        assert n.node.start_char_idx is None and n.node.end_char_idx is None
    with pytest.raises(ValueError, match="metadata_mode"):
        AT2Postprocessor(attributor=attributor, sentence_level=True, metadata_mode=MetadataMode.ALL)
    later = AT2Postprocessor(attributor=attributor, mode="query", sentence_level=True)
    later.metadata_mode = MetadataMode.ALL  # set after construction: still refused before scoring
    with pytest.raises(ValueError, match="metadata_mode"):
        later.postprocess_nodes(nodes, query)


def test_default_is_support_mode_and_node_score_is_the_calibrated_relevance(attributor, nodes, query):
    pp = AT2Postprocessor(attributor=attributor)
    assert pp.mode == "support" and pp.top_n is None and pp.resolved_policy() == DEFAULT_POLICY
    out = pp.postprocess_nodes(nodes, query)
    # The nodes' retriever scores fall in their order, so their ranks are their positions.
    core = Pruner(attributor, input_order="retriever").prune(QUESTION, texts(nodes))
    assert [n.node_id for n in out] == [nodes[i].node_id for i in core.kept] == [GOLD]
    i = core.kept[0]
    assert out[0].score == pytest.approx(core.relevance[i], abs=1e-6) and 0.5 < out[0].score < 1.0
    assert out[0].node.metadata["keep_score"] == pytest.approx(core.keep_scores[i], abs=1e-7)
    assert out[0].node.metadata["attribution_score"] == pytest.approx(core.scores[i], abs=1e-7)
    assert out[0].node.metadata["rank_source"] == "retrieval_score"
    alone = AT2Postprocessor(attributor=attributor, rank_weight=0.0, top_n=2).postprocess_nodes(nodes, query)
    assert all(n.node.metadata["keep_score"] == n.node.metadata["attribution_score"] for n in alone)
    assert all(n.node.metadata["rank_source"] == "none" for n in alone)


def test_retriever_scores_give_the_ranks_whatever_the_node_order():
    from llama_index.postprocessor.at2.nodes import to_documents

    scored = [NodeWithScore(node=TextNode(text=t, id_=i), score=s)
              for i, t, s in (("a", "one", 0.2), ("b", "two", 0.9), ("c", "three", 0.5))]
    docs = to_documents(scored, MetadataMode.NONE)
    assert [d.metadata["retrieval_rank"] for d in docs] == [2, 0, 1]
    scored[0].node.metadata["retrieval_score"] = 1.0  # scored by AT2 before: the retriever's score counts
    assert [d.metadata["retrieval_rank"] for d in to_documents(scored, MetadataMode.NONE)] == [0, 1, 2]
    unscored = [NodeWithScore(node=TextNode(text="x", id_="x")), scored[1]]
    assert all("retrieval_rank" not in d.metadata for d in to_documents(unscored, MetadataMode.NONE))
