"""The adapters' shared contract: keep-policy arguments via at2_rag.keep_policy, sentence policies, unknown
arguments refused, draft mode skipped when nothing can be pruned, and a README that shows all of it."""

from __future__ import annotations

import asyncio
import re
import warnings
from pathlib import Path

import pytest
from llama_index.postprocessor.at2 import (
    ATTRIBUTION_SCORE_KEY,
    RETRIEVAL_SCORE_KEY,
    AT2CitationQueryEngine,
    AT2Postprocessor,
)

from at2_rag import DEFAULT_POLICY, SENTENCE_POLICY, KeepPolicy, keep_policy

README = Path(__file__).resolve().parents[1] / "README.md"
CONTRACT = (
    "policy", "sentence_policy", "sentence_level", "top_n", "top_k", "threshold", "relative", "token_budget",
    "min_keep", "mode", "query_estimator", "rank_weight", "max_new_tokens", "model", "estimator", "device",
    "dtype", "overflow", "metadata_mode", "input_order",
)
"""The argument names both adapters share (the LangChain compressor uses the same ones)."""
NOTHING_TO_PRUNE = "nothing can be pruned"


def test_fields_are_the_shared_contract():
    fields = set(AT2Postprocessor.model_fields) - {"callback_manager"}
    assert fields == set(CONTRACT)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"top_n": 2},
        {"top_k": 2},
        {"top_n": 3, "top_k": 3},
        {"threshold": 0.1, "relative": 0.5, "token_budget": 100, "min_keep": 0},
        {"top_n": 2, "min_keep": 2},
        {"policy": KeepPolicy(relative=0.3, min_keep=0)},
    ],
)
def test_keep_arguments_become_the_policy_through_keep_policy(kwargs):
    assert AT2Postprocessor(**kwargs).resolved_policy() == keep_policy(**kwargs)
    assert AT2Postprocessor().resolved_policy() == DEFAULT_POLICY


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_n": 0}, "top_n must be a positive int"),  # accepted as top_k=0 before: now as in LangChain
        ({"top_k": 0}, "top_n must be a positive int"),
        ({"top_n": 2, "top_k": 3}, "name the same limit"),
        ({"policy": KeepPolicy(top_k=2), "top_n": 2}, "not both"),
        ({"relative": 1.5}, "relative must lie in"),
        ({"min_keep": -1}, "min_keep must be"),
        ({"sentence_policy": KeepPolicy(relative=0.5, min_keep=0)}, "min_keep must be at least 1"),
        ({"sentence_policy": KeepPolicy(relative=0.5), "sentence_level": False}, "contradicts"),
    ],
)
def test_bad_keep_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AT2Postprocessor(**kwargs)


def test_later_assignments_are_checked_before_scoring(nodes, query):
    pp = AT2Postprocessor(mode="query")
    pp.top_n = 0
    with pytest.raises(ValueError, match="top_n must be a positive int"):
        pp.postprocess_nodes(nodes, query)
    assert not pp.attributor_loader.loaded


def test_sentence_policy_and_its_shorthands():
    assert AT2Postprocessor().resolved_sentence_policy() is None
    assert AT2Postprocessor(sentence_level=True).resolved_sentence_policy() == SENTENCE_POLICY
    own = KeepPolicy(relative=0.3, top_k=2)
    on = AT2Postprocessor(sentence_policy=own)
    assert on.resolved_sentence_policy() == own and on.sentence_level  # turns it on by itself
    assert AT2Postprocessor(sentence_policy=own, sentence_level=True).resolved_sentence_policy() == own

    # The deprecated sentence_relative means what it meant: the sentence policy's relative, with sentence_level.
    with pytest.warns(DeprecationWarning, match="sentence_policy=KeepPolicy"):
        legacy = AT2Postprocessor(sentence_level=True, sentence_relative=0.3)
    assert legacy.sentence_policy == legacy.resolved_sentence_policy() == KeepPolicy(relative=0.3)
    with pytest.warns(DeprecationWarning, match="ignored"):
        assert AT2Postprocessor(sentence_relative=0.3).resolved_sentence_policy() is None
    old_format = {"class_name": "AT2Postprocessor", "mode": "query", "top_k": 1, "min_keep": 1,
                  "sentence_level": False, "sentence_relative": 0.5}  # what to_dict wrote before
    with pytest.warns(DeprecationWarning):
        restored = AT2Postprocessor.from_dict(old_format)
    assert restored.resolved_policy() == DEFAULT_POLICY and restored.resolved_sentence_policy() is None
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="relative must lie in"):
        AT2Postprocessor(sentence_relative=2.0)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="not both"):
        AT2Postprocessor(sentence_relative=0.3, sentence_policy=own)


