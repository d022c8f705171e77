"""Measured citations: for each answer sentence, the source sentences that drove it.

Built from an :class:`~at2_rag.attributor.Attribution` (sentence granularity gives sentence-level
highlights; document granularity cites whole documents). The same structures serve the HTML report,
the LangChain cited-answer runnable and the LlamaIndex citation query engine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .policy import CITATION_POLICY, KeepPolicy
from .results import Attribution


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


def cite(attribution: Attribution, policy: KeepPolicy = CITATION_POLICY) -> list[Citation]:
    """Citations for every answer sentence of ``attribution``.

    Only sources with a positive score can be cited (a source that scores zero or less drove nothing);
    among them ``policy`` picks, strongest first. The default (:data:`CITATION_POLICY`) cites the
    clear winners only: at most 3, a second one carrying at least half the weight of the first.
    """
    if not isinstance(policy, KeepPolicy):
        raise TypeError(f"policy must be a KeepPolicy, got {type(policy).__name__}")
    sources, docs = attribution.sources, attribution.prompt.documents
    out = []
    for sent in attribution.sentences:
        scores = sent.scores.tolist()
        positive = [i for i, s in enumerate(scores) if s > 0]
        chosen = [positive[j] for j in policy.select([scores[i] for i in positive])]
        cited = []
        for i in chosen:
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
