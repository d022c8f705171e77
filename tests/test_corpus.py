"""Chunking, folder loading, the sample corpus, and the FAISS index (against brute-force cosine)."""

from __future__ import annotations

import base64
import codecs
import json
import os
import warnings
from pathlib import Path

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
    assert [d.metadata["source"] for d in docs] == ["a.txt", "a.txt", "sub/b.md"]
    assert docs[0].text == "Alpha is first. Beta is second."
    assert docs[1].id == "a.txt#1" and docs[2].title == "b"
    assert docs[2].text == "# Notes\n\nDelta lives here."  # a heading opens the chunk under it
    raw = (tmp_path / "a.txt").read_text(encoding="utf-8")
    m = docs[1].metadata
    assert raw[m["start"] : m["end"]] == docs[1].text


@pytest.mark.parametrize("setup, match", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "no .txt or .md files"),
    # (PNG-like bytes: the earlier b"\xff\xfe\x00bad" is a UTF-16 byte-order mark and two valid characters.)
    (lambda p: (p / "x.txt").write_bytes(PNG) and p, "no readable text"),
])
def test_load_folder_bad_input(tmp_path, setup, match):
    path = setup(tmp_path)
    with pytest.warns(UserWarning) if match == "no readable text" else _nothing():
        with pytest.raises(InputError, match=match):
            load_folder(path)


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x08\x06\x00\x00\x00\x1f\xf3\xffa"


def test_chunks_never_exceed_the_character_cap_even_for_a_base64_blob():
    from at2_rag.app.corpus import MAX_CHUNK_CHARS

    blob = base64.b64encode(bytes(range(256)) * 200).decode()[:60_000]  # an inlined image: no whitespace
    text = f"# Route\n\nThe map shows the route.\n\n![map](data:image/png;base64,{blob})\n\nIt is cold. Bring a coat."
    chunks = chunk_text(text)
    assert all(0 < b - a <= MAX_CHUNK_CHARS for a, b in chunks)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(chunks, chunks[1:]))
    assert all(text[a:b] == text[a:b].strip() for a, b in chunks)
    # Every non-space character is in exactly one chunk, in order: the blob is cut, nothing is lost.
    assert "".join(c for a, b in chunks for c in text[a:b].split()) == "".join(text.split())
    assert [text[a:b] for a, b in chunks][:1] == ["# Route\n\nThe map shows the route."]  # heading joined
    assert text[chunks[-1][0] : chunks[-1][1]] == "It is cold. Bring a coat."
    blob_line = f"![map](data:image/png;base64,{blob})"
    assert len(chunks) == 2 + -(-len(blob_line) // MAX_CHUNK_CHARS)  # the blob's line cut at the cap


@settings(max_examples=150, deadline=None)
@given(text=TEXT, limit=st.integers(1, 30), max_chars=st.integers(7, 80))
def test_chunks_stay_within_a_character_cap(text, limit, max_chars):
    chunks = chunk_text(text, limit, max_chars=max_chars)
    assert [w for a, b in chunks for w in text[a:b].split()] == text.split()  # words fit: 6 letters, a period
    assert all(len(text[a:b].split()) <= limit and b - a <= max_chars for a, b in chunks)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(chunks, chunks[1:]))


def test_chunk_limits_must_be_positive():
    with pytest.raises(InputError, match="chunk_words must be at least 1"):
        chunk_text("Some text.", 0)
    with pytest.raises(InputError, match="max_chars must be at least 1"):
        chunk_text("Some text.", max_chars=0)


def test_load_folder_decodes_byte_order_marks_and_legacy_encodings(tmp_path):
    text = "Grüße aus Zürich. Der Weg ist lang."
    (tmp_path / "a16.txt").write_bytes(text.encode("utf-16"))  # with a byte-order mark
    (tmp_path / "b16be.txt").write_bytes(b"\xfe\xff" + text.encode("utf-16-be"))
    (tmp_path / "c32.txt").write_bytes(text.encode("utf-32"))
    (tmp_path / "d8bom.txt").write_bytes(text.encode("utf-8-sig"))
    (tmp_path / "e1.txt").write_bytes("Un café au lait, s'il vous plaît.".encode("latin-1"))
    (tmp_path / "f1252.txt").write_bytes("It’s a “quoted” café.".encode("cp1252"))
    (tmp_path / "g-bad.txt").write_bytes(("Zürich is nice. " * 20).encode() + b"\xff" + b" The end.")
    (tmp_path / "h-ascii-bad.txt").write_bytes(b"Plain text with one bad \x9d byte.")
    (tmp_path / "i8bom-bad.txt").write_bytes(codecs.BOM_UTF8 + ("Grüße. " * 30).encode() + b"\xc3(")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped
        docs = {d.metadata["source"]: d.text for d in load_folder(tmp_path, chunk_words=500)}
    assert docs["a16.txt"] == docs["b16be.txt"] == docs["c32.txt"] == docs["d8bom.txt"] == text
    assert docs["e1.txt"] == "Un café au lait, s'il vous plaît."
    assert docs["f1252.txt"] == "It’s a “quoted” café."
    assert docs["g-bad.txt"].startswith("Zürich is nice.") and docs["g-bad.txt"].endswith("\ufffd The end.")
    assert docs["h-ascii-bad.txt"].startswith("Plain text with one bad ")
    assert docs["i8bom-bad.txt"].startswith("Grüße.") and docs["i8bom-bad.txt"].endswith("\ufffd(")


