"""Chunking, folder loading, the sample corpus, and the FAISS index (against brute-force cosine)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from at2_rag import Document, InputError
from at2_rag.app.corpus import chunk_text, load_folder, sample_corpus, sample_questions
from at2_rag.app.retrieval import VectorIndex, cached_index

WORDS = st.text(alphabet="abcdefgh", min_size=1, max_size=6)
SENTENCE = st.lists(WORDS, min_size=1, max_size=12).map(lambda ws: " ".join(ws).capitalize() + ".")
PARAGRAPH = st.lists(SENTENCE, min_size=1, max_size=6).map(" ".join)
TEXT = st.lists(PARAGRAPH, min_size=1, max_size=4).map("\n\n".join)


@settings(max_examples=150, deadline=None)
@given(text=TEXT, limit=st.integers(1, 30))
def test_chunks_cover_every_word_in_order_within_the_limit(text, limit):
    chunks = chunk_text(text, limit)
    # The words of the chunks, in order, are exactly the words of the text.
    assert [w for a, b in chunks for w in text[a:b].split()] == text.split()
    for a, b in chunks:
        assert len(text[a:b].split()) <= limit
        assert "\n\n" not in text[a:b].strip()  # a paragraph break always ends a chunk
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(chunks, chunks[1:]))


def test_chunks_keep_sentences_whole_when_they_fit():
    text = "One two three. Four five six. Seven eight nine."
    assert [text[a:b] for a, b in chunk_text(text, 6)] == ["One two three. Four five six.", "Seven eight nine."]
    with pytest.raises(ValueError):
        chunk_text(text, 0)


def test_load_folder(tmp_path):
    (tmp_path / "a.txt").write_text("Alpha is first. Beta is second.\n\nGamma starts a paragraph.", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# Notes\n\nDelta lives here.", encoding="utf-8")
    (tmp_path / "c.bin.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "ignored.csv").write_text("x,y", encoding="utf-8")
    with pytest.warns(UserWarning, match="skipped 1 binary"):
        docs = load_folder(tmp_path)
    assert [d.metadata["source"] for d in docs] == ["a.txt", "a.txt", "sub/b.md", "sub/b.md"]
    assert docs[0].text == "Alpha is first. Beta is second."
    assert docs[1].id == "a.txt#1" and docs[2].title == "b"
    raw = (tmp_path / "a.txt").read_text(encoding="utf-8")
    m = docs[1].metadata
    assert raw[m["start"] : m["end"]] == docs[1].text


@pytest.mark.parametrize("setup, match", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "no .txt or .md files"),
    (lambda p: (p / "x.txt").write_bytes(b"\xff\xfe\x00bad") and p, "no readable text"),
])
def test_load_folder_bad_input(tmp_path, setup, match):
    path = setup(tmp_path)
    with pytest.warns(UserWarning) if match == "no readable text" else _nothing():
        with pytest.raises(InputError, match=match):
            load_folder(path)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_sample_corpus_and_questions():
    docs = sample_corpus()
    ids = [d.id for d in docs]
    assert len(docs) >= 30 and len(set(ids)) == len(ids)
    for q in sample_questions():
        assert q.gold and set(q.gold) <= set(ids)
        gold_text = " ".join(d.text for d in docs if d.id in q.gold)
        assert any(a in gold_text for a in q.answers), q.question


class _HashEmbedder:
    """A deterministic stand-in embedder (bag of letters), to test the index without the model."""

    def encode(self, texts):
        import torch

        out = torch.zeros(len(texts), 26)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return torch.nn.functional.normalize(out + 1e-3, dim=-1)


def test_index_matches_brute_force_cosine(tmp_path):
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(["apple pie", "zebra zoo", "banana bread", "kiwi"])]
    emb = _HashEmbedder()
    index = VectorIndex.build(docs, emb)
    hits = index.search("zany zebra", k=4)
    vecs = emb.encode([d.text for d in docs]).numpy()
    q = emb.encode(["zany zebra"]).numpy()[0]
    brute = sorted(range(4), key=lambda i: -float(vecs[i] @ q))
    assert [d.id for d, _ in hits] == [docs[i].id for i in brute]
    assert np.allclose([s for _, s in hits], [float(vecs[i] @ q) for i in brute], atol=1e-5)
    with pytest.raises(InputError, match="query is empty"):
        index.search("  ")

    index.save(tmp_path / "idx")
    again = VectorIndex.load(tmp_path / "idx", emb)
    assert [d.id for d, _ in again.search("zany zebra", 4)] == [d.id for d, _ in hits]
    (tmp_path / "idx" / "index.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="delete the folder"):
        VectorIndex.load(tmp_path / "idx", emb)


def test_cached_index_reuses_and_rebuilds(tmp_path, monkeypatch):
    emb = _HashEmbedder()
    docs = [Document(text="alpha"), Document(text="beta")]
    calls = []
    monkeypatch.setattr(VectorIndex, "build", classmethod(
        lambda cls, d, e=None: calls.append(1) or cls(list(d), emb.encode([x.text for x in d]).numpy(), emb)))
    cached_index(docs, tmp_path, emb)
    cached_index(docs, tmp_path, emb)
    assert len(calls) == 1, "the second call must come from the cache"
    cached_index(docs + [Document(text="gamma")], tmp_path, emb)
    assert len(calls) == 2, "other documents need their own index"
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2 and not any(".tmp" in f for f in folders)
    meta = json.loads((tmp_path / folders[0] / "index.json").read_text())
    assert meta["format"] == 1
