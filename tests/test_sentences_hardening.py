"""Sentence splitting and chunking stay linear in the text's length, and the splitter's output is unchanged."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from at2_rag import split_sentences

LINE = "The glacier route is long and cold.\n"


# -- the original (quadratic) splitter, kept as the reference for the new one ------------------------
_REF_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e u.s u.k no fig al approx dept est inc ltd co corp "
    "jan feb mar apr jun jul aug sep sept oct nov dec mt ft gen col lt sgt rev".split()
)
_REF_TERMINAL = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|[。！？]+[」』”’)\]]*")
_REF_BLANK_LINES = re.compile(r"\n\s*\n")


def reference_split_sentences(text: str) -> list[tuple[int, int]]:
    """The splitter as it was before it was made linear (slices and searches the whole prefix)."""
    if not text:
        return []
    cuts = set()
    for match in _REF_TERMINAL.finditer(text):
        end = match.end()
        if end >= len(text) or _ref_is_abbreviation(text, match.start()):
            continue
        if match.group(0)[0] == "." and _ref_next_word_is_lowercase(text, end):
            continue
        cuts.add(end)
    for match in _REF_BLANK_LINES.finditer(text):
        cuts.add(match.start())
    spans, start = [], 0
    for cut in sorted(cuts):
        if text[start:cut].strip():
            spans.append((start, cut))
            start = cut
    if start < len(text):
        if spans and not text[start:].strip():
            spans[-1] = (spans[-1][0], len(text))
        else:
            spans.append((start, len(text)))
    return spans


def _ref_is_abbreviation(text: str, period: int) -> bool:
    word = re.search(r"([\w.]+)$", text[:period])
    if word is None:
        return False
    token = word.group(1).lower().rstrip(".")
    return token in _REF_ABBREVIATIONS or (len(token) == 1 and token.isalpha())


def _ref_next_word_is_lowercase(text: str, pos: int) -> bool:
    rest = text[pos:].lstrip()
    return bool(rest) and rest[0].islower()


# -- equivalence --------------------------------------------------------------------------------------
PIECES = [
    "The", "glacier", "route", "is", "cold", "she", "Word", "x", "J", "a", "3", "14", "ü", "东京", "é",
    ".", "..", "...", "!", "?", "?!", "…", "。", "！", "？", "」", "』", "\"", "'", "”", "’", ")", "]",
    "Mr.", "mr.", "e.g.", "i.e.", "U.S.", "etc.", "Jan.", "No.", "3.14", "a.b", "x_y",
    " ", "  ", "\n", "\n\n", "\n \n", "\t", "\r\n", "\u3000", "\u00a0",
]
PIECE_TEXT = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)
CHAR_TEXT = st.text(alphabet=".!?…。」\"')MrseagJU_1 \n\t\u3000é", max_size=60)


@settings(max_examples=600, deadline=None)
@given(text=PIECE_TEXT)
def test_splitter_matches_the_reference_on_words_and_punctuation(text):
    assert split_sentences(text) == reference_split_sentences(text)


@settings(max_examples=600, deadline=None)
@given(text=CHAR_TEXT)
def test_splitter_matches_the_reference_character_by_character(text):
    assert split_sentences(text) == reference_split_sentences(text)


def test_splitter_matches_the_reference_on_long_words_before_periods():
    for n in (1, 60, 63, 64, 65, 66, 200):
        for word in ("x" * n, "J" + "." * n, "e.g" + "." * n, "a." * n, "Mr" * n):
            endings = (". Next one.", ". next", '." Then', "... So", "。Next", "!。x", "\n. Next", "\n。x")
            for text in [word + ending for ending in endings] + [f"A {word}{ending}" for ending in endings]:
                assert split_sentences(text) == reference_split_sentences(text), text


# -- linear time -------------------------------------------------------------------------------------
def _seconds(statements: list[str], timeout: float) -> list[float]:
    """Best of three timings of each statement, in one fresh interpreter killed after ``timeout`` s."""
    code = (
        "import timeit\nfrom at2_rag.app.corpus import chunk_text\nfrom at2_rag.sentences import split_sentences\n"
        f"for s in {statements!r}:\n    print(min(timeit.repeat(s, number=1, repeat=3, globals=globals())))"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{statements[-1][:60]}... did not finish in {timeout} s")
    assert done.returncode == 0, done.stderr
    return [float(line) for line in done.stdout.split()]


@pytest.mark.parametrize("statement", [
    "chunk_text({LINE!r} * ({n} // 36))",                                   # single line breaks
    "chunk_text('The glacier route is long and cold. ' * ({n} // 36))",      # one paragraph, no newlines
    "chunk_text('Mr. Smith e.g. went on. ' * ({n} // 24))",                  # abbreviations everywhere
    "split_sentences('.' * ({n} // 4) + 'x')",                              # a run of periods
    "split_sentences('!?' * ({n} // 8) + 'x ' + '\\n ' * ({n} // 8))",      # a run of marks, spaces
    "chunk_text('QUJD' * ({n} // 4))",                                       # one base64 'word'
], ids=["lines", "paragraph", "abbreviations", "periods", "marks", "base64"])
def test_time_grows_linearly_with_the_text(statement):
    small, large = _seconds([statement.format(LINE=LINE, n=n) for n in (100_000, 400_000)], timeout=180)
    # Four times the text may take at most six times as long (linear is four); the slack absorbs noise.
    assert large < 6 * small + 0.25, (small, large)


def test_five_megabytes_chunk_in_seconds():
    n = 5_000_000 // len(LINE)
    assert _seconds([f"chunk_text({LINE!r} * {n})"], timeout=90)[0] < 20
