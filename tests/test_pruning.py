"""Keep policies (against a brute-force definition), the pruner on the real model, and citations."""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2_rag import Document, InputError, KeepPolicy, Pruner, cite, with_markers
from at2_rag.results import AnswerSentence, Attribution

DOCS = [
    "The Eiffel Tower is located in Paris, France. It was completed in 1889.",
    "Mount Everest is the highest mountain on Earth. It lies in the Himalayas on the border of Nepal and China.",
    "The capital of Japan is Tokyo. Tokyo hosted the Summer Olympics in 2021.",
    "Bananas are rich in potassium and are grown in tropical regions.",
]


def brute_force(policy: KeepPolicy, scores, lengths):
    """Reference: walk the documents best first; keep one when every criterion allows it."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept, used = [], 0
    for i in order:
        ok = policy.top_k is None or len(kept) < policy.top_k
        ok = ok and (policy.threshold is None or scores[i] >= policy.threshold)
        ok = ok and (policy.relative is None or scores[i] >= policy.relative * scores[order[0]])
        ok = ok and (policy.token_budget is None or used + lengths[i] <= policy.token_budget)
        if ok:
            kept.append(i)
            used += lengths[i]
    kept += [i for i in order[: policy.min_keep] if i not in kept]
    return set(kept)


@settings(max_examples=300, deadline=None)
@given(
    scores=st.lists(st.floats(-5, 5, allow_nan=False), min_size=0, max_size=8),
    top_k=st.none() | st.integers(0, 6),
    threshold=st.none() | st.floats(-5, 5, allow_nan=False),
    relative=st.none() | st.floats(0, 1),
    budget=st.none() | st.integers(0, 60),
    min_keep=st.integers(0, 3),
    seed=st.integers(0, 1000),
)
def test_policy_matches_brute_force(scores, top_k, threshold, relative, budget, min_keep, seed):
    lengths = [(seed * (i + 3)) % 23 + 1 for i in range(len(scores))]
    policy = KeepPolicy(top_k=top_k, threshold=threshold, relative=relative, token_budget=budget, min_keep=min_keep)
    kept = policy.select(scores, lengths)
    assert set(kept) == brute_force(policy, scores, lengths)
    assert len(kept) == len(set(kept))
    assert [scores[i] for i in kept] == sorted((scores[i] for i in kept), reverse=True)
    if scores and min_keep:
        assert kept, "min_keep >= 1 must never give an empty selection"


def test_token_budget_is_an_optimal_greedy_fill():
    # Best first: 0 (10 tokens) fits, 1 (15) would exceed 20 and is skipped, 2 (5) still fits.
    assert KeepPolicy(token_budget=20, min_keep=0).select([3.0, 2.0, 1.0], [10, 15, 5]) == [0, 2]
    # Exhaustive check that the budget is never exceeded (min_keep=0 so nothing is forced in).
    for lengths in itertools.product([1, 4, 9], repeat=3):
        kept = KeepPolicy(token_budget=10, min_keep=0).select([0.3, 0.2, 0.1], list(lengths))
        assert sum(lengths[i] for i in kept) <= 10


def test_min_keep_overrides_and_zero_allows_empty():
    assert KeepPolicy(threshold=10.0).select([1.0, 2.0], [1, 1]) == [1]
    assert KeepPolicy(threshold=10.0, min_keep=0).select([1.0, 2.0], [1, 1]) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_k": -1}, "top_k"),
        ({"relative": 1.5}, "relative"),
        ({"threshold": float("nan")}, "threshold"),
        ({"min_keep": 1.5}, "min_keep"),
    ],
)
def test_policy_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KeepPolicy(**kwargs)


def test_budget_needs_lengths():
    with pytest.raises(ValueError, match="token length"):
        KeepPolicy(token_budget=5).select([1.0, 2.0])


@pytest.mark.parametrize("mode", ["draft", "query"])
def test_pruner_keeps_the_gold_document(attributor, mode):
    pruner = Pruner(attributor, mode=mode, policy=KeepPolicy(top_k=2), max_new_tokens=24)
    result = pruner.prune("What is the highest mountain on Earth?", DOCS)
    assert result.mode == mode
    assert len(result.scores) == len(DOCS) and len(result.kept) == 2
    assert 1 in result.kept, result.scores
    assert sorted(result.kept + result.dropped) == list(range(len(DOCS)))
    # Scores are the per-document sums of the attribution, token lengths are the prompt spans.
    att = result.attribution
    assert torch.allclose(torch.tensor(result.scores), att.document_scores())
    for d, n in enumerate(result.token_lengths):
        assert n == sum(s.token_end - s.token_start for s in att.sources if s.document == d)
    assert (result.draft != "") == (mode == "draft")


def test_pruner_async_matches_sync(attributor):
    pruner = Pruner(attributor, mode="query", policy=KeepPolicy(top_k=1))
    sync = pruner.prune("What is the capital of Japan?", DOCS)
    asynchronous = asyncio.run(pruner.aprune("What is the capital of Japan?", DOCS))
    assert sync.kept == asynchronous.kept and sync.scores == asynchronous.scores


def test_pruner_bad_input(attributor):
    pruner = Pruner(attributor, mode="query")
    with pytest.raises(InputError, match="no documents"):
        pruner.prune("question?", [])
    with pytest.raises(InputError, match="empty"):
        pruner.prune("question?", ["fine text", "   "])
    with pytest.raises(InputError, match="question"):
        pruner.prune("  ", DOCS)
    with pytest.raises(ValueError, match="mode"):
        Pruner(attributor, mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_keep"):  # would leave a kept document empty
        Pruner(attributor, sentence_policy=KeepPolicy(threshold=0.0, min_keep=0))


def _synthetic_attribution(attributor, sentence_scores):
    prompt = attributor.prompt("q?", ["A one. A two.", "B one."], granularity="sentence")
    answer = "First claim. Second claim."
    sents = [AnswerSentence("First claim.", 0, 12, torch.tensor(sentence_scores[0])),
             AnswerSentence("Second claim.", 13, 26, torch.tensor(sentence_scores[1]))]
    return Attribution(prompt, answer, torch.tensor(sentence_scores).mean(0), sents, "at2", 0)


def test_cite_thresholds_and_spans(attributor):
    att = _synthetic_attribution(attributor, [[0.9, 0.5, 0.1], [0.0, 0.2, 0.3]])
    cites = cite(att, KeepPolicy(top_k=3, relative=0.5, min_keep=0))
    # Sentence 1: 0.9 and 0.5 pass (0.5 >= 0.45); 0.1 does not. Sentence 2: 0.3 and 0.2 pass.
    assert [c.source for c in cites[0].sources] == [0, 1]
    assert [c.source for c in cites[1].sources] == [2, 1]
    assert cites[0].documents == [0] and cites[1].documents == [1, 0]
    for c in cites:
        for s in c.sources:
            doc = att.prompt.documents[s.document].text
            assert doc[s.start : s.end] == s.text
    assert len(cite(att, KeepPolicy(top_k=1, min_keep=0))[0].sources) == 1
    none = cite(_synthetic_attribution(attributor, [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert all(not c.sources for c in none)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=3, max_size=3),
    st.integers(1, 4),
    st.floats(0, 1),
)
def test_cite_matches_the_citation_rule(scores, max_sources, relative):
    """cite() through KeepPolicy equals the rule written out directly: positive scores only, at most
    ``max_sources``, each at least ``relative`` x the best, strongest first (ties: source order)."""
    order = sorted(range(3), key=lambda i: (-scores[i], i))
    best = max(scores)
    expected = [i for i in order if scores[i] > 0 and scores[i] >= relative * best][:max_sources]
    prompt = SimpleNamespace(sources=[SimpleNamespace(document=0, text="t", start=0, end=1)] * 3,
                             documents=[Document("t")])
    att = SimpleNamespace(sources=prompt.sources, prompt=prompt,
                          sentences=[AnswerSentence("a", 0, 1, torch.tensor(scores))])
    got = cite(att, KeepPolicy(top_k=max_sources, relative=relative, min_keep=0))[0]
    assert [s.source for s in got.sources] == expected


def test_with_markers(attributor):
    att = _synthetic_attribution(attributor, [[0.9, 0.1, 0.1], [0.0, 0.0, 0.3]])
    cites = cite(att)
    assert with_markers(att.answer, cites) == "First claim.[1] Second claim.[2]"
    assert with_markers(att.answer, cites, labels={1: "B"}) == "First claim.[1] Second claim.[B]"


def test_cite_real_answer(attributor):
    att = attributor.attribute(
        "What is the capital of Japan?", DOCS, "The capital of Japan is Tokyo.", granularity="sentence"
    )
    cites = cite(att)
    assert len(cites) == 1 and cites[0].sources
    assert cites[0].documents[0] == 2


def test_query_mode_reads_a_named_estimator_once_per_attributor(default_model, monkeypatch, tmp_path):
    """Adapters build a Pruner per call; the shipped query estimator must not be re-read each time."""
    from at2_rag import AT2Attributor, Estimator

    model, tok = default_model
    att = AT2Attributor(model, tok)
    reads = []
    real_load = Estimator.load.__func__

    def counting_load(cls, path, *args, **kwargs):
        reads.append(str(path))
        return real_load(cls, path, *args, **kwargs)

    monkeypatch.setattr(Estimator, "load", classmethod(counting_load))
    first = Pruner(att, mode="query").prune("What is the capital of Japan?", DOCS)
    second = Pruner(att, mode="query").prune("What is the capital of Japan?", DOCS)
    assert reads == ["default-query"] and first.scores == second.scores
    path = Estimator.uniform(model, "query").save(tmp_path / "q.safetensors")
    for _ in range(2):  # a pathlib.Path is cached too (by its string)
        att.score_query("What is the capital of Japan?", DOCS, estimator=path)
    assert reads == ["default-query", str(path)]
    direct = att.score_query("What is the capital of Japan?", DOCS, estimator=Estimator.load("default-query"),
                             granularity="document")
    assert torch.allclose(direct.document_scores(), torch.tensor(first.scores, dtype=direct.scores.dtype))


@pytest.mark.parametrize("mode", ["query", "draft"])
def test_sentence_level_pruning_keeps_each_kept_documents_best_sentences(attributor, mode):
    docs = DOCS + ["Japan is an island country. Its capital city is Tokyo. Sushi is popular there."]
    sentence_policy = KeepPolicy(top_k=1)
    pruner = Pruner(attributor, mode=mode, policy=KeepPolicy(top_k=2), sentence_policy=sentence_policy,
                    max_new_tokens=8)
    result = pruner.prune("What is the capital of Japan?", docs)
    att = result.attribution
    assert att.prompt.granularity == "sentence" and pruner.granularity == "sentence"
    assert not att.scores.requires_grad  # plain numbers for the caller, no autograd graph
    assert torch.allclose(torch.tensor(result.scores), att.document_scores())
    assert set(result.sentence_spans) == set(result.kept)
    expected_tokens = 0
    for d in result.kept:
        own = [(s, float(v)) for s, v in zip(att.sources, att.scores) if s.document == d]
        best = max(own, key=lambda sv: sv[1])[0]  # brute force: top-1 sentence of this document
        assert result.sentence_spans[d] == [(best.start, best.end)]
        assert result.kept_text(d) == docs[d][best.start:best.end].strip()
        expected_tokens += best.token_end - best.token_start
    assert result.kept_tokens == expected_tokens < result.total_tokens
    assert [d.text for d in result.kept_documents] == [result.kept_text(d) for d in result.kept]
    # Whole-document pruning is unchanged: kept_documents are the inputs.
    whole = Pruner(attributor, mode=mode, policy=KeepPolicy(top_k=2), max_new_tokens=8).prune(
        "What is the capital of Japan?", docs)
    assert whole.sentence_spans is None and [d.text for d in whole.kept_documents] == [docs[i] for i in whole.kept]
