"""Measured citations: for each answer sentence, the source sentences that drove it.

Built from an :class:`~at2_rag.attributor.Attribution` (sentence granularity gives sentence-level
highlights; document granularity cites whole documents). The same structures serve the HTML report,
the LangChain cited-answer runnable and the LlamaIndex citation query engine.

An answer sentence often joins two claims ("born in Warsaw, but moved to Paris to study …"). Its AT2
score per source is a mean over all its tokens, so the source of the longer claim outweighs the source
of the shorter one, which may then fall under the citation policy's cut. Given the answer's per-token
scores, :func:`cite` therefore picks sources for each clause (:func:`~at2_rag.sentences.split_clauses`)
by the mean over that clause's own tokens, and the sentence cites them together, strongest first
(``benchmarks/citation_sentences.py``: the same as before on one-claim answers, and the source of each
claim of a two-claim answer cited far more often).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .errors import InputError
from .policy import CITATION_POLICY, KeepPolicy
from .sentences import split_clauses

if TYPE_CHECKING:
    import torch

    from .results import AnswerSentence, Attribution


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
    """The source's AT2 score for the answer sentence, or for the clause it was cited for (its highest)."""


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
    policy: KeepPolicy = CITATION_POLICY,
    *,
    token_scores: torch.Tensor | None = None,
    token_starts: Sequence[int | None] | None = None,
) -> list[Citation]:
    """Citations for every answer sentence of ``attribution``.

    Only sources with a positive score can be cited (a source that scores zero or less drove nothing);
    among them ``policy`` picks, strongest first. The default (:data:`CITATION_POLICY`) cites the
    clear winners only: at most 3, a second one carrying at least half the weight of the first.

    With ``token_scores`` (answer tokens × sources: each answer token's AT2 scores, whose mean over a
    sentence's tokens is its sentence score) and ``token_starts`` (each answer token's character offset
    in the answer, None inside a split character), a sentence of several clauses is cited clause by
    clause: each clause's sources are picked by ``policy`` from the mean over that clause's tokens, and the
    sentence cites them all, strongest first (a source picked twice with its higher score; at most
    ``policy.top_k``). A sentence of one clause is cited as without them.
    """
    if not isinstance(policy, KeepPolicy):
        raise TypeError(f"policy must be a KeepPolicy, got {type(policy).__name__}")
    if (token_scores is None) != (token_starts is None):
        raise InputError("token_scores and token_starts go together: pass both (per-clause citations) or neither")
    if token_scores is not None and token_starts is not None and len(token_scores) != len(token_starts):
        raise InputError(f"token_scores has {len(token_scores)} rows but token_starts {len(token_starts)}: "
                         "pass one of each per answer token")
    sources, docs = attribution.sources, attribution.prompt.documents
    answer = None if token_scores is None else attribution.answer
    out = []
    for sent in attribution.sentences:
        chosen: dict[int, float] = {}
        for scores in _claim_scores(sent, answer, token_scores, token_starts):
            values = scores.tolist()
            positive = [i for i, v in enumerate(values) if v > 0]
            for j in policy.select([values[i] for i in positive]):
                i = positive[j]
                chosen[i] = max(chosen.get(i, values[i]), values[i])
        picked = sorted(chosen.items(), key=lambda item: (-item[1], item[0]))[: policy.top_k]
        cited = []
        for i, score in picked:
            s = sources[i]
            cited.append(CitedSource(i, s.document, docs[s.document].id, s.text, s.start, s.end, score))
        out.append(Citation(sent.text, sent.start, sent.end, tuple(cited)))
    return out


def _claim_scores(
    sentence: AnswerSentence, answer: str | None, token_scores: torch.Tensor | None,
    token_starts: Sequence[int | None] | None,
) -> list[torch.Tensor]:
    """Per-source scores of each clause of ``sentence`` that holds a token, in order; the sentence's own
    scores when it has one such clause, or when there are no per-token scores."""
    if answer is None or token_scores is None or token_starts is None or not sentence.tokens:
        return [sentence.scores]
    clauses = split_clauses(answer, sentence.start, sentence.end)
    if len(clauses) < 2:
        return [sentence.scores]
    starts = [c[0] for c in clauses]
    members: list[list[int]] = [[] for _ in clauses]
    for t in sentence.tokens:
        at = next((token_starts[u] for u in range(t, -1, -1) if token_starts[u] is not None), sentence.start)
        members[max(0, bisect.bisect_right(starts, at) - 1)].append(t)
    parts = [token_scores[m].mean(dim=0) for m in members if m]
    return parts if len(parts) > 1 else [sentence.scores]


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
