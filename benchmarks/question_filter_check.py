"""Check that the embedding filter on question similarity keeps what the NQ-RAG retriever ranks first.

The NQ-RAG retriever is exact inner product over all-MiniLM-L6-v2 embeddings of the same passage
text, so re-ranking its top 10 by MiniLM similarity to the question must reproduce its order. Counts,
over the first 200 test questions with the gold passage retrieved, how often the top passage and the
whole order agree (the prune benchmark then reports that filter under the retriever's row).

    python benchmarks/question_filter_check.py
"""

from __future__ import annotations

import numpy as np

from at2_rag.app.retrieval import passage_text
from at2_rag.embeddings import MiniLMEmbedder
from at2_rag.prompts import Document
from at2_rag.research.data import read_jsonl

QUESTIONS = 200


def main() -> None:
    examples = [e for e in read_jsonl("data/nq_rag.jsonl.gz", split="test") if e.get("gold_rank") is not None]
    embedder = MiniLMEmbedder()
    top1 = order = 0
    for ex in examples[:QUESTIONS]:
        docs = [Document(text=d["text"], title=d.get("title")) for d in ex["documents"][:10]]
        vecs = embedder.encode([ex["question"]] + [passage_text(d) for d in docs])
        ranking = list(np.argsort(-(vecs[1:] @ vecs[0]), kind="stable"))
        top1 += int(ranking[0] == 0)
        order += int(ranking == list(range(len(docs))))
    print(f"{QUESTIONS} questions: same top passage {top1}, same order of all 10 {order}")


if __name__ == "__main__":
    main()
