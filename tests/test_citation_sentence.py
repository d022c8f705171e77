"""Citations name the source of every claim of an answer sentence, not only the source of its longest one.

An answer sentence that joins two claims ("born in Warsaw, Poland, but moved to Paris to study …") was
cited by the mean of its tokens' scores, so the source of the longer claim hid the source of the claim
that answers the question. Clause by clause, each claim's source is cited.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2_rag import CITATION_POLICY, AnswerSentence, Document, InputError, KeepPolicy, cite
from at2_rag.sentences import MIN_CLAUSE_WORDS, split_clauses

CURIE = ("Marie Curie was born in Warsaw, Poland, but moved to Paris to study at the University of Paris to "
         "pursue her passion for science and medicine.")


# -- clauses ----------------------------------------------------------------------------------------------


def _texts(text: str) -> list[str]:
    return [text[a:b] for a, b in split_clauses(text)]


def test_a_conjunction_after_a_comma_opens_a_clause_and_a_list_comma_does_not():
    assert _texts(CURIE) == ["Marie Curie was born in Warsaw, Poland,",
                             " but moved to Paris to study at the University of Paris to pursue her passion for "
                             "science and medicine."]
    assert _texts("He was born in Warsaw, Poland, in 1867.") == ["He was born in Warsaw, Poland, in 1867."]
    assert _texts("The river is long; it floods every spring.") == ["The river is long;", " it floods every spring."]
    assert _texts("He climbed the peak – which nobody had done before.") == [
        "He climbed the peak –", " which nobody had done before."]


def test_a_stretch_too_short_for_a_claim_joins_its_neighbour():
    assert MIN_CLAUSE_WORDS == 3
    assert _texts("Yes, and the summit is 5,895 metres high.") == ["Yes, and the summit is 5,895 metres high."]
    assert _texts("The summit is high, and cold.") == ["The summit is high, and cold."]
    assert split_clauses("") == [] and split_clauses("abc", 2, 2) == []


def test_clauses_of_a_span_stay_inside_it():
    text = "Intro sentence. The peak is high, but the pass is low. Outro."
    start, end = 16, 54
    spans = split_clauses(text, start, end)
    assert spans[0][0] == start and spans[-1][1] == end
    assert [text[a:b] for a, b in spans] == ["The peak is high,", " but the pass is low."]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*"ab ,;:–-\n.", "and ", "but ", "which ", "Warsaw"]), max_size=40).map("".join))
def test_clauses_tile_the_sentence(text):
    spans = split_clauses(text)
    if not text:
        assert spans == []
        return
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a < b for a, b in spans) and all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))


# -- citing clause by clause -------------------------------------------------------------------------------


def _attribution(answer: str, token_texts: list[str], token_scores: list[list[float]]):
    """One answer sentence over 3 sources, its tokens at the offsets their texts give, its sentence scores
    the mean of the token scores (as the attributor makes them)."""
    assert "".join(token_texts) == answer
    starts = [sum(len(t) for t in token_texts[:i]) for i in range(len(token_texts))]
    scores = torch.tensor(token_scores)
    sources = [SimpleNamespace(document=0, text=f"source {i}", start=0, end=8) for i in range(3)]
    sentence = AnswerSentence(answer, 0, len(answer), scores.mean(dim=0), tuple(range(len(token_texts))))
    att = SimpleNamespace(sources=sources, prompt=SimpleNamespace(documents=[Document("d")]),
                          sentences=[sentence], answer=answer)
    return att, scores, starts


# "Born in Warsaw," draws on source 0 (three tokens); "but moved to Paris to study there." on source 1 (seven).
TOKENS = ["Born", " in", " Warsaw,", " but", " moved", " to", " Paris", " to", " study", " there."]
SCORES = [[0.3, 0.0, 0.02]] * 3 + [[0.0, 0.4, 0.01]] * 7


def test_each_claims_source_is_cited_strongest_first():
    att, scores, starts = _attribution("".join(TOKENS), TOKENS, SCORES)
    # Sentence means: source 0 = 0.9/10 = 0.09, source 1 = 2.8/10 = 0.28: under half, so not cited.
    assert [s.source for s in cite(att)[0].sources] == [1]
    cited = cite(att, token_scores=scores, token_starts=starts)[0].sources
    # Clause means: "Born in Warsaw," 0 → 0.3 (2 → 0.02, under half); the rest 1 → 0.4 (2 → 0.01).
    assert [s.source for s in cited] == [1, 0]
    assert [s.score for s in cited] == pytest.approx([0.4, 0.3])


def test_a_one_clause_sentence_is_cited_as_before():
    tokens = ["The", " summit", " is", " high."]
    att, scores, starts = _attribution("".join(tokens), tokens, [[0.1, 0.3, 0.2], [0.0, 0.2, 0.1],
                                                                [0.2, 0.1, 0.0], [0.1, 0.2, 0.3]])
    before = cite(att)[0].sources
    after = cite(att, token_scores=scores, token_starts=starts)[0].sources
    assert [(s.source, s.score) for s in after] == [(s.source, s.score) for s in before] != []


def test_clause_citations_keep_the_policys_limit():
    att, scores, starts = _attribution("".join(TOKENS), TOKENS, [[0.3, 0.0, 0.29]] * 3 + [[0.0, 0.4, 0.01]] * 7)
    # Clause 1 picks sources 0 and 2 (0.29 >= 0.3 / 2), clause 2 picks source 1: all three, the policy's most.
    assert [s.source for s in cite(att, token_scores=scores, token_starts=starts)[0].sources] == [1, 0, 2]
    assert CITATION_POLICY.top_k == 3
    one = cite(att, KeepPolicy(top_k=1, min_keep=0), token_scores=scores, token_starts=starts)[0].sources
    assert [s.source for s in one] == [1]


def test_a_token_inside_a_split_character_goes_with_the_token_before():
    att, scores, starts = _attribution("".join(TOKENS), TOKENS, SCORES)
    starts[3] = None  # " but" now belongs with " Warsaw," to the first clause: source 0 there is 0.9 / 4
    cited = cite(att, token_scores=scores, token_starts=starts)[0].sources
    assert [s.source for s in cited] == [1, 0]
    assert [s.score for s in cited] == pytest.approx([0.4, 0.225])


def test_token_scores_and_starts_come_together_one_per_token():
    att, scores, starts = _attribution("".join(TOKENS), TOKENS, SCORES)
    with pytest.raises(InputError, match="go together"):
        cite(att, token_scores=scores)
    with pytest.raises(InputError, match="go together"):
        cite(att, token_starts=starts)
    with pytest.raises(InputError, match="10 rows but token_starts 9"):
        cite(att, token_scores=scores, token_starts=starts[:-1])


# -- the case as a user meets it: at2-rag ask over a notes folder ----------------------------------------------


@pytest.fixture
def notes(tmp_path):
    (tmp_path / "curie.md").write_text(
        "# Marie Curie\n\nMarie Curie was a physicist and chemist who conducted pioneering research on "
        "radioactivity. She was born in Warsaw in 1867. She later moved to Paris to study at the University "
        "of Paris. She was the first woman to win a Nobel Prize, and the only person to win Nobel Prizes in "
        "two different sciences.\n", encoding="utf-8")
    (tmp_path / "eiffel.md").write_text(
        "# The Eiffel Tower\n\nThe Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in "
        "1889 for the World's Fair. It is named after the engineer Gustave Eiffel, whose company designed and "
        "built it.\n", encoding="utf-8")
    (tmp_path / "amazon.txt").write_text(
        "The Amazon river flows through Brazil, Peru and Colombia into the Atlantic Ocean. It is the largest "
        "river in the world by discharge volume.\n", encoding="utf-8")
    return tmp_path


@pytest.mark.slow
def test_the_sentence_that_states_the_birthplace_is_cited(attributor, notes):
    from at2_rag.app.corpus import load_folder
    from at2_rag.app.pipeline import RAGPipeline

    docs = load_folder(notes)
    result = RAGPipeline(attributor, None, k=3).answer("In which city was Marie Curie born?", docs)  # type: ignore[arg-type]
    assert [docs[i].metadata["source"] for i in result.kept] == ["curie.md"]
    stating = [c for c in result.citations if "Warsaw" in c.text]
    assert stating, f"the answer does not name Warsaw: {result.answer!r}"
    cited = [s.text.strip() for s in stating[0].sources]
    assert "She was born in Warsaw in 1867." in cited, cited
    # The answer sentence also says she moved to Paris: that claim's source is cited too.
    assert "She later moved to Paris to study at the University of Paris." in cited, cited
    # The sentence-level rule alone (the mean over all the sentence's tokens) misses the birthplace here.
    assert "She was born in Warsaw in 1867." not in [s.text.strip() for c in cite(result.final) for s in c.sources
                                                     if "Warsaw" in c.text]
    assert result.final.features is None  # the features citations needed are not kept on the result


# -- AT2Attributor.cited: the one path every component cites through ------------------------------------------

CURIE_NOTE = ("Marie Curie was a physicist and chemist who conducted pioneering research on radioactivity. She was "
              "born in Warsaw in 1867. She later moved to Paris to study at the University of Paris.")
EIFFEL_NOTE = "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was completed in 1889 for the World's Fair."
TWO_CLAIMS = "Marie Curie was born in Warsaw, Poland, but moved to Paris to study at the University of Paris."
BORN, MOVED = "She was born in Warsaw in 1867.", "She later moved to Paris to study at the University of Paris."


@pytest.mark.slow
def test_cited_cites_each_claim_of_an_answer_written_elsewhere_and_drops_the_features(attributor):
    a = attributor.attribute("Where was Marie Curie born and where did she study?", [CURIE_NOTE, EIFFEL_NOTE],
                             TWO_CLAIMS, granularity="sentence", keep_features=True)
    slim, (citation,) = attributor.cited(a)
    cited = [s.text.strip() for s in citation.sources]
    assert cited[:2] == [MOVED, BORN], cited  # each claim's source, strongest first
    assert [s.text.strip() for s in cite(a)[0].sources] == [MOVED]  # the sentence mean alone cites one claim
    assert slim.features is None and slim.query_features is None and a.features is not None
    assert slim.scores.equal(a.scores)


@pytest.mark.slow
def test_cited_uses_sentence_scores_once_ablations_refined_them_or_without_features(attributor):
    question, docs = "Where was Marie Curie born and where did she study?", [CURIE_NOTE, EIFFEL_NOTE]
    a = attributor.attribute(question, docs, TWO_CLAIMS, granularity="sentence", keep_features=True)
    refined = attributor.refined(a, 4)
    assert refined.method == "at2+4" and refined.features is not None
    assert attributor.cited(refined)[1] == cite(refined)
    bare = attributor.attribute(question, docs, TWO_CLAIMS, granularity="sentence")
    assert bare.features is None and attributor.cited(bare)[1] == cite(bare)
