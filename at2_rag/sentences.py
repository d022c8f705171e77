"""A small, dependency-free sentence splitter that returns exact character spans, and a clause splitter
for one sentence.

Spans tile the text: every character belongs to exactly one span, and the whitespace between two
sentences is the *start* of the next span (byte-level BPE tokenizers attach a leading space to the
following word, so token boundaries then fall on span boundaries).
"""

from __future__ import annotations

import re

# Abbreviations whose trailing period does not end a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e u.s u.k no fig al approx dept est inc ltd co corp "
    "jan feb mar apr jun jul aug sep sept oct nov dec mt ft gen col lt sgt rev".split()
)
# A run of end marks (not preceded by another, so a long run of periods is scanned once, and
# possessive, since giving back a mark never lets the match end before whitespace) and any closing
# quotes, before whitespace; or CJK end marks, which need no space after them.
_TERMINAL = re.compile(r"(?<![.!?…])[.!?…]++[\"'”’)\]]*+(?=\s)|[。！？]+[」』”’)\]]*")
_BLANK_LINES = re.compile(r"\n\s*\n")
_NON_SPACE = re.compile(r"\S")
# A clause boundary inside a sentence: after a semicolon, or after a comma, colon or dash followed by a word
# that opens a new claim (a coordinating conjunction, or a relative or subordinating word). A comma before
# anything else (a list, an apposition, "Warsaw, Poland") does not end a clause. The whitespace after the
# mark opens the next clause, as between sentences.
_CLAUSE_BREAK = re.compile(
    r";(?=\s)|(?:,|:|\s[–—-])(?=\s+(?:and|but|or|yet|so|while|whereas|although|though|which|who|whose|where|"
    r"when|after|before|because|since|until|unless|whereby)\b)",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")
MIN_CLAUSE_WORDS = 3
"""A stretch with fewer words is no claim of its own: it joins the clause before it (the first, the next)."""
# Longer than any abbreviation: the backward scan for the word before a period stops there.
_MAX_ABBREVIATION_SCAN = 64


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Return ``(start, end)`` character spans of the sentences of ``text``; they tile ``text``."""
    if not text:
        return []
    cuts = set()
    for match in _TERMINAL.finditer(text):
        end = match.end()
        if end >= len(text) or _is_abbreviation(text, match.start()):
            continue
        if match.group(0)[0] == "." and _next_word_is_lowercase(text, end):
            continue
        cuts.add(end)
    for match in _BLANK_LINES.finditer(text):
        cuts.add(match.start())
    spans, start = [], 0
    for cut in sorted(cuts):
        if text[start:cut].strip():
            spans.append((start, cut))
            start = cut
    if start < len(text):
        if spans and not text[start:].strip():
            spans[-1] = (spans[-1][0], len(text))  # trailing whitespace joins the last sentence
        else:
            spans.append((start, len(text)))
    return spans


def _is_abbreviation(text: str, period: int) -> bool:
    """Whether the word before ``text[period]`` is an abbreviation (a bounded backward scan, no copies)."""
    end = period
    if end > 0 and text[end - 1] == "\n":  # as the original regex's "$", which also matched before a final "\n"
        end -= 1
    while end > 0 and text[end - 1] == ".":  # trailing periods do not count (only before a CJK mark)
        end -= 1
    start = end
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "._"):  # the characters of [\w.]
        start -= 1
        if end - start > _MAX_ABBREVIATION_SCAN:
            return False  # far longer than any abbreviation
    token = text[start:end].lower()
    # Single letters ("J. Smith") and known abbreviations do not end sentences.
    return token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha())


def _next_word_is_lowercase(text: str, pos: int) -> bool:
    """Whether the first non-space character at or after ``pos`` is lowercase (scans, never copies)."""
    found = _NON_SPACE.search(text, pos)
    return found is not None and found.group().islower()


def split_clauses(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` spans of the clauses of the sentence ``text[start:end]``; they tile it.

    A clause ends after a semicolon, or after a comma, colon or dash followed by a conjunction or a
    relative word ("…born in Warsaw, but moved to Paris…" is two clauses; "Warsaw, Poland" is not cut).
    A stretch of fewer than :data:`MIN_CLAUSE_WORDS` words joins its neighbour. Text in languages
    without these words is one clause.
    """
    end = len(text) if end is None else end
    if start >= end:
        return []
    cuts = [start] + [m.end() for m in _CLAUSE_BREAK.finditer(text, start, end) if m.end() < end] + [end]
    spans: list[tuple[int, int]] = []
    for a, b in zip(cuts, cuts[1:]):
        if spans and len(_WORD.findall(text, spans[-1][0], spans[-1][1])) < MIN_CLAUSE_WORDS:
            spans[-1] = (spans[-1][0], b)  # the one before was too short: it takes this one in
        elif spans and len(_WORD.findall(text, a, b)) < MIN_CLAUSE_WORDS:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
    return spans
