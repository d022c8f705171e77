"""First-stage retrievers of the hard-retrieval benchmark: BM25 and reciprocal-rank fusion against hand
computations, the pool's ids against ``build_nq_rag``'s, list building and its determinism."""

from __future__ import annotations

import gzip
import json
import math
import zlib

import pytest
import torch

from at2_rag.app.first_stage import (
    BM25,
    Condition,
    build_lists,
    hit_rates,
    nq_pool,
    passage_id,
    reciprocal_rank_fusion,
    tokenize,
)
from at2_rag.errors import InputError

CORPUS = ["The cat sat.", "The dog sat on the mat", "cat cat dog", "A bird"]
"""Four documents of 3, 6, 3 and 2 tokens: N = 4, avgdl = 14 / 4 = 3.5."""


def test_tokenize_lowercases_word_runs_without_stemming():
    assert tokenize("Marie Curie's birth-place, 1867: Warsaw_city cats") == [
        "marie", "curie", "s", "birth", "place", "1867", "warsaw_city", "cats"]
    assert tokenize("Ångström ÉTÉ") == ["ångström", "été"]


def test_bm25_matches_a_hand_computation():
    # k1 = 1.5, b = 0.75; K(len) = 1.5 · (0.25 + 0.75 · len / 3.5): K(3) = 1.339286, K(6) = 2.303571, K(2) = 1.017857.
    # idf(cat) = idf(dog) = ln(1 + (4 - 2 + 0.5) / (2 + 0.5)) = ln 2; idf(bird) = ln(1 + 3.5 / 1.5) = ln(10/3).
    # d0: cat tf 1            ln2 · 2.5 / (1 + 1.339286)                              = 0.740768
    # d1: dog tf 1            ln2 · 2.5 / (1 + 2.303571)                              = 0.524544
    # d2: cat tf 2, dog tf 1  ln2 · 5 / (2 + 1.339286) + ln2 · 2.5 / (1 + 1.339286)   = 1.778635
    # d3: bird tf 1           ln(10/3) · 2.5 / (1 + 1.017857)                         = 1.491648
    bm25 = BM25(CORPUS)
    assert bm25.avgdl == 3.5
    assert bm25.scores("cat dog bird") == pytest.approx([0.740768, 0.524544, 1.778635, 1.491648], abs=1e-5)
    assert [i for i, _ in bm25.top("cat dog bird", 4)] == [2, 3, 0, 1]
    # "the": df 2 (d0 tf 1, d1 tf 2): d1 = ln2 · 5 / (2 + 2.303571) + ln2 · 2.5 / (1 + 2.303571) = 1.329860
    assert bm25.scores("THE dog") == pytest.approx([0.740768, 1.329860, 0.740768, 0.0], abs=1e-5)


def test_bm25_repeated_query_words_count_each_time_and_unknown_words_nothing():
    bm25 = BM25(CORPUS)
    once, twice = bm25.scores("bird"), bm25.scores("bird bird")
    assert twice == pytest.approx([2 * s for s in once])
    assert bm25.scores("zebra") == [0.0] * 4
    assert bm25.top("zebra", 2) == [(0, 0.0), (1, 0.0)]  # ties go to the earlier document
    with pytest.raises(InputError, match="at least one document"):
        BM25([])


def test_bm25_scores_do_not_depend_on_corpus_order():
    forward = BM25(CORPUS).scores("cat dog bird the")
    backward = BM25(CORPUS[::-1]).scores("cat dog bird the")
    assert backward[::-1] == pytest.approx(forward)


def test_reciprocal_rank_fusion_matches_a_hand_computation():
    fused = reciprocal_rank_fusion([["x", "y", "z"], ["y", "w"]], k=60)
    # y = 1/62 + 1/61, x = 1/61, w = 1/62, z = 1/63
    assert [item for item, _ in fused] == ["y", "x", "w", "z"]
    assert [s for _, s in fused] == pytest.approx([1 / 62 + 1 / 61, 1 / 61, 1 / 62, 1 / 63])
    # ties: the better best rank first, then the earlier ranking
    assert [item for item, _ in reciprocal_rank_fusion([["a", "b"], ["c", "d"]])] == ["a", "c", "b", "d"]
    assert [item for item, _ in reciprocal_rank_fusion([["c", "d"], ["a", "b"]])] == ["c", "a", "d", "b"]
    assert reciprocal_rank_fusion([["a"]], k=0) == [("a", 1.0)]


class HashEmbedder:
    """A deterministic stand-in for MiniLM: the sum of a fixed random vector per word, unit length
    (random directions, so no two passages tie for a question)."""

    dimension = 32

    def encode(self, texts):
        out = torch.zeros(len(texts), self.dimension)
        for i, text in enumerate(texts):
            for tok in tokenize(text):
                g = torch.Generator().manual_seed(zlib.crc32(tok.encode()))
                out[i] += torch.randn(self.dimension, generator=g)
        return torch.nn.functional.normalize(out, dim=-1)


