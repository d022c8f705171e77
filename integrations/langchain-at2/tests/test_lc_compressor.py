"""AT2DocumentCompressor on the real default model: scores, metadata, bad input, async and threads."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.documents import Document
from lc_support import GOLD, QUESTION, TEXTS
from pydantic import ValidationError

import at2_rag
from at2_rag import AT2Attributor, ContextTooLongError, InputError, KeepPolicy, Pruner
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
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", top_k=2)
    out = compressor.compress_documents(docs, QUESTION)
    core = Pruner(attributor, mode="query", policy=KeepPolicy(top_k=2)).prune(QUESTION, TEXTS)
    assert [d.id for d in out] == [f"id-{i}" for i in core.kept]
    assert out[0].id == f"id-{GOLD}"
    for doc, i in zip(out, core.kept):
        assert doc.metadata["attribution_score"] == pytest.approx(core.scores[i], abs=1e-7)
        assert doc.metadata["relevance_score"] == doc.metadata["attribution_score"]
        assert doc.metadata["source"] == f"doc-{i}.txt" and doc.metadata["rank"] == i
        assert doc.page_content == TEXTS[i]
        assert all(doc is not d for d in docs)
    scores = [d.metadata["attribution_score"] for d in out]
    assert scores == sorted(scores, reverse=True)
    assert snapshot(docs) == before, "inputs must not be mutated"


def test_draft_mode_keeps_the_gold_document_like_the_core(attributor, docs):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="draft", top_k=1, max_new_tokens=8)
    out = compressor.compress_documents(docs, QUESTION)
    core = Pruner(attributor, mode="draft", policy=KeepPolicy(top_k=1), max_new_tokens=8).prune(
        QUESTION, TEXTS
    )
    assert [d.id for d in out] == [f"id-{GOLD}"] == [f"id-{i}" for i in core.kept]
    assert out[0].metadata["attribution_score"] == pytest.approx(core.scores[GOLD], abs=1e-7)


def test_empty_documents_are_skipped_and_the_rest_scored_as_without_them(attributor, docs):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", top_k=None)
    clean = compressor.compress_documents(docs, QUESTION)
    mixed = [Document(page_content=""), *docs[:2], Document(page_content=" \t"), *docs[2:]]
    with pytest.warns(UserWarning, match=r"2 document\(s\) with empty page_content \(positions \[0, 3\]\)"):
        out = compressor.compress_documents(mixed, QUESTION)
    assert [(d.id, d.metadata) for d in out] == [(d.id, d.metadata) for d in clean]
    assert len(out) == len(docs)


def test_keep_policy_fields_and_k_override(attributor, docs):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", top_k=None, relative=0.0)
    assert len(compressor.compress_documents(docs, QUESTION)) == 4
    assert len(compressor.compress_documents(docs, QUESTION, k=1)) == 1
    strict = AT2DocumentCompressor(attributor=attributor, mode="query", threshold=1e9, min_keep=1)
    assert [d.id for d in strict.compress_documents(docs, QUESTION)] == [f"id-{GOLD}"]
    assert (
        AT2DocumentCompressor(
            attributor=attributor, mode="query", threshold=1e9, min_keep=0
        ).compress_documents(docs, QUESTION)
        == []
    )
    with pytest.raises(ValueError, match="k must be"):
        compressor.compress_documents(docs, QUESTION, k=0)


@pytest.mark.parametrize(
    "kwargs", [{"top_k": 0}, {"relative": 1.5}, {"threshold": float("nan")}, {"mode": "other"}, {"top_n": 3}]
)
def test_invalid_settings_are_rejected(kwargs):
    with pytest.raises(ValidationError):
        AT2DocumentCompressor(**kwargs)


def test_sentence_level_keeps_useful_sentences_in_order(attributor):
    long_docs = [
        Document(
            page_content="Bananas are yellow. The Eiffel Tower was completed in 1889. Paris is in France.",
            metadata={"k": "v"},
        ),
        Document(page_content="Mount Everest is the highest mountain on Earth. It lies in the Himalayas."),
    ]
    compressor = AT2DocumentCompressor(
        attributor=attributor, mode="query", top_k=1, sentence_level=True, sentence_policy=KeepPolicy(top_k=2)
    )
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
        compressor = AT2DocumentCompressor(attributor=attributor, top_k=3, **kwargs)
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
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", top_k=2)
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
    compressor = AT2DocumentCompressor(device="cpu", overflow="drop_last")
    barrier = threading.Barrier(6)

    def get():
        barrier.wait()
        return compressor.get_attributor()

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda _: get(), range(6)))
    assert len(calls) == 1 and all(a is attributor for a in got)
    assert calls[0] == ((), {"model": "default", "estimator": "default", "device": "cpu", "overflow": "drop_last"})


def test_too_long_context_raises_or_drops_as_documented(attributor, docs):
    long_doc = Document(page_content="Paris has many old buildings and bridges, " * 1100, id="long")
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query")
    with pytest.raises(ContextTooLongError, match="window"):
        compressor.compress_documents([docs[GOLD], long_doc], QUESTION)
    dropping = AT2Attributor(attributor.model, attributor.tokenizer, overflow="drop_last")
    compressor = AT2DocumentCompressor(attributor=dropping, mode="query", top_k=None)
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
    compressor = AT2DocumentCompressor(attributor=attributor)
    assert compressor.mode == "support" and compressor.top_k == at2_rag.DEFAULT_POLICY.top_k
    out = compressor.compress_documents(docs, QUESTION)
    core = Pruner(attributor).prune(QUESTION, TEXTS)
    assert [d.id for d in out] == [f"id-{i}" for i in core.kept] == [f"id-{GOLD}"]
    doc = out[0]
    assert doc.metadata["attribution_score"] == pytest.approx(core.scores[GOLD], abs=1e-7)
    assert doc.metadata["relevance_score"] == pytest.approx(core.keep_scores[GOLD], abs=1e-7)
    # Without the rank term the relevance score is the attribution score.
    alone = AT2DocumentCompressor(attributor=attributor, rank_weight=0, top_k=2).compress_documents(docs, QUESTION)
    assert all(d.metadata["relevance_score"] == d.metadata["attribution_score"] for d in alone)
    with pytest.raises(ValueError):
        AT2DocumentCompressor(rank_weight=-1)
