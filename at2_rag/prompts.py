"""Chat prompts built from (question, documents) with the exact token range of every source.

The prompt is assembled from pieces tokenized one by one: the chat template's own text (special
tokens parsed), and user text — headers, document sentences, the question — encoded as ordinary
text (``split_special_tokens``), so a document containing ``<|im_end|>`` can never close the turn.
Because each piece is tokenized on its own, no token straddles two sources and each source's token
range decodes back to exactly its characters.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch

from .documents import Document, DocumentLike, as_documents, check_encodable, document_header
from .errors import InputError
from .sentences import split_sentences

Granularity = Union[Literal["document", "sentence"], int]
"""Source granularity: whole documents, sentences, or windows of that many tokens."""

DEFAULT_INSTRUCTION = (
    "Answer the question using only the search results below. Answer briefly, in one or two "
    "sentences."
)
_MARKER = "\u2063AT2RAGCONTENT\u2063"

# A fast tokenizer keeps ``split_special_tokens`` as a flag on its shared Rust backend and flips it
# per call, so two threads encoding with different settings can each see the other's flag. Our
# encode calls on one backend are therefore serialised by a lock that belongs to that backend
# (encoding is a tiny part of an attribution); the table only maps live backends to their locks.
_ENCODE_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_ENCODE_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class Source:
    """One attributable span of the context.

    ``start``/``end`` are character offsets in the document's text (what a user highlights);
    ``token_start``/``token_end`` the token range in the prompt; ``prompt_start``/``prompt_end``
    the character range in :attr:`Prompt.text` that those tokens decode to (for a whole document
    this includes its header line).
    """

    index: int
    document: int
    text: str
    start: int
    end: int
    token_start: int
    token_end: int
    prompt_start: int
    prompt_end: int


@dataclass(frozen=True)
class Prompt:
    """A tokenized prompt and where everything in it lies."""

    input_ids: list[int]
    text: str
    question: str
    documents: list[Document]
    sources: list[Source]
    granularity: Granularity
    question_tokens: tuple[int, int]
    """Token range of the question text."""
    document_tokens: tuple[tuple[int, int], ...] = ()
    """Token range of each document's block: its header, its text and the blank line after it."""

    def __len__(self) -> int:
        return len(self.input_ids)

    def membership(self, length: int | None = None) -> torch.Tensor:
        """``(tokens, sources)`` 0/1 matrix: which source each prompt token belongs to (header and
        question tokens belong to none); ``length`` pads it to a longer batch row."""
        member = torch.zeros(length or len(self), len(self.sources))
        for s in self.sources:
            member[s.token_start : s.token_end, s.index] = 1.0
        return member


class _Builder:
    """Accumulates token pieces and their character extents."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text: list[str] = []
        self.chars = 0

    def add(self, text: str, *, special: bool = False) -> tuple[int, int, int, int]:
        """Append ``text``; return its (token_start, token_end, char_start, char_end)."""
        ids = encode(self.tokenizer, text, special=special) if text else []
        t0, c0 = len(self.ids), self.chars
        self.ids.extend(ids)
        self.text.append(text)
        self.chars += len(text)
        return t0, len(self.ids), c0, self.chars


def _encode_lock(tokenizer) -> threading.Lock:
    """The lock serialising encode calls on ``tokenizer`` (created on first use)."""
    # The flag lives on the Rust backend, which copies of a tokenizer object may share: key on it.
    owner = getattr(tokenizer, "_tokenizer", None) or tokenizer
    with _ENCODE_LOCKS_GUARD:
        lock = _ENCODE_LOCKS.get(owner)
        if lock is None:
            lock = _ENCODE_LOCKS[owner] = threading.Lock()
        return lock


def encode(tokenizer, text: str, *, special: bool = False) -> list[int]:
    """Token ids of ``text``; special-token text is parsed only when ``special`` is true.

    Thread-safe on a shared tokenizer (see ``_ENCODE_LOCKS``).
    """
    with _encode_lock(tokenizer):
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=not special)
    return list(ids["input_ids"])


def template_parts(tokenizer, system_prompt: str | None = None) -> tuple[str, str]:
    """The chat template's text before and after the user message (a plain completion layout when
    the tokenizer has no chat template)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": _MARKER}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if rendered.count(_MARKER) == 1:
            before, after = rendered.split(_MARKER)
            return before, after
    # Documented fallback for tokenizers without a chat template: a plain completion prompt.
    bos = tokenizer.bos_token or ""
    before = bos + (system_prompt + "\n\n" if system_prompt else "")
    return before, "\nAnswer:"


