"""A fully offline LangChain RAG chain: the bundled model answers and attributes, one model in memory."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnablePassthrough
from lc_support import GOLD, QUESTION, TEXTS

from at2_rag import AT2Attributor
from langchain_at2 import (
    AT2ChatModel,
    AT2CitedAnswer,
    AT2DocumentCompressor,
    default_answer_prompt,
    format_documents,
)


@pytest.fixture
def no_second_model(monkeypatch):
    """Fails the test if anything loads a model instead of sharing the one given."""

    def refuse(*args: Any, **kwargs: Any) -> AT2Attributor:
        raise AssertionError("a second model was loaded")

    monkeypatch.setattr(AT2Attributor, "from_pretrained", staticmethod(refuse))


def test_lcel_chain_retriever_compressor_prompt_local_chat_model_parser(attributor, base_retriever, no_second_model):
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", top_n=1)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base_retriever)
    llm = AT2ChatModel(attributor=attributor, max_new_tokens=16)
    chain = (
        {"context": retriever | format_documents, "question": RunnablePassthrough()}
        | default_answer_prompt()
        | llm
        | StrOutputParser()
    )
    answer = chain.invoke(QUESTION)
    assert "Eiffel Tower" in answer
    # The prompt the chat model saw holds the pruned context only: the answer equals the model's own
    # answer to that prompt.
    pruned = retriever.invoke(QUESTION)
    assert [d.page_content for d in pruned] == [TEXTS[GOLD]]
    prompt = default_answer_prompt().invoke({"context": format_documents(pruned), "question": QUESTION})
    assert llm.invoke(prompt).content == answer
    assert "".join(chain.stream(QUESTION)) == answer


def test_cited_answer_with_the_local_chat_model_shares_one_attributor(attributor, base_retriever, no_second_model):
    llm = AT2ChatModel(attributor=attributor, max_new_tokens=16)
    compressor = AT2DocumentCompressor(attributor=attributor, mode="query", top_n=2)
    chain = AT2CitedAnswer(retriever=base_retriever, compressor=compressor, llm=llm)
    out = chain.invoke(QUESTION)
    assert [d.id for d in out["documents"]][0] == f"id-{GOLD}" and len(out["documents"]) == 2
    assert "Eiffel Tower" in out["answer"]
    assert out["citations"] and out["citations"][0]["documents"][0] == 0  # the gold document, kept first
    assert out["answer_with_markers"].startswith(out["answer"][: out["citations"][0]["end"]] + "[1]")
    assert chain.get_attributor() is llm.get_attributor() is compressor.get_attributor() is attributor
    assert not chain.attributor_loaded, "the chain uses the compressor's model rather than its own"


def test_one_lazily_loaded_model_answers_and_attributes(monkeypatch, attributor, docs):
    loads = []

    def load(*args: Any, **kwargs: Any) -> AT2Attributor:
        loads.append(kwargs)
        return attributor

    monkeypatch.setattr(AT2Attributor, "from_pretrained", staticmethod(load))
    llm = AT2ChatModel(max_new_tokens=16)
    chain = AT2CitedAnswer(llm=llm)
    out = chain.invoke({"question": QUESTION, "documents": docs})
    assert len(loads) == 1 and llm.attributor_loaded and not chain.attributor_loaded
    assert out["citations"] and out["citations"][0]["documents"][0] == GOLD
