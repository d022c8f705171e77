"""Datasets in at2-rag's JSONL format, and the NQ-RAG builder.

One JSON object a line (plain or ``.gz``)::

    {"id": "q1", "question": "...", "documents": [{"id": "d1", "title": "...", "text": "..."}],
     "answers": ["..."], "gold_document_ids": ["d1"]}

``answers`` and ``gold_document_ids`` are optional. Splits are deterministic functions of the id.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import atomic_path
from ..seeds import stable_hash


def split_of(example_id: str, fractions: tuple[float, float] = (0.6, 0.2)) -> str:
    """Deterministic split from the id's hash: 60% train, 20% validation, 20% test by default."""
    h = stable_hash(example_id) / 0x100000000
    if h < fractions[0]:
        return "train"
    return "validation" if h < fractions[0] + fractions[1] else "test"


def open_text(path: str | Path, mode: str = "rt"):
    return gzip.open(path, mode, encoding="utf-8") if str(path).endswith(".gz") else open(path, mode, encoding="utf-8")


def read_jsonl(path: str | Path, split: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Read and validate examples, optionally only one split and at most ``limit`` of them."""
    out = []
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno} is not valid JSON ({exc})") from exc
            _validate(ex, f"{path}:{lineno}")
            if split is None or split_of(ex["id"]) == split:
                out.append(ex)
                if limit is not None and len(out) >= limit:
                    break
    return out


def _validate(ex: Any, where: str) -> None:
    if not isinstance(ex, dict):
        raise InputError(f"{where}: each line must be a JSON object")
    for key in ("id", "question", "documents"):
        if key not in ex:
            raise InputError(f"{where}: missing required field {key!r}")
    if not isinstance(ex["documents"], list) or not all(
        isinstance(d, dict) and isinstance(d.get("text"), str) for d in ex["documents"]
    ):
        raise InputError(f"{where}: 'documents' must be a list of objects with a 'text' string")


def write_jsonl(path: str | Path, examples: Iterable[dict[str, Any]]) -> Path:
    """Write examples atomically (a crash leaves the old file or none, never half a file)."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with atomic_path(path) as tmp, opener(tmp, "wt", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps(ex, ensure_ascii=False) + "\n")
    return path


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze whitespace (the NQ-Open convention)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def is_correct(prediction: str, answers: Iterable[str]) -> bool:
    """True when a normalized gold answer occurs in the normalized prediction."""
    pred = normalize_answer(prediction)
    return any(normalize_answer(a) and normalize_answer(a) in pred for a in answers)


def shuffled_documents(example: dict[str, Any], k: int, seed: int = 0) -> list[dict[str, Any]]:
    """The first ``k`` retrieved documents in an order drawn from the example id (order carries no signal)."""
    docs = list(example["documents"][:k])
    random.Random(f"{seed}:{example['id']}").shuffle(docs)
    return docs

