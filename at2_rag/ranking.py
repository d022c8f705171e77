"""Retriever ranks and the keep score that fuses them with AT2 scores.

A rank is used only when it is known (:func:`known_ranks`): every document's ``retrieval_rank``
metadata, or the caller's word that the input is in retriever order; never an order nobody vouched for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from .documents import RETRIEVAL_RANK_KEY, Document, brief, is_rank
from .errors import InputError
from .estimator import check_rank_weight

InputOrder = Literal["unknown", "retriever"]
INPUT_ORDERS: tuple[str, ...] = ("unknown", "retriever")
"""What the order of the input documents says: nothing (default), or the retriever's ranking, best first."""
RankSource = Literal["metadata", "input order", "none"]


def standardized(scores: Sequence[float]) -> list[float]:
    """Scores shifted to mean 0 and scaled to unit standard deviation (all 0 when they are equal),
    so AT2 scores, meaningful only up to scale, can be added to a retriever-rank term."""
    n = len(scores)
    if n == 0:
        return []
    mean = sum(scores) / n
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / n)
    return [0.0] * n if sd == 0 else [(s - mean) / sd for s in scores]


def fused_scores(
    scores: Sequence[float], rank_weight: float, ranks: Sequence[int] | None = None
) -> list[float]:
    """Keep scores: standardized AT2 scores minus ``rank_weight · log(1 + rank)``; a document's rank
    is ``ranks[i]`` when given, else its position in the input (retriever order, best first)."""
    if check_rank_weight(rank_weight) == 0:
        return list(scores)
    ranks = range(len(scores)) if ranks is None else ranks
    bad = next((r for r in ranks if not is_rank(r)), None)
    if bad is not None:
        raise InputError(f"ranks must be ints from 0 to 2**53 (0 = the retriever's best), got {brief(bad)}")
    return [z - rank_weight * math.log1p(rank) for rank, z in zip(ranks, standardized(scores))]


def retriever_ranks(documents: Sequence[Document]) -> list[int] | None:
    """The documents' ``retrieval_rank`` metadata when every one has a rank (an int from 0 to 2**53, as
    ``as_documents`` requires of it), else None."""
    ranks = [d.metadata.get(RETRIEVAL_RANK_KEY) for d in documents]
    if all(is_rank(r) for r in ranks):
        return ranks  # type: ignore[return-value]
    return None


def known_ranks(documents: Sequence[Document], input_order: InputOrder = "unknown") -> tuple[list[int] | None, RankSource]:
    """The retriever ranks that can be trusted, and where they came from: every document's
    ``retrieval_rank`` metadata (``"metadata"``), else the positions when the caller says the input is
    in retriever order (``"input order"``), else none (``"none"``): an order nobody vouched for (sorted
    by date, merged lists, hand-assembled) must not outrank what the documents say."""
    ranks = retriever_ranks(documents)
    if ranks is not None:
        return ranks, "metadata"
    if input_order == "retriever":
        return list(range(len(documents))), "input order"
    return None, "none"