def build_prompt(
    tokenizer,
    question: str,
    documents: Sequence[DocumentLike],
    granularity: Granularity = "document",
    *,
    instruction: str = DEFAULT_INSTRUCTION,
    system_prompt: str | None = None,
) -> Prompt:
    """Tokenize the RAG prompt for ``question`` over ``documents`` and locate every source."""
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question must be a non-empty string")
    check_encodable(question, "the question")
    check_granularity(granularity)
    docs = as_documents(documents)
    before, after = template_parts(tokenizer, system_prompt)
    b = _Builder(tokenizer)
    b.add(before, special=True)
    b.add(instruction + "\n\n")
    sources: list[Source] = []
    blocks: list[tuple[int, int]] = []
    for d, doc in enumerate(docs):
        h_t0, _, h_c0, _ = b.add(document_header(d + 1, doc.title))
        pieces = []  # (char range in doc, token range, char range in prompt, per-token doc offsets)
        for s0, s1 in split_sentences(doc.text):
            t0, t1, c0, c1 = b.add(doc.text[s0:s1])
            pieces.append((s0, s1, t0, t1, c0, c1))
        if granularity == "document":
            last = pieces[-1]
            sources.append(
                Source(len(sources), d, doc.text, 0, len(doc.text), h_t0, last[3], h_c0, last[5])
            )
        elif granularity == "sentence":
            for s0, s1, t0, t1, c0, c1 in pieces:
                sources.append(Source(len(sources), d, doc.text[s0:s1], s0, s1, t0, t1, c0, c1))
        else:
            sources.extend(_token_windows(tokenizer, b.ids, doc, d, pieces, granularity, len(sources)))
        blocks.append((h_t0, b.add("\n\n")[1]))
    b.add("Question:")
    q_t0, q_t1, _, _ = b.add(" " + question)  # the space starts the first word, as BPE expects
    b.add(after, special=True)
    return Prompt(
        input_ids=b.ids,
        text="".join(b.text),
        question=question,
        documents=docs,
        sources=sources,
        granularity=granularity,
        question_tokens=(q_t0, q_t1),
        document_tokens=tuple(blocks),
    )


def documents_that_fit(prompt: Prompt, max_tokens: int) -> int:
    """How many of ``prompt``'s leading documents fit in a prompt of ``max_tokens`` tokens: the most
    that do, at least 1. Exact without re-tokenizing: each piece is tokenized on its own and a
    document's header names only its own position, so the prompt of the first ``m`` documents is this
    one without the later documents' blocks."""
    blocks = prompt.document_tokens
    m, length = len(blocks), len(prompt)
    while m > 1 and length > max_tokens:
        m -= 1
        length -= blocks[m][1] - blocks[m][0]
    return m


def check_granularity(granularity: Granularity) -> None:
    """Raise :class:`InputError` unless ``granularity`` is "document", "sentence" or a positive int."""
    if granularity in ("document", "sentence"):
        return
    if isinstance(granularity, bool) or not isinstance(granularity, int) or granularity < 1:
        raise InputError(
            f"granularity must be 'document', 'sentence' or a positive token count, got {granularity!r}"
        )


