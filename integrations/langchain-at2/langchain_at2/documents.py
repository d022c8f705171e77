"""Conversions between LangChain documents and at2-rag documents, and the scored copies returned."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document

import at2_rag
from at2_rag import InputError

SCORE_KEY = "attribution_score"
"""Metadata key of the AT2 score of a returned document."""
RELEVANCE_KEY = "relevance_score"
"""The score the documents were ranked by (the keep score: attribution fused with retriever rank in
support mode), under the key LangChain rerankers use, so downstream code finds it."""
SPANS_KEY = "attribution_spans"
"""Character spans, in the original text, of the sentences kept by sentence-level pruning."""


def check_question(question: Any, what: str = "query") -> str:
    """The question itself, or :class:`~at2_rag.InputError` when it is not a non-empty string."""
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"the {what} must be a non-empty string, got {question!r}")
    return question


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


def scored_copy(
    doc: Document, score: float, page_content: str | None = None, *, relevance: float | None = None, **extra: Any
) -> Document:
    """A new document with the attribution score and the relevance score (the keep score the
    documents were ranked by; the attribution score when not given) in its metadata; the input
    document is left untouched."""
    metadata = {**doc.metadata, SCORE_KEY: score, RELEVANCE_KEY: score if relevance is None else relevance, **extra}
    return Document(
        page_content=doc.page_content if page_content is None else page_content,
        metadata=metadata,
        id=doc.id,
    )


def as_documents(items: Sequence[Document | str]) -> list[Document]:
    """LangChain documents from documents or plain strings (a runnable's ``documents`` input)."""
    if isinstance(items, (str, Document)):
        raise InputError("documents must be a list of documents or strings, not a single one")
    return [Document(page_content=item) if isinstance(item, str) else item for item in items]
