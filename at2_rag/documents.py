"""Documents as at2-rag sees them, how plain strings and mappings become one, and how a document is
laid out in the prompt (``Document [n] (Title: …)`` then its text) — the one place for that layout."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import InputError

HEADER_WORD = "Document"
"""First word of every document's header in the prompt (``Document [n] (Title: ...)``)."""
RETRIEVAL_RANK_KEY = "retrieval_rank"
"""Document metadata key of the retriever's rank (0 = best); when every document has one, pruning's rank
fusion uses it instead of the input order (so documents may come in any order)."""
MAX_RANK = 2**53
"""Largest rank accepted: every rank up to it is exact as a float, and ``log1p`` of it is about 37."""


@dataclass(frozen=True)
class Document:
    """A retrieved document (chunk) with an optional title and id."""

    text: str
    title: str | None = None
    id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


DocumentLike = Union[Document, str, Mapping[str, Any]]


def as_document(item: DocumentLike, index: int = 0) -> Document:
    """Coerce a string, mapping (``text``/``page_content``, ``title``, ``id``) or Document."""
    if isinstance(item, Document):
        doc = item
    elif isinstance(item, str):
        doc = Document(text=item)
    elif isinstance(item, Mapping):
        text = item.get("text", item.get("page_content"))
        meta = item.get("metadata")
        if meta is not None and not isinstance(meta, Mapping):
            raise InputError(
                f"document {index} has metadata of type {type(meta).__name__}; pass a mapping (dict) or None"
            )
        doc = Document(
            text=text,  # type: ignore[arg-type]
            title=item.get("title"),
            id=None if item.get("id") is None else str(item.get("id")),
            metadata=dict(meta or {}),
        )
    else:
        raise InputError(
            f"document {index} is a {type(item).__name__}; pass a str, a mapping with 'text', or "
            "at2_rag.Document"
        )
    if not isinstance(doc.text, str):
        raise InputError(
            f"document {index} has text of type {type(doc.text).__name__}; document text must be a str"
        )
    if not doc.text.strip():
        raise InputError(
            f"document {index} is empty or whitespace-only; remove it before attributing (it cannot "
            "have influenced the answer)"
        )
    if doc.title is not None and not isinstance(doc.title, str):
        raise InputError(f"document {index} has a non-string title; pass a str or None")
    if not isinstance(doc.metadata, Mapping):
        raise InputError(
            f"document {index} has metadata of type {type(doc.metadata).__name__}; pass a mapping (dict)"
        )
    rank = doc.metadata.get(RETRIEVAL_RANK_KEY)
    if rank is not None and not is_rank(rank):
        raise InputError(
            f"document {index} has {RETRIEVAL_RANK_KEY} {brief(rank)}; pass the retriever's 0-based rank as "
            f"an int from 0 to 2**53, or leave it out"
        )
    check_encodable(doc.text, f"document {index}")
    if doc.title:
        check_encodable(doc.title, f"the title of document {index}")
    return doc


def is_rank(value: object) -> bool:
    """Whether ``value`` is a retriever rank: an integer (Python's or numpy's, not a bool) from 0 to
    :data:`MAX_RANK`."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= int(value) <= MAX_RANK


def brief(value: object) -> str:
    """``value``'s repr for a one-line message: at most 40 characters, a huge int by its size."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"(an integer of about {int(value.bit_length() * 0.30103)} digits)"
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def check_encodable(text: str, what: str) -> str:
    """``text`` itself, or :class:`InputError` when it holds a lone surrogate (valid in JSON and Python
    strings, but not Unicode text: a tokenizer cannot encode it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{what} contains a lone surrogate {text[e.start]!r} at character {e.start} (broken UTF-16 "
            "or a bad \\u escape); repair or remove it"
        ) from None
    return text


def as_documents(items: Iterable[DocumentLike]) -> list[Document]:
    """Validate and coerce a list of documents; at least one is required."""
    if isinstance(items, (str, Document)) or items is None:
        raise InputError("documents must be a list of documents, not a single document or None")
    docs = [as_document(item, i) for i, item in enumerate(items)]
    if not docs:
        raise InputError("no documents were given: attribution needs at least one document")
    return docs


def document_header(position: int, title: str | None) -> str:
    """The header line that precedes document number ``position`` (1-based) in the prompt."""
    return f"{HEADER_WORD} [{position}]" + (f" (Title: {title})" if title else "") + "\n"


def format_context(documents: Sequence[DocumentLike]) -> str:
    """The documents as numbered blocks, laid out exactly as in the prompt (for another LLM's prompt)."""
    return "\n\n".join(document_header(i, d.title) + d.text for i, d in enumerate(as_documents(documents), 1))


def document_label(doc: DocumentLike, index: int) -> str:
    """A document's id for messages: its id when it has one, else ``#index``."""
    ident = doc.get("id") if isinstance(doc, Mapping) else getattr(doc, "id", None)
    return str(ident) if ident is not None else f"#{index}"
