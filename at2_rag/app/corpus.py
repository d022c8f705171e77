"""Documents to retrieve from: the shipped sample corpus, and a user's folder of text files in chunks.

Chunks are whole sentences packed up to ``chunk_words`` words (default 120: about 160 tokens, so ten
retrieved chunks fit a 2k-token prompt with room for the answer, and one chunk is specific enough
to be worth keeping or dropping on its own), and never longer than ``MAX_CHUNK_CHARS`` characters.
A markdown heading opens the chunk of the text under it, never a chunk of its own.

Files are read as UTF-8; a byte-order mark selects UTF-8, UTF-16 or UTF-32 (and is dropped); UTF-8
with a few bad bytes keeps its text (bad bytes become U+FFFD); other text is read as Windows-1252.
Bytes with NUL characters or many control characters are binary and skipped, with a warning.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..documents import Document
from ..errors import InputError
from ..files import utf8_text
from ..sentences import split_sentences

DEFAULT_CHUNK_WORDS = 120
# The hard cap on a chunk's length. Prose never meets it (a default chunk of 120 words is ~720
# characters; this needs 17 per word); it cuts text without spaces: an inlined base64 image,
# minified code, unpunctuated CJK. Measured with the default model's tokenizer, 2,880 characters
# (4 x 120 words x 6) are 757 tokens of English, 2.3k of base64, 5.5k of Chinese/Japanese and 8.6k of
# emoji (over the 8,192-token window); 2,048 characters make 442, 1,633, 4,000 and 4,778
# (`python benchmarks/chunk_tokens.py`), so one chunk with a question stays inside the window.
MAX_CHUNK_CHARS = 2048
TEXT_SUFFIXES = (".txt", ".md")
LISTED_SKIPS = 20  # skipped files named in the warning; its ``skipped`` attribute has them all

# UTF-16 and UTF-32 byte-order marks, longest first (the UTF-32-LE mark begins with the UTF-16-LE one);
# UTF-8's is dropped by decoding as "utf-8-sig".
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
# Windows-1252 as browsers read it: its five unassigned bytes stand for latin-1's control characters.
_CP1252 = "".join(
    chr(i) if c == "\ufffd" else c for i, c in enumerate(bytes(range(256)).decode("cp1252", "replace"))
)
_UTF8_REPLACEMENT = "\ufffd".encode()
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # C0 controls other than whitespace, and DEL
_WORD = re.compile(r"\S+")
# Markdown headings, matched against a line without its line break: ATX (``# Title`` to ``###### Title``)
# and the underline of a setext heading (``Title`` over a line of ``=`` or ``-``).
_ATX_HEADING = re.compile(r" {0,3}#{1,6}(?:[ \t].*)?")
_SETEXT_UNDERLINE = re.compile(r" {0,3}(?:=+|-+)[ \t]*")


class SkippedFilesWarning(UserWarning):
    """Files that :func:`load_folder` left out: ``skipped`` holds every (name, why), ``links`` every link."""

    def __init__(self, message: str, skipped: Sequence[tuple[str, str]] = (), links: Sequence[str] = ()):
        super().__init__(message)
        self.skipped = tuple(skipped)
        self.links = tuple(links)


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


def chunk_text(
    text: str, chunk_words: int = DEFAULT_CHUNK_WORDS, max_chars: int = MAX_CHUNK_CHARS
) -> list[tuple[int, int]]:
    """Character spans of chunks of ``text``: whole sentences, at most ``chunk_words`` words each.

    A paragraph break always ends a chunk; a sentence longer than the limit is split between words;
    no chunk is longer than ``max_chars`` characters (a longer "word", such as base64, is cut).
    A markdown heading joins the first sentence under it, so a chunk never holds a heading alone
    (unless nothing follows it, or the headings alone exceed the limits).
    Time and memory grow linearly with the text.
    """
    _check_positive("chunk_words", chunk_words)
    _check_positive("max_chars", max_chars)
    chunks: list[tuple[int, int]] = []
    for start, body, end in _sections(text):
        sentences = [(body + s0, body + s1) for s0, s1 in split_sentences(text[body:end])] or [(body, end)]
        sentences[0] = (start, sentences[0][1])  # the headings above open the first sentence
        pieces = (
            piece for s0, s1 in sentences for piece in _word_split(text, s0, s1, chunk_words, max_chars)
        )
        chunks.extend(_pack(pieces, chunk_words, max_chars))
    return [_strip(text, a, b) for a, b in chunks if text[a:b].strip()]


def chunk_label(doc: Document) -> str:
    """How every view names a chunk: its file and chunk number (``notes/decaf.md#2``, the id
    :func:`load_folder` gives it) for a folder's chunks, else its title or id."""
    if doc.metadata.get("source") is not None and doc.id:
        return doc.id
    return doc.title or doc.id or ""


