"""The NQ-RAG benchmark builder: NQ-Open questions over a pool of their gold passages, retrieved
with the application's retriever (bundled MiniLM embeddings, exact FAISS index)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..documents import Document
from ..errors import InputError
from ..research.data import check_example, json_rows, kind_of, split_of, write_jsonl
from ..research.options import at_least
from .retrieval import VectorIndex

NQ_FIELDS = ("id", "question", "answers", "title", "text")
"""What each NQ-Open line holds: the question, its answers and its gold passage (title and text)."""


def read_nq_open(source: str | Path) -> list[dict[str, Any]]:
    """The rows of an NQ-Open file, each checked before any work: a bad line is one :class:`InputError`
    naming ``path:line``, and a row the dataset reader would refuse later (``answers`` a string, a
    duplicate id, …) is refused here, so ``build-nq`` never writes a dataset ``evaluate`` rejects."""
    rows: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    for lineno, row in json_rows(source):
        problem = _nq_problem(row)
        if problem:
            raise InputError(f"{source}:{lineno}: {problem}")
        example = {"id": row["id"], "question": row["question"], "answers": row["answers"],
                   "documents": [{"title": row["title"], "text": row["text"]}]}
        rows.append({**row, "id": check_example(example, source, lineno, first_line)["id"]})
    return rows


def _nq_problem(row: Any) -> str | None:
    """What makes ``row`` no NQ-Open row (not an object, a field missing, a passage that is no text), or None."""
    if not isinstance(row, dict):
        return f"each line must be a JSON object with {', '.join(NQ_FIELDS)}, got {kind_of(row)}"
    missing = [key for key in NQ_FIELDS if key not in row]
    if missing:
        return f"missing required field {missing[0]!r}; NQ-Open rows hold {', '.join(NQ_FIELDS)}"
    if not isinstance(row["title"], str):
        return f"'title' must be a string (the gold passage's title), got {kind_of(row['title'])}"
    if not isinstance(row["text"], str) or not row["text"].strip():
        return f"'text' must be a non-empty string (the gold passage), got {kind_of(row['text'])}"
    if row["answers"] is None:
        return "'answers' must be a list of strings, got null"
    return None


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
    gold passage landed (``gold_rank``, None when it was not retrieved). The source is checked first
    (:func:`read_nq_open`).
    """
    at_least("k", k, 1, " (passages retrieved per question)")
    rows = read_nq_open(source)
    if not rows:
        raise InputError(f"{source} has no rows; pass an NQ-Open file (one JSON object a line: {', '.join(NQ_FIELDS)})")
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
