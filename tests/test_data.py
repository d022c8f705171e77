"""Dataset format, splits, answer matching and the NQ-RAG builder (real MiniLM + FAISS)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from at2_rag import InputError
from at2_rag.app.nq_rag import build_nq_rag
from at2_rag.research.data import is_correct, read_jsonl, shuffled_documents, split_of, write_jsonl

NQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "nq_open_dev.jsonl.gz"


def test_splits_are_deterministic_and_cover_all():
    ids = [f"q{i}" for i in range(3000)]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]
    frac = {s: splits.count(s) / len(ids) for s in ("train", "validation", "test")}
    assert abs(frac["train"] - 0.6) < 0.03 and abs(frac["test"] - 0.2) < 0.03


def test_answer_matching():
    assert is_correct("It was Wilhelm Conrad Röntgen, in 1901.", ["Wilhelm Conrad Röntgen"])
    assert is_correct("The Beatles!", ["beatles"])
    assert not is_correct("Paris", ["London", ""])


def test_jsonl_round_trip_and_validation(tmp_path):
    ex = {"id": "a", "question": "q?", "documents": [{"id": "d", "title": "t", "text": "x"}]}
    path = write_jsonl(tmp_path / "x.jsonl.gz", [ex])
    assert read_jsonl(path) == [ex]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "q"}\n')
    with pytest.raises(InputError, match="missing required field 'documents'"):
        read_jsonl(bad)
    bad.write_text("{not json\n")
    with pytest.raises(InputError, match="not valid JSON"):
        read_jsonl(bad)


def test_shuffled_documents_are_deterministic():
    ex = {"id": "z", "documents": [{"id": str(i)} for i in range(10)]}
    a = shuffled_documents(ex, 5)
    assert a == shuffled_documents(ex, 5)
    assert sorted(d["id"] for d in a) == ["0", "1", "2", "3", "4"]


@pytest.mark.skipif(not NQ.exists(), reason="shared NQ data not beside the checkout")
def test_build_nq_rag_on_a_sample(tmp_path):
    with gzip.open(NQ, "rt") as fh:
        rows = [json.loads(next(fh)) for _ in range(30)]
    sample = tmp_path / "nq.jsonl.gz"
    with gzip.open(sample, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    stats = build_nq_rag(sample, tmp_path / "out.jsonl.gz", k=4)
    examples = read_jsonl(tmp_path / "out.jsonl.gz")
    assert stats["examples"] == 30 and len(examples) == 30
    for ex, row in zip(examples, rows):
        assert len(ex["documents"]) == 4
        texts = [d["text"] for d in ex["documents"]]
        if ex["gold_rank"] is not None:
            assert texts[ex["gold_rank"]] == row["text"]
            assert ex["documents"][ex["gold_rank"]]["id"] in ex["gold_document_ids"]
    # MiniLM finds the gold passage first for most questions in this pool.
    assert stats["gold_top1"] >= 20


def test_write_jsonl_gz_is_byte_reproducible(tmp_path):
    """No file name or time in the gzip header: the same examples give the same bytes (and hash)."""
    import time

    rows = [{"id": "a", "question": "Q?", "documents": [{"id": "d", "text": "T."}]}]
    first = write_jsonl(tmp_path / "one.jsonl.gz", rows).read_bytes()
    time.sleep(1.1)
    assert write_jsonl(tmp_path / "two.jsonl.gz", rows).read_bytes() == first