def load_folder(
    path: str | Path,
    chunk_words: int = DEFAULT_CHUNK_WORDS,
    suffixes: tuple[str, ...] = TEXT_SUFFIXES,
    *,
    follow_links: bool = False,
) -> list[Document]:
    """Chunk every ``.txt`` / ``.md`` file under ``path`` (recursively, hidden ones aside) into documents.

    Binary and unreadable files are skipped with one :class:`SkippedFilesWarning`, which also counts the
    symbolic links out of the folder that were not followed (``follow_links=True`` follows them; links
    inside it are fine, and each file is read once); a missing folder, or one with no readable text,
    raises :class:`InputError`.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise InputError(f"corpus folder {str(root)!r} does not exist; pass a folder of .txt or .md files")
    if not (root.is_dir() or root.is_file()):
        raise InputError(f"corpus {str(root)!r} is not a folder or a regular file (a device, FIFO or socket); "
                         "pass a folder of .txt or .md files")
    walk = _FolderWalk(root, suffixes, follow_links) if root.is_dir() else None
    files = walk.files() if walk else [(root, utf8_text(root.name))]
    links, skipped = (sorted(walk.links), sorted(walk.skipped)) if walk else ([], [])
    if not files:
        raise InputError(_no_files_message(root, suffixes, links, skipped))
    docs = []
    for f, rel in files:
        text, why = _read_text(f)
        if text is None:
            skipped.append((rel, why))
            continue
        for n, (a, b) in enumerate(chunk_text(text, chunk_words)):
            docs.append(Document(
                text=text[a:b], title=Path(rel).stem, id=f"{rel}#{n}",
                metadata={"source": rel, "chunk": n, "start": a, "end": b},
            ))
    if skipped or links:
        warnings.warn(SkippedFilesWarning(_skip_message(root, skipped, links), skipped, links), stacklevel=2)
    if not docs:
        raise InputError(f"the files under {str(root)!r} hold no readable text")
    return docs


class _FolderWalk:
    """A corpus folder's text files, each real file once; links out of it are followed only on request."""

    def __init__(self, root: Path, suffixes: tuple[str, ...], follow_links: bool):
        self.suffixes, self.follow_links = suffixes, follow_links
        self.top = os.path.realpath(root)
        self.links: list[str] = []  # links out of the folder, not followed
        self.skipped: list[tuple[str, str]] = []  # (name, why) of folders that could not be listed
        self._found: dict[str, tuple[bool, tuple[str, ...], str]] = {}  # real path -> (via link, parts, path)
        self._seen = {self.top}  # real folders already queued: a link loop is walked once
        self._queue = [(str(root), (), self.top)]
        while self._queue:
            self._folder(*self._queue.pop())

    def files(self) -> list[tuple[Path, str]]:
        """(path to read, name relative to the folder) of each file, in sorted order."""
        found = sorted(self._found.values(), key=lambda v: v[1])
        return [(Path(path), str(Path(*parts))) for _, parts, path in found]

    def _folder(self, folder: str, parts: tuple[str, ...], real: str) -> None:
        """Visit the entries of one folder that are not hidden."""
        try:
            with os.scandir(folder) as listing:
                entries = [e for e in listing if not e.name.startswith(".")]
        except OSError as err:
            self.skipped.append((str(Path(*parts)) if parts else ".", f"folder: {_why(err)}"))
            return
        for entry in entries:  # names as shown (undecodable bytes as \xNN), so every id and title is UTF-8
            self._entry(entry, (*parts, utf8_text(entry.name)), os.path.join(real, entry.name))

    def _entry(self, entry: os.DirEntry, parts: tuple[str, ...], real: str) -> None:
        """Queue a folder, or record a text file, following a link only inside the folder by default; a
        FIFO, device or socket with a text file's name is skipped (never opened: it could block or never end)."""
        link = entry.is_symlink()
        try:
            is_dir = entry.is_dir()
            named = not is_dir and Path(entry.name).suffix.lower() in self.suffixes
            is_text = named and entry.is_file()
            special = named and not is_text and os.path.exists(entry.path)  # not a dangling link
        except OSError:  # a link loop, or an entry that went away: nothing to read
            return
        if not (is_dir or is_text or special):
            return
        if link:
            real = os.path.realpath(entry.path)
            if not self.follow_links and not _inside(real, self.top):
                self.links.append(str(Path(*parts)))
                return
        if special:
            self.skipped.append((str(Path(*parts)), "not a regular file"))
        elif is_dir:
            if real not in self._seen:
                self._seen.add(real)
                self._queue.append((entry.path, parts, real))
        elif real not in self._found or (link, parts) < self._found[real][:2]:
            self._found[real] = (link, parts, entry.path)  # the file itself rather than a link to it