def test_load_folder_skips_binary_files_and_names_every_one(tmp_path):
    (tmp_path / "good.txt").write_text("Readable text.", encoding="utf-8")
    names = [f"image{i}.md" for i in range(7)]
    for name in names:
        (tmp_path / name).write_bytes(PNG)
    (tmp_path / "noise.txt").write_bytes(bytes(range(1, 32)) * 40)  # control characters, no NUL
    (tmp_path / "utf16-nul.txt").write_bytes(b"\xff\xfe" + b"a\x00\x00\x00b\x00")  # a NUL character
    with pytest.warns(UserWarning, match="skipped 9 binary or unreadable file") as caught:
        docs = load_folder(tmp_path)
    message = str(caught[0].message)
    assert [d.text for d in docs] == ["Readable text."]
    assert all(name in message for name in names + ["noise.txt", "utf16-nul.txt"]), message
    assert "\n" not in message


def test_load_folder_warning_lists_twenty_and_keeps_the_full_list(tmp_path):
    (tmp_path / "good.txt").write_text("Readable text.", encoding="utf-8")
    for i in range(25):
        (tmp_path / f"bin{i:02d}.txt").write_bytes(PNG)
    with pytest.warns(UserWarning, match="skipped 25 binary") as caught:
        load_folder(tmp_path)
    warning = caught[0].message
    assert "and 5 more" in str(warning) and "bin19.txt" in str(warning) and "bin20.txt" not in str(warning)
    assert [name for name, _ in warning.skipped] == [f"bin{i:02d}.txt" for i in range(25)]


def test_load_folder_skips_a_file_it_cannot_read(tmp_path, monkeypatch):
    (tmp_path / "good.txt").write_text("Readable text.", encoding="utf-8")
    (tmp_path / "locked.txt").write_text("Secret.", encoding="utf-8")
    read_bytes = Path.read_bytes

    def refuse(self):
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.warns(UserWarning, match=r"skipped 1 .*locked\.txt \(Permission denied\)"):
        docs = load_folder(tmp_path)
    assert [d.text for d in docs] == ["Readable text."]


def test_load_folder_skips_a_mode_000_file(tmp_path):
    (tmp_path / "good.txt").write_text("Readable text.", encoding="utf-8")
    locked = tmp_path / "locked.txt"
    locked.write_text("Secret.", encoding="utf-8")
    locked.chmod(0)
    try:
        if _can_read(locked):
            pytest.skip(f"this user (uid {os.geteuid()}) can read a mode-000 file: root")
        with pytest.warns(UserWarning, match=r"locked\.txt \(Permission denied\)"):
            docs = load_folder(tmp_path)
    finally:
        locked.chmod(0o600)
    assert [d.text for d in docs] == ["Readable text."]


def _can_read(path: Path) -> bool:
    """Whether this process can read ``path`` (root can, whatever its mode)."""
    try:
        path.read_bytes()
    except PermissionError:
        return False
    return True


def _link_tree(tmp_path):
    """A corpus folder with links out of it (to a file and a folder), inside it, and in loops."""
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "secret.txt").write_text("Outside secret.", encoding="utf-8")
    (outside / "deep" / "more.txt").write_text("Outside folder text.", encoding="utf-8")
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "own.txt").write_text("Own text.", encoding="utf-8")
    (corpus / "sub" / "inner.txt").write_text("Inner text.", encoding="utf-8")
    (corpus / "secret.txt").symlink_to(outside / "secret.txt")
    (corpus / "deep").symlink_to(outside / "deep", target_is_directory=True)
    (corpus / "again.txt").symlink_to(corpus / "sub" / "inner.txt")  # inside: read once, not twice
    (corpus / "sub" / "up").symlink_to(corpus, target_is_directory=True)  # a folder loop
    (corpus / "x.txt").symlink_to(corpus / "y.txt")  # a link loop
    (corpus / "y.txt").symlink_to(corpus / "x.txt")
    return corpus


def test_load_folder_does_not_follow_links_out_of_the_folder(tmp_path):
    corpus = _link_tree(tmp_path)
    with pytest.warns(UserWarning, match=r"2 symbolic link.*--follow-links") as caught:
        docs = load_folder(corpus)
    assert "\n" not in str(caught[0].message)
    assert sorted(d.text for d in docs) == ["Inner text.", "Own text."]
    assert "sub/inner.txt" in {d.metadata["source"] for d in docs}


def test_load_folder_follows_links_when_asked(tmp_path):
    corpus = _link_tree(tmp_path)
    docs = load_folder(corpus, follow_links=True)
    assert sorted(d.text for d in docs) == ["Inner text.", "Outside folder text.", "Outside secret.", "Own text."]
    assert {d.metadata["source"] for d in docs} >= {"secret.txt", "deep/more.txt", "sub/inner.txt"}


def test_load_folder_with_only_links_out_says_how_to_follow_them(tmp_path):
    (tmp_path / "outside.txt").write_text("Outside text.", encoding="utf-8")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "link.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(InputError, match=r"no \.txt or \.md files.*--follow-links.* 1 link"):
        load_folder(tmp_path / "corpus")
    assert [d.text for d in load_folder(tmp_path / "corpus", follow_links=True)] == ["Outside text."]


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
