"""AT2DocumentCompressor on the real default model: scores, metadata, keep policy, bad input, async and threads."""

from __future__ import annotations

import asyncio
import copy
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core._api import LangChainDeprecationWarning
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from lc_support import GOLD, QUESTION, TEXTS
from pydantic import ValidationError

import at2_rag
from at2_rag import AT2Attributor, ContextTooLongError, InputError, KeepPolicy, Pruner, keep_policy
from langchain_at2 import AT2DocumentCompressor


def snapshot(docs: list[Document]) -> list[tuple]:
    return [(d.page_content, copy.deepcopy(d.metadata), d.id) for d in docs]


def test_empty_list_gives_empty_without_loading_the_model():
    compressor = AT2DocumentCompressor()
    assert compressor.compress_documents([], QUESTION) == []
    assert compressor.compress_documents([], "") == []
    assert asyncio.run(compressor.acompress_documents([], QUESTION)) == []
    assert not compressor.attributor_loaded


def test_empty_query_raises_without_loading_the_model(docs):
    compressor = AT2DocumentCompressor()
    for query in ("", "   ", None):
        with pytest.raises(InputError, match="query"):
            compressor.compress_documents(docs, query)
    with pytest.raises(InputError):
        asyncio.run(compressor.acompress_documents(docs, " "))
    assert not compressor.attributor_loaded


def test_only_empty_documents_give_empty_with_a_warning():
    compressor = AT2DocumentCompressor()
    with pytest.warns(UserWarning, match="empty page_content"):
        assert compressor.compress_documents([Document(page_content="  \n")], QUESTION) == []
    assert not compressor.attributor_loaded


def test_query_mode_matches_the_core_pruner(attributor, docs):
    before = snapshot(docs)
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", top_n=2)
    out = compressor.compress_documents(docs, QUESTION)
    core = Pruner(attributor, mode="query", policy=KeepPolicy(top_k=2)).prune(QUESTION, TEXTS)
    assert [d.id for d in out] == [f"id-{i}" for i in core.kept]
    assert out[0].id == f"id-{GOLD}"
    for doc, i in zip(out, core.kept):
        assert doc.metadata["attribution_score"] == pytest.approx(core.scores[i], abs=1e-7)
        assert doc.metadata["keep_score"] == doc.metadata["attribution_score"]  # no rank term in query mode
        assert 0.0 <= doc.metadata["relevance_score"] <= 1.0
        assert doc.metadata["source"] == f"doc-{i}.txt" and doc.metadata["rank"] == i
        assert doc.page_content == TEXTS[i]
        assert all(doc is not d for d in docs)
    scores = [d.metadata["attribution_score"] for d in out]
    assert scores == sorted(scores, reverse=True)
    assert snapshot(docs) == before, "inputs must not be mutated"


def test_draft_mode_keeps_the_gold_document_like_the_core(attributor, docs):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="draft", top_n=1, max_new_tokens=8)
    out = compressor.compress_documents(docs, QUESTION)
    core = Pruner(attributor, mode="draft", policy=KeepPolicy(top_k=1), max_new_tokens=8).prune(
        QUESTION, TEXTS
    )
    assert [d.id for d in out] == [f"id-{GOLD}"] == [f"id-{i}" for i in core.kept]
    assert out[0].metadata["attribution_score"] == pytest.approx(core.scores[GOLD], abs=1e-7)


def test_empty_documents_are_skipped_and_the_rest_scored_as_without_them(attributor, docs):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", policy=KeepPolicy())
    clean = compressor.compress_documents(docs, QUESTION)
    mixed = [Document(page_content=""), *docs[:2], Document(page_content=" \t"), *docs[2:]]
    with pytest.warns(UserWarning, match=r"2 document\(s\) with empty page_content \(positions \[0, 3\]\)"):
        out = compressor.compress_documents(mixed, QUESTION)
    assert [(d.id, d.metadata) for d in out] == [(d.id, d.metadata) for d in clean]
    assert len(out) == len(docs)


