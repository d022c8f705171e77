"""AT2CitedAnswer: proxy citations for API-model answers, the local model, LCEL use and callbacks."""

from __future__ import annotations

import asyncio
import operator
import time
from collections import Counter
from functools import reduce
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda
from lc_support import GOLD, QUESTION, TEXTS
from pydantic import ValidationError

from at2_rag import ContextTooLongError, InputError
from langchain_at2 import AT2ChatModel, AT2CitedAnswer, AT2DocumentCompressor

FACT = "The Eiffel Tower was completed in 1889."
TOKYO = "Tokyo hosted the Summer Olympics in 2021."


def check_spans(out: dict[str, Any]) -> None:
    """Every citation's spans point at its text in the answer and in the cited document."""
    for c in out["citations"]:
        assert out["answer"][c["start"] : c["end"]] == c["text"]
        for s in c["sources"]:
            assert out["documents"][s["document"]].page_content[s["start"] : s["end"]] == s["text"]


class Recorder(BaseCallbackHandler):
    """Records chain, model and retriever starts with their parents, and chat prompts."""

    def __init__(self) -> None:
        self.runs: dict[Any, tuple[str, Any]] = {}
        self.prompts: list[str] = []

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs):
        self.runs[run_id] = ("chain:" + str(kwargs.get("name")), parent_run_id)

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kwargs):
        self.runs[run_id] = ("chat_model", parent_run_id)
        self.prompts.append("\n".join(str(m.content) for m in messages[0]))

    def on_retriever_start(self, serialized, query, *, run_id, parent_run_id=None, **kwargs):
        self.runs[run_id] = ("retriever", parent_run_id)

    def root_of(self, kind: str) -> str:
        run_id = next(r for r, (k, _) in self.runs.items() if k == kind)
        while self.runs[run_id][1] is not None:
            run_id = self.runs[run_id][1]
        return self.runs[run_id][0]


def test_proxy_citations_point_to_the_document_with_the_fact(attributor, docs):
    chain = AT2CitedAnswer(attributor=attributor, llm=FakeListChatModel(responses=[FACT]))
    out = chain.invoke({"question": QUESTION, "documents": docs})
    assert out["answer"] == FACT and out["documents"] == docs
    (citation,) = out["citations"]
    assert citation["documents"][0] == GOLD
    assert citation["sources"][0]["document_id"] == f"id-{GOLD}"
    assert "1889" in citation["sources"][0]["text"]
    assert out["answer_with_markers"] == FACT + f"[{GOLD + 1}]"
    assert max(range(4), key=out["document_scores"].__getitem__) == GOLD
    check_spans(out)


def test_plain_llm_and_two_sentence_answer_cite_per_sentence(attributor, docs):
    llm = FakeListLLM(responses=[f"{FACT} {TOKYO}"])
    out = AT2CitedAnswer(attributor=attributor, llm=llm).invoke({"question": QUESTION, "documents": docs})
    first, second = out["citations"]
    assert first["documents"][0] == GOLD and second["documents"][0] == 2
    check_spans(out)


def test_callbacks_fire_for_the_chain_retriever_and_model(attributor, base_retriever):
    recorder = Recorder()
    chain = AT2CitedAnswer(
        attributor=attributor,
        retriever=base_retriever,
        llm=GenericFakeChatModel(messages=iter([AIMessage(FACT)])),
    )
    out = chain.invoke(QUESTION, config={"callbacks": [recorder]})
    cited = out["citations"][0]["documents"][0]
    assert out["documents"][cited].id == f"id-{GOLD}"
    assert recorder.root_of("chat_model") == "chain:AT2CitedAnswer"
    assert recorder.root_of("retriever") == "chain:AT2CitedAnswer"
    assert any("1889" in p and QUESTION in p for p in recorder.prompts)


def test_pipe_batch_and_ainvoke_agree_with_invoke(attributor, docs):
    answers = [FACT, TOKYO]
    questions = [QUESTION, "Which city hosted the 2021 Summer Olympics?"]

    def make(responses: list[str] = answers) -> AT2CitedAnswer:
        return AT2CitedAnswer(attributor=attributor, llm=FakeListChatModel(responses=responses))

    single = [make([a]).invoke({"question": q, "documents": docs}) for q, a in zip(questions, answers)]
    assert single[1]["citations"][0]["documents"][0] == 2
    chain = RunnableLambda(lambda q: {"question": q, "documents": docs}) | make()
    batched = chain.batch(questions, config={"max_concurrency": 1})  # in order: the fake answers in turn
    assert batched == single
    assert asyncio.run(make().ainvoke({"question": questions[0], "documents": docs})) == single[0]


def test_local_model_answers_and_cites_itself(attributor, docs):
    chain = AT2CitedAnswer(attributor=attributor, max_new_tokens=16)
    out = chain.invoke({"question": QUESTION, "documents": [d.page_content for d in docs]})
    assert out["answer"].strip()
    assert out["citations"] and out["citations"][0]["documents"][0] == GOLD
    assert [d.page_content for d in out["documents"]] == TEXTS
    check_spans(out)