def _inside(path: str, folder: str) -> bool:
    """Whether the real ``path`` is ``folder`` or lies under it."""
    return os.path.commonpath([path, folder]) == folder


def _read_text(path: Path) -> tuple[str | None, str]:
    """A file's text, or None and why it could not be read."""
    try:
        raw = _regular_file_bytes(path)
    except OSError as err:
        return None, _why(err)
    text = next((t for t in _decodings(raw) if _looks_like_text(t)), None)
    return text, "" if text is not None else "binary"


def _regular_file_bytes(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file, checked just before it is read, so a FIFO or device
    put in a file's place after the walk is refused, not read (a FIFO blocks, ``/dev/zero`` never ends)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(0, "not a regular file")
    return path.read_bytes()


def _decodings(raw: bytes) -> Iterator[str]:
    """Plausible readings of a file's bytes, the likeliest first."""
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            try:
                yield raw.decode(codec)
            except UnicodeDecodeError:
                pass
    try:
        yield raw.decode("utf-8-sig")
        return
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8-sig", errors="replace")
    bad = text.count("\ufffd") - raw.count(_UTF8_REPLACEMENT)
    non_ascii = len(text) - len(text.encode("ascii", errors="ignore"))
    if bad * 100 < len(text) and non_ascii > bad:  # evidently UTF-8, with a few bad bytes
        yield text
    yield codecs.charmap_decode(raw, "strict", _CP1252)[0]  # every byte is a character here


def _looks_like_text(text: str) -> bool:
    """No NUL characters, and at most one character in twenty a control (random bytes have ~1 in 10)."""
    return "\x00" not in text and len(_CONTROL.findall(text)) * 20 <= len(text)


def _why(err: OSError) -> str:
    """A short reason for an OS error ("Permission denied")."""
    return err.strerror or type(err).__name__


def _no_files_message(root: Path, suffixes: tuple[str, ...], links: list[str], skipped: list[tuple[str, str]]) -> str:
    """One line: a folder has no files to read, and what to do about it."""
    message = f"no {' or '.join(suffixes)} files under {str(root)!r}; add some text files"
    if links:
        message += f", or pass --follow-links (follow_links=True) to follow its {len(links)} link(s) out of it"
    if skipped:
        message += f" (could not read {_listed([f'{_shown(name)} ({why})' for name, why in skipped])})"
    return message


def _skip_message(root: Path, skipped: list[tuple[str, str]], links: list[str]) -> str:
    """One line: every skipped file (the first ``LISTED_SKIPS``, then a count) and the links not followed."""
    notes = []
    if skipped:
        notes.append(f"skipped {len(skipped)} binary or unreadable file(s) under {str(root)!r}: "
                     f"{_listed([f'{_shown(name)} ({why})' for name, why in skipped])}; "
                     "make them readable UTF-8 text files to include them")
    if links:
        notes.append(f"did not follow {len(links)} symbolic link(s) out of the folder: "
                     f"{_listed([_shown(name) for name in links])}; pass --follow-links (follow_links=True) "
                     "to read them")
    return "; ".join(notes)


def _listed(items: list[str]) -> str:
    """The first ``LISTED_SKIPS`` items, comma-separated, and how many more there are."""
    more = len(items) - LISTED_SKIPS
    return ", ".join(items[:LISTED_SKIPS]) + (f" and {more} more" if more > 0 else "")


def _shown(name: str) -> str:
    """A file name as it can stand in a one-line message (quoted when it holds newlines or controls)."""
    return name if name.isprintable() else repr(name)


def _check_positive(name: str, value: int) -> None:
    """Raise :class:`InputError` unless a chunk limit is at least 1."""
    if value < 1:
        raise InputError(f"{name} must be at least 1, got {value}; pass a positive number")


def _strip(text: str, a: int, b: int) -> tuple[int, int]:
    """The span without its leading and trailing whitespace."""
    piece = text[a:b]
    return a + len(piece) - len(piece.lstrip()), b - (len(piece) - len(piece.rstrip()))


def _sections(text: str) -> list[tuple[int, int, int]]:
    """``(start, body start, end)`` of each paragraph, its start moved back over the heading-only
    paragraphs just above it; headings with no paragraph after them are a section of their own."""
    sections, heading = [], None
    for a, b in _paragraphs(text):
        if _is_heading(text[a:b]):
            heading = a if heading is None else heading
            continue
        sections.append((a if heading is None else heading, a, b))
        heading = None
    if heading is not None:
        sections.append((heading, heading, len(text)))
    return sections


def _is_heading(paragraph: str) -> bool:
    """Whether a paragraph is a markdown heading and nothing else: ATX heading lines only, or lines
    of text over a setext underline."""
    lines = paragraph.strip("\r\n").splitlines()
    if len(lines) > 1 and _SETEXT_UNDERLINE.fullmatch(lines[-1]):
        return True
    return all(_ATX_HEADING.fullmatch(line) for line in lines)


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


def _word_split(text: str, start: int, end: int, limit: int, max_chars: int) -> list[tuple[int, int, int]]:
    """``(start, end, words)`` of a sentence as one piece, or of its parts between words when it is over
    ``limit`` words or ``max_chars`` characters (a word over ``max_chars`` is cut into such parts)."""
    if end - start <= max_chars:
        n = len(text[start:end].split())
        if n <= limit:
            return [(start, end, n)]
    words = [
        (a, min(a + max_chars, m.end()))
        for m in _WORD.finditer(text, start, end)
        for a in range(m.start(), m.end(), max_chars)
    ]
    return _pack_words(words, limit, max_chars)


def _pack_words(words: list[tuple[int, int]], limit: int, max_chars: int) -> list[tuple[int, int, int]]:
    """Consecutive words grouped greedily into pieces of at most ``limit`` words and ``max_chars`` characters."""
    pieces, first, n = [], 0, 0
    for k, (_, b) in enumerate(words):
        if n and (n == limit or b - words[first][0] > max_chars):
            pieces.append((words[first][0], words[k - 1][1], n))
            first, n = k, 0
        n += 1
    if n:
        pieces.append((words[first][0], words[-1][1], n))
    return pieces


def _pack(pieces: Iterator[tuple[int, int, int]], limit: int, max_chars: int) -> list[tuple[int, int]]:
    """Consecutive pieces of one paragraph packed greedily into chunks within both limits."""
    chunks: list[tuple[int, int]] = []
    start = end = -1
    words = 0
    for s0, s1, n in pieces:
        if start >= 0 and (words + n > limit or s1 - start > max_chars):
            chunks.append((start, end))
            start = -1
        if start < 0:
            start, words = s0, 0
        end, words = s1, words + n
    if start >= 0:
        chunks.append((start, end))
    return chunks