def _token_windows(tokenizer, ids, doc, d, pieces, size, first_index) -> list[Source]:
    """Windows of ``size`` tokens over a document's body, cut only on clean character boundaries."""
    # Every token start that falls on a character boundary of the document, as (token, doc char).
    bounds: list[tuple[int, int]] = []
    prompt_char = {}
    for s0, s1, t0, t1, c0, _ in pieces:
        starts = token_char_starts(tokenizer, ids[t0:t1], doc.text[s0:s1])
        for k, off in enumerate(starts):
            if off is not None:
                bounds.append((t0 + k, s0 + off))
                prompt_char[t0 + k] = c0 + off
    end_tok, end_char = pieces[-1][3], len(doc.text)
    end_prompt = pieces[-1][5]
    windows, i = [], 0
    while i < len(bounds):
        t0, c0 = bounds[i]
        j = i + 1
        while j < len(bounds) and bounds[j][0] - t0 < size:
            j += 1
        t1, c1 = bounds[j] if j < len(bounds) else (end_tok, end_char)
        p1 = prompt_char[t1] if j < len(bounds) else end_prompt
        windows.append(
            Source(first_index + len(windows), d, doc.text[c0:c1], c0, c1, t0, t1, prompt_char[t0], p1)
        )
        i = j
    return windows


_CONTEXT = 4
"""Clean token boundaries of context decoded before each new token in :func:`token_char_starts`."""
_RESYNC = 32
"""Tokens in a row without a clean start after which :func:`token_char_starts` stops decoding windows
and checks whole prefixes instead, at ever longer intervals."""


def token_char_starts(tokenizer, ids: Sequence[int], text: str) -> list[int | None]:
    """Character offset in ``text`` where each token starts, or None inside a split character.

    Token ``k`` starts at ``len(decode(ids[:k]))`` when that decoding is a prefix of ``text`` (any
    tokenizer whose decode reproduces ``text``); tokens that do not start on a clean boundary (a
    multi-byte character split across tokens) get None. Decoding every prefix would be quadratic, so
    each token decodes only a few tokens back from a clean boundary: the text a window adds past its
    own first part is what the prefix adds (decoders act on a token's neighbours only — byte runs,
    a leading-space strip — and a clean boundary ends every byte run). After :data:`_RESYNC` tokens in
    a row without a clean start, whole prefixes are checked at doubling intervals instead, so a decode
    that never matches the text (a normalizing tokenizer) stays linear too.
    """
    starts: list[int | None] = []
    clean = [(0, 0)]  # (token, char): decode(ids[:token]) == text[:char]
    resync = _RESYNC
    for k in range(len(ids)):
        anchor, at = clean[-1]
        start: int | None = at if k == anchor else None
        if k - anchor >= resync:
            resync *= 2
            prefix = decode(tokenizer, ids[:k])
            start = len(prefix) if text.startswith(prefix) else None
        elif 0 < k - anchor < _RESYNC:
            j = max(0, len(clean) - 1 - _CONTEXT)
            head = decode(tokenizer, ids[clean[j][0] : anchor])
            while not head and j > 0:  # the window must not begin with what a strip would remove
                j -= 1
                head = decode(tokenizer, ids[clean[j][0] : anchor])
            body = decode(tokenizer, ids[clean[j][0] : k])
            if body.startswith(head) and text.startswith(body[len(head) :], at):
                start = at + len(body) - len(head)
        if start is not None and k != anchor:
            clean.append((k, start))
            resync = _RESYNC
        starts.append(start)
    return starts


def decode(tokenizer, ids: Sequence[int]) -> str:
    """Decode exactly: special tokens kept, no whitespace clean-up."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def sentence_tokens(tokenizer, ids: list[int], text: str) -> list[tuple[tuple[int, int], list[int]]]:
    """Each sentence of ``text`` (the decoded ``ids``): its character span and the tokens that overlap it."""
    if not ids:
        return []
    starts = token_char_starts(tokenizer, ids, text)
    # A token inside a split character starts where the previous clean token started.
    clean = []
    for s in starts:
        clean.append(s if s is not None else (clean[-1] if clean else 0))
    ends = clean[1:] + [len(text)]
    spans = split_sentences(text)  # they tile the text, in order
    span_ends = [s1 for _, s1 in spans]
    toks: list[list[int]] = [[] for _ in spans]
    for k, (a, b) in enumerate(zip(clean, ends)):
        i = bisect.bisect_right(span_ends, a)  # the first sentence ending after the token starts
        while i < len(spans) and spans[i][0] < b:
            toks[i].append(k)
            i += 1
    return [(span, tok) for span, tok in zip(spans, toks) if tok]