def test_keep_policy_fields_and_per_call_top_n(attributor, docs):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", policy=KeepPolicy(relative=0.0))
    assert compressor.resolved_policy().top_k is None  # no limit: only a policy object can say so
    assert len(compressor.compress_documents(docs, QUESTION)) == 4
    assert len(compressor.compress_documents(docs, QUESTION, top_n=1)) == 1
    strict = AT2DocumentCompressor(attributor=attributor, mode="query", threshold=1e9, min_keep=1)
    assert [d.id for d in strict.compress_documents(docs, QUESTION)] == [f"id-{GOLD}"]
    assert (
        AT2DocumentCompressor(
            attributor=attributor, mode="query", threshold=1e9, min_keep=0
        ).compress_documents(docs, QUESTION)
        == []
    )
    with pytest.raises(ValueError, match=re.escape(core_message(top_n=0))):
        compressor.compress_documents(docs, QUESTION, top_n=0)


def test_k_is_a_deprecated_alias_of_top_n(attributor, docs):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", top_n=4)
    with pytest.warns(LangChainDeprecationWarning, match="use `top_n`"):
        old = compressor.compress_documents(docs, QUESTION, k=2)
    assert old == compressor.compress_documents(docs, QUESTION, top_n=2) and len(old) == 2
    with pytest.warns(LangChainDeprecationWarning), pytest.raises(ValueError, match="same limit"):
        compressor.compress_documents(docs, QUESTION, top_n=1, k=2)


def test_policy_object_and_shorthands_go_through_the_core_keep_policy(attributor, docs):
    assert AT2DocumentCompressor().resolved_policy() == at2_rag.DEFAULT_POLICY
    shorthand = AT2DocumentCompressor(top_n=2, relative=0.3, min_keep=0).resolved_policy()
    assert shorthand == keep_policy(top_n=2, relative=0.3, min_keep=0) == KeepPolicy(top_k=2, relative=0.3, min_keep=0)
    assert AT2DocumentCompressor(top_k=2, relative=0.3, min_keep=0).resolved_policy() == shorthand  # the alias
    assert AT2DocumentCompressor(top_n=2, top_k=2).resolved_policy().top_k == 2
    policy = KeepPolicy(top_k=2, relative=0.3, min_keep=0)
    assert AT2DocumentCompressor(policy=policy).resolved_policy() is policy
    assert AT2DocumentCompressor(policy=policy).resolved_policy(top_n=1) == KeepPolicy(top_k=1, relative=0.3, min_keep=0)
    by_object = AT2DocumentCompressor(attributor=attributor, mode="query", policy=policy)
    by_fields = AT2DocumentCompressor(attributor=attributor, mode="query", top_n=2, relative=0.3, min_keep=0)
    assert by_object.compress_documents(docs, QUESTION) == by_fields.compress_documents(docs, QUESTION)
    # Sentence level: None keeps whole documents, the shorthand uses the core's default, a policy turns it on.
    assert AT2DocumentCompressor().resolved_sentence_policy() is None
    assert AT2DocumentCompressor(sentence_level=True).resolved_sentence_policy() == at2_rag.SENTENCE_POLICY
    own = KeepPolicy(top_k=2)
    assert AT2DocumentCompressor(sentence_policy=own).resolved_sentence_policy() == own
    assert AT2DocumentCompressor(sentence_level=True, sentence_policy=own).resolved_sentence_policy() == own


