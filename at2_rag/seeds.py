"""Stable 32-bit hashes of ids: seeds and splits that are the same in every process (unlike ``hash``)."""

from __future__ import annotations

import hashlib
from typing import Literal


def stable_hash(*parts: object, byteorder: Literal["big", "little"] = "big") -> int:
    """The first 4 bytes of ``sha256(":".join(map(str, parts)))`` as an unsigned integer in ``[0, 2**32)``.

    ``stable_hash(seed, example_id)`` hashes ``f"{seed}:{example_id}"``. ``byteorder`` reads the 4
    bytes big-endian (the value of the first 8 hex digits) or little-endian.
    """
    text = ":".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], byteorder)


__all__ = ["stable_hash"]
