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
retriever's rank in support mode (standardized units), the AT2 score itself otherwise."""
RELEVANCE_KEY = "relevance_score"
"""Metadata key of the keep score mapped to 0-1 within the call (min-max over the scored documents:
the best scores 1, the worst 0), under the key LangChain rerankers use, so downstream code finds it."""
SPANS_KEY = "attribution_spans"
"""Character spans, in the original text, of the sentences kept by sentence-level pruning."""



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


def to_at2(doc: Document, title_key: str | None = "title") -> at2_rag.Document:
    """The at2-rag view of a LangChain document: text, optional title from metadata, and id."""
    title = doc.metadata.get(title_key) if title_key else None
    title = title if isinstance(title, str) and title.strip() else None
    return at2_rag.Document(text=doc.page_content, title=title, id=doc.id)


def relevance_scores(keep_scores: Sequence[float]) -> list[float]:
    """Keep scores mapped to 0-1 by min-max over the finite ones (all equal: 1; not finite: 0); order is kept."""
    finite = [s for s in keep_scores if math.isfinite(s)]
    if not finite:
        return [0.0] * len(keep_scores)
    low, high = min(finite), max(finite)
    return [
        (0.0 if not math.isfinite(s) else 1.0 if high == low else (s - low) / (high - low)) for s in keep_scores
    ]


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
