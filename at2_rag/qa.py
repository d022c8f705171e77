"""Retrieve, prune with AT2, regenerate from the kept chunks, and cite: the main job in one call."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .attributor import AT2Attributor, Attribution
from .citations import Citation, cite
from .prompts import Document
from .pruning import KeepPolicy, Mode, Pruner, PruneResult
from .retrieval import VectorIndex

DEFAULT_RETRIEVE = 8
"""Chunks retrieved per question: enough to usually contain the answer, few enough for a small window."""
DEFAULT_KEEP = 3
"""Chunks kept after pruning: most questions need one or two; three leaves a margin."""


@dataclass
class QAResult:
    """Everything one question went through: retrieval, scores, pruning, final answer, citations."""

    question: str
    retrieved: list[Document]
    retrieval_scores: list[float]
    prune: PruneResult
    final: Attribution
    """The answer regenerated from the kept chunks, attributed per sentence to their sentences."""
    citations: list[Citation]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        return self.final.answer

    @property
    def full_context_answer(self) -> str | None:
        """The answer from all retrieved chunks (the draft; None in query mode, which drafts nothing)."""
        return self.prune.draft if self.prune.mode == "draft" else None

    @property
    def kept(self) -> list[int]:
        """Indices (into ``retrieved``) of the kept chunks, best first: the order the final prompt has."""
        return list(self.prune.kept)

    @property
    def dropped(self) -> list[int]:
        return self.prune.dropped

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "answer": self.answer,
            "full_context_answer": self.full_context_answer,
            "mode": self.prune.mode,
            "retrieved": [
                {"id": d.id, "title": d.title, "text": d.text, "retrieval_score": r, "attribution_score": a,
                 "kept": i in self.prune.kept}
                for i, (d, r, a) in enumerate(zip(self.retrieved, self.retrieval_scores, self.prune.scores))
            ],
            "citations": [c.to_dict() for c in self.citations],
            "kept_tokens": self.prune.kept_tokens,
            "retrieved_tokens": self.prune.total_tokens,
            "seconds": self.seconds,
        }


class RAGPipeline:
    """Question → retrieve ``k`` chunks → AT2-score and keep the best → regenerate → cite.

    Args:
        attributor: the local model (answers, scores and cites).
        index: where chunks are retrieved from.
        k: chunks retrieved per question.
        mode: ``"draft"`` (score the full-context draft answer) or ``"query"`` (score the question alone).
        policy: keep policy (default: the best ``DEFAULT_KEEP`` chunks).
        max_new_tokens: answer length.
    """

    def __init__(
        self,
        attributor: AT2Attributor,
        index: VectorIndex,
        *,
        k: int = DEFAULT_RETRIEVE,
        mode: Mode = "draft",
        policy: KeepPolicy | None = None,
        max_new_tokens: int = 48,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.attributor = attributor
        self.index = index
        self.k = k
        self.max_new_tokens = max_new_tokens
        self.pruner = Pruner(
            attributor, mode=mode, policy=policy or KeepPolicy(top_k=DEFAULT_KEEP), max_new_tokens=max_new_tokens
        )

    def ask(self, question: str) -> QAResult:
        """Answer ``question`` from the index with pruned context and measured citations."""
        t0 = time.perf_counter()
        hits = self.index.search(question, self.k)
        docs, sims = [d for d, _ in hits], [s for _, s in hits]
        return self.answer(question, docs, sims, t_retrieve=time.perf_counter() - t0)

    def answer(
        self, question: str, documents: Sequence[Document], retrieval_scores: Sequence[float] | None = None,
        *, t_retrieve: float = 0.0,
    ) -> QAResult:
        """Prune ``documents`` (already retrieved), regenerate from the kept ones and cite."""
        docs = list(documents)
        t1 = time.perf_counter()
        pruned = self.pruner.prune(question, docs)
        t2 = time.perf_counter()
        # Best first, as rerankers hand documents on: the strongest evidence opens the context.
        kept_docs = pruned.kept_documents
        final = self.attributor.generate(
            question, kept_docs, granularity="sentence", max_new_tokens=self.max_new_tokens
        )
        t3 = time.perf_counter()
        sims = list(retrieval_scores) if retrieval_scores is not None else [float("nan")] * len(docs)
        return QAResult(
            question, pruned.documents, sims, pruned, final, cite(final),
            {"retrieve": t_retrieve, "score_and_prune": t2 - t1, "regenerate": t3 - t2},
        )
