"""Second hardening round (issue 26), LlamaIndex: hostile retrieval scores (T9) and lone surrogates (T6)
are one ``at2_rag.InputError`` before any model or retriever runs, and every setting is checked at
construction with LangChain's rules: no bool, string or float for a count, no zero where one is
needed, ``relative`` in [0, 1] (W6). Only the LLM's test loads the model."""

from __future__ import annotations

import asyncio
import types
from typing import Any, List

import pytest
from li_support import make_nodes
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import ValidationError
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.at2 import AT2LLM, AT2BundledEmbedding, AT2CitationQueryEngine, AT2Postprocessor
from llama_index.postprocessor.at2.nodes import to_documents

from at2_rag import AT2Attributor, InputError, KeepPolicy

BAD = "Where is \udcff?"
"""A question with a lone surrogate: what Python makes of the byte 0xff in a command-line argument."""


def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the bad input reached a model or a retriever")


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Loading a model fails the test: every check here must come first."""
    monkeypatch.setattr(AT2Attributor, "from_pretrained", staticmethod(_never))


class FixedRetriever(BaseRetriever):
    """Returns the given nodes (None: fails the test, for checks that must come before retrieval)."""

    def __init__(self, nodes: List[NodeWithScore] | None = None) -> None:
        super().__init__()
        self._nodes = nodes

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        if self._nodes is None:
            _never()
        return list(self._nodes or [])


def with_score(value: Any, in_metadata: bool = True) -> List[NodeWithScore]:
    """The test nodes, the second one carrying ``value`` as its retrieval score."""
    nodes = make_nodes()
    if in_metadata:
        nodes[1].node.metadata["retrieval_score"] = value
    else:
        nodes[1].score = value
    return nodes


HOSTILE = [10**400, -(10**400), float("inf"), float("-inf"), float("nan"), "0.9", True, [0.5]]


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_a_hostile_retrieval_score_is_one_line_before_the_model_loads(value):
    pp = AT2Postprocessor(top_n=2)
    with pytest.raises(InputError, match="node 'everest': its retrieval score .* not a finite number") as info:
        pp.postprocess_nodes(with_score(value), query_str="When was the Eiffel Tower completed?")
    message = str(info.value)
    assert "\n" not in message and len(message) < 300 and "metadata['retrieval_score']" in message
    assert not pp.attributor_loader.loaded


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=repr)
def test_a_non_finite_node_score_is_refused_too(value):
    with pytest.raises(InputError, match=r"its retrieval score \(NodeWithScore.score\) is"):
        to_documents(with_score(value, in_metadata=False), MetadataMode.NONE)


def test_a_hostile_score_is_refused_on_the_async_path_and_in_the_engine():
    with pytest.raises(InputError, match="not a finite number"):
        asyncio.run(AT2Postprocessor().apostprocess_nodes(with_score(10**400), query_str="When?"))
    engine = AT2CitationQueryEngine(FixedRetriever(with_score(float("inf"))))
    with pytest.raises(InputError, match="not a finite number"):
        engine.query("When was the Eiffel Tower completed?")
    with pytest.raises(InputError, match="not a finite number"):
        asyncio.run(engine.aquery("When was the Eiffel Tower completed?"))


def test_finite_scores_and_missing_ones_still_rank_the_nodes():
    nodes = with_score(10**300)  # huge but a float: ranked first
    assert [d.metadata.get("retrieval_rank") for d in to_documents(nodes, MetadataMode.NONE)] == [1, 0, 2, 3]
    unscored = with_score(None)  # the metadata key holds None: no rank metadata (the order is not trusted)
    assert all("retrieval_rank" not in d.metadata for d in to_documents(unscored, MetadataMode.NONE))


def test_a_lone_surrogate_in_the_query_is_refused_before_any_work():
    with pytest.raises(InputError, match="the query contains a lone surrogate '\\\\udcff' at character 9"):
        AT2Postprocessor().postprocess_nodes(make_nodes(), query_str=BAD)
    engine = AT2CitationQueryEngine(FixedRetriever(None))
    with pytest.raises(InputError, match="the query contains a lone surrogate"):
        engine.query(BAD)


def test_a_lone_surrogate_in_the_query_is_refused_on_the_async_paths():
    with pytest.raises(InputError, match="the query contains a lone surrogate"):
        asyncio.run(AT2CitationQueryEngine(FixedRetriever(None)).aquery(BAD))
    with pytest.raises(InputError, match="the query contains a lone surrogate"):
        asyncio.run(AT2Postprocessor().apostprocess_nodes(make_nodes(), query_str=BAD))


def test_the_llm_refuses_a_lone_surrogate_before_tokenizing(attributor):
    # LlamaIndex's callbacks read the LLM's metadata (the model's window) first, so this one needs the model.
    llm = AT2LLM(attributor=attributor)
    with pytest.raises(InputError, match="message 1 contains a lone surrogate"):
        llm.chat([ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content=BAD)])
    with pytest.raises(InputError, match="message 0 contains a lone surrogate"):
        llm.complete(BAD)
    with pytest.raises(InputError, match="message 0 contains a lone surrogate"):
        list(llm.stream_complete(BAD))
    # A prompt the caller formatted goes to the tokenizer as it is: checked right before it.
    with pytest.raises(InputError, match="the prompt contains a lone surrogate"):
        llm.complete(BAD, formatted=True)


def test_the_bundled_embedding_refuses_a_lone_surrogate(monkeypatch):
    monkeypatch.setattr("llama_index.postprocessor.at2.embedding.MiniLMEmbedder",
                        lambda **kwargs: types.SimpleNamespace(encode=_never))
    embedding = AT2BundledEmbedding()
    with pytest.raises(InputError, match="text 0 contains a lone surrogate"):
        embedding.get_query_embedding(BAD)
    with pytest.raises(InputError, match="text 1 contains a lone surrogate"):
        embedding.get_text_embedding_batch(["fine", BAD])


ENGINE_BAD = [
    ({"max_sources": 0}, "max_sources must be a positive int"),
    ({"max_sources": -1}, "max_sources must be a positive int"),
    ({"max_sources": True}, "max_sources must be a positive int"),
    ({"max_sources": "2"}, "max_sources must be a positive int"),
    ({"max_sources": 2.0}, "max_sources must be a positive int"),
    ({"max_sources": None}, "max_sources must be a positive int"),
    ({"relative": -0.1}, "relative must lie in"),
    ({"relative": 1.5}, "relative must lie in"),
    ({"relative": float("nan")}, "relative must lie in"),
    ({"relative": True}, "relative must be a number"),
    ({"relative": "0.5"}, "relative must be a number"),
    ({"max_new_tokens": 0}, "max_new_tokens must be a positive int"),
    ({"max_new_tokens": -1}, "max_new_tokens must be a positive int"),
    ({"max_new_tokens": True}, "max_new_tokens must be a positive int"),
    ({"max_new_tokens": 2.0}, "max_new_tokens must be a positive int"),
    ({"citation_chunk_size": 64, "citation_chunk_overlap": -1}, "citation_chunk_overlap must be an int >= 0"),
    ({"citation_chunk_size": 64, "citation_chunk_overlap": True}, "citation_chunk_overlap must be an int >= 0"),
    ({"citation_chunk_size": True}, "citation_chunk_size must be a positive int"),
]


@pytest.mark.parametrize("kwargs, message", ENGINE_BAD, ids=repr)
def test_engine_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AT2CitationQueryEngine(FixedRetriever(None), **kwargs)


def test_engine_citation_policy_is_built_once_from_valid_settings():
    engine = AT2CitationQueryEngine(FixedRetriever(None), max_sources=2, relative=0, max_new_tokens=8,
                                    citation_chunk_size=64, citation_chunk_overlap=0)
    assert engine._citation_policy == KeepPolicy(top_k=2, relative=0, min_keep=0)


COUNTS = [
    (AT2Postprocessor, ["top_n", "top_k", "token_budget", "min_keep", "max_new_tokens"]),
    (AT2LLM, ["max_new_tokens", "context_window"]),
    (AT2BundledEmbedding, ["max_length"]),
]


@pytest.mark.parametrize("cls, field", [(cls, f) for cls, fields in COUNTS for f in fields])
@pytest.mark.parametrize("value", [True, False, "2", 2.0])
def test_count_fields_refuse_bools_strings_and_floats(cls, field, value):
    # pydantic's lax mode made True a 1 (top_n=True kept one node) before the keep policy could see it.
    with pytest.raises(ValidationError, match="valid integer"):
        cls(**{field: value})


@pytest.mark.parametrize("cls, field", [(AT2Postprocessor, "top_n"), (AT2Postprocessor, "max_new_tokens"),
                                        (AT2LLM, "max_new_tokens"), (AT2LLM, "context_window")])
@pytest.mark.parametrize("value", [0, -1])
def test_count_fields_refuse_zero_and_negative(cls, field, value):
    with pytest.raises(ValueError):
        cls(**{field: value})


@pytest.mark.parametrize("field", ["threshold", "relative", "rank_weight"])
@pytest.mark.parametrize("value", [True, "0.5"])
def test_number_fields_refuse_bools_and_strings(field, value):
    with pytest.raises(ValidationError, match="valid number"):
        AT2Postprocessor(**{field: value})
    assert getattr(AT2Postprocessor(**{field: 1}), field) == 1.0  # an int is still a number


def test_a_node_without_text_is_skipped_before_its_score_is_checked():
    blank = NodeWithScore(node=TextNode(id_="blank", text="  "), score=float("nan"))
    with pytest.warns(UserWarning, match="blank"), pytest.raises(InputError, match="'everest'"):
        AT2Postprocessor().postprocess_nodes([blank, *with_score(float("inf"))], query_str="When?")


def test_numpy_integers_are_counts_too():
    """A count from numpy (an argsort, a config array) is an int; a bool, float or string stays refused."""
    import numpy as np

    assert AT2Postprocessor(top_n=np.int64(2)).top_n == 2
    for bad in (np.bool_(True), True, 2.0, "2"):
        with pytest.raises(ValidationError):
            AT2Postprocessor(top_n=bad)
