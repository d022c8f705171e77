"""Conversions between LangChain documents and at2-rag documents, and the scored copies returned."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Annotated, Any

from langchain_core.documents import Document
from pydantic import BeforeValidator, StrictInt

import at2_rag
from at2_rag import InputError, check_encodable, format_context

SCORE_KEY = "attribution_score"
"""Metadata key of the raw AT2 score of a returned document (the estimator's units)."""
KEEP_SCORE_KEY = "keep_score"
"""Metadata key of the raw score the documents were ranked by: the AT2 score fused with the
retriever's rank when a rank is known (standardized units), the AT2 score itself otherwise."""
RELEVANCE_KEY = "relevance_score"
"""Metadata key, the one LangChain rerankers use, of the calibrated 0-1 chance that the document is
the one that answers (``at2_rag.PruneResult.relevance``; the compressor's ``threshold`` compares it).
Where no calibration fits (draft mode, sentence-level pruning, an own estimator or rank weight) it is
the keep score min-max scaled within the call, with a warning once per compressor."""
RANK_SOURCE_KEY = "rank_source"
"""Metadata key of where the keep score's retriever rank came from: ``"retrieval_rank"`` (metadata),
the score key it was read from (e.g. ``"relevance_score"``), ``"input order"``, or ``"none"`` (no rank
known, or rank weight 0: AT2 alone)."""
SPANS_KEY = "attribution_spans"
"""Character spans, in the original text, of the sentences kept by sentence-level pruning."""
RETRIEVAL_SCORE_KEYS = ("relevance_score", "similarity_score")
"""Metadata keys read as retriever scores (higher is better), in this order, when the documents carry
no ``retrieval_rank``: rerankers write ``relevance_score``, and LangChain's guide to adding scores to
retriever results ``similarity_score``. Not ``score``: stores return distances under that name too."""



def _integral(value: object) -> object:
    """Any integer type (numpy's too, not a bool) as a Python int; anything else unchanged for the strict check."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


Count = Annotated[StrictInt, BeforeValidator(_integral)]
"""A count field: an int, or a numpy integer converted to one; never a bool, a float or a string."""

def check_question(question: Any, what: str = "query") -> str:
    """The question itself, or :class:`~at2_rag.InputError` unless it is a non-empty string a tokenizer can encode."""
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"the {what} must be a non-empty string, got {question!r:.60}")
    return check_encodable(question, f"the {what}")


def non_empty(documents: Sequence[Document], owner: str) -> list[int]:
    """Indices of the documents with text; the others are skipped with a warning naming them."""
    keep, empty = [], []
    for i, doc in enumerate(documents):
        if not isinstance(doc, Document):
            raise InputError(f"document {i} is a {type(doc).__name__}; pass langchain_core Documents")
        (keep if doc.page_content.strip() else empty).append(i)
    if empty:
        warnings.warn(
            f"{owner} skipped {len(empty)} document(s) with empty page_content (positions {empty}): "
            "they cannot have influenced an answer",
            UserWarning,
            stacklevel=3,
        )
    return keep


def to_at2(doc: Document, title_key: str | None = "title", rank: int | None = None) -> at2_rag.Document:
    """The at2-rag view of a LangChain document: text, optional title from metadata, id and metadata
    (a copy; ``rank``, when given, as its ``retrieval_rank``)."""
    title = doc.metadata.get(title_key) if title_key else None
    title = title if isinstance(title, str) and title.strip() else None
    metadata = dict(doc.metadata) if rank is None else {**doc.metadata, at2_rag.RETRIEVAL_RANK_KEY: rank}
    return at2_rag.Document(text=doc.page_content, title=title, id=doc.id, metadata=metadata)


def score_ranks(documents: Sequence[Document], keys: Sequence[str]) -> tuple[list[int] | None, str | None]:
    """Retriever ranks (0 = best) from the first of ``keys`` whose value is a finite number in every
    document, all of them distinct (ties or gaps say nothing certain about order), and that key; else
    ``(None, None)``. Not used when every document carries ``retrieval_rank`` (the core reads that)."""
    if all(_is_rank(d.metadata.get(at2_rag.RETRIEVAL_RANK_KEY)) for d in documents):
        return None, None
    for key in keys:
        scores = [_finite(d.metadata.get(key)) for d in documents]
        if all(s is not None for s in scores) and len(set(scores)) == len(scores):
            order = sorted(range(len(scores)), key=lambda i: -scores[i])  # type: ignore[operator]
            ranks = [0] * len(scores)
            for rank, i in enumerate(order):
                ranks[i] = rank
            return ranks, key
    return None, None


def _finite(value: object) -> float | None:
    """``value`` as a float when it is a finite real number (not a bool), else None."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


def _is_rank(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0


def scored_copy(
    doc: Document, score: float, keep_score: float, relevance: float, page_content: str | None = None, **extra: Any
) -> Document:
    """A new document with the attribution, keep and relevance scores in its metadata (the input is untouched)."""
    metadata = {**doc.metadata, SCORE_KEY: score, KEEP_SCORE_KEY: keep_score, RELEVANCE_KEY: relevance, **extra}
    return Document(
        page_content=doc.page_content if page_content is None else page_content,
        metadata=metadata,
        id=doc.id,
    )


def plain_copy(doc: Document) -> Document:
    """A new document with the same text, metadata (a copy) and id."""
    return Document(page_content=doc.page_content, metadata=dict(doc.metadata), id=doc.id)


def format_documents(documents: Sequence[Document], title_key: str | None = "title") -> str:
    """The documents numbered as the local model reads them (the ``context`` of ``default_answer_prompt``)."""
    return format_context([to_at2(d, title_key) for d in documents])


def as_documents(items: Sequence[Document | str]) -> list[Document]:
    """LangChain documents from documents or plain strings (a runnable's ``documents`` input)."""
    if isinstance(items, (str, Document)):
        raise InputError("documents must be a list of documents or strings, not a single one")
    return [Document(page_content=item) if isinstance(item, str) else item for item in items]