NQ = [
    {"id": "q1", "question": "where was marie curie born", "answers": ["Warsaw"], "title": "Marie Curie",
     "text": "Marie Curie was born in Warsaw in 1867."},
    {"id": "q2", "question": "how tall is mount everest", "answers": ["8,849 m"], "title": "Mount Everest",
     "text": "Mount Everest is 8,849 metres tall, the highest mountain."},
    {"id": "q3", "question": "when was the eiffel tower completed", "answers": ["1889"], "title": "Eiffel Tower",
     "text": "The Eiffel Tower was completed in 1889 in Paris."},
    {"id": "q4", "question": "which river flows through brazil", "answers": ["Amazon"], "title": "Amazon",
     "text": "The Amazon river flows through Brazil, Peru and Colombia."},
    {"id": "q5", "question": "who was born in warsaw in 1867", "answers": ["Marie Curie"], "title": "Marie Curie",
     "text": "Marie Curie was born in Warsaw in 1867."},  # the same passage as q1: one pool entry
]


@pytest.fixture
def nq_file(tmp_path):
    path = tmp_path / "nq.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for row in NQ:
            fh.write(json.dumps(row) + "\n")
    return path


def test_pool_ids_are_those_build_nq_rag_writes(nq_file, tmp_path):
    from at2_rag.app.nq_rag import build_nq_rag
    from at2_rag.research.data import read_jsonl

    rows, pool = nq_pool(nq_file)
    assert len(pool) == 4 and [p["title"] for p in pool] == ["Marie Curie", "Mount Everest", "Eiffel Tower", "Amazon"]
    assert rows[0]["gold_id"] == rows[4]["gold_id"] == passage_id("Marie Curie", "Marie Curie was born in Warsaw in 1867.")
    build_nq_rag(nq_file, tmp_path / "rag.jsonl", k=4, embedder=HashEmbedder())
    built = read_jsonl(tmp_path / "rag.jsonl")
    assert [e["gold_document_ids"][0] for e in built] == [r["gold_id"] for r in rows]
    assert {d["id"] for e in built for d in e["documents"]} == {p["id"] for p in pool}


def fake_minilm(n_pool: int, n_questions: int) -> list[list[tuple[int, float]]]:
    """A dense retriever that lists the pool backwards for every question (scores 1, 0.9, …)."""
    return [[(i, round(1 - 0.1 * r, 6)) for r, i in enumerate(range(n_pool - 1, -1, -1))] for _ in range(n_questions)]


CONDS = {"minilm-k2": Condition("minilm", 2), "bm25-k3": Condition("bm25", 3), "merge-k2": Condition("merge", 2)}


def test_build_lists_orders_each_condition_and_finds_the_gold_passage(nq_file):
    from at2_rag.app.first_stage import pool_documents
    from at2_rag.app.retrieval import passage_text

    rows, pool = nq_pool(nq_file)
    dense = fake_minilm(len(pool), len(rows))
    lists = build_lists(rows, pool, dense, CONDS)
    ids = [p["id"] for p in pool]
    bm25 = BM25([passage_text(d) for d in pool_documents(pool)])
    for row, q in zip(rows, lists):
        assert q["id"] == row["id"] and q["gold_id"] == row["gold_id"]
        assert q["lists"]["minilm-k2"] == {"ids": [ids[3], ids[2]], "scores": [1.0, 0.9],
                                           "gold_rank": [ids[3], ids[2]].index(row["gold_id"])
                                           if row["gold_id"] in ids[2:] else None}
        top = bm25.top(row["question"], 3)
        assert q["lists"]["bm25-k3"]["ids"] == [ids[i] for i, _ in top]
        assert q["lists"]["bm25-k3"]["scores"] == pytest.approx([s for _, s in top], abs=1e-6)
        merged = reciprocal_rank_fusion([[3, 2, 1, 0], [i for i, _ in bm25.top(row["question"], 4)]])[:2]
        assert q["lists"]["merge-k2"]["ids"] == [ids[i] for i, _ in merged]
        for lst in q["lists"].values():
            gold = lst["gold_rank"]
            assert (gold is None) == (row["gold_id"] not in lst["ids"])
            assert gold is None or lst["ids"][gold] == row["gold_id"]
    # BM25 finds each of these questions' own passage first
    assert [q["lists"]["bm25-k3"]["gold_rank"] for q in lists] == [0, 0, 0, 0, 0]


def test_build_lists_is_deterministic_and_checks_its_input(nq_file):
    rows, pool = nq_pool(nq_file)
    dense = fake_minilm(len(pool), len(rows))
    first = json.dumps(build_lists(rows, pool, dense, CONDS))
    rows2, pool2 = nq_pool(nq_file)
    assert json.dumps(build_lists(rows2, pool2, fake_minilm(len(pool2), len(rows2)), CONDS)) == first
    with pytest.raises(InputError, match="one per question"):
        build_lists(rows, pool, dense[:-1], CONDS)
    with pytest.raises(InputError, match="MiniLM hits"):
        build_lists(rows, pool, [d[:2] for d in dense], CONDS)


def test_hit_rates_count_top1_top3_and_presence():
    lists = [{"lists": {"c": {"gold_rank": r}}} for r in (0, 0, 2, 5, None)]
    assert hit_rates(lists, "c") == {"questions": 5, "top1": 0.4, "top3": 0.6, "topk": 0.8}
    assert hit_rates([], "c") == {"questions": 0}


def test_nq_pool_refuses_an_empty_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="no rows"):
        nq_pool(empty)


def test_idf_is_never_negative():
    bm25 = BM25(["the a", "the b", "the c"])  # "the" in every document
    assert bm25.idf["the"] == pytest.approx(math.log(1 + 0.5 / 3.5)) and bm25.idf["the"] > 0
