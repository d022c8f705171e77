"""AT2BundledEmbeddings: offline vectors, and a FAISS store built with them."""

from __future__ import annotations

import asyncio
import math

from lc_support import GOLD, QUESTION, TEXTS


def test_vectors_are_unit_length_and_consistent(embeddings):
    vectors = embeddings.embed_documents(TEXTS)
    assert len(vectors) == len(TEXTS) and all(len(v) == 384 for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
    query = embeddings.embed_query(TEXTS[2])
    assert max(abs(a - b) for a, b in zip(query, vectors[2])) < 1e-5
    assert asyncio.run(embeddings.aembed_query(TEXTS[2])) == query
    assert embeddings.embed_documents([]) == []


def test_the_question_is_nearest_to_its_document(embeddings):
    query = embeddings.embed_query(QUESTION)
    sims = [sum(a * b for a, b in zip(query, v)) for v in embeddings.embed_documents(TEXTS)]
    assert max(range(len(sims)), key=sims.__getitem__) == GOLD


def test_faiss_store_finds_the_gold_document(vector_store):
    (hit,) = vector_store.similarity_search(QUESTION, k=1)
    assert hit.page_content == TEXTS[GOLD] and hit.metadata["rank"] == GOLD
