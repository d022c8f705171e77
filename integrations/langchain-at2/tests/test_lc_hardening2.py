"""Second hardening round (issue 26), LangChain: lone surrogates are refused before any model or
retriever runs (T6), and every count or number setting takes a number of its type, never a bool or a
string (W6); nothing here loads a model."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables import RunnableLambda
from lc_support import make_docs
from pydantic import ValidationError

from at2_rag import AT2Attributor, InputError
from langchain_at2 import (
    AT2BundledEmbeddings,
    AT2ChatModel,
    AT2CitedAnswer,
    AT2DocumentCompressor,
    AT2PruningRetriever,
)

BAD = "Where is \udcff?"
"""A question with a lone surrogate: what Python makes of the byte 0xff in a command-line argument."""


def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the bad input reached a model or a retriever")


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Loading a model fails the test: every check here must come first."""
    monkeypatch.setattr(AT2Attributor, "from_pretrained", staticmethod(_never))


NEVER = RunnableLambda(_never)


def test_chat_model_refuses_a_lone_surrogate_before_loading():
    model = AT2ChatModel(max_new_tokens=4)
    with pytest.raises(InputError, match="message 0 contains a lone surrogate '\\\\udcff' at character 9"):
        model.invoke(BAD)
    with pytest.raises(InputError, match="message 1 contains a lone surrogate"):
        list(model.stream([SystemMessage("Be brief."), HumanMessage("x \ud800")]))
    assert not model.attributor_loaded


async def test_chat_model_async_refuses_a_lone_surrogate():
    with pytest.raises(InputError, match="message 0 contains a lone surrogate"):
        await AT2ChatModel().ainvoke(BAD)


def test_cited_answer_refuses_a_lone_surrogate_before_retrieval():
    chain = AT2CitedAnswer(retriever=NEVER)
    with pytest.raises(InputError, match="the question contains a lone surrogate"):
        chain.invoke(BAD)
    with pytest.raises(InputError, match="the question contains a lone surrogate"):
        chain.invoke({"question": BAD, "documents": make_docs()})


def test_compressor_and_pruning_retriever_refuse_a_lone_surrogate_before_any_work():
    with pytest.raises(InputError, match="the query contains a lone surrogate"):
        AT2DocumentCompressor().compress_documents(make_docs(), BAD)
    with pytest.raises(InputError, match="the query contains a lone surrogate"):
        AT2PruningRetriever(base_retriever=NEVER).invoke(BAD)


async def test_pruning_retriever_async_refuses_a_lone_surrogate():
    with pytest.raises(InputError, match="the query contains a lone surrogate"):
        await AT2PruningRetriever(base_retriever=NEVER).ainvoke(BAD)


def test_bundled_embeddings_refuse_a_lone_surrogate_before_loading():
    embeddings = AT2BundledEmbeddings()
    with pytest.raises(InputError, match="the query contains a lone surrogate"):
        embeddings.embed_query(BAD)
    with pytest.raises(InputError, match="text 1 contains a lone surrogate"):
        embeddings.embed_documents(["fine", BAD])
    assert embeddings._embedder is None  # never loaded


def _build(cls: type, **kwargs: Any) -> Any:
    return cls(base_retriever=NEVER, **kwargs) if cls is AT2PruningRetriever else cls(**kwargs)


COUNTS = [
    (AT2DocumentCompressor, ["top_n", "top_k", "token_budget", "min_keep", "max_new_tokens"]),
    (AT2PruningRetriever, ["top_n", "top_k", "token_budget", "min_keep", "max_new_tokens"]),
    (AT2CitedAnswer, ["max_sources", "refine_ablations", "max_new_tokens"]),
    (AT2ChatModel, ["max_new_tokens", "max_tokens"]),
    (AT2BundledEmbeddings, ["batch_size", "max_length"]),
]


@pytest.mark.parametrize("cls, field", [(cls, f) for cls, fields in COUNTS for f in fields])
@pytest.mark.parametrize("value", [True, False, "2", 2.0])
def test_count_settings_refuse_bools_strings_and_floats(cls, field, value):
    # pydantic's lax mode made True a 1 and "2" a 2 before the keep policy could see them.
    with pytest.raises(ValidationError, match="valid integer"):
        _build(cls, **{field: value})
    _build(cls, **{field: 2})  # an int is still accepted


@pytest.mark.parametrize("cls, field", [(AT2DocumentCompressor, "top_n"), (AT2PruningRetriever, "top_n"),
                                        (AT2CitedAnswer, "max_sources"), (AT2ChatModel, "max_tokens"),
                                        (AT2DocumentCompressor, "max_new_tokens"), (AT2BundledEmbeddings, "batch_size")])
@pytest.mark.parametrize("value", [0, -1])
def test_count_settings_refuse_zero_and_negative(cls, field, value):
    with pytest.raises(ValueError):
        _build(cls, **{field: value})


@pytest.mark.parametrize("cls, field", [(AT2DocumentCompressor, "relative"), (AT2DocumentCompressor, "threshold"),
                                        (AT2DocumentCompressor, "rank_weight"), (AT2CitedAnswer, "relative")])
@pytest.mark.parametrize("value", [True, "0.5"])
def test_number_settings_refuse_bools_and_strings(cls, field, value):
    with pytest.raises(ValidationError, match="valid number"):
        _build(cls, **{field: value})
    assert getattr(_build(cls, **{field: 1}), field) == 1.0  # an int is still a number


def test_call_time_limits_refuse_bools():
    with pytest.raises(ValueError, match="top_n must be a positive int"):
        AT2DocumentCompressor().compress_documents([Document(page_content="x")], "q", top_n=True)
    with pytest.raises(ValueError, match="top_n must be a positive int"):
        AT2PruningRetriever(base_retriever=NEVER).invoke("q", top_n=True)


def test_numpy_integers_are_counts_too():
    """A count from numpy (an argsort, a config array) is an int; a bool, float or string stays refused."""
    import numpy as np
    from pydantic import ValidationError

    assert AT2DocumentCompressor(top_n=np.int64(2)).top_n == 2
    for bad in (np.bool_(True), True, 2.0, "2"):
        with pytest.raises(ValidationError):
            AT2DocumentCompressor(top_n=bad)
