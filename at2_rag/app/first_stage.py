"""First-stage retrievers over the NQ-RAG passage pool, for a benchmark where the retriever errs.

The NQ-RAG data retrieves with exact MiniLM similarity, which ranks the gold passage first for about
nine questions in ten. This module builds other first-stage orders over the same pool (every
question's gold passage, as ``build_nq_rag`` makes it) for the same questions:

- **BM25** (Okapi): ``k1 = 1.5``, ``b = 0.75``, the non-negative idf ``ln(1 + (N - df + 0.5) / (df + 0.5))``
  (Lucene's), summed over the query's tokens (a repeated word counts each time). Tokens
  (:func:`tokenize`): lower-cased Unicode word characters (``\\w+``), no stemming and no stop
  words (idf already discounts common words; stemming would add a tool and a language assumption).
  A passage is what the MiniLM index embeds (``at2_rag.app.retrieval.passage_text``: title, ". ", text).
- **MiniLM**: the application's retriever (``VectorIndex``: all-MiniLM-L6-v2, exact inner product).
- **merge**: reciprocal-rank fusion (:func:`reciprocal_rank_fusion`, ``k = 60``) of the MiniLM and
  BM25 top-20 lists.

:data:`CONDITIONS` names the lists a question gets; :func:`build_lists` makes them.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..documents import Document
from ..errors import InputError

BM25_K1 = 1.5
BM25_B = 0.75
RRF_K = 60
"""The reciprocal-rank-fusion constant of Cormack et al. (2009): a document at 1-based rank ``r`` adds ``1 / (60 + r)``."""
MERGE_DEPTH = 20
"""How many passages each retriever hands to the merge."""


@dataclass(frozen=True)
class Condition:
    """One first-stage order: ``retriever`` (``"minilm"``, ``"bm25"`` or ``"merge"``) cut to its top ``k``."""

    retriever: str
    k: int


CONDITIONS: dict[str, Condition] = {
    "minilm-k10": Condition("minilm", 10),
    "bm25-k10": Condition("bm25", 10),
    "merge-k10": Condition("merge", 10),
    "minilm-k20": Condition("minilm", 20),
    "bm25-k20": Condition("bm25", 20),
}
"""The benchmark's conditions; ``minilm-k10`` is the existing NQ-RAG order (the reference)."""

_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """BM25's tokens: the lower-cased runs of Unicode word characters (letters, digits, underscore)."""
    return _WORD.findall(text.lower())


def passage_id(title: str, text: str) -> str:
    """The id ``build_nq_rag`` gives a pool passage: the first 12 hex digits of sha256(title, newline, text)."""
    return hashlib.sha256((title + "\n" + text).encode()).hexdigest()[:12]


def pool_documents(pool: Sequence[dict[str, str]]) -> list[Document]:
    """The pool's passages as documents (``id``, ``title``, ``text``)."""
    return [Document(text=p["text"], title=p["title"], id=p["id"]) for p in pool]


def nq_pool(source: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The NQ-Open rows of ``source`` (each with its gold passage's id as ``gold_id``) and the passage
    pool (``id``, ``title``, ``text``; first appearance order, one entry per distinct passage) — the pool
    and ids ``build_nq_rag`` retrieves from, so a passage id in the lists resolves through this pool."""
    from .nq_rag import read_nq_open

    rows = read_nq_open(source)
    if not rows:
        raise InputError(f"{source} has no rows; pass an NQ-Open file (one JSON object a line)")
    pool: dict[str, dict[str, str]] = {}
    for row in rows:
        pid = passage_id(row["title"], row["text"])
        row["gold_id"] = pid
        pool.setdefault(pid, {"id": pid, "title": row["title"], "text": row["text"]})
    return rows, list(pool.values())


class BM25:
    """Okapi BM25 over a fixed corpus (the parameters and idf of the module docstring).

    ``score(q, d) = Σ_{t in q} idf(t) · tf(t, d) · (k1 + 1) / (tf(t, d) + k1 · (1 - b + b · |d| / avgdl))``.
    """

    def __init__(self, texts: Sequence[str], k1: float = BM25_K1, b: float = BM25_B) -> None:
        if not texts:
            raise InputError("BM25 needs at least one document")
        self.k1, self.b = k1, b
        self.lengths = [0] * len(texts)
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, text in enumerate(texts):
            counts = Counter(tokenize(text))
            self.lengths[i] = sum(counts.values())
            for term, tf in counts.items():
                self.postings[term].append((i, tf))
        self.avgdl = sum(self.lengths) / len(texts)
        n = len(texts)
        self.idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.postings.items()}

    def scores(self, query: str) -> list[float]:
        """The BM25 score of every document for ``query``, in corpus order."""
        out = [0.0] * len(self.lengths)
        norm = [self.k1 * (1 - self.b + self.b * length / self.avgdl) if self.avgdl else self.k1
                for length in self.lengths]
        for term in tokenize(query):
            idf = self.idf.get(term)
            if idf is None:
                continue
            for i, tf in self.postings[term]:
                out[i] += idf * tf * (self.k1 + 1) / (tf + norm[i])
        return out

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best documents as ``(corpus index, score)``, best first; ties go to the earlier document."""
        scores = self.scores(query)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [(i, scores[i]) for i in order[:k]]


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hashable]], k: int = RRF_K
) -> list[tuple[Hashable, float]]:
    """Items of several rankings (best first) by ``Σ 1 / (k + rank)`` over the rankings holding them
    (1-based ranks; an item missing from a ranking adds nothing), best first. Ties go to the item with
    the better best rank, then to the one from the earlier ranking."""
    score: dict[Hashable, float] = defaultdict(float)
    first: dict[Hashable, tuple[int, int]] = {}
    for li, ranking in enumerate(rankings):
        for r, item in enumerate(ranking, start=1):
            score[item] += 1.0 / (k + r)
            first[item] = min(first.get(item, (r, li)), (r, li))
    return sorted(score.items(), key=lambda kv: (-kv[1], first[kv[0]]))


