"""The NQ-RAG benchmark builder: NQ-Open questions over a pool of their gold passages, retrieved
with the application's retriever (bundled MiniLM embeddings, exact FAISS index)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..documents import Document
from ..research.data import open_text, split_of, write_jsonl
from .retrieval import VectorIndex


def build_nq_rag(
    source: str | Path,
    out: str | Path,
    *,
    k: int = 10,
    embedder=None,
) -> dict[str, Any]:
    """Turn NQ-Open (question + gold passage per line) into retrieval-augmented examples.

    All gold passages form the pool; each question retrieves its top-``k`` passages with
    all-MiniLM-L6-v2 and an exact FAISS inner-product index, in retriever order. Records where the
    gold passage landed (``gold_rank``, None when it was not retrieved).
    """
    with open_text(source) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    passages: dict[str, dict[str, str]] = {}
    for row in rows:
        pid = hashlib.sha256((row["title"] + "\n" + row["text"]).encode()).hexdigest()[:12]
        row["_pid"] = pid
        passages.setdefault(pid, {"id": pid, "title": row["title"], "text": row["text"]})
    pool = list(passages.values())
    pool_pos = {p["id"]: i for i, p in enumerate(pool)}
    index = VectorIndex.build([Document(text=p["text"], title=p["title"], id=p["id"]) for p in pool], embedder)
    hits = [[pool_pos[d.id] for d, _ in row] for row in index.search_many([r["question"] for r in rows], k)]
    examples, found = [], 0
    for row, hit in zip(rows, hits):
        docs = [pool[i] for i in hit]
        ranks = [i for i, d in enumerate(docs) if d["id"] == row["_pid"]]
        found += bool(ranks)
        examples.append(
            {
                "id": row["id"],
                "question": row["question"],
                "documents": docs,
                "answers": row["answers"],
                "gold_document_ids": [row["_pid"]],
                "gold_rank": ranks[0] if ranks else None,
                "split": split_of(row["id"]),
            }
        )
    write_jsonl(out, examples)
    top1 = sum(e["gold_rank"] == 0 for e in examples)
    return {"examples": len(examples), "pool": len(pool), "gold_retrieved": found, "gold_top1": top1}
