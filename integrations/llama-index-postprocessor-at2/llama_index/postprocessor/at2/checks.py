"""Input checks shared by the components: one-line ``at2_rag.InputError`` before any model work."""

from __future__ import annotations

from at2_rag import InputError


def check_text(text: str, what: str) -> str:
    """``text`` itself, or :class:`~at2_rag.InputError` when it holds a lone surrogate (no tokenizer can encode it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{what} contains a lone surrogate {text[e.start]!r} at character {e.start} (broken UTF-16 "
            "or a bad \\u escape); repair or remove it"
        ) from None
    return text