def core_message(**kwargs: Any) -> str:
    """The core's ValueError message for these keep-policy settings."""
    with pytest.raises(ValueError) as info:
        keep_policy(**kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_n": 0}, core_message(top_n=0)),
        ({"top_k": 0}, core_message(top_k=0)),
        ({"top_n": -2}, core_message(top_n=-2)),
        ({"top_n": 2, "top_k": 3}, core_message(top_n=2, top_k=3)),
        ({"policy": KeepPolicy(top_k=2), "top_n": 2}, core_message(policy=KeepPolicy(top_k=2), top_n=2)),
        ({"relative": 1.5}, core_message(relative=1.5)),
        ({"threshold": float("nan")}, core_message(threshold=float("nan"))),
        ({"token_budget": -1}, core_message(token_budget=-1)),
        ({"min_keep": -1}, core_message(min_keep=-1)),
        ({"sentence_policy": KeepPolicy(top_k=1, min_keep=0)}, "sentence_policy.min_keep must be at least 1"),
        ({"sentence_level": False, "sentence_policy": KeepPolicy(top_k=1)}, "contradicts sentence_policy"),
        ({"mode": "other"}, "literal_error"),
        ({"rank_weight": -1}, "greater_than_equal"),
        ({"rank_weight": float("inf")}, "finite_number"),
        ({"max_new_tokens": 0}, "greater_than"),
        ({"overflow": "truncate"}, "literal_error"),
        ({"model_kwargs": {"dtype": "bfloat16"}}, "pass dtype as field"),
        ({"top_x": 3}, "extra_forbidden"),
    ],
)
def test_invalid_settings_fail_at_construction_with_a_clear_message(kwargs, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        AT2DocumentCompressor(**kwargs)


def test_relevance_score_is_the_calibrated_chance_in_keep_order(attributor, docs):
    # Ranks in metadata: support mode fuses the AT2 score with them, so keep_score differs from attribution_score.
    ranked = [Document(page_content=d.page_content, metadata={**d.metadata, "retrieval_rank": i}, id=d.id)
              for i, d in enumerate(docs)]
    out = AT2DocumentCompressor(attributor=attributor, top_n=4).compress_documents(ranked, QUESTION)
    core = Pruner(attributor, policy=KeepPolicy(relative=0.0)).prune(
        QUESTION, [{"text": t, "metadata": {"retrieval_rank": i}} for i, t in enumerate(TEXTS)])
    assert len(out) == 4 and core.relevance is not None
    for doc in out:
        i = int(doc.id.split("-")[1])
        assert doc.metadata["attribution_score"] == pytest.approx(core.scores[i], abs=1e-7)
        assert doc.metadata["keep_score"] == pytest.approx(core.keep_scores[i], abs=1e-6)
        assert doc.metadata["relevance_score"] == pytest.approx(core.relevance[i], abs=1e-6)
        assert doc.metadata["rank_source"] == "retrieval_rank"
    keep = [d.metadata["keep_score"] for d in out]
    relevance = [d.metadata["relevance_score"] for d in out]
    assert keep != [d.metadata["attribution_score"] for d in out]
    assert all(0.0 < r < 1.0 for r in relevance) and sum(relevance) == pytest.approx(1.0)  # shares of one list
    assert keep == sorted(keep, reverse=True) and relevance == sorted(relevance, reverse=True)
    (single,) = AT2DocumentCompressor(attributor=attributor, mode="query").compress_documents(docs[:1], QUESTION)
    assert single.metadata["relevance_score"] == 1.0


def test_draft_mode_skips_the_draft_when_nothing_can_be_pruned(monkeypatch, attributor, docs):
    drafts = []
    generate = attributor.generate
    monkeypatch.setattr(attributor, "generate", lambda *a, **k: drafts.append(1) or generate(*a, **k))
    compressor = AT2DocumentCompressor(attributor=attributor, mode="draft", top_n=4, max_new_tokens=4)
    with pytest.warns(UserWarning, match=r"nothing can be pruned.*search_kwargs=\{'k': 10\}"):
        out = compressor.compress_documents(docs, QUESTION)
    assert [(d.id, d.metadata, d.page_content) for d in out] == [(d.id, d.metadata, d.page_content) for d in docs]
    assert all(o is not d for o, d in zip(out, docs)) and drafts == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per compressor
        assert compressor.compress_documents(docs[:2], QUESTION) == out[:2]
    # Something can be dropped: the draft runs and the scores are attached.
    assert len(compressor.compress_documents(docs, QUESTION, top_n=3)) == 3 and drafts == [1]
    relative = AT2DocumentCompressor(attributor=attributor, mode="draft", top_n=4, relative=0.5, max_new_tokens=4)
    assert "attribution_score" in relative.compress_documents(docs, QUESTION)[0].metadata and drafts == [1, 1]
    # Other modes always score (one prefill pass): the scores are the metadata callers asked for.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scored = AT2DocumentCompressor(attributor=attributor, mode="query", top_n=4).compress_documents(docs, QUESTION)
    assert len(scored) == 4 and all("relevance_score" in d.metadata for d in scored)


class RunRecorder(BaseCallbackHandler):
    """Records chain runs: name, id and parent."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, Any, Any]] = []

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs):
        self.runs.append((kwargs.get("name"), run_id, parent_run_id))


def test_scoring_is_a_run_named_at2_prune(attributor, docs):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query")
    recorder = RunRecorder()
    out = compressor.compress_documents(docs, QUESTION, callbacks=[recorder])
    ((name, _, parent),) = recorder.runs
    assert name == "at2_prune" and parent is None and out[0].id == f"id-{GOLD}"
    asyncio.run(compressor.acompress_documents(docs, QUESTION, callbacks=[recorder]))
    assert [r[0] for r in recorder.runs] == ["at2_prune", "at2_prune"]
    assert compressor.compress_documents([], QUESTION, callbacks=[recorder]) == [] and len(recorder.runs) == 2


def test_sentence_level_keeps_useful_sentences_in_order(attributor):
    long_docs = [
        Document(
            page_content="Bananas are yellow. The Eiffel Tower was completed in 1889. Paris is in France.",
            metadata={"k": "v"},
        ),
        Document(page_content="Mount Everest is the highest mountain on Earth. It lies in the Himalayas."),
    ]
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", top_n=1, sentence_policy=KeepPolicy(top_k=2))
    (doc,) = compressor.compress_documents(long_docs, QUESTION)
    texts = [d.page_content for d in long_docs]
    core = attributor.score_query(QUESTION, texts, estimator="default", granularity="sentence")
    sent_scores = core.scores[:3].tolist()
    best_two = sorted(sorted(range(3), key=lambda j: -sent_scores[j])[:2])
    spans = [(s.start, s.end) for s in core.sources[:3]]
    assert doc.metadata["attribution_spans"] == [list(spans[j]) for j in best_two]
    original = long_docs[0].page_content
    assert doc.page_content == "".join(original[s:e] for s, e in (spans[j] for j in best_two)).strip()
    assert "1889" in doc.page_content
    assert doc.metadata["attribution_score"] == pytest.approx(float(core.document_scores()[0]), abs=1e-7)
    assert doc.metadata["k"] == "v"
    assert long_docs[0].page_content == original and long_docs[0].metadata == {"k": "v"}


def test_async_equals_sync(attributor, docs):
    for kwargs in ({"mode": "query"}, {"mode": "query", "sentence_level": True}):
        compressor = AT2DocumentCompressor(attributor=attributor, top_n=3, **kwargs)
        sync = compressor.compress_documents(docs, QUESTION)
        assert asyncio.run(compressor.acompress_documents(docs, QUESTION)) == sync


def test_async_does_not_block_the_event_loop(attributor, docs):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query")

    async def main() -> int:
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await compressor.acompress_documents(docs, QUESTION)
        task.cancel()
        return ticks

    assert asyncio.run(main()) >= 3


def test_threads_equal_sequential(attributor, docs):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", top_n=2)
    queries = [QUESTION, "What is the capital of Japan?", "Which mountain is the highest?"]
    sequential = [compressor.compress_documents(docs, q) for q in queries]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda q: compressor.compress_documents(docs, q), queries))
    assert threaded == sequential
    assert sequential[1][0].id == "id-2" and sequential[2][0].id == "id-1"


def test_lazy_model_is_created_once_under_concurrency(monkeypatch, attributor):
    calls = []

    def slow_load(*args, **kwargs):
        calls.append((args, kwargs))
        time.sleep(0.2)
        return attributor

    monkeypatch.setattr(AT2Attributor, "from_pretrained", staticmethod(slow_load))
    compressor = AT2DocumentCompressor(device="cpu", dtype="float32", overflow="drop_last")
    barrier = threading.Barrier(6)

    def get():
        barrier.wait()
        return compressor.get_attributor()

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda _: get(), range(6)))
    assert len(calls) == 1 and all(a is attributor for a in got)
    assert calls[0] == (
        (),
        {"model": "default", "device": "cpu", "dtype": "float32", "estimator": "default", "overflow": "drop_last"},
    )
    custom = AT2DocumentCompressor(model="my/model", model_kwargs={"trust_remote_code": True})
    custom.get_attributor()
    assert calls[1][1]["model"] == "my/model" and calls[1][1]["trust_remote_code"] is True


def test_too_long_context_raises_or_drops_as_documented(attributor, docs):
    long_doc = Document(page_content="Paris has many old buildings and bridges, " * 1100, id="long")
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query")
    with pytest.raises(ContextTooLongError, match="window"):
        compressor.compress_documents([docs[GOLD], long_doc], QUESTION)
    dropping = AT2Attributor(attributor.model, attributor.tokenizer, overflow="drop_last")
    compressor = AT2DocumentCompressor(attributor=dropping, mode="query", top_n=2)
    with pytest.warns(UserWarning, match="dropped the last 1 document"):
        out = compressor.compress_documents([docs[GOLD], long_doc], QUESTION)
    assert [d.id for d in out] == [f"id-{GOLD}"]


def test_title_metadata_reaches_the_prompt(attributor):
    docs = [Document(page_content="It was completed in 1889.", metadata={"title": "Eiffel Tower"})]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (out,) = AT2DocumentCompressor(attributor=attributor, mode="query").compress_documents(docs, QUESTION)
    core = Pruner(attributor, mode="query").prune(
        QUESTION, [{"text": docs[0].page_content, "title": "Eiffel Tower"}]
    )
    assert out.metadata["attribution_score"] == pytest.approx(core.scores[0], abs=1e-7)


def test_default_is_support_mode_fused_with_the_retriever_rank(attributor, docs):
    compressor = AT2DocumentCompressor(attributor=attributor, input_order="retriever")
    assert compressor.mode == "support" and compressor.resolved_policy() == at2_rag.DEFAULT_POLICY
    out = compressor.compress_documents(docs, QUESTION)
    core = Pruner(attributor, input_order="retriever").prune(QUESTION, TEXTS)
    assert [d.id for d in out] == [f"id-{i}" for i in core.kept] == [f"id-{GOLD}"]
    doc = out[0]
    assert doc.metadata["attribution_score"] == pytest.approx(core.scores[GOLD], abs=1e-7)
    assert doc.metadata["keep_score"] == pytest.approx(core.keep_scores[GOLD], abs=1e-7)
    assert doc.metadata["relevance_score"] == pytest.approx(core.relevance[GOLD], abs=1e-6)
    assert doc.metadata["rank_source"] == "input order"
    # Without the rank term (weight 0, or no rank known) the keep score is the attribution score.
    alone = AT2DocumentCompressor(attributor=attributor, rank_weight=0, top_n=2, input_order="retriever")
    unknown = AT2DocumentCompressor(attributor=attributor, top_n=2)
    for kept in (alone.compress_documents(docs, QUESTION), unknown.compress_documents(docs, QUESTION)):
        assert all(d.metadata["keep_score"] == d.metadata["attribution_score"] for d in kept)
        assert all(d.metadata["rank_source"] == "none" for d in kept)
