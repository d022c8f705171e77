"""Measured citations: for each answer sentence, the source sentences that drove it.

Built from an :class:`~at2_rag.attributor.Attribution` (sentence granularity gives sentence-level
highlights; document granularity cites whole documents). The same structures serve the HTML report,
the LangChain cited-answer runnable and the LlamaIndex citation query engine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .attributor import Attribution


@dataclass(frozen=True)
class CitedSource:
    """One cited source: where it lies in its document and how much it drove the sentence."""

    source: int
    """Index of the source in the attribution's prompt."""
    document: int
    """Index of its document in the documents passed in."""
    document_id: str | None
    text: str
    start: int
    """Character span of the source inside its document's text."""
    end: int
    score: float


@dataclass(frozen=True)
class Citation:
    """One answer sentence (character span in the answer) with the sources it rests on."""

    text: str
    start: int
    end: int
    sources: tuple[CitedSource, ...]

    @property
    def documents(self) -> list[int]:
        """Indices of the cited documents, strongest citation first, each once."""
        seen: list[int] = []
        for s in self.sources:
            if s.document not in seen:
                seen.append(s.document)
        return seen

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sources": [asdict(s) for s in self.sources], "documents": self.documents}


def cite(
    attribution: Attribution,
    *,
    max_sources: int = 3,
    relative: float = 0.5,
    min_score: float = 0.0,
) -> list[Citation]:
    """Citations for every answer sentence of ``attribution``.

    A source is cited for a sentence when its score is above ``min_score`` and at least ``relative``
    × that sentence's best score; at most ``max_sources`` per sentence, strongest first. The defaults
    cite the clear winners only: a second source must carry at least half the weight of the first.
    """
    if max_sources < 1:
        raise ValueError(f"max_sources must be at least 1, got {max_sources}")
    if not 0.0 <= relative <= 1.0:
        raise ValueError(f"relative must lie in [0, 1], got {relative}")
    sources, docs = attribution.sources, attribution.prompt.documents
    out = []
    for sent in attribution.sentences:
        scores = sent.scores.tolist()
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        best = scores[order[0]] if order else 0.0
        cited = []
        for i in order[:max_sources]:
            if scores[i] <= min_score or scores[i] < relative * best:
                break
            s = sources[i]
            cited.append(CitedSource(i, s.document, docs[s.document].id, s.text, s.start, s.end, scores[i]))
        out.append(Citation(sent.text, sent.start, sent.end, tuple(cited)))
    return out


def with_markers(answer: str, citations: list[Citation], labels: dict[int, str] | None = None) -> str:
    """The answer with ``[n]`` markers after each cited sentence (n = document position + 1).

    ``labels`` maps a document index to another label (e.g. its position after pruning).
    """
    pieces, pos = [], 0
    for c in sorted(citations, key=lambda c: c.end):
        if not c.sources:
            continue
        end = c.end
        while end > c.start and answer[end - 1].isspace():
            end -= 1
        marks = "".join(f"[{labels[d] if labels and d in labels else d + 1}]" for d in c.documents)
        pieces.append(answer[pos:end] + marks)
        pos = end
    pieces.append(answer[pos:])
    return "".join(pieces)
