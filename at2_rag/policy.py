"""Keep policies: the one rule that decides which scored items stay — retrieved documents when
pruning, sources when citing an answer sentence."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class KeepPolicy:
    """Which scored documents to keep. Every set criterion must hold; ``min_keep`` wins over all.

    Args:
        top_k: keep at most this many, best first.
        threshold: keep only documents scoring at least this (in the units of the scores compared:
            keep scores, or calibrated 0-1 relevance where the caller passes it, as the framework
            components do).
        relative: keep only documents scoring at least ``relative`` × the best score (0–1).
        token_budget: keep documents, best first, while their total tokens stay within this;
            a document that does not fit is skipped and smaller ones after it may still fit.
        min_keep: always keep at least this many of the best documents, even when a criterion
            would drop them (default 1: pruning never returns an empty context unless set to 0).
    """

    top_k: int | None = None
    threshold: float | None = None
    relative: float | None = None
    token_budget: int | None = None
    min_keep: int = 1

    def __post_init__(self) -> None:
        for name in ("top_k", "token_budget", "min_keep"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")
        if self.relative is not None and not 0.0 <= self.relative <= 1.0:
            raise ValueError(f"relative must lie in [0, 1] (a fraction of the best score), got {self.relative!r}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold!r}")

    def select(
        self,
        scores: Sequence[float],
        lengths: Sequence[int] | None = None,
        threshold_scores: Sequence[float] | None = None,
    ) -> list[int]:
        """Indices of the documents to keep, highest score first (ties keep input order).

        ``threshold_scores``: what ``threshold`` compares instead of ``scores`` (one per document, e.g.
        calibrated 0-1 relevance, a monotone map of the scores); the order is always by ``scores``.
        """
        if self.token_budget is not None and (lengths is None or len(lengths) != len(scores)):
            raise ValueError("a token budget needs one token length per document")
        if threshold_scores is not None and len(threshold_scores) != len(scores):
            raise ValueError("threshold_scores needs one value per document")
        by = scores if threshold_scores is None else threshold_scores
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        if not order:
            return []
        best = scores[order[0]]
        kept: list[int] = []
        used = 0
        for i in order:
            if self.top_k is not None and len(kept) >= self.top_k:
                break
            if self.threshold is not None and by[i] < self.threshold:
                continue
            if self.relative is not None and scores[i] < self.relative * best:
                continue
            if self.token_budget is not None:
                assert lengths is not None
                if used + lengths[i] > self.token_budget:
                    continue
                used += lengths[i]
            kept.append(i)
        for i in order[: self.min_keep]:  # the guarantee, best first
            if i not in kept:
                kept.append(i)
        return sorted(kept, key=lambda i: (-scores[i], i))


DEFAULT_POLICY = KeepPolicy(top_k=1)
"""Keep the single best document: chosen on NQ-RAG validation by the reader's accuracy against
keeping 2 or 3 (benchmarks/RESULTS.md, "Prune and regenerate")."""
CITATION_POLICY = KeepPolicy(top_k=3, relative=0.5, min_keep=0)
"""Citations cite at most 3 sources per answer sentence, each carrying at least half the weight of
the strongest (the clear winners only), and nothing when no source scores above zero."""
SENTENCE_POLICY = KeepPolicy(top_k=2, min_keep=1)
"""Sentence-level pruning inside a kept document: keep its two best sentences. Chosen on 100 NQ-RAG
validation questions over relative cuts of 0.25/0.5/0.75 and the best one sentence, by the reader's
accuracy across 1-3 kept documents (benchmarks/RESULTS.md §14): it keeps the answer string most often
of the cuts, for about two-thirds of the whole documents' tokens."""

SHORTHANDS = ("top_n", "top_k", "threshold", "relative", "token_budget", "min_keep")
"""The keep-policy shorthands every front end accepts (``top_n`` is the rerankers' name; ``top_k`` an alias)."""


def keep_policy(
    policy: KeepPolicy | None = None,
    *,
    top_n: int | None = None,
    top_k: int | None = None,
    threshold: float | None = None,
    relative: float | None = None,
    token_budget: int | None = None,
    min_keep: int | None = None,
    default: KeepPolicy = DEFAULT_POLICY,
) -> KeepPolicy:
    """The one way a front end turns its settings into a :class:`KeepPolicy`: a policy object, or the
    shorthands applied to ``default`` (never both; ``top_n`` and ``top_k`` name the same limit)."""
    given = {name: value for name, value in (("top_n", top_n), ("top_k", top_k), ("threshold", threshold),
             ("relative", relative), ("token_budget", token_budget), ("min_keep", min_keep)) if value is not None}
    if policy is not None:
        if not isinstance(policy, KeepPolicy):
            raise TypeError(f"policy must be an at2_rag.KeepPolicy, got {type(policy).__name__}")
        if given:
            raise ValueError(f"pass either policy= or the shorthands {sorted(given)}, not both")
        return policy
    if top_n is not None and top_k is not None and top_n != top_k:
        raise ValueError(f"top_n={top_n} and top_k={top_k} name the same limit; pass one of them")
    limit = top_n if top_n is not None else top_k
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"top_n must be a positive int (documents to keep), got {limit!r}")
    changes = {"top_k": limit, "threshold": threshold, "relative": relative, "token_budget": token_budget,
               "min_keep": min_keep}
    return dataclasses.replace(default, **{k: v for k, v in changes.items() if v is not None})
