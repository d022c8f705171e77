"""What an attribution returns: every source's score, overall and per answer sentence.

Plain data with views (ranking, per-document sums, a JSON-ready dict, a text table); produced by
:class:`~at2_rag.attributor.AT2Attributor` and read by pruning, citations and every front end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .prompts import Prompt, Source


@dataclass(frozen=True)
class ScoredSource:
    """A source with its attribution score."""

    source: Source
    score: float

    @property
    def text(self) -> str:
        return self.source.text


@dataclass(frozen=True)
class AnswerSentence:
    """One sentence of the answer: character span in the answer and its per-source scores."""

    text: str
    start: int
    end: int
    scores: torch.Tensor
    tokens: tuple[int, ...] = ()
    """Indices of the answer tokens that make up this sentence."""


@dataclass
class Attribution:
    """Scores of every source for an answer, overall and per answer sentence."""

    prompt: Prompt
    answer: str
    scores: torch.Tensor
    sentences: list[AnswerSentence]
    method: str
    extra_forward_passes: int
    answer_ids: list[int] = field(default_factory=list)
    features: torch.Tensor | None = field(default=None, repr=False)
    """Per-token features ``(layers, heads, answer tokens, sources)`` when kept."""
    query_features: torch.Tensor | None = field(default=None, repr=False)
    """Features of the prompt's question rows ``(layers, heads, sources)`` when kept."""
    dropped_documents: list[int] = field(default_factory=list)
    """Indices of input documents left out to fit the model's window (``overflow="drop_last"``)."""

    @property
    def sources(self) -> list[Source]:
        return self.prompt.sources

    def ranked(self, sentence: int | None = None) -> list[ScoredSource]:
        """All sources, highest score first (for one answer sentence when ``sentence`` is given)."""
        scores = self.scores if sentence is None else self.sentences[sentence].scores
        order = torch.argsort(scores, descending=True, stable=True).tolist()
        return [ScoredSource(self.sources[i], float(scores[i])) for i in order]

    def top_k(self, k: int = 3, sentence: int | None = None) -> list[ScoredSource]:
        """The ``k`` highest-scoring sources."""
        return self.ranked(sentence)[:k]

    def document_scores(self) -> torch.Tensor:
        """Scores summed per document (sources are disjoint, and scores are linear in them)."""
        out = torch.zeros(len(self.prompt.documents))
        for src, score in zip(self.sources, self.scores.tolist()):
            out[src.document] += score
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python view (JSON-serialisable)."""
        docs = self.prompt.documents
        return {
            "question": self.prompt.question,
            "answer": self.answer,
            "method": self.method,
            "granularity": self.prompt.granularity,
            "extra_forward_passes": self.extra_forward_passes,
            "sources": [
                {
                    "index": s.index,
                    "document": s.document,
                    "document_id": docs[s.document].id,
                    "text": s.text,
                    "start": s.start,
                    "end": s.end,
                    "score": float(score),
                }
                for s, score in zip(self.sources, self.scores.tolist())
            ],
            "sentences": [
                {"text": s.text, "start": s.start, "end": s.end, "scores": s.scores.tolist()}
                for s in self.sentences
            ],
        }

    def table(self, k: int | None = None, width: int = 60) -> str:
        """A plain-text table of the ranked sources."""
        rows = self.ranked()[:k] if k else self.ranked()
        lines = [f"{'rank':>4}  {'score':>9}  {'doc':>3}  text"]
        for rank, item in enumerate(rows, 1):
            text = " ".join(item.text.split())
            text = text if len(text) <= width else text[: width - 1] + "…"
            lines.append(f"{rank:>4}  {item.score:>9.4f}  {item.source.document + 1:>3}  {text}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"Answer: {self.answer}\n{self.table()}"
