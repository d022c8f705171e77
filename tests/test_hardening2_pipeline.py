"""Second hardening round, the RAG pipeline: bad questions, references, score lists and settings are
refused with one ``InputError`` before retrieval or any model work (issue 26: T6, W4, W9, minor)."""

from __future__ import annotations

from typing import Any

import pytest

from at2_rag import Document, InputError, RAGPipeline
from at2_rag.app.pipeline import check_references

DOCS = [Document(text=t, title=title) for title, t in [
    ("Everest", "Mount Everest is in Nepal."),
    ("Kenya", "Mount Kenya is in Kenya."),
    ("Kilimanjaro", "Kilimanjaro is in Tanzania."),
    ("Rhine", "The Rhine flows through Basel."),
]]


class Untouchable:
    """A model or index that fails the test when used: the pipeline must refuse the input first."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} was used: the bad input reached retrieval or the model")


def pipeline() -> RAGPipeline:
    return RAGPipeline(Untouchable(), Untouchable(), k=4)  # type: ignore[arg-type]


@pytest.mark.parametrize("question", ["x \udcff", "Where \udcff?", "\ud800 alone"])
def test_a_lone_surrogate_in_the_question_is_refused_before_retrieval(question):
    with pytest.raises(InputError, match="the question contains a lone surrogate"):
        pipeline().ask(question)
    with pytest.raises(InputError, match="the question contains a lone surrogate"):
        pipeline().answer(question, DOCS)


@pytest.mark.parametrize("question", ["", "   ", None, 3])
def test_an_empty_or_non_string_question_is_refused_before_retrieval(question):
    with pytest.raises(InputError, match="the question must be a non-empty string"):
        pipeline().ask(question)


@pytest.mark.parametrize("references", ["Nepal", b"Nepal", 3])
def test_references_must_be_a_list_of_answers_not_a_bare_string(references):
    with pytest.raises(InputError, match="references must be a list") as info:
        pipeline().ask("Where is Mount Everest?", references=references)
    assert "references=[answer]" in str(info.value)
    with pytest.raises(InputError, match="references must be a list"):
        pipeline().answer("Where is Mount Everest?", DOCS, references=references)


def test_each_reference_must_be_a_well_formed_string():
    with pytest.raises(InputError, match="reference answer 1 is a int"):
        pipeline().ask("Where is Mount Everest?", references=["Nepal", 3])
    with pytest.raises(InputError, match="reference answer 0 contains a lone surrogate"):
        pipeline().answer("Where is Mount Everest?", DOCS, references=["Tanz\udcffania"])
    # Any collection of strings is accepted, read once (a generator is not consumed twice).
    assert check_references({"Nepal"}) == ("Nepal",)
    assert check_references(a for a in ["Nepal", "Tibet"]) == ("Nepal", "Tibet")
    assert check_references(None) is None


@pytest.mark.parametrize("scores, got", [([0.5], "got 1 scores"), ([0.1] * 5, "got 5 scores"), ([], "got 0 scores"),
                                          (0.5, "got a float"), ("0.5", "got a str")])
def test_a_score_list_of_the_wrong_length_is_refused_before_the_model_pass(scores, got):
    with pytest.raises(InputError, match=f"one score per document: 4 documents, {got}"):
        pipeline().answer("Where is Mount Everest?", DOCS, scores)


def test_a_bare_string_as_documents_is_refused_not_split_into_letters():
    with pytest.raises(InputError, match="documents must be a list"):
        pipeline().answer("Where is Mount Everest?", "Mount Everest is in Nepal.")


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "48", None])
def test_max_new_tokens_is_checked_at_construction(value):
    with pytest.raises(InputError, match="max_new_tokens must be a positive int"):
        RAGPipeline(Untouchable(), Untouchable(), max_new_tokens=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "8"])
def test_k_is_checked_at_construction(value):
    with pytest.raises(InputError, match="k must be a positive int"):
        RAGPipeline(Untouchable(), Untouchable(), k=value)  # type: ignore[arg-type]