def test_refine_ablations_sharpen_the_citations_with_that_many_passes(monkeypatch, attributor, docs):
    calls = []
    refine = type(attributor).refine

    def counting(self, attribution, n_ablations=8, **kwargs):
        calls.append(n_ablations)
        return refine(self, attribution, n_ablations, **kwargs)

    monkeypatch.setattr(type(attributor), "refine", counting)
    plain = AT2CitedAnswer(attributor=attributor, llm=FakeListChatModel(responses=[FACT]))
    sharp = AT2CitedAnswer(attributor=attributor, llm=FakeListChatModel(responses=[FACT]), refine_ablations=4)
    inputs = {"question": QUESTION, "documents": docs}
    before, after = plain.invoke(inputs), sharp.invoke(inputs)
    assert calls == [4]  # only the refining chain spends passes
    assert after["document_scores"] != before["document_scores"]
    assert after["citations"][0]["documents"][0] == GOLD
    assert asyncio.run(sharp.ainvoke(inputs))["document_scores"] == after["document_scores"]
    check_spans(after)
    for bad in (1, -2, 2.5):
        with pytest.raises(ValidationError, match="refine_ablations"):
            AT2CitedAnswer(refine_ablations=bad)


def test_prune_then_regenerate_answers_from_the_pruned_context(attributor, docs):
    recorder = Recorder()
    chain = AT2CitedAnswer(
        compressor=AT2DocumentCompressor(attributor=attributor, top_n=1, max_new_tokens=8),
        llm=FakeListChatModel(responses=[FACT]),
    )
    out = chain.invoke({"question": QUESTION, "documents": docs}, config={"callbacks": [recorder]})
    assert [d.id for d in out["documents"]] == [f"id-{GOLD}"]
    assert out["documents"][0].metadata["attribution_score"] > 0
    assert out["citations"][0]["documents"] == [0]
    (prompt,) = recorder.prompts
    assert TEXTS[GOLD] in prompt and all(t not in prompt for t in TEXTS[1:])
    assert not chain.attributor_loaded, "the compressor's model is shared, not loaded twice"
    check_spans(out)


def test_bad_input_is_reported(attributor, docs):
    chain = AT2CitedAnswer(attributor=attributor, llm=FakeListChatModel(responses=[FACT]))
    for bad in ("", "  ", {"question": ""}, {"documents": docs}, 42):
        with pytest.raises(InputError):
            chain.invoke(bad)
    with pytest.raises(InputError, match="no retriever"):
        chain.invoke(QUESTION)
    with (
        pytest.warns(UserWarning, match="empty page_content"),
        pytest.raises(InputError, match="no documents"),
    ):
        chain.invoke({"question": QUESTION, "documents": [Document(page_content=" ")]})
    lazy = AT2CitedAnswer(llm=FakeListChatModel(responses=[FACT]))
    with pytest.raises(InputError):
        lazy.invoke({"question": " ", "documents": docs})
    assert not lazy.attributor_loaded


def test_empty_model_answer_gives_no_citations(attributor, docs):
    out = AT2CitedAnswer(attributor=attributor, llm=FakeListChatModel(responses=[""])).invoke(
        {"question": QUESTION, "documents": docs}
    )
    assert out["answer"] == "" and out["citations"] == [] and out["document_scores"] == [0.0] * 4


def test_unknown_arguments_are_rejected():
    with pytest.raises(ValidationError, match="extra_forbidden"):
        AT2CitedAnswer(top_x=1)
    with pytest.raises(ValidationError):
        AT2CitedAnswer(max_sources=0)


