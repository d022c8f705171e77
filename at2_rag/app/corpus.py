"""Documents to retrieve from: the shipped sample corpus, and a user's folder of text files in chunks.

Chunks are whole sentences packed up to ``chunk_words`` words (default 120: about 160 tokens, so ten
retrieved chunks fit a 2k-token prompt with room for the answer, and one chunk is specific enough
to be worth keeping or dropping on its own).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..documents import Document
from ..errors import InputError
from ..sentences import split_sentences

DEFAULT_CHUNK_WORDS = 120
TEXT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class SampleQuestion:
    """A question about the sample corpus, with accepted answers and the ids of the passages it needs."""

    question: str
    answers: tuple[str, ...]
    gold: tuple[str, ...]


def sample_corpus() -> list[Document]:
    """The shipped sample corpus: 32 short passages on the world's mountains and their first ascents."""
    text = resources.files("at2_rag.app").joinpath("sample/mountains.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [Document(text=r["text"], title=r["title"], id=r["id"]) for r in rows]


def sample_questions() -> list[SampleQuestion]:
    """Questions on the sample corpus; each needs one or two of its passages."""
    text = resources.files("at2_rag.app").joinpath("sample/questions.json").read_text(encoding="utf-8")
    return [SampleQuestion(q["question"], tuple(q["answers"]), tuple(q["gold"])) for q in json.loads(text)]


def chunk_text(text: str, chunk_words: int = DEFAULT_CHUNK_WORDS) -> list[tuple[int, int]]:
    """Character spans of chunks of ``text``: whole sentences, at most ``chunk_words`` words each.

    A paragraph break always ends a chunk; a sentence longer than the limit is split between words.
    """
    if chunk_words < 1:
        raise ValueError(f"chunk_words must be at least 1, got {chunk_words}")
    pieces: list[tuple[int, int, int]] = []  # (start, end, words) of sentence-sized pieces
    for para_start, para_end in _paragraphs(text):
        for s0, s1 in split_sentences(text[para_start:para_end]):
            pieces.extend(_word_split(text, para_start + s0, para_start + s1, chunk_words))
        pieces.append((para_end, para_end, -1))  # paragraph boundary marker
    chunks: list[tuple[int, int]] = []
    start = end = words = None
    for s0, s1, n in pieces:
        if n < 0 or (words is not None and words + n > chunk_words):
            if start is not None:
                chunks.append((start, end))
            start = end = words = None
        if n < 0:
            continue
        if start is None:
            start, words = s0, 0
        end, words = s1, words + n
    if start is not None:
        chunks.append((start, end))
    return [_strip(text, a, b) for a, b in chunks if text[a:b].strip()]


def load_folder(
    path: str | Path, chunk_words: int = DEFAULT_CHUNK_WORDS, suffixes: tuple[str, ...] = TEXT_SUFFIXES
) -> list[Document]:
    """Chunk every ``.txt`` / ``.md`` file under ``path`` (recursively) into documents.

    Binary or non-UTF-8 files are skipped with a warning; a missing folder, or one with no readable
    text, raises :class:`InputError`.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise InputError(f"corpus folder {str(root)!r} does not exist; pass a folder of .txt or .md files")
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise InputError(f"no {' or '.join(suffixes)} files under {str(root)!r}; add some text files")
    docs, skipped = [], []
    for f in files:
        raw = f.read_bytes()
        try:
            if b"\x00" in raw:
                raise UnicodeDecodeError("utf-8", raw, 0, 1, "NUL byte")
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            skipped.append(str(f))
            continue
        rel = str(f.relative_to(root)) if f != root else f.name
        for n, (a, b) in enumerate(chunk_text(text, chunk_words)):
            docs.append(Document(
                text=text[a:b], title=f.stem, id=f"{rel}#{n}",
                metadata={"source": rel, "chunk": n, "start": a, "end": b},
            ))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} binary or non-UTF-8 file(s): {skipped[:5]}", stacklevel=2)
    if not docs:
        raise InputError(f"the files under {str(root)!r} hold no readable text")
    return docs


def _strip(text: str, a: int, b: int) -> tuple[int, int]:
    """The span without its leading and trailing whitespace."""
    piece = text[a:b]
    return a + len(piece) - len(piece.lstrip()), b - (len(piece) - len(piece.rstrip()))


def _paragraphs(text: str) -> list[tuple[int, int]]:
    """Spans of blank-line-separated paragraphs."""
    spans, start, i = [], 0, 0
    lines = text.splitlines(keepends=True)
    for line in lines:
        if not line.strip():
            if text[start:i].strip():
                spans.append((start, i))
            start = i + len(line)
        i += len(line)
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def _word_split(text: str, start: int, end: int, limit: int) -> list[tuple[int, int, int]]:
    """A sentence as one piece, or as pieces of at most ``limit`` words when it is longer."""
    words = []
    i = start
    for w in text[start:end].split():
        j = text.index(w, i)
        words.append((j, j + len(w)))
        i = j + len(w)
    if len(words) <= limit:
        return [(start, end, len(words))]
    return [(words[k][0], words[min(k + limit, len(words)) - 1][1], min(limit, len(words) - k))
            for k in range(0, len(words), limit)]