def test_unknown_arguments_are_refused_by_name():
    with pytest.raises(TypeError, match=r"unknown argument\(s\) 'top_x'") as caught:
        AT2Postprocessor(top_x=5)
    message = str(caught.value)
    assert all(name in message for name in CONTRACT)  # the valid names are listed
    with pytest.raises(TypeError, match=r"'sentence_level_pruning' \(did you mean 'sentence_level'\?\)"):
        AT2Postprocessor(sentence_level_pruning=True)
    with pytest.raises(TypeError, match="top_x"):  # the pydantic routes refuse it too
        AT2Postprocessor.model_validate({"top_x": 5})
    with pytest.raises(TypeError, match="top_x"):
        AT2Postprocessor.from_dict({"class_name": "AT2Postprocessor", "top_x": 5})
    with pytest.raises(TypeError, match="citation_chunksize"):
        AT2CitationQueryEngine(retriever=None, citation_chunksize=64)  # type: ignore[arg-type, call-arg]


def test_draft_mode_skips_the_draft_when_nothing_can_be_pruned(nodes, query):
    pp = AT2Postprocessor(mode="draft", top_n=4)  # four nodes, keeps up to four: the draft could change nothing
    with pytest.warns(UserWarning, match=f"{NOTHING_TO_PRUNE}.*similarity_top_k"):
        out = pp.postprocess_nodes(nodes, query)
    assert not pp.attributor_loader.loaded  # no model loaded, no draft
    assert [n.node_id for n in out] == [n.node_id for n in nodes]  # in their order
    assert [n.score for n in out] == [n.score for n in nodes]
    assert all(n.node.metadata[ATTRIBUTION_SCORE_KEY] is None for n in out)
    assert [n.node.metadata[RETRIEVAL_SCORE_KEY] for n in out] == [n.score for n in nodes]
    assert all(a.node is not b.node for a, b in zip(out, nodes))  # copies, as always

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = pp.postprocess_nodes(nodes[:2], query)
        async_out = asyncio.run(pp.apostprocess_nodes(nodes, query))
    assert not [w for w in caught if NOTHING_TO_PRUNE in str(w.message)]  # once per postprocessor
    assert len(again) == 2 and [n.node_id for n in async_out] == [n.node_id for n in nodes]
    with pytest.warns(UserWarning, match=NOTHING_TO_PRUNE):  # another postprocessor warns again
        AT2Postprocessor(mode="draft", policy=KeepPolicy()).postprocess_nodes(nodes, query)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "draft", "top_n": 4, "relative": 0.0},  # a cut-off could drop nodes
        {"mode": "draft", "top_n": 4, "sentence_level": True},  # sentences could be dropped
        {"mode": "draft", "top_n": 3},  # one node too many
        {"mode": "query", "top_n": 4},  # other modes rank with one cheap prefill pass
    ],
)
def test_nodes_are_scored_whenever_something_could_change(attributor, nodes, query, kwargs):
    pp = AT2Postprocessor(attributor=attributor, max_new_tokens=4, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pp.postprocess_nodes(nodes, query)
    assert not [w for w in caught if NOTHING_TO_PRUNE in str(w.message)]
    assert out and all(n.node.metadata[ATTRIBUTION_SCORE_KEY] is not None for n in out)


def test_readme_shows_the_contract_and_retrieves_more_than_it_keeps():
    text = README.read_text(encoding="utf-8")
    for name in CONTRACT:
        assert f"`{name}`" in text, name
    quick_start = _quick_start(text)
    assert "similarity_top_k=" in quick_start and "top_n=" in quick_start and "AT2LLM(" in quick_start
    assert "sentence_relative" not in quick_start


def test_readme_quick_start_runs_offline(capsys):
    exec(compile(_quick_start(README.read_text(encoding="utf-8")), str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "8,611" in printed or "8611" in printed
    assert "[1]" in printed  # the cited answer's marker


def _quick_start(text: str) -> str:
    """The first Python block under the README's "Quick start" heading."""
    section = text.split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the quick start has no python block"
    return match.group(1)