def added(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The streamed chunks added up, as LangChain adds them."""
    return dict(reduce(operator.add, chunks))


def test_stream_yields_the_answer_in_pieces_then_the_citations(attributor, docs):
    def make() -> AT2CitedAnswer:
        return AT2CitedAnswer(attributor=attributor, llm=FakeListChatModel(responses=[f"{FACT} {TOKYO}"]))

    expected = make().invoke({"question": QUESTION, "documents": docs})
    chunks = list(make().stream({"question": QUESTION, "documents": docs}))
    first, *pieces, last = chunks
    assert first == {"question": QUESTION, "documents": docs, "answer": ""}
    assert len(pieces) > 10 and all(set(p) == {"answer"} for p in pieces)  # the fake model streams characters
    assert set(last) == {"answer_with_markers", "citations", "document_scores"}
    assert added(chunks) == expected and expected["citations"][0]["documents"][0] == GOLD


def test_local_model_streams_its_answer_and_cites_it_without_extra_passes(monkeypatch, attributor, docs):
    chain = AT2CitedAnswer(attributor=attributor, max_new_tokens=16)
    expected = chain.invoke({"question": QUESTION, "documents": docs})
    monkeypatch.setattr(attributor, "attribute", lambda *a, **k: pytest.fail("the local answer needs no extra pass"))
    chunks = list(chain.stream({"question": QUESTION, "documents": docs}))
    assert len([c for c in chunks if c.get("answer")]) > 3
    assert added(chunks) == expected and expected["citations"][0]["documents"][0] == GOLD
    achunks = asyncio.run(acollect(chain, {"question": QUESTION, "documents": docs}))
    assert added(achunks) == expected and len(achunks) == len(chunks)


async def acollect(chain: AT2CitedAnswer, input: Any) -> list[dict[str, Any]]:
    return [chunk async for chunk in chain.astream(input)]


def test_stopping_a_local_stream_early_stops_the_model(monkeypatch, attributor, docs):
    results = []
    generate = attributor.generate
    monkeypatch.setattr(attributor, "generate", lambda *a, **k: results.append(generate(*a, **k)) or results[-1])
    chain = AT2CitedAnswer(attributor=attributor, max_new_tokens=32)
    full = len(chain.invoke({"question": QUESTION, "documents": docs}) and results[0].answer_ids)
    stream = chain.stream({"question": QUESTION, "documents": docs})
    assert next(stream)["documents"] == docs and set(next(stream)) == {"answer"}
    stream.close()  # the worker thread stops at its next token
    deadline = time.monotonic() + 30
    while len(results) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert full > 10 and len(results[1].answer_ids) < full / 2


async def test_astream_events_show_the_at2_runs_and_the_token_stream(attributor, docs):
    chain = AT2CitedAnswer(
        attributor=attributor,
        compressor=AT2DocumentCompressor(attributor=attributor, mode="query", top_n=2),
        llm=AT2ChatModel(attributor=attributor, max_new_tokens=16),
    )
    events = [e async for e in chain.astream_events({"question": QUESTION, "documents": docs}, version="v2")]
    counts = Counter((e["event"], e["name"]) for e in events)
    for name in ("at2_prune", "at2_cite"):
        assert counts["on_chain_start", name] == counts["on_chain_end", name] == 1
    assert counts["on_chat_model_stream", "AT2ChatModel"] > 3
    own = [e["data"]["chunk"] for e in events if e["event"] == "on_chain_stream" and e["name"] == "AT2CitedAnswer"]
    assert len(own) > 3 and "citations" in own[-1]
    (end,) = [e for e in events if e["event"] == "on_chain_end" and e["name"] == "AT2CitedAnswer"]
    assert end["data"]["output"] == added(own) and len(end["data"]["output"]["documents"]) == 2
    prune = next(e for e in events if e["event"] == "on_chain_end" and e["name"] == "at2_prune")
    assert [d.id for d in prune["data"]["output"]] == [d.id for d in end["data"]["output"]["documents"]]
    # The local model's answer is its own run, streamed as it is written.
    local = AT2CitedAnswer(attributor=attributor, max_new_tokens=16)
    events = [e async for e in local.astream_events({"question": QUESTION, "documents": docs}, version="v2")]
    counts = Counter((e["event"], e["name"]) for e in events)
    assert counts["on_chain_stream", "at2_generate"] > 3 and counts["on_chain_end", "at2_cite"] == 1


def test_errors_in_the_streamed_local_answer_reach_the_caller(attributor, docs):
    long_doc = Document(page_content="Paris has many old buildings and bridges, " * 1100)
    chain = AT2CitedAnswer(attributor=attributor, max_new_tokens=8)
    with pytest.raises(ContextTooLongError, match="window"):
        list(chain.stream({"question": QUESTION, "documents": [docs[GOLD], long_doc]}))
    with pytest.raises(ContextTooLongError, match="window"):
        asyncio.run(acollect(chain, {"question": QUESTION, "documents": [docs[GOLD], long_doc]}))


CURIE_NOTE = ("Marie Curie was a physicist and chemist who conducted pioneering research on radioactivity. She was "
              "born in Warsaw in 1867. She later moved to Paris to study at the University of Paris.")
EIFFEL_NOTE = "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889 for the World's Fair."
TWO_CLAIMS = "Marie Curie was born in Warsaw, Poland, but moved to Paris to study at the University of Paris."


def test_a_two_claim_sentence_cites_the_source_of_each_claim(attributor):
    docs = [Document(page_content=CURIE_NOTE), Document(page_content=EIFFEL_NOTE)]
    chain = AT2CitedAnswer(attributor=attributor, llm=FakeListChatModel(responses=[TWO_CLAIMS]))
    out = chain.invoke({"question": "Where was Marie Curie born and where did she study?", "documents": docs})
    (citation,) = out["citations"]
    cited = [s["text"].strip() for s in citation["sources"]]
    assert "She was born in Warsaw in 1867." in cited and "She later moved to Paris to study at the University of Paris." in cited
    check_spans(out)