def minilm_hits(
    questions: Sequence[str], pool: Sequence[dict[str, str]], k: int, embedder=None
) -> list[list[tuple[int, float]]]:
    """Each question's ``k`` nearest pool passages ``(pool index, cosine)`` with the application's
    retriever (the bundled MiniLM, exact inner-product index), as ``build_nq_rag`` retrieves."""
    from .retrieval import VectorIndex

    index = VectorIndex.build(pool_documents(pool), embedder)
    position = {p["id"]: i for i, p in enumerate(pool)}
    return [[(position[d.id], s) for d, s in hits] for hits in index.search_many(list(questions), k)]


def build_lists(
    rows: Sequence[dict[str, Any]],
    pool: Sequence[dict[str, str]],
    minilm: Sequence[Sequence[tuple[int, float]]],
    conditions: dict[str, Condition] = CONDITIONS,
) -> list[dict[str, Any]]:
    """Per question (``rows`` with ``gold_id``, as :func:`nq_pool` gives them) every condition's list:
    ``{"ids": passage ids in retriever order, "scores": the retriever's scores, "gold_rank": the gold
    passage's 0-based position or None}``. ``minilm`` holds each question's MiniLM hits (at least
    :data:`MERGE_DEPTH` and every MiniLM condition's ``k``), from :func:`minilm_hits`."""
    need = max([MERGE_DEPTH] + [c.k for c in conditions.values()])
    if len(minilm) != len(rows):
        raise InputError(f"{len(minilm)} MiniLM hit lists for {len(rows)} questions; pass one per question")
    from .retrieval import passage_text

    bm25 = BM25([passage_text(d) for d in pool_documents(pool)])
    ids = [p["id"] for p in pool]
    out = []
    for row, dense in zip(rows, minilm):
        if len(dense) < min(need, len(pool)):
            raise InputError(f"question {row['id']}: {len(dense)} MiniLM hits, the conditions need {need}")
        sparse = bm25.top(row["question"], need)
        merged = reciprocal_rank_fusion([[i for i, _ in dense[:MERGE_DEPTH]], [i for i, _ in sparse[:MERGE_DEPTH]]])
        ranked = {"minilm": list(dense), "bm25": sparse, "merge": merged}
        lists = {}
        for name, cond in conditions.items():
            hits = ranked[cond.retriever][: cond.k]
            hit_ids = [ids[i] for i, _ in hits]
            lists[name] = {
                "ids": hit_ids,
                "scores": [round(float(s), 6) for _, s in hits],
                "gold_rank": hit_ids.index(row["gold_id"]) if row["gold_id"] in hit_ids else None,
            }
        out.append({"id": row["id"], "gold_id": row["gold_id"], "lists": lists})
    return out


def hit_rates(lists: Sequence[dict[str, Any]], condition: str) -> dict[str, Any]:
    """How often ``condition``'s list holds the gold passage first, in its top 3 and anywhere (its top k)."""
    ranks = [q["lists"][condition]["gold_rank"] for q in lists]
    n = len(ranks)
    if n == 0:
        return {"questions": 0}
    return {
        "questions": n,
        "top1": sum(r == 0 for r in ranks) / n,
        "top3": sum(r is not None and r < 3 for r in ranks) / n,
        "topk": sum(r is not None for r in ranks) / n,
    }


__all__ = [
    "BM25", "BM25_B", "BM25_K1", "CONDITIONS", "Condition", "MERGE_DEPTH", "RRF_K", "build_lists", "hit_rates",
    "minilm_hits", "nq_pool", "passage_id", "pool_documents", "reciprocal_rank_fusion", "tokenize",
]
