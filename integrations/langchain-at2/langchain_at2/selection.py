"""Which documents, and which sentences inside them, to keep given an AT2 attribution."""

from __future__ import annotations

from dataclasses import dataclass

from at2_rag import Attribution, KeepPolicy, PruneResult


@dataclass(frozen=True)
class Selection:
    """Scores of the scored documents, the kept ones best first, and optionally kept sentences."""

    scores: list[float]
    kept: list[int]
    spans: dict[int, list[tuple[int, int]]] | None = None
    """Per kept document, the character spans of its kept sentences, in reading order."""


def from_prune_result(result: PruneResult) -> Selection:
    """The selection the core pruner made (document granularity)."""
    return Selection(list(result.scores), list(result.kept))


def select_sentences(attribution: Attribution, policy: KeepPolicy, sentence_policy: KeepPolicy) -> Selection:
    """Keep documents by their summed sentence scores, then the useful sentences inside each.

    Documents the core left out to fit the window are never kept (they were never seen).
    """
    n_docs = len(attribution.prompt.documents)
    by_doc: list[list[tuple[int, int, int, float]]] = [[] for _ in range(n_docs)]
    for src, score in zip(attribution.sources, attribution.scores.tolist()):
        by_doc[src.document].append((src.start, src.end, src.token_end - src.token_start, score))
    doc_scores = attribution.document_scores().tolist()
    lengths = [sum(s[2] for s in sents) for sents in by_doc]
    kept = policy.select(doc_scores, lengths)
    spans = {}
    for d in kept:
        sents = by_doc[d]
        chosen = sentence_policy.select([s[3] for s in sents], [s[2] for s in sents])
        spans[d] = [(sents[j][0], sents[j][1]) for j in sorted(chosen)]
    return Selection(doc_scores, kept, spans)
