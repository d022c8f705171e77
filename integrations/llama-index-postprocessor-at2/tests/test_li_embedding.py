"""AT2BundledEmbedding: the bundled all-MiniLM-L6-v2 as LlamaIndex embeddings, and FAISS retrieval with it."""

from __future__ import annotations

import asyncio

import pytest
import torch
from li_support import FACTS, GOLD, QUESTION

from at2_rag import MiniLMEmbedder


def test_vectors_equal_the_core_embedder(embed_model):
    texts = [text for _, text in FACTS.values()]
    expected = MiniLMEmbedder().encode([QUESTION, *texts])
    assert embed_model.dimension == expected.shape[1] == 384
    got = torch.tensor([embed_model.get_query_embedding(QUESTION), *embed_model.get_text_embedding_batch(texts)])
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got.norm(dim=1), torch.ones(len(got)), atol=1e-5)
    assert asyncio.run(embed_model.aget_query_embedding(QUESTION)) == pytest.approx(got[0].tolist(), abs=1e-6)
    assert embed_model.class_name() == "AT2BundledEmbedding"


def test_faiss_index_retrieves_the_gold_node_first(index):
    retrieved = index.as_retriever(similarity_top_k=2).retrieve(QUESTION)
    assert retrieved[0].node_id == GOLD and retrieved[0].score > retrieved[1].score
