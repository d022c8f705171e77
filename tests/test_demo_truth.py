"""The full-context vs pruned answer comparison, and how the terminal, HTML and JSON views report it."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest

from at2_rag.app.pipeline import AnswerComparison, QAResult, compare_answers, correctness_tally
from at2_rag.app.report import render_html
from at2_rag.documents import Document


def _result(full: str | None, pruned: str, references: tuple[str, ...] | None = None) -> QAResult:
    """A QAResult with the given answers (two chunks, the first kept), built without a model."""
    docs = [Document(text="Kibo is the highest summit.", title="Kilimanjaro", id="kili"),
            Document(text="Mount Kenya is second.", title="Mount Kenya", id="kenya")]
    prune = SimpleNamespace(mode="draft" if full is not None else "query", draft=full or "", attribution=None,
                            kept=[0], dropped=[1], scores=[0.6, 0.1], keep_scores=[1.0, -1.0], kept_tokens=9,
                            total_tokens=17)
    final = SimpleNamespace(answer=pruned, sources=[], scores=np.zeros(0), prompt=SimpleNamespace(documents=docs[:1]))
    return QAResult("What is the highest mountain in Africa?", docs, [0.8, 0.5], prune, final, [], {}, references)


@pytest.mark.parametrize("full, pruned, refs, expected", [
    ("Kilimanjaro.", "  kilimanjaro ", None, AnswerComparison(False, None, None)),
    ("The answer is Kilimanjaro!", "answer is  KILIMANJARO", ["Kilimanjaro"], AnswerComparison(False, True, True)),
    ("Kilimanjaro", "Mount Kenya", None, AnswerComparison(True, None, None)),
    ("Kilimanjaro", "Mount Kenya", ["Kilimanjaro"], AnswerComparison(True, True, False)),
    ("Mount Kenya", "It is Kilimanjaro.", ["Kilimanjaro"], AnswerComparison(True, False, True)),
    ("Mount Kenya", "Mount Elgon", ["Kilimanjaro"], AnswerComparison(True, False, False)),
    (None, "Kilimanjaro", ["Kilimanjaro"], AnswerComparison(None, None, True)),
    (None, "Kilimanjaro", None, AnswerComparison(None, None, None)),
    ("Kilimanjaro", "Kilimanjaro", [], AnswerComparison(False, None, None)),
    ("Kilimanjaro", "Kenya", ["", "..."], AnswerComparison(True, None, None)),
])
def test_compare_answers(full, pruned, refs, expected):
    assert compare_answers(full, pruned, refs) == expected


def test_verdicts_say_what_changed_and_never_rank_the_pruned_answer_higher():
    changed_refs = compare_answers("Kilimanjaro", "Mount Kenya", ["Kilimanjaro"]).verdict
    assert changed_refs == "Pruning changed the answer: full-context answer correct, pruned answer incorrect."
    pruned_right = compare_answers("Mount Kenya", "Kilimanjaro", ["Kilimanjaro"]).verdict
    assert pruned_right == "Pruning changed the answer: full-context answer incorrect, pruned answer correct."
    no_refs = compare_answers("Kilimanjaro", "Mount Kenya").verdict
    assert no_refs.startswith("Pruning changed the answer") and "differ" in no_refs
    assert compare_answers("Kilimanjaro", "kilimanjaro").verdict == "Pruning did not change the answer."
    assert "unknown" in compare_answers(None, "Kilimanjaro").verdict
    for text in (changed_refs, pruned_right, no_refs):
        assert not any(w in text.lower() for w in ("better", "improv", "fixed"))


def test_correctness_tally():
    cmps = [compare_answers("Kilimanjaro", "Kilimanjaro", ["Kilimanjaro"]),
            compare_answers("Hillary", "Mallory", ["Hillary"]),
            compare_answers("1953", "1954", ["1954"]),
            compare_answers("Andes", "Alps")]  # no references: counts only as a change
    assert correctness_tally(cmps) == (
        "pruned answer correct in 2 of 3, full-context answer correct in 2 of 3; pruning changed the answer in 3 of 4"
    )
    assert correctness_tally([compare_answers("a", "b")]) is None
    assert correctness_tally([]) is None
    query = [compare_answers(None, "Kilimanjaro", ["Kilimanjaro"]), compare_answers("Alps", "Andes", ["Andes"])]
    assert correctness_tally(query) == (
        "pruned answer correct in 2 of 2, full-context answer correct in 0 of 1 "
        "(no full-context answer for the other 1); pruning changed the answer in 1 of 1"
    )


def test_json_carries_the_comparison():
    changed = json.loads(json.dumps(_result("Kilimanjaro.", "Mount Kenya.", ("Kilimanjaro",)).to_dict()))
    assert changed["pruning_changed_answer"] is True
    assert changed["full_correct"] is True and changed["pruned_correct"] is False
    assert changed["reference_answers"] == ["Kilimanjaro"]
    assert changed["comparison"].startswith("Pruning changed the answer")
    assert changed["full_context_answer"] == "Kilimanjaro." and changed["answer"] == "Mount Kenya."
    unknown_refs = _result("Kilimanjaro.", "Mount Kenya.").to_dict()
    assert unknown_refs["pruning_changed_answer"] is True
    assert not {"full_correct", "pruned_correct", "reference_answers"} & set(unknown_refs)
    same = _result("Kilimanjaro.", "kilimanjaro", ("Kilimanjaro",)).to_dict()
    assert same["pruning_changed_answer"] is False and same["full_correct"] is same["pruned_correct"] is True
    query = _result(None, "Kilimanjaro", ("Kilimanjaro",)).to_dict()
    assert query["pruning_changed_answer"] is None and query["full_correct"] is None and query["pruned_correct"]


def test_html_carries_the_comparison():
    page = render_html([_result("Kilimanjaro.", "Mount Kenya.", ("Kilimanjaro",)),
                        _result("Kilimanjaro", "kilimanjaro", ("Kilimanjaro",)),
                        _result("Kilimanjaro.", "Mount Kenya.")])
    assert page.count('class="verdict changed" data-changed="changed"') == 2
    assert page.count('class="verdict same" data-changed="same"') == 1
    assert "Pruning changed the answer: full-context answer correct, pruned answer incorrect." in page
    assert "there are no reference answers to say which is right" in page
    assert page.count('<span class="flag correct">correct</span>') == 3
    assert page.count('<span class="flag incorrect">incorrect</span>') == 1
    assert ('<p class="tally">Against the reference answers: pruned answer correct in 1 of 2, full-context answer '
            "correct in 2 of 2; pruning changed the answer in 2 of 3</p>") in page
    assert "tally" not in render_html([_result("a", "b")]).split("</style>")[1]


def test_terminal_says_pruning_changed_the_answer():
    from rich.console import Console

    from at2_rag.app.terminal import print_result

    def shown(r: QAResult) -> str:
        buf = io.StringIO()
        print_result(Console(file=buf, width=200, color_system=None), r)
        return buf.getvalue()

    out = shown(_result("Kilimanjaro.", "Mount Kenya.", ("Kilimanjaro",)))
    assert "Full-context answer (correct): Kilimanjaro." in out
    assert "Answer from the kept chunks (incorrect)" in out
    assert "Pruning changed the answer: full-context answer correct, pruned answer incorrect." in out
    out = shown(_result("Kilimanjaro.", "Mount Kenya."))
    assert "(correct)" not in out and "(incorrect)" not in out
    assert "Pruning changed the answer: the two answers differ" in out
    assert "Pruning did not change the answer." in shown(_result("Kilimanjaro.", "kilimanjaro"))
