"""The main job end to end: demo path, HTML report in headless Chromium, the ``ask`` command."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import pytest

from at2_rag.app.cli import main
from at2_rag.app.corpus import sample_questions
from at2_rag.app.demo import run_demo
from at2_rag.app.pipeline import DEFAULT_KEEP, correctness_tally
from at2_rag.research.data import is_correct, normalize_answer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Two demo questions, run as `at2-rag demo` runs them, with the HTML report and the terminal output."""
    html = tmp_path_factory.mktemp("demo") / "report.html"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        results = run_demo(questions=2, html=str(html))
    return results, html, " ".join(out.getvalue().split())


def test_demo_prunes_regenerates_and_cites(demo):
    results, _, _ = demo
    questions = sample_questions()
    assert [r.question for r in results] == [q.question for q in questions[:2]]
    for r, q in zip(results, questions):
        ids = [d.id for d in r.retrieved]
        assert len(ids) == 8 and len(r.kept) == DEFAULT_KEEP and len(r.dropped) == 8 - DEFAULT_KEEP
        assert set(q.gold) <= set(ids), "the sample corpus must retrieve the gold passage"
        assert any(ids[i] in q.gold for i in r.kept), f"gold passage pruned away: {r.prune.scores}"
        assert r.prune.kept_tokens < r.prune.total_tokens
        assert r.full_context_answer and r.answer
        # Citations point into the final (pruned) prompt, with spans that are the cited text.
        for c in r.citations:
            assert r.answer[c.start : c.end] == c.text
            for s in c.sources:
                doc = r.final.prompt.documents[s.document]
                assert doc.text[s.start : s.end] == s.text
                assert doc.id == ids[r.kept[s.document]]
    africa = results[1]
    assert "kilimanjaro" in africa.answer.lower()
    cited = {africa.retrieved[africa.kept[d]].id for c in africa.citations for d in c.documents[:1]}
    assert "kilimanjaro" in cited
    assert json.loads(json.dumps(africa.to_dict()))["retrieved"][0]["id"] == africa.retrieved[0].id


def test_demo_tells_whether_pruning_changed_the_answer(demo):
    results, html, shown = demo
    page = html.read_text(encoding="utf-8")
    for r, q in zip(results, sample_questions()):
        assert r.references == q.answers
        changed = normalize_answer(r.full_context_answer) != normalize_answer(r.answer)
        full_ok, pruned_ok = is_correct(r.full_context_answer, q.answers), is_correct(r.answer, q.answers)
        data = json.loads(json.dumps(r.to_dict()))
        assert (data["pruning_changed_answer"], data["full_correct"], data["pruned_correct"]) == (
            changed, full_ok, pruned_ok)
        verdict = r.comparison.verdict
        assert verdict.startswith("Pruning changed the answer" if changed else "Pruning did not change the answer")
        assert f"full-context answer {'correct' if full_ok else 'incorrect'}" in verdict
        assert f"pruned answer {'correct' if pruned_ok else 'incorrect'}" in verdict
        assert verdict in shown and verdict in page
    tally = correctness_tally([r.comparison for r in results])
    n_pruned = sum(is_correct(r.answer, r.references) for r in results)
    n_full = sum(is_correct(r.full_context_answer, r.references) for r in results)
    assert tally.startswith(f"pruned answer correct in {n_pruned} of 2, full-context answer correct in {n_full} of 2")
    assert f"Against the reference answers: {tally}" in shown and tally in page
    assert page.count('class="verdict ') == 2


def test_html_report_renders_and_links_in_chromium(demo, tmp_path):
    from playwright.sync_api import sync_playwright

    results, html, _ = demo
    assert os.path.exists(CHROMIUM), "headless Chromium is missing: `apt-get install chromium` (make test does it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.as_uri())
        assert page.locator("section.question").count() == 2
        assert page.locator(".chunk").count() == 16
        assert page.locator(".chunk.dropped").count() == 2 * (8 - DEFAULT_KEEP)
        sentence = page.locator(".ans-sent[data-cites]:not([data-cites=''])").first
        target_ids = sentence.get_attribute("data-cites").split()
        first = page.locator(f"#{target_ids[0]}")
        assert "active" not in first.get_attribute("class")
        sentence.hover()
        assert "active" in first.get_attribute("class"), "hovering an answer sentence highlights its sources"
        assert "score" in first.get_attribute("title")
        page.mouse.move(0, 0)
        assert "active" not in first.get_attribute("class")
        sentence.click()  # pinned: stays highlighted after the pointer leaves
        page.mouse.move(0, 0)
        assert "active" in first.get_attribute("class")
        # The highlighted sentence is the cited text of the answer's first citation.
        r = results[0]
        cited = next(c for c in r.citations if c.sources).sources[0]
        assert first.inner_text() == cited.text
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not errors, errors
    assert shot.stat().st_size > 20_000


def test_ask_over_a_folder(tmp_path, capsys, monkeypatch, tmp_cache):
    corpus = tmp_path / "notes"
    corpus.mkdir()
    (corpus / "tea.txt").write_text("Green tea comes from the leaves of Camellia sinensis. It is popular in Japan.")
    (corpus / "coffee.md").write_text("Coffee beans are the seeds of the Coffea plant. Brazil grows the most coffee.")
    (corpus / "cocoa.txt").write_text("Cocoa beans come from the cacao tree. Ivory Coast grows the most cocoa.")
    html = tmp_path / "ask.html"
    args = ["ask", "Which country grows the most coffee?", "--corpus", str(corpus), "--top-k", "3", "--keep", "1",
            "--mode", "query", "--max-new-tokens", "24", "--json", "--html", str(html), "--reference-answer", "Brazil"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    kept = [d for d in out["retrieved"] if d["kept"]]
    assert [d["id"] for d in kept] == ["coffee.md#0"]
    assert out["mode"] == "query" and out["full_context_answer"] is None and out["answer"].strip()
    # Query mode drafts no full-context answer: nothing to compare, but the reference still judges the answer.
    assert out["pruning_changed_answer"] is None and out["full_correct"] is None
    assert out["pruned_correct"] is is_correct(out["answer"], ["Brazil"]) and out["reference_answers"] == ["Brazil"]
    assert out["kept_tokens"] < out["retrieved_tokens"]
    assert html.read_text(encoding="utf-8").count('class="chunk ') == 3
    assert len(list((tmp_path / "cache" / "indexes").iterdir())) == 1
    assert main(args) == 0  # second run: same index from the cache
    assert len(list((tmp_path / "cache" / "indexes").iterdir())) == 1


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "no .txt or .md files"),
])
def test_ask_bad_corpus_is_a_message_not_a_traceback(tmp_path, capsys, make, match):
    assert main(["ask", "anything?", "--corpus", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_ask_empty_question(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("Some text here.")
    assert main(["ask", "   ", "--corpus", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "question is empty" in err and "Traceback" not in err


def test_bad_numbers_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ask", "q?", "--corpus", ".", "--keep", "0"])
    assert e.value.code == 2 and "at least 1" in capsys.readouterr().err
